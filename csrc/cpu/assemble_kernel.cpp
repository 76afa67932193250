// CPU kernels of the instance-assembling ops. The per-element math is in
// csrc/assemble_index.h, shared with the CUDA kernels. Work is split with
// at::parallel_for over units whose results never overlap, and every sum runs
// in a fixed order inside one unit, so results do not depend on the number of
// threads and repeated runs are bitwise equal.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../assemble.h"

namespace atrous {
namespace {

using at::Tensor;
using assemble::AxisSample;
using assemble::FcisParams;
using assemble::InstanceAssembleParams;
using assemble::Span;

// Work per parallel chunk, in element operations: smaller problems run on the
// calling thread, where waking the thread pool would cost more than the work.
constexpr int64_t kChunkWork = 32768;

// The grain (units per chunk) for units of `unit_work` element operations each.
int64_t grain_for(int64_t unit_work) {
  return std::max<int64_t>(1, kChunkWork / std::max<int64_t>(1, unit_work));
}

Tensor instance_assemble_cpu(const Tensor& scores, int64_t k, int64_t m,
                             c10::IntArrayRef window_stride,
                             const c10::optional<Tensor>& centers) {
  const InstanceAssembleCall call = prepare_instance_assemble(scores, k, m, window_stride, centers);
  const InstanceAssembleParams& p = call.params;
  const Tensor& out = call.out;
  if (out.numel() == 0) return out;
  const int64_t* c_ptr = call.centers.defined() ? call.centers.data_ptr<int64_t>() : nullptr;
  ATROUS_ASSEMBLE_DISPATCH(scores.scalar_type(), "instance_assemble_cpu", [&] {
    const scalar_t* src = call.scores.data_ptr<scalar_t>();
    scalar_t* dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, p.windows, grain_for(m * m), [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w)
        for (int64_t u = 0; u < m; ++u)
          for (int64_t v = 0; v < m; ++v)
            dst[(w * m + u) * m + v] = assemble::instance_assemble_element(p, src, c_ptr, w, u, v);
    });
  });
  return out;
}

Tensor instance_assemble_backward_cpu(const Tensor& grad_output, int64_t batch, int64_t height,
                                      int64_t width, int64_t k, int64_t m,
                                      c10::IntArrayRef window_stride,
                                      const c10::optional<Tensor>& centers) {
  const InstanceAssembleBackwardCall call = prepare_instance_assemble_backward(
      grad_output, batch, height, width, k, m, window_stride, centers);
  const InstanceAssembleParams& p = call.params;
  const Tensor& grad = call.grad;
  if (grad.numel() == 0) return grad;
  const bool selected = call.order.defined();
  const int64_t* order_ptr = selected ? call.order.data_ptr<int64_t>() : nullptr;
  const int64_t* starts_ptr = selected ? call.starts.data_ptr<int64_t>() : nullptr;
  ATROUS_ASSEMBLE_DISPATCH(grad_output.scalar_type(), "instance_assemble_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = call.grad_output.data_ptr<scalar_t>();
    scalar_t* dst = grad.data_ptr<scalar_t>();
    // One unit per row (n, c, h) of grad_scores; each element sums up to ceil(m/k)^2 terms.
    const int64_t terms = (m + k - 1) / k * ((m + k - 1) / k);
    at::parallel_for(0, batch * k * k * height, grain_for(width * terms), [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t h = row % height, c = (row / height) % (k * k), n = row / (height * k * k);
        for (int64_t w = 0; w < width; ++w)
          dst[row * width + w] = static_cast<scalar_t>(
              assemble::instance_assemble_grad_element<acc_t>(p, g, order_ptr, starts_ptr, n, c,
                                                              h, w));
      }
    });
  });
  return grad;
}

std::tuple<Tensor, Tensor> fcis_assemble_cpu(const Tensor& score_maps, const Tensor& rois,
                                             int64_t group_size, int64_t output_size,
                                             double spatial_scale) {
  const FcisAssembleCall call =
      prepare_fcis_assemble(score_maps, rois, group_size, output_size, spatial_scale);
  const FcisParams& p = call.params;
  const Tensor &inside = call.inside, &outside = call.outside;
  if (inside.numel() == 0) return {inside, outside};
  ATROUS_ASSEMBLE_DISPATCH(score_maps.scalar_type(), "fcis_assemble_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* box_ptr = call.rois.data_ptr<acc_t>();
    const scalar_t* src = call.maps.data_ptr<scalar_t>();
    scalar_t* in_ptr = inside.data_ptr<scalar_t>();
    scalar_t* out_ptr = outside.data_ptr<scalar_t>();
    const acc_t scale = static_cast<acc_t>(spatial_scale);
    const int64_t plane = p.size * p.size;
    // One unit per (RoI, class) plane of P x P.
    at::parallel_for(0, p.rois * p.classes, grain_for(8 * plane), [&](int64_t begin, int64_t end) {
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t r = unit / p.classes, cls = unit % p.classes;
        for (int64_t py = 0; py < p.size; ++py)
          for (int64_t px = 0; px < p.size; ++px) {
            acc_t in_v, out_v;
            assemble::fcis_assemble_element(p, scale, src, box_ptr, r, cls, py, px, in_v, out_v);
            in_ptr[unit * plane + py * p.size + px] = static_cast<scalar_t>(in_v);
            out_ptr[unit * plane + py * p.size + px] = static_cast<scalar_t>(out_v);
          }
      }
    });
  });
  return {inside, outside};
}

// grad_maps: one unit per (n, channel) plane, which owns its H x W gradient.
// Inside a unit the RoIs of image n are visited in RoI order and the cell's
// output pixels in row-major order, each scattering its gradient into the (at
// most four) pixels its sample read: a fixed order, so the result is bitwise
// reproducible. (The CUDA kernel gathers per pixel instead, which visits the
// same terms in another order; both devices are deterministic, but their
// float results may differ in the last bits.) The scatter costs what the
// forward costs, where a per-pixel gather would test every RoI at every pixel.
Tensor fcis_assemble_backward_cpu(const Tensor& grad_inside, const Tensor& grad_outside,
                                  const Tensor& rois, int64_t group_size, int64_t output_size,
                                  double spatial_scale, int64_t batch, int64_t height,
                                  int64_t width) {
  const FcisAssembleBackwardCall call =
      prepare_fcis_assemble_backward(grad_inside, grad_outside, rois, group_size, output_size,
                                     spatial_scale, batch, height, width);
  const FcisParams& p = call.params;
  const int64_t channels = 2 * p.k * p.k * p.classes;
  const Tensor& grad = call.grad;
  if (grad.numel() == 0) return grad;
  ATROUS_ASSEMBLE_DISPATCH(grad_inside.scalar_type(), "fcis_assemble_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* box_ptr = call.rois.data_ptr<acc_t>();
    const scalar_t* gi_ptr = call.grad_inside.data_ptr<scalar_t>();
    const scalar_t* go_ptr = call.grad_outside.data_ptr<scalar_t>();
    scalar_t* dst = grad.data_ptr<scalar_t>();
    const acc_t scale = static_cast<acc_t>(spatial_scale);
    const int64_t plane = height * width, out_plane = p.size * p.size;
    // A plane costs its H*W writes plus, per RoI, 4 corners of about (P/k)^2 samples.
    const int64_t cell_pixels = (p.size + p.k - 1) / p.k * ((p.size + p.k - 1) / p.k);
    const int64_t plane_work = plane + (p.rois / std::max<int64_t>(1, batch) + 1) * 4 * cell_pixels;
    at::parallel_for(0, batch * channels, grain_for(plane_work), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(plane);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t n = unit / channels, ch = unit % channels;
        const int64_t j = ch % p.k, i = (ch / p.k) % p.k, t = (ch / (p.k * p.k)) % 2;
        const int64_t cls = ch / (2 * p.k * p.k);
        const scalar_t* g = t ? gi_ptr : go_ptr;
        const Span rows = assemble::cell_span(i, p.k, p.size);
        const Span cols = assemble::cell_span(j, p.k, p.size);
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t r = 0; r < p.rois; ++r) {
          const acc_t* roi = box_ptr + 5 * r;
          if (assemble::roi_batch(roi) != n) continue;
          const scalar_t* g_roi = g + (r * p.classes + cls) * out_plane;
          for (int64_t py = rows.begin; py < rows.end; ++py) {
            const AxisSample<acc_t> ys = assemble::axis_sample(
                assemble::roi_sample(roi[2], roi[4], scale, py, p.size), height);
            for (int64_t px = cols.begin; px < cols.end; ++px) {
              const AxisSample<acc_t> xs = assemble::axis_sample(
                  assemble::roi_sample(roi[1], roi[3], scale, px, p.size), width);
              const acc_t gv = static_cast<acc_t>(g_roi[py * p.size + px]);
              assemble::for_each_bilinear_tap(ys, xs, height, width, [&](int64_t h, int64_t w, acc_t weight) {
                acc[h * width + w] += weight * gv;
              });
            }
          }
        }
        for (int64_t e = 0; e < plane; ++e) dst[unit * plane + e] = static_cast<scalar_t>(acc[e]);
      }
    });
  });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(atrous, CPU, m) {
  m.impl("instance_assemble", &instance_assemble_cpu);
  m.impl("instance_assemble_backward", &instance_assemble_backward_cpu);
  m.impl("fcis_assemble", &fcis_assemble_cpu);
  m.impl("fcis_assemble_backward", &fcis_assemble_backward_cpu);
}

}  // namespace atrous
