// Host-side pieces of the instance-assembling ops shared by the CPU and CUDA
// kernels: argument validation into the parameter structs of
// assemble_index.h, output allocation, and the window index of selected
// centres. Kept free of torch/extension.h so the .cu file stays cheap to build.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <tuple>
#include <vector>

#include "assemble_index.h"

// The dtypes the assembling kernels are instantiated for (the CPU and CUDA
// files both include ATen/Dispatch.h).
#define ATROUS_ASSEMBLE_DISPATCH(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)

namespace atrous {

// Checks every argument of atrous::instance_assemble: scores (N, k*k, H, W) of
// a floating dtype, k >= 1, m >= k, window_stride of two ints >= 1, and the
// optional centres, an int64 (P, 3) tensor of (n, yc, xc) rows on the scores'
// device with every row inside the window grid. The range check reads the
// centres' minimum and maximum on the host, one device synchronization on CUDA.
assemble::InstanceAssembleParams check_instance_assemble(const char* op, const at::Tensor& scores,
                                                         int64_t k, int64_t m,
                                                         c10::IntArrayRef window_stride,
                                                         const c10::optional<at::Tensor>& centers);

// The same for atrous::instance_assemble_backward: grad_output must have the
// forward's output shape (N, Hc, Wc, m, m), or (P, m, m) with centres.
assemble::InstanceAssembleParams check_instance_assemble_backward(
    const char* op, const at::Tensor& grad_output, int64_t batch, int64_t height, int64_t width,
    int64_t k, int64_t m, c10::IntArrayRef window_stride, const c10::optional<at::Tensor>& centers);

// The forward's output shape: (N, Hc, Wc, m, m), or (P, m, m) with centres.
std::vector<int64_t> instance_assemble_output_shape(const assemble::InstanceAssembleParams& p,
                                                    bool selected);

// Selected centres sorted by grid point: `order` (P,) holds the row indices
// sorted stably by grid point (n*Hc + yc)*Wc + xc, and rows
// order[starts[g] .. starts[g+1]) select grid point g; starts has N*Hc*Wc + 1
// entries. Built from ATen ops (a stable sort and searchsorted), so the same
// deterministic code serves both devices.
std::tuple<at::Tensor, at::Tensor> index_selected_windows(const at::Tensor& centers,
                                                          const assemble::InstanceAssembleParams& p);

// Checks every argument of atrous::fcis_assemble: score maps (N, 2*k*k*(C+1),
// H, W) of a floating dtype, rois (R, 5) of a floating dtype on the same device
// with integral batch indices in [0, N) (read on the host: one device
// synchronization on CUDA), group_size k >= 1, output_size P >= k, and a
// finite spatial_scale > 0.
assemble::FcisParams check_fcis_assemble(const char* op, const at::Tensor& score_maps,
                                         const at::Tensor& rois, int64_t group_size,
                                         int64_t output_size, double spatial_scale);

// The same for atrous::fcis_assemble_backward; grad_inside and grad_outside
// must both be (R, C+1, P, P) with C+1 = channels / (2*k*k).
assemble::FcisParams check_fcis_assemble_backward(const char* op, const at::Tensor& grad_inside,
                                                  const at::Tensor& grad_outside,
                                                  const at::Tensor& rois, int64_t group_size,
                                                  int64_t output_size, double spatial_scale,
                                                  int64_t batch, int64_t height, int64_t width);

// The accumulation type of the kernels: double for float64, float otherwise.
at::ScalarType assemble_accumulation_type(at::ScalarType t);

// ------------------------------------------------ one call, either device --
//
// What the CPU and CUDA implementations of each op do before their kernels:
// check the arguments, allocate the results and, when there is work (a
// non-empty result), make contiguous what the kernels read. Tensors the
// kernels read are undefined when the result is empty.

struct InstanceAssembleCall {
  assemble::InstanceAssembleParams params;
  at::Tensor out;      // (N, Hc, Wc, m, m), or (P, m, m) with centres
  at::Tensor scores;   // contiguous
  at::Tensor centers;  // contiguous; undefined without selected centres
};
InstanceAssembleCall prepare_instance_assemble(const at::Tensor& scores, int64_t k, int64_t m,
                                               c10::IntArrayRef window_stride,
                                               const c10::optional<at::Tensor>& centers);

struct InstanceAssembleBackwardCall {
  assemble::InstanceAssembleParams params;
  at::Tensor grad;              // (N, k*k, H, W)
  at::Tensor grad_output;       // contiguous
  at::Tensor order, starts;     // index_selected_windows; undefined without selected centres
};
InstanceAssembleBackwardCall prepare_instance_assemble_backward(
    const at::Tensor& grad_output, int64_t batch, int64_t height, int64_t width, int64_t k,
    int64_t m, c10::IntArrayRef window_stride, const c10::optional<at::Tensor>& centers);

struct FcisAssembleCall {
  assemble::FcisParams params;
  at::Tensor inside, outside;  // (R, C+1, P, P) each
  at::Tensor maps;             // contiguous score maps
  at::Tensor rois;             // contiguous, in the accumulation type
};
FcisAssembleCall prepare_fcis_assemble(const at::Tensor& score_maps, const at::Tensor& rois,
                                       int64_t group_size, int64_t output_size,
                                       double spatial_scale);

struct FcisAssembleBackwardCall {
  assemble::FcisParams params;
  at::Tensor grad;                       // (N, 2*k*k*(C+1), H, W)
  at::Tensor grad_inside, grad_outside;  // contiguous
  at::Tensor rois;                       // contiguous, in the accumulation type
};
FcisAssembleBackwardCall prepare_fcis_assemble_backward(
    const at::Tensor& grad_inside, const at::Tensor& grad_outside, const at::Tensor& rois,
    int64_t group_size, int64_t output_size, double spatial_scale, int64_t batch, int64_t height,
    int64_t width);

}  // namespace atrous
