// Index math and per-element computations of the instance-assembling ops
// (atrous::instance_assemble, atrous::fcis_assemble and their backwards),
// shared by the CPU kernels (csrc/cpu/assemble_kernel.cpp) and the CUDA
// kernels (csrc/cuda/assemble_kernels.cuh). Everything is `__host__ __device__`
// under nvcc, so the CPU tests run the very code the GPU runs; only the
// thread-to-element mapping differs between the devices.
//
// Instance assembling (InstanceFCN). Score maps S of shape (N, k*k, H, W); a
// window of m x m pixels centred on pixel (y, x) is split into a k x k grid of
// cells, and window offset (u, v) copies the map of its cell:
//   out[n, y, x, u, v] = S[n, cell(u)*k + cell(v), y + u - m/2, x + v - m/2]   (1)
// with cell(u) = floor(u*k/m), and zero where the source pixel is outside the
// image. Window centres lie on a grid of stride (sh, sw): centre (yc*sh, xc*sw)
// for grid index (yc, xc), yc < ceil(H/sh), xc < ceil(W/sw).
//
// FCIS assembling. Score maps of 2*k*k*(C+1) channels in FCIS's order
//   channel = ((class*2 + t)*k + i)*k + j,  t = 0 outside, t = 1 inside,
// and RoIs (batch_index, x1, y1, x2, y2) in image coordinates. Output pixel
// (py, px) of a P x P grid over the RoI samples, bilinearly and with zeros
// outside the map, the map of its cell (floor(py*k/P), floor(px*k/P)) at the
// pixel-centre position (roi_align's aligned=True convention)
//   y = y1*scale + (py + 1/2) * (y2 - y1)*scale / P - 1/2                   (2)
// (x likewise), which is also F.grid_sample's align_corners=False sampling of
// the point (y, x) in pixel units.
#pragma once

#include <math.h>

#include <cstdint>

#include "atrous_index.h"

namespace atrous {
namespace assemble {

// ---------------------------------------------------------------- cells ---

// Number of window centres along an axis of `size` pixels with stride s:
// centres 0, s, 2s, ... <= size - 1, i.e. ceil(size / s) of them.
ATROUS_HOST_DEVICE int64_t window_grid_size(int64_t size, int64_t stride) {
  return size <= 0 ? 0 : (size + stride - 1) / stride;
}

// The cell (0..k-1) of offset u (0..m-1) in a window of m pixels: floor(u*k/m).
ATROUS_HOST_DEVICE int64_t cell_of(int64_t u, int64_t k, int64_t m) { return u * k / m; }

// The offsets of cell i: floor(u*k/m) == i  <=>  i*m <= u*k < (i+1)*m
//   <=>  ceil(i*m/k) <= u < ceil((i+1)*m/k).
// With m >= k every cell holds at least floor(m/k) >= 1 offsets.
struct Span {
  int64_t begin, end;  // half-open
};
ATROUS_HOST_DEVICE Span cell_span(int64_t i, int64_t k, int64_t m) {
  return Span{ceil_div(i * m, k), ceil_div((i + 1) * m, k)};
}

// Source pixel of window offset u for a window centred at pixel c, from (1).
ATROUS_HOST_DEVICE int64_t source_pixel(int64_t centre, int64_t u, int64_t m) {
  return centre + u - m / 2;
}

// The inverse used by the backward gather: the grid index of the window whose
// offset u reads pixel h, or -1 when none does. From (1) the centre is
// h - u + m/2; it must be a grid point (a multiple of the stride) inside the grid.
ATROUS_HOST_DEVICE int64_t window_reading(int64_t h, int64_t u, int64_t m, int64_t stride,
                                          int64_t grid) {
  const int64_t centre = h - u + m / 2;
  if (centre < 0 || centre % stride != 0) return -1;
  const int64_t g = centre / stride;
  return g < grid ? g : -1;
}

// ---------------------------------------------------- instance assembling --

struct InstanceAssembleParams {
  int64_t batch, height, width;  // scores (batch, k*k, height, width), NCHW contiguous
  int64_t k, m;
  int64_t stride_h, stride_w;
  int64_t grid_h, grid_w;  // window grid, ceil(height / stride_h) x ceil(width / stride_w)
  int64_t windows;         // output rows: batch*grid_h*grid_w, or the number of selected centres
};

// Element (w, u, v) of the output (windows, m, m), a copy by (1). Window w is
// grid point w of the dense grid (w = (n*grid_h + yc)*grid_w + xc), or, when
// `centers` is given, row w = (n, yc, xc) of that (windows, 3) int64 array.
template <typename scalar_t>
ATROUS_HOST_DEVICE scalar_t instance_assemble_element(const InstanceAssembleParams& p,
                                                      const scalar_t* scores,
                                                      const int64_t* centers, int64_t w,
                                                      int64_t u, int64_t v) {
  int64_t n, yc, xc;
  if (centers != nullptr) {
    n = centers[3 * w];
    yc = centers[3 * w + 1];
    xc = centers[3 * w + 2];
  } else {
    xc = w % p.grid_w;
    yc = (w / p.grid_w) % p.grid_h;
    n = w / (p.grid_w * p.grid_h);
  }
  const int64_t y = source_pixel(yc * p.stride_h, u, p.m);
  const int64_t x = source_pixel(xc * p.stride_w, v, p.m);
  if (y < 0 || y >= p.height || x < 0 || x >= p.width) return scalar_t(0);
  const int64_t c = cell_of(u, p.k, p.m) * p.k + cell_of(v, p.k, p.m);
  return scores[((n * p.k * p.k + c) * p.height + y) * p.width + x];
}

// grad_scores[n, c, h, w] as a gather: by (1) the element is read exactly by
// offsets (u, v) of cell c = (i, j), u in cell_span(i), v in cell_span(j), of
// the window centred at (h - u + m/2, w - v + m/2) when that centre is a grid
// point. With selected centres a grid point may be chosen by several rows (or
// none): `order` lists the rows sorted by grid point (stably, so by row within
// one point) and rows order[starts[g] .. starts[g+1]) are those of grid point g.
// The sum runs over u, then v, then those rows: a fixed order, so the result
// is bitwise reproducible and no atomics are needed.
template <typename acc_t, typename scalar_t>
ATROUS_HOST_DEVICE acc_t instance_assemble_grad_element(const InstanceAssembleParams& p,
                                                        const scalar_t* grad_output,
                                                        const int64_t* order,
                                                        const int64_t* starts, int64_t n,
                                                        int64_t c, int64_t h, int64_t w) {
  const Span rows = cell_span(c / p.k, p.k, p.m);
  const Span cols = cell_span(c % p.k, p.k, p.m);
  const int64_t window_size = p.m * p.m;
  acc_t sum = acc_t(0);
  for (int64_t u = rows.begin; u < rows.end; ++u) {
    const int64_t yc = window_reading(h, u, p.m, p.stride_h, p.grid_h);
    if (yc < 0) continue;
    for (int64_t v = cols.begin; v < cols.end; ++v) {
      const int64_t xc = window_reading(w, v, p.m, p.stride_w, p.grid_w);
      if (xc < 0) continue;
      const int64_t g = (n * p.grid_h + yc) * p.grid_w + xc;
      const int64_t offset = u * p.m + v;
      if (starts == nullptr) {
        sum += static_cast<acc_t>(grad_output[g * window_size + offset]);
      } else {
        for (int64_t q = starts[g]; q < starts[g + 1]; ++q)
          sum += static_cast<acc_t>(grad_output[order[q] * window_size + offset]);
      }
    }
  }
  return sum;
}

// -------------------------------------------------------- FCIS assembling --

struct FcisParams {
  int64_t batch, height, width;  // score maps (batch, 2*k*k*classes, height, width), NCHW contiguous
  int64_t classes;               // C + 1, background included
  int64_t k;                     // group size
  int64_t size;                  // output size P
  int64_t rois;                  // R
};

// Channel of (class, t, cell i, cell j), t = 0 outside, t = 1 inside (FCIS's order).
ATROUS_HOST_DEVICE int64_t fcis_channel(int64_t cls, int64_t t, int64_t i, int64_t j, int64_t k) {
  return ((cls * 2 + t) * k + i) * k + j;
}

ATROUS_HOST_DEVICE float floor_of(float v) { return floorf(v); }
ATROUS_HOST_DEVICE double floor_of(double v) { return floor(v); }

// Sample position (2) of output pixel p along one axis of the box [lo, hi].
template <typename acc_t>
ATROUS_HOST_DEVICE acc_t roi_sample(acc_t lo, acc_t hi, acc_t scale, int64_t p, int64_t size) {
  const acc_t bin = (hi - lo) * scale / static_cast<acc_t>(size);
  return lo * scale + (static_cast<acc_t>(p) + acc_t(0.5)) * bin - acc_t(0.5);
}

// Linear interpolation at `pos` along an axis: weight 1 - frac on pixel `low`,
// frac on low + 1; pixels outside [0, size) hold zero. A position outside
// (-1, size) touches no pixel of the map, so it is clamped to [-2, size + 1]
// first (NaN to -2), which keeps floor() inside int64 and changes no value.
template <typename acc_t>
struct AxisSample {
  int64_t low;
  acc_t frac;
};
template <typename acc_t>
ATROUS_HOST_DEVICE AxisSample<acc_t> axis_sample(acc_t pos, int64_t size) {
  if (!(pos > acc_t(-2))) pos = acc_t(-2);
  if (pos > static_cast<acc_t>(size + 1)) pos = static_cast<acc_t>(size + 1);
  const acc_t f = floor_of(pos);
  return AxisSample<acc_t>{static_cast<int64_t>(f), pos - f};
}

// Weight of pixel h in the interpolation at s; `touches` is false for the
// pixels it does not read (so the forward and the backward sum the same terms).
template <typename acc_t>
ATROUS_HOST_DEVICE acc_t axis_weight(const AxisSample<acc_t>& s, int64_t h, bool& touches) {
  touches = h == s.low || h == s.low + 1;
  return h == s.low ? acc_t(1) - s.frac : s.frac;
}

// Calls tap(h, w, wy * wx) for each of the (up to four) pixels inside the
// image that the bilinear sample at (ys, xs) reads, in a fixed order; pixels
// outside are zeros and skipped. The forward reads through it and the CPU
// backward scatters through it, so both sum the same terms.
template <typename acc_t, typename Tap>
ATROUS_HOST_DEVICE void for_each_bilinear_tap(const AxisSample<acc_t>& ys, const AxisSample<acc_t>& xs,
                                              int64_t height, int64_t width, Tap&& tap) {
  for (int64_t dy = 0; dy < 2; ++dy) {
    const int64_t h = ys.low + dy;
    if (h < 0 || h >= height) continue;
    const acc_t wy = dy ? ys.frac : acc_t(1) - ys.frac;
    for (int64_t dx = 0; dx < 2; ++dx) {
      const int64_t w = xs.low + dx;
      if (w < 0 || w >= width) continue;
      const acc_t wx = dx ? xs.frac : acc_t(1) - xs.frac;
      tap(h, w, wy * wx);
    }
  }
}

template <typename acc_t, typename scalar_t>
ATROUS_HOST_DEVICE acc_t bilinear_zero_padded(const scalar_t* plane, int64_t height, int64_t width,
                                              const AxisSample<acc_t>& ys,
                                              const AxisSample<acc_t>& xs) {
  acc_t sum = acc_t(0);
  for_each_bilinear_tap(ys, xs, height, width, [&](int64_t h, int64_t w, acc_t weight) {
    sum += weight * static_cast<acc_t>(plane[h * width + w]);
  });
  return sum;
}

// The RoI's batch index (validated by the host code to be an integer in [0, batch)).
template <typename acc_t>
ATROUS_HOST_DEVICE int64_t roi_batch(const acc_t* roi) {
  return static_cast<int64_t>(roi[0]);
}

// inside[r, cls, py, px] and outside[r, cls, py, px] of the forward; `rois` is
// (R, 5) in the accumulation type.
template <typename acc_t, typename scalar_t>
ATROUS_HOST_DEVICE void fcis_assemble_element(const FcisParams& p, acc_t scale,
                                              const scalar_t* maps, const acc_t* rois, int64_t r,
                                              int64_t cls, int64_t py, int64_t px, acc_t& inside,
                                              acc_t& outside) {
  const acc_t* roi = rois + 5 * r;
  const int64_t n = roi_batch(roi);
  const AxisSample<acc_t> ys = axis_sample(roi_sample(roi[2], roi[4], scale, py, p.size), p.height);
  const AxisSample<acc_t> xs = axis_sample(roi_sample(roi[1], roi[3], scale, px, p.size), p.width);
  const int64_t i = cell_of(py, p.k, p.size), j = cell_of(px, p.k, p.size);
  const int64_t plane = p.height * p.width;
  const int64_t channels = 2 * p.k * p.k * p.classes;
  const scalar_t* image = maps + n * channels * plane;
  outside = bilinear_zero_padded(image + fcis_channel(cls, 0, i, j, p.k) * plane, p.height,
                                 p.width, ys, xs);
  inside = bilinear_zero_padded(image + fcis_channel(cls, 1, i, j, p.k) * plane, p.height,
                                p.width, ys, xs);
}

// The rows (or columns) that the samples of cell span s of a box can touch:
// positions (2) are monotone in the output pixel, so they lie between those of
// the span's first and last pixel, and the touched pixels between the lower
// one's `low` and the upper one's `low + 1`.
template <typename acc_t>
ATROUS_HOST_DEVICE Span touched_pixels(acc_t lo, acc_t hi, acc_t scale, const Span& s,
                                       int64_t out_size, int64_t size) {
  const int64_t a = axis_sample(roi_sample(lo, hi, scale, s.begin, out_size), size).low;
  const int64_t b = axis_sample(roi_sample(lo, hi, scale, s.end - 1, out_size), size).low;
  return a < b ? Span{a, b + 2} : Span{b, a + 2};
}

// grad_maps[n, ch, h, w] as a gather over the RoIs of image n, in RoI order,
// then over the output pixels of the channel's cell in row-major order: the
// same terms as the forward's interpolation, summed in a fixed order without
// atomics. RoIs whose cell cannot reach (h, w) are skipped after an O(1) test.
template <typename acc_t, typename scalar_t>
ATROUS_HOST_DEVICE acc_t fcis_grad_element(const FcisParams& p, acc_t scale,
                                           const scalar_t* grad_inside,
                                           const scalar_t* grad_outside, const acc_t* rois,
                                           int64_t n, int64_t ch, int64_t h, int64_t w) {
  const int64_t j = ch % p.k, i = (ch / p.k) % p.k, t = (ch / (p.k * p.k)) % 2;
  const int64_t cls = ch / (2 * p.k * p.k);
  const scalar_t* grad = t ? grad_inside : grad_outside;
  const Span rows = cell_span(i, p.k, p.size), cols = cell_span(j, p.k, p.size);
  const int64_t out_plane = p.size * p.size;
  acc_t sum = acc_t(0);
  for (int64_t r = 0; r < p.rois; ++r) {
    const acc_t* roi = rois + 5 * r;
    if (roi_batch(roi) != n) continue;
    const Span hs = touched_pixels(roi[2], roi[4], scale, rows, p.size, p.height);
    if (h < hs.begin || h >= hs.end) continue;
    const Span ws = touched_pixels(roi[1], roi[3], scale, cols, p.size, p.width);
    if (w < ws.begin || w >= ws.end) continue;
    const scalar_t* g = grad + (r * p.classes + cls) * out_plane;
    for (int64_t py = rows.begin; py < rows.end; ++py) {
      bool touches_y;
      const acc_t wy = axis_weight(
          axis_sample(roi_sample(roi[2], roi[4], scale, py, p.size), p.height), h, touches_y);
      if (!touches_y) continue;
      for (int64_t px = cols.begin; px < cols.end; ++px) {
        bool touches_x;
        const acc_t wx = axis_weight(
            axis_sample(roi_sample(roi[1], roi[3], scale, px, p.size), p.width), w, touches_x);
        if (!touches_x) continue;
        sum += wy * wx * static_cast<acc_t>(g[py * p.size + px]);
      }
    }
  }
  return sum;
}

}  // namespace assemble
}  // namespace atrous
