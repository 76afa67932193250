// CUDA kernels of the instance-assembling ops and their host side, included
// by csrc/cuda/assemble_kernel.cu and, compiled as host C++ with
// ATROUS_CUDA_EMULATION (csrc/cuda/emulation.h), by the tests' CPU emulation
// (tests/emulation/emulated_kernels.cpp). The per-element math is the
// `__host__ __device__` code of csrc/assemble_index.h, shared with the CPU
// kernels (csrc/cpu/assemble_kernel.cpp); this file only maps threads to
// elements. One thread per output element (the forwards) or per input
// element (the backwards, written as gathers: every gradient element sums its
// terms itself, in a fixed order, with no atomics, so results are bitwise
// reproducible).
//
// Indexing: kernels are templated on the index type of the element loop;
// 32-bit when every tensor involved has fewer than 2^30 elements (so the
// grid-stride step, at most 2^28, cannot overflow it), 64-bit otherwise. The
// per-element math is 64-bit throughout. The caller holds the device guard
// and passes the stream.
#pragma once

#if defined(ATROUS_CUDA_EMULATION)
#include "emulation.h"
#else
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>
#endif

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <algorithm>
#include <initializer_list>
#include <tuple>

#include "../assemble.h"

namespace atrous {
namespace cuda {
namespace assemble_host {

using at::Tensor;
using assemble::FcisParams;
using assemble::InstanceAssembleParams;

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over `total` elements; the loop covers any
// remainder, so the grid is capped well below the 2^31 - 1 limit.
inline unsigned elementwise_blocks(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), int64_t(1) << 20));
}

#if defined(ATROUS_CUDA_EMULATION)
// The tests' emulation sets this to run the 64-bit kernels on small tensors.
inline bool force_int64_indexing = false;
#endif

inline bool fits_int32(std::initializer_list<int64_t> sizes) {
#if defined(ATROUS_CUDA_EMULATION)
  if (force_int64_indexing) return false;
#endif
  for (const int64_t s : sizes)
    if (s >= (int64_t(1) << 30)) return false;
  return true;
}

// Launches on the given stream and checks the launch.
#if defined(ATROUS_CUDA_EMULATION)
#define ATROUS_ASSEMBLE_LAUNCH(kernel, total, stream, ...) \
  ::atrous::emulation::launch(kernel, dim3(elementwise_blocks(total)), dim3(kThreads), __VA_ARGS__)
#else
#define ATROUS_ASSEMBLE_LAUNCH(kernel, total, stream, ...)                   \
  do {                                                                       \
    kernel<<<elementwise_blocks(total), kThreads, 0, stream>>>(__VA_ARGS__); \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                          \
  } while (0)
#endif

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    instance_assemble_kernel(InstanceAssembleParams p, const scalar_t* __restrict__ scores,
                             const int64_t* __restrict__ centers, scalar_t* __restrict__ out,
                             index_t total) {
  const index_t m = static_cast<index_t>(p.m);
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t v = e % m, u = (e / m) % m, w = e / (m * m);
    out[e] = assemble::instance_assemble_element(p, scores, centers, w, u, v);
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    instance_assemble_backward_kernel(InstanceAssembleParams p,
                                      const scalar_t* __restrict__ grad_output,
                                      const int64_t* __restrict__ order,
                                      const int64_t* __restrict__ starts,
                                      scalar_t* __restrict__ grad, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t height = static_cast<index_t>(p.height), width = static_cast<index_t>(p.width);
  const index_t maps = static_cast<index_t>(p.k * p.k);
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t w = e % width, h = (e / width) % height, c = (e / (width * height)) % maps;
    const index_t n = e / (width * height * maps);
    grad[e] = static_cast<scalar_t>(assemble::instance_assemble_grad_element<acc_t>(
        p, grad_output, order, starts, n, c, h, w));
  }
}

template <typename scalar_t, typename index_t>
__global__ void __launch_bounds__(kThreads)
    fcis_assemble_kernel(FcisParams p, at::opmath_type<scalar_t> scale,
                         const scalar_t* __restrict__ maps,
                         const at::opmath_type<scalar_t>* __restrict__ rois,
                         scalar_t* __restrict__ inside, scalar_t* __restrict__ outside,
                         index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t size = static_cast<index_t>(p.size), classes = static_cast<index_t>(p.classes);
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t px = e % size, py = (e / size) % size, cls = (e / (size * size)) % classes;
    const index_t r = e / (size * size * classes);
    acc_t in_v, out_v;
    assemble::fcis_assemble_element(p, scale, maps, rois, r, cls, py, px, in_v, out_v);
    inside[e] = static_cast<scalar_t>(in_v);
    outside[e] = static_cast<scalar_t>(out_v);
  }
}

// Consecutive threads take consecutive pixels of one (n, channel) plane, so a
// warp tests the same RoI at the same time (a broadcast read) and mostly
// agrees on skipping it. No __launch_bounds__ here: with it ptxas held the
// float64 variant to 64 registers and spilled; without it, it uses up to 80
// (ptxas -v, sm_80/sm_90) and spills nothing.
template <typename scalar_t, typename index_t>
__global__ void fcis_assemble_backward_kernel(FcisParams p, at::opmath_type<scalar_t> scale,
                                  const scalar_t* __restrict__ grad_inside,
                                  const scalar_t* __restrict__ grad_outside,
                                  const at::opmath_type<scalar_t>* __restrict__ rois,
                                  scalar_t* __restrict__ grad, index_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t height = static_cast<index_t>(p.height), width = static_cast<index_t>(p.width);
  const index_t channels = static_cast<index_t>(2 * p.k * p.k * p.classes);
  for (index_t e = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<index_t>(blockDim.x) * gridDim.x) {
    const index_t w = e % width, h = (e / width) % height, ch = (e / (width * height)) % channels;
    const index_t n = e / (width * height * channels);
    grad[e] = static_cast<scalar_t>(assemble::fcis_grad_element<acc_t>(
        p, scale, grad_inside, grad_outside, rois, n, ch, h, w));
  }
}

inline Tensor instance_assemble(const Tensor& scores, int64_t k, int64_t m,
                              c10::IntArrayRef window_stride,
                              const c10::optional<Tensor>& centers, cudaStream_t stream) {
  const InstanceAssembleCall call = prepare_instance_assemble(scores, k, m, window_stride, centers);
  const InstanceAssembleParams& p = call.params;
  const Tensor &out = call.out, &s = call.scores;
  if (out.numel() == 0) return out;
  const int64_t* c_ptr = call.centers.defined() ? call.centers.const_data_ptr<int64_t>() : nullptr;
  const int64_t total = out.numel();
  ATROUS_ASSEMBLE_DISPATCH(scores.scalar_type(), "instance_assemble_cuda", [&] {
    if (fits_int32({total, s.numel()})) {
      ATROUS_ASSEMBLE_LAUNCH((instance_assemble_kernel<scalar_t, int32_t>), total, stream, p,
                             s.const_data_ptr<scalar_t>(), c_ptr, out.mutable_data_ptr<scalar_t>(),
                             static_cast<int32_t>(total));
    } else {
      ATROUS_ASSEMBLE_LAUNCH((instance_assemble_kernel<scalar_t, int64_t>), total, stream, p,
                             s.const_data_ptr<scalar_t>(), c_ptr, out.mutable_data_ptr<scalar_t>(),
                             total);
    }
  });
  return out;
}

inline Tensor instance_assemble_backward(const Tensor& grad_output, int64_t batch, int64_t height,
                                       int64_t width, int64_t k, int64_t m,
                                       c10::IntArrayRef window_stride,
                                       const c10::optional<Tensor>& centers, cudaStream_t stream) {
  const InstanceAssembleBackwardCall call = prepare_instance_assemble_backward(
      grad_output, batch, height, width, k, m, window_stride, centers);
  const InstanceAssembleParams& p = call.params;
  const Tensor &grad = call.grad, &gy = call.grad_output;
  if (grad.numel() == 0) return grad;
  const bool selected = call.order.defined();
  const int64_t* order_ptr = selected ? call.order.const_data_ptr<int64_t>() : nullptr;
  const int64_t* starts_ptr = selected ? call.starts.const_data_ptr<int64_t>() : nullptr;
  const int64_t total = grad.numel();
  ATROUS_ASSEMBLE_DISPATCH(grad_output.scalar_type(), "instance_assemble_backward_cuda", [&] {
    if (fits_int32({total, gy.numel()})) {
      ATROUS_ASSEMBLE_LAUNCH((instance_assemble_backward_kernel<scalar_t, int32_t>), total, stream,
                             p, gy.const_data_ptr<scalar_t>(), order_ptr, starts_ptr,
                             grad.mutable_data_ptr<scalar_t>(), static_cast<int32_t>(total));
    } else {
      ATROUS_ASSEMBLE_LAUNCH((instance_assemble_backward_kernel<scalar_t, int64_t>), total, stream,
                             p, gy.const_data_ptr<scalar_t>(), order_ptr, starts_ptr,
                             grad.mutable_data_ptr<scalar_t>(), total);
    }
  });
  return grad;
}

inline std::tuple<Tensor, Tensor> fcis_assemble(const Tensor& score_maps, const Tensor& rois,
                                              int64_t group_size, int64_t output_size,
                                              double spatial_scale, cudaStream_t stream) {
  const FcisAssembleCall call =
      prepare_fcis_assemble(score_maps, rois, group_size, output_size, spatial_scale);
  const FcisParams& p = call.params;
  const Tensor &inside = call.inside, &outside = call.outside, &maps = call.maps,
               &boxes = call.rois;
  if (inside.numel() == 0) return {inside, outside};
  const int64_t total = inside.numel();
  ATROUS_ASSEMBLE_DISPATCH(score_maps.scalar_type(), "fcis_assemble_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(spatial_scale);
    if (fits_int32({total, maps.numel()})) {
      ATROUS_ASSEMBLE_LAUNCH((fcis_assemble_kernel<scalar_t, int32_t>), total, stream, p, scale,
                             maps.const_data_ptr<scalar_t>(), boxes.const_data_ptr<acc_t>(),
                             inside.mutable_data_ptr<scalar_t>(),
                             outside.mutable_data_ptr<scalar_t>(), static_cast<int32_t>(total));
    } else {
      ATROUS_ASSEMBLE_LAUNCH((fcis_assemble_kernel<scalar_t, int64_t>), total, stream, p, scale,
                             maps.const_data_ptr<scalar_t>(), boxes.const_data_ptr<acc_t>(),
                             inside.mutable_data_ptr<scalar_t>(),
                             outside.mutable_data_ptr<scalar_t>(), total);
    }
  });
  return {inside, outside};
}

inline Tensor fcis_assemble_backward(const Tensor& grad_inside, const Tensor& grad_outside,
                                   const Tensor& rois, int64_t group_size, int64_t output_size,
                                   double spatial_scale, int64_t batch, int64_t height,
                                   int64_t width, cudaStream_t stream) {
  const FcisAssembleBackwardCall call =
      prepare_fcis_assemble_backward(grad_inside, grad_outside, rois, group_size, output_size,
                                     spatial_scale, batch, height, width);
  const FcisParams& p = call.params;
  const Tensor &grad = call.grad, &gi = call.grad_inside, &go = call.grad_outside,
               &boxes = call.rois;
  if (grad.numel() == 0) return grad;
  const int64_t total = grad.numel();
  ATROUS_ASSEMBLE_DISPATCH(grad_inside.scalar_type(), "fcis_assemble_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(spatial_scale);
    if (fits_int32({total, gi.numel()})) {
      ATROUS_ASSEMBLE_LAUNCH((fcis_assemble_backward_kernel<scalar_t, int32_t>), total, stream, p,
                             scale, gi.const_data_ptr<scalar_t>(), go.const_data_ptr<scalar_t>(),
                             boxes.const_data_ptr<acc_t>(), grad.mutable_data_ptr<scalar_t>(),
                             static_cast<int32_t>(total));
    } else {
      ATROUS_ASSEMBLE_LAUNCH((fcis_assemble_backward_kernel<scalar_t, int64_t>), total, stream, p,
                             scale, gi.const_data_ptr<scalar_t>(), go.const_data_ptr<scalar_t>(),
                             boxes.const_data_ptr<acc_t>(), grad.mutable_data_ptr<scalar_t>(),
                             total);
    }
  });
  return grad;
}

}  // namespace assemble_host
}  // namespace cuda
}  // namespace atrous
