// CUDA entry points of the instance-assembling ops: a device guard and the
// current stream around the host code and kernels of assemble_kernels.cuh.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "assemble_kernels.cuh"

namespace atrous {
namespace cuda {
namespace {

using at::Tensor;

Tensor instance_assemble_cuda(const Tensor& scores, int64_t k, int64_t m,
                              c10::IntArrayRef window_stride,
                              const c10::optional<Tensor>& centers) {
  const c10::cuda::CUDAGuard guard(scores.device());
  return assemble_host::instance_assemble(scores, k, m, window_stride, centers,
                                          c10::cuda::getCurrentCUDAStream());
}

Tensor instance_assemble_backward_cuda(const Tensor& grad_output, int64_t batch, int64_t height,
                                       int64_t width, int64_t k, int64_t m,
                                       c10::IntArrayRef window_stride,
                                       const c10::optional<Tensor>& centers) {
  const c10::cuda::CUDAGuard guard(grad_output.device());
  return assemble_host::instance_assemble_backward(grad_output, batch, height, width, k, m,
                                                   window_stride, centers,
                                                   c10::cuda::getCurrentCUDAStream());
}

std::tuple<Tensor, Tensor> fcis_assemble_cuda(const Tensor& score_maps, const Tensor& rois,
                                              int64_t group_size, int64_t output_size,
                                              double spatial_scale) {
  const c10::cuda::CUDAGuard guard(score_maps.device());
  return assemble_host::fcis_assemble(score_maps, rois, group_size, output_size, spatial_scale,
                                      c10::cuda::getCurrentCUDAStream());
}

Tensor fcis_assemble_backward_cuda(const Tensor& grad_inside, const Tensor& grad_outside,
                                   const Tensor& rois, int64_t group_size, int64_t output_size,
                                   double spatial_scale, int64_t batch, int64_t height,
                                   int64_t width) {
  const c10::cuda::CUDAGuard guard(grad_inside.device());
  return assemble_host::fcis_assemble_backward(grad_inside, grad_outside, rois, group_size,
                                               output_size, spatial_scale, batch, height, width,
                                               c10::cuda::getCurrentCUDAStream());
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(atrous, CUDA, m) {
  m.impl("instance_assemble", &cuda::instance_assemble_cuda);
  m.impl("instance_assemble_backward", &cuda::instance_assemble_backward_cuda);
  m.impl("fcis_assemble", &cuda::fcis_assemble_cuda);
  m.impl("fcis_assemble_backward", &cuda::fcis_assemble_backward_cuda);
}

}  // namespace atrous
