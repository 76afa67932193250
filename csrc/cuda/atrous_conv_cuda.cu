// CUDA entry points of atrous::conv_forward and atrous::conv_backward: a
// device guard and the current stream around the host code of conv_host.h.
// The kernels are in conv_kernels.cuh, instantiated per dtype in
// conv_<dtype>.cu.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "conv_host.h"

namespace atrous {
namespace cuda {
namespace {

at::Tensor conv_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard guard(input.device());
  return host::conv_forward(input, weight, bias, stride, padding, dilation, groups,
                            c10::cuda::getCurrentCUDAStream());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard guard(input.device());
  return host::conv_backward(grad_output, input, weight, stride, padding, dilation, groups,
                             output_mask, c10::cuda::getCurrentCUDAStream());
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(atrous, CUDA, m) {
  m.impl("conv_forward", &cuda::conv_forward_cuda);
  m.impl("conv_backward", &cuda::conv_backward_cuda);
}

}  // namespace atrous
