// The CUDA kernels' own code, run on the CPU: conv_kernels.cuh and the host
// side of the CUDA ops (conv_host.h) compiled as host C++ with
// ATROUS_CUDA_EMULATION (csrc/cuda/emulation.h), for every dtype, tensor-core
// kernels included, and the instance-assembling kernels with their host side
// (assemble_kernels.cuh). Built on the fly by tests/test_cuda_emulation.py;
// not part of the package.
#include <torch/extension.h>

#include "cuda/conv_host.h"
#include "cuda/conv_kernels.cuh"
#include "cuda/assemble_kernels.cuh"

namespace atrous {
namespace cuda {
ATROUS_INSTANTIATE_CUDA_LAUNCHERS(float)
ATROUS_INSTANTIATE_CUDA_LAUNCHERS(double)
ATROUS_INSTANTIATE_CUDA_LAUNCHERS(c10::Half)
ATROUS_INSTANTIATE_CUDA_LAUNCHERS(c10::BFloat16)
}  // namespace cuda
}  // namespace atrous

namespace {

at::Tensor conv_forward(const at::Tensor& input, const at::Tensor& weight,
                        const c10::optional<at::Tensor>& bias, std::vector<int64_t> stride,
                        std::vector<int64_t> padding, std::vector<int64_t> dilation,
                        int64_t groups) {
  return atrous::cuda::host::conv_forward(input, weight, bias, stride, padding, dilation, groups,
                                          nullptr);
}

std::vector<at::Tensor> conv_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& weight, std::vector<int64_t> stride,
                                      std::vector<int64_t> padding, std::vector<int64_t> dilation,
                                      int64_t groups, std::vector<bool> output_mask) {
  TORCH_CHECK(output_mask.size() == 3, "expected an output_mask of 3 bools");
  auto [gi, gw, gb] = atrous::cuda::host::conv_backward(
      grad_output, input, weight, stride, padding, dilation, groups,
      {output_mask[0], output_mask[1], output_mask[2]}, nullptr);
  return {gi, gw, gb};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("conv_forward", &conv_forward);
  m.def("conv_backward", &conv_backward);
  namespace ah = atrous::cuda::assemble_host;
  m.def("instance_assemble",
        [](const at::Tensor& scores, int64_t k, int64_t m, std::vector<int64_t> window_stride,
           const c10::optional<at::Tensor>& centers) {
          return ah::instance_assemble(scores, k, m, window_stride, centers, nullptr);
        });
  m.def("instance_assemble_backward",
        [](const at::Tensor& grad_output, int64_t batch, int64_t height, int64_t width, int64_t k,
           int64_t m, std::vector<int64_t> window_stride, const c10::optional<at::Tensor>& centers) {
          return ah::instance_assemble_backward(grad_output, batch, height, width, k, m,
                                                window_stride, centers, nullptr);
        });
  m.def("fcis_assemble", [](const at::Tensor& maps, const at::Tensor& rois, int64_t group_size,
                            int64_t output_size, double spatial_scale) {
    return ah::fcis_assemble(maps, rois, group_size, output_size, spatial_scale, nullptr);
  });
  m.def("fcis_assemble_backward",
        [](const at::Tensor& grad_inside, const at::Tensor& grad_outside, const at::Tensor& rois,
           int64_t group_size, int64_t output_size, double spatial_scale, int64_t batch,
           int64_t height, int64_t width) {
          return ah::fcis_assemble_backward(grad_inside, grad_outside, rois, group_size,
                                            output_size, spatial_scale, batch, height, width,
                                            nullptr);
        });
  m.def("set_assemble_force_int64_indexing",
        [](bool force) { ah::force_int64_indexing = force; },
        "Run the assembling kernels with 64-bit element indices whatever the sizes.");
}
