// Host-side helpers of the instance-assembling ops (see assemble.h). The op
// schema is in schema.cpp.
#include "assemble.h"
#include "arg_checks.h"

#include <ATen/ATen.h>

#include <cmath>

namespace atrous {

namespace {

using assemble::FcisParams;
using assemble::InstanceAssembleParams;

void check_instance_args(const char* op, int64_t k, int64_t m, c10::IntArrayRef window_stride) {
  TORCH_CHECK(k >= 1, op, ": expected k (cells per window side) >= 1, got ", k);
  // With m < k some cells would own no pixel of the window and their score
  // maps would never be read: almost certainly swapped arguments.
  TORCH_CHECK(m >= k, op, ": expected m (window size) >= k (cells per side) so that every cell "
              "covers at least one pixel, got m=", m, " and k=", k);
  TORCH_CHECK(window_stride.size() == 2, op,
              ": expected window_stride of 2 ints (H, W), got ", list_str(window_stride));
  TORCH_CHECK(window_stride[0] >= 1 && window_stride[1] >= 1, op,
              ": expected every window_stride >= 1, got ", list_str(window_stride));
}

void check_centers(const char* op, const at::Tensor& centers, const InstanceAssembleParams& p,
                   const at::Device& device) {
  TORCH_CHECK(centers.dim() == 2 && centers.size(1) == 3, op,
              ": expected centers of shape (P, 3) holding (batch index, grid row, grid column) "
              "rows, got shape ", centers.sizes());
  TORCH_CHECK(centers.scalar_type() == at::kLong, op, ": expected centers of dtype int64, got ",
              centers.scalar_type());
  TORCH_CHECK(centers.device() == device, op, ": expected centers on the scores' device ", device,
              ", got ", centers.device());
  if (centers.size(0) == 0) return;
  // One transfer of six integers: the per-column minimum and maximum.
  const at::Tensor bounds = at::cat({std::get<0>(centers.min(0)), std::get<0>(centers.max(0))})
                                .to(at::kCPU);
  const int64_t* b = bounds.data_ptr<int64_t>();
  const int64_t limits[3] = {p.batch, p.grid_h, p.grid_w};
  const char* names[3] = {"batch index", "grid row", "grid column"};
  for (int d = 0; d < 3; ++d)
    TORCH_CHECK(b[d] >= 0 && b[3 + d] < limits[d], op, ": expected every centers ", names[d],
                " (column ", d, ") in [0, ", limits[d], "), got values from ", b[d], " to ",
                b[3 + d], " (the window grid of stride (", p.stride_h, ", ", p.stride_w,
                ") over the ", p.height, " x ", p.width, " scores is ", p.grid_h, " x ",
                p.grid_w, ")");
}

InstanceAssembleParams make_instance_params(int64_t batch, int64_t height, int64_t width,
                                            int64_t k, int64_t m, c10::IntArrayRef window_stride) {
  InstanceAssembleParams p{};
  p.batch = batch;
  p.height = height;
  p.width = width;
  p.k = k;
  p.m = m;
  p.stride_h = window_stride[0];
  p.stride_w = window_stride[1];
  p.grid_h = assemble::window_grid_size(height, p.stride_h);
  p.grid_w = assemble::window_grid_size(width, p.stride_w);
  p.windows = batch * p.grid_h * p.grid_w;
  return p;
}

void check_fcis_args(const char* op, int64_t group_size, int64_t output_size,
                     double spatial_scale) {
  TORCH_CHECK(group_size >= 1, op, ": expected group_size >= 1, got ", group_size);
  TORCH_CHECK(output_size >= group_size, op, ": expected output_size >= group_size so that every "
              "cell covers at least one output pixel, got output_size=", output_size,
              " and group_size=", group_size);
  TORCH_CHECK(std::isfinite(spatial_scale) && spatial_scale > 0, op,
              ": expected a finite spatial_scale > 0, got ", spatial_scale);
}

void check_rois(const char* op, const at::Tensor& rois, int64_t batch, const at::Device& device) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": expected rois of shape (R, 5) holding (batch index, x1, y1, x2, y2) rows, got "
              "shape ", rois.sizes());
  TORCH_CHECK(supported_dtype(rois.scalar_type()), op,
              ": expected rois of dtype float32, float64, float16 or bfloat16, got ",
              rois.scalar_type());
  TORCH_CHECK(rois.device() == device, op, ": expected rois on the score maps' device ", device,
              ", got ", rois.device());
  if (rois.size(0) == 0) return;
  const at::Tensor index = rois.select(1, 0).to(at::kDouble);
  const at::Tensor bounds =
      at::stack({index.min(), index.max(), (index != index.floor()).any().to(at::kDouble)})
          .to(at::kCPU);
  const double* b = bounds.data_ptr<double>();
  TORCH_CHECK(b[2] == 0 && b[0] >= 0 && b[1] < static_cast<double>(batch), op,
              ": expected every rois batch index (column 0) to be an integer in [0, ", batch,
              "), got values from ", b[0], " to ", b[1],
              b[2] != 0 ? " including non-integers (or NaN)" : "");
}

}  // namespace

at::ScalarType assemble_accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

InstanceAssembleParams check_instance_assemble(const char* op, const at::Tensor& scores, int64_t k,
                                               int64_t m, c10::IntArrayRef window_stride,
                                               const c10::optional<at::Tensor>& centers) {
  check_instance_args(op, k, m, window_stride);
  TORCH_CHECK(scores.dim() == 4, op, ": expected scores of 4 dimensions (N, k*k, H, W), got ",
              scores.dim(), " dimensions of size ", scores.sizes());
  TORCH_CHECK(supported_dtype(scores.scalar_type()), op,
              ": expected scores of dtype float32, float64, float16 or bfloat16, got ",
              scores.scalar_type());
  TORCH_CHECK(scores.size(1) == k * k, op, ": expected scores with k*k = ", k * k,
              " channels (one map per cell of the ", k, " x ", k, " grid), got ", scores.size(1),
              " channels in scores of size ", scores.sizes());
  InstanceAssembleParams p =
      make_instance_params(scores.size(0), scores.size(2), scores.size(3), k, m, window_stride);
  if (centers.has_value() && centers->defined()) {
    check_centers(op, *centers, p, scores.device());
    p.windows = centers->size(0);
  }
  return p;
}

InstanceAssembleParams check_instance_assemble_backward(
    const char* op, const at::Tensor& grad_output, int64_t batch, int64_t height, int64_t width,
    int64_t k, int64_t m, c10::IntArrayRef window_stride, const c10::optional<at::Tensor>& centers) {
  check_instance_args(op, k, m, window_stride);
  TORCH_CHECK(batch >= 0 && height >= 0 && width >= 0, op,
              ": expected non-negative scores sizes, got batch=", batch, ", height=", height,
              ", width=", width);
  TORCH_CHECK(supported_dtype(grad_output.scalar_type()), op,
              ": expected grad_output of dtype float32, float64, float16 or bfloat16, got ",
              grad_output.scalar_type());
  InstanceAssembleParams p = make_instance_params(batch, height, width, k, m, window_stride);
  const bool selected = centers.has_value() && centers->defined();
  if (selected) {
    check_centers(op, *centers, p, grad_output.device());
    p.windows = centers->size(0);
  }
  const auto expected = instance_assemble_output_shape(p, selected);
  TORCH_CHECK(grad_output.sizes() == c10::IntArrayRef(expected), op,
              ": expected grad_output of size ", c10::IntArrayRef(expected), ", got ",
              grad_output.sizes());
  return p;
}

std::vector<int64_t> instance_assemble_output_shape(const InstanceAssembleParams& p,
                                                    bool selected) {
  if (selected) return {p.windows, p.m, p.m};
  return {p.batch, p.grid_h, p.grid_w, p.m, p.m};
}

std::tuple<at::Tensor, at::Tensor> index_selected_windows(const at::Tensor& centers,
                                                          const InstanceAssembleParams& p) {
  const at::Tensor c = centers.contiguous();
  const at::Tensor keys =
      (c.select(1, 0) * p.grid_h + c.select(1, 1)) * p.grid_w + c.select(1, 2);
  auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor points = at::arange(p.batch * p.grid_h * p.grid_w + 1, keys.options());
  // starts[g] = the number of rows with a grid point below g.
  const at::Tensor starts = at::searchsorted(sorted, points);
  return {order.contiguous(), starts.contiguous()};
}

FcisParams check_fcis_assemble(const char* op, const at::Tensor& score_maps,
                               const at::Tensor& rois, int64_t group_size, int64_t output_size,
                               double spatial_scale) {
  check_fcis_args(op, group_size, output_size, spatial_scale);
  TORCH_CHECK(score_maps.dim() == 4, op,
              ": expected score_maps of 4 dimensions (N, 2*k*k*(C+1), H, W), got ",
              score_maps.dim(), " dimensions of size ", score_maps.sizes());
  TORCH_CHECK(supported_dtype(score_maps.scalar_type()), op,
              ": expected score_maps of dtype float32, float64, float16 or bfloat16, got ",
              score_maps.scalar_type());
  const int64_t per_class = 2 * group_size * group_size;
  TORCH_CHECK(score_maps.size(1) > 0 && score_maps.size(1) % per_class == 0, op,
              ": expected score_maps with a positive multiple of 2*k*k = ", per_class,
              " channels (inside and outside maps of every cell, per class), got ",
              score_maps.size(1), " channels in score_maps of size ", score_maps.sizes());
  check_rois(op, rois, score_maps.size(0), score_maps.device());
  FcisParams p{};
  p.batch = score_maps.size(0);
  p.height = score_maps.size(2);
  p.width = score_maps.size(3);
  p.classes = score_maps.size(1) / per_class;
  p.k = group_size;
  p.size = output_size;
  p.rois = rois.size(0);
  return p;
}

FcisParams check_fcis_assemble_backward(const char* op, const at::Tensor& grad_inside,
                                        const at::Tensor& grad_outside, const at::Tensor& rois,
                                        int64_t group_size, int64_t output_size,
                                        double spatial_scale, int64_t batch, int64_t height,
                                        int64_t width) {
  check_fcis_args(op, group_size, output_size, spatial_scale);
  TORCH_CHECK(batch >= 0 && height >= 0 && width >= 0, op,
              ": expected non-negative score map sizes, got batch=", batch, ", height=", height,
              ", width=", width);
  TORCH_CHECK(supported_dtype(grad_inside.scalar_type()), op,
              ": expected grad_inside of dtype float32, float64, float16 or bfloat16, got ",
              grad_inside.scalar_type());
  TORCH_CHECK(grad_inside.dim() == 4 && grad_inside.size(0) == rois.size(0) &&
                  grad_inside.size(1) > 0 && grad_inside.size(2) == output_size &&
                  grad_inside.size(3) == output_size,
              op, ": expected grad_inside of size (R, C+1, P, P) = (", rois.size(0), ", C+1, ",
              output_size, ", ", output_size, "), got ", grad_inside.sizes());
  TORCH_CHECK(grad_outside.sizes() == grad_inside.sizes(), op,
              ": expected grad_outside of grad_inside's size ", grad_inside.sizes(), ", got ",
              grad_outside.sizes());
  TORCH_CHECK(grad_outside.scalar_type() == grad_inside.scalar_type(), op,
              ": expected grad_outside of grad_inside's dtype ", grad_inside.scalar_type(),
              ", got ", grad_outside.scalar_type());
  TORCH_CHECK(grad_outside.device() == grad_inside.device(), op,
              ": expected grad_outside on grad_inside's device ", grad_inside.device(), ", got ",
              grad_outside.device());
  check_rois(op, rois, batch, grad_inside.device());
  FcisParams p{};
  p.batch = batch;
  p.height = height;
  p.width = width;
  p.classes = grad_inside.size(1);
  p.k = group_size;
  p.size = output_size;
  p.rois = rois.size(0);
  return p;
}

InstanceAssembleCall prepare_instance_assemble(const at::Tensor& scores, int64_t k, int64_t m,
                                               c10::IntArrayRef window_stride,
                                               const c10::optional<at::Tensor>& centers) {
  InstanceAssembleCall call;
  call.params = check_instance_assemble("instance_assemble", scores, k, m, window_stride, centers);
  const bool selected = centers.has_value() && centers->defined();
  call.out = at::empty(instance_assemble_output_shape(call.params, selected), scores.options());
  if (call.out.numel() == 0) return call;
  call.scores = scores.contiguous();
  if (selected) call.centers = centers->contiguous();
  return call;
}

InstanceAssembleBackwardCall prepare_instance_assemble_backward(
    const at::Tensor& grad_output, int64_t batch, int64_t height, int64_t width, int64_t k,
    int64_t m, c10::IntArrayRef window_stride, const c10::optional<at::Tensor>& centers) {
  InstanceAssembleBackwardCall call;
  call.params = check_instance_assemble_backward("instance_assemble_backward", grad_output, batch,
                                                 height, width, k, m, window_stride, centers);
  call.grad = at::empty({batch, k * k, height, width}, grad_output.options());
  if (call.grad.numel() == 0) return call;
  call.grad_output = grad_output.contiguous();
  if (centers.has_value() && centers->defined())
    std::tie(call.order, call.starts) = index_selected_windows(*centers, call.params);
  return call;
}

FcisAssembleCall prepare_fcis_assemble(const at::Tensor& score_maps, const at::Tensor& rois,
                                       int64_t group_size, int64_t output_size,
                                       double spatial_scale) {
  FcisAssembleCall call;
  call.params = check_fcis_assemble("fcis_assemble", score_maps, rois, group_size, output_size,
                                    spatial_scale);
  const FcisParams& p = call.params;
  call.inside = at::empty({p.rois, p.classes, p.size, p.size}, score_maps.options());
  call.outside = at::empty_like(call.inside);
  if (call.inside.numel() == 0) return call;
  call.maps = score_maps.contiguous();
  call.rois = rois.to(assemble_accumulation_type(score_maps.scalar_type())).contiguous();
  return call;
}

FcisAssembleBackwardCall prepare_fcis_assemble_backward(
    const at::Tensor& grad_inside, const at::Tensor& grad_outside, const at::Tensor& rois,
    int64_t group_size, int64_t output_size, double spatial_scale, int64_t batch, int64_t height,
    int64_t width) {
  FcisAssembleBackwardCall call;
  call.params = check_fcis_assemble_backward("fcis_assemble_backward", grad_inside, grad_outside,
                                             rois, group_size, output_size, spatial_scale, batch,
                                             height, width);
  const FcisParams& p = call.params;
  call.grad = at::empty({batch, 2 * p.k * p.k * p.classes, height, width}, grad_inside.options());
  if (call.grad.numel() == 0) return call;
  call.grad_inside = grad_inside.contiguous();
  call.grad_outside = grad_outside.contiguous();
  call.rois = rois.to(assemble_accumulation_type(grad_inside.scalar_type())).contiguous();
  return call;
}

}  // namespace atrous
