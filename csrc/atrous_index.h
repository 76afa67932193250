// Index math shared by the CPU and CUDA kernels of the atrous ops.
//
// Everything here is a pure function of integers, `__host__ __device__` under
// nvcc, so the CPU tests (tests/test_index_math.py, through the pybind11
// module) exercise exactly the indexing that the GPU kernels run.
//
// Notation for one spatial axis:
//   in     input extent            k  kernel extent
//   s      stride                  d  dilation
//   pb/pe  padding before / after  out output extent
// Output position o with kernel tap t reads input position
//   i(o, t) = o*s - pb + t*d                                         (1)
// and the input is zero outside [0, in).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define ATROUS_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define ATROUS_HOST_DEVICE inline
#endif

namespace atrous {

// Everything a kernel needs to know about one 2-D convolution. 1-D
// convolutions are the special case in_height = out_height = kernel_height = 1.
struct ConvParams {
  int64_t batch;
  int64_t in_channels, in_height, in_width;
  int64_t out_channels, out_height, out_width;
  int64_t kernel_height, kernel_width;
  int64_t stride_h, stride_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t dilation_h, dilation_w;
  int64_t groups;

  ATROUS_HOST_DEVICE int64_t in_channels_per_group() const { return in_channels / groups; }
  ATROUS_HOST_DEVICE int64_t out_channels_per_group() const { return out_channels / groups; }
  ATROUS_HOST_DEVICE int64_t taps() const { return kernel_height * kernel_width; }
};

// Floor and ceiling division for a possibly negative numerator and a positive
// denominator (C++ division truncates toward zero).
ATROUS_HOST_DEVICE int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}
ATROUS_HOST_DEVICE int64_t ceil_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a > 0) ? q + 1 : q;
}

// The last output reads input position (out-1)*s - pb + (k-1)*d, which must
// not pass the padded end in + pe - 1, hence
//   out = floor((in + pb + pe - d*(k-1) - 1) / s) + 1.
// Returns 0 or less when the dilated kernel is larger than the padded input.
ATROUS_HOST_DEVICE int64_t conv_out_size(int64_t in, int64_t pad_before, int64_t pad_after,
                                         int64_t kernel, int64_t stride, int64_t dilation) {
  const int64_t span = in + pad_before + pad_after - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

// TensorFlow's 'same' rule, which for stride 1 is also torch's:
//   out   = ceil(in / s)
//   total = max((out-1)*s + d*(k-1) + 1 - in, 0)
//   before = total / 2, after = total - before (the odd pixel goes after).
struct PadPair {
  int64_t before, after;
};
ATROUS_HOST_DEVICE PadPair same_padding(int64_t in, int64_t kernel, int64_t stride,
                                        int64_t dilation) {
  const int64_t out = ceil_div(in, stride);
  int64_t total = (out - 1) * stride + dilation * (kernel - 1) + 1 - in;
  if (total < 0) total = 0;
  return PadPair{total / 2, total - total / 2};
}

// Half-open range [begin, end) of outputs whose tap t lands inside the input.
// From (1): 0 <= o*s - pb + t*d <= in-1
//   <=>  ceil((pb - t*d) / s) <= o <= floor((in - 1 + pb - t*d) / s),
// intersected with [0, out) (an empty range is returned as begin == end <= out).
// Multiplying only over this range is what skips
// the work that a dilated conv would otherwise spend on padding.
struct IndexRange {
  int64_t begin, end;
  ATROUS_HOST_DEVICE int64_t size() const { return end > begin ? end - begin : 0; }
};
ATROUS_HOST_DEVICE IndexRange valid_out_range(int64_t in, int64_t out, int64_t tap,
                                              int64_t stride, int64_t pad_before,
                                              int64_t dilation) {
  const int64_t offset = pad_before - tap * dilation;
  int64_t begin = ceil_div(offset, stride);
  int64_t end = floor_div(in - 1 + offset, stride) + 1;
  if (begin < 0) begin = 0;
  if (begin > out) begin = out;
  if (end > out) end = out;
  if (end < begin) end = begin;
  return IndexRange{begin, end};
}

// Input position read by output o through tap t, equation (1).
ATROUS_HOST_DEVICE int64_t input_index(int64_t o, int64_t tap, int64_t stride, int64_t pad_before,
                                       int64_t dilation) {
  return o * stride - pad_before + tap * dilation;
}

// The inverse of (1) used by grad-input: the output o that reads input i
// through tap t, or -1 when there is none (i + pb - t*d is not a multiple of
// s, or o falls outside [0, out)).
ATROUS_HOST_DEVICE int64_t output_index_for_input(int64_t i, int64_t out, int64_t tap,
                                                  int64_t stride, int64_t pad_before,
                                                  int64_t dilation) {
  const int64_t numer = i + pad_before - tap * dilation;
  if (numer < 0 || numer % stride != 0) return -1;
  const int64_t o = numer / stride;
  return o < out ? o : -1;
}

// ------------------------------------------------------------ pixel order --
//
// The CUDA implicit GEMM skips a kernel tap for a whole tile of pixels when
// none of them reads inside the image. In plain row-major order a tile mixes
// pixels near the border (where some taps read padding) with interior ones,
// so at ASPP rates almost no tap can be skipped. Ordering the pixels by
// "which taps are valid" fixes that: along one axis, the set of valid taps is
// constant between consecutive breakpoints {0, extent, begin_t, end_t of every
// tap t}, which cuts the axis into at most 2k+1 bands and the plane into
// rectangles of constant valid-tap set. GEMM row m then walks the rectangles
// one after another (band of H, then band of W, then image n, then row-major
// inside the rectangle), so nearly every tile lies inside one rectangle and
// skips exactly the taps that read padding.

constexpr int kMaxPixelBands = 16;

struct AxisBands {
  int32_t count;                         // number of bands, >= 1
  int64_t begin[kMaxPixelBands + 1];     // band b is [begin[b], begin[b + 1])
};

// Sorted unique breakpoints -> bands; more than kMaxPixelBands bands (possible
// from kernels 8 wide, certain past 17) fall back to one band, the plain order.
ATROUS_HOST_DEVICE AxisBands bands_from_points(int64_t* points, int n, int64_t extent) {
  for (int i = 1; i < n; ++i)  // insertion sort: n <= 2 * kernel + 2
    for (int j = i; j > 0 && points[j - 1] > points[j]; --j) {
      const int64_t t = points[j - 1];
      points[j - 1] = points[j];
      points[j] = t;
    }
  AxisBands bands{};
  int unique = 0;
  for (int i = 0; i < n; ++i)
    if (unique == 0 || points[i] != points[unique - 1]) points[unique++] = points[i];
  if (unique - 1 > kMaxPixelBands || unique < 2) {
    bands.count = 1;
    bands.begin[0] = 0;
    bands.begin[1] = extent;
    return bands;
  }
  bands.count = unique - 1;
  for (int i = 0; i < unique; ++i) bands.begin[i] = points[i];
  return bands;
}

// Bands of output positions o in [0, out) with a constant set of taps t whose
// input o*s - pb + t*d lies inside [0, in) (forward).
ATROUS_HOST_DEVICE AxisBands forward_axis_bands(int64_t in, int64_t out, int64_t kernel,
                                                int64_t stride, int64_t pad_before,
                                                int64_t dilation) {
  int64_t points[2 * kMaxPixelBands + 4];
  if (2 * kernel + 2 > 2 * kMaxPixelBands + 4) return bands_from_points(points, 0, out);
  int n = 0;
  points[n++] = 0;
  points[n++] = out;
  for (int64_t t = 0; t < kernel; ++t) {
    const IndexRange r = valid_out_range(in, out, t, stride, pad_before, dilation);
    points[n++] = r.begin;
    points[n++] = r.end;
  }
  return bands_from_points(points, n, out);
}

// Bands of input positions i in [0, in) with a constant set of taps t that
// some output reads i through (grad_input). With stride 1, tap t reaches
// i in [t*d - pb, t*d - pb + out); with a larger stride the set also depends
// on i modulo the stride, so the axis stays one band.
ATROUS_HOST_DEVICE AxisBands grad_input_axis_bands(int64_t in, int64_t out, int64_t kernel,
                                                   int64_t stride, int64_t pad_before,
                                                   int64_t dilation) {
  int64_t points[2 * kMaxPixelBands + 4];
  if (stride != 1 || 2 * kernel + 2 > 2 * kMaxPixelBands + 4)
    return bands_from_points(points, 0, in);
  int n = 0;
  points[n++] = 0;
  points[n++] = in;
  for (int64_t t = 0; t < kernel; ++t) {
    int64_t lo = t * dilation - pad_before, hi = lo + out;
    lo = lo < 0 ? 0 : (lo > in ? in : lo);
    hi = hi < 0 ? 0 : (hi > in ? in : hi);
    points[n++] = lo;
    points[n++] = hi;
  }
  return bands_from_points(points, n, in);
}

struct PixelOrder {
  int64_t batch;
  AxisBands rows, cols;  // bands of the y and x axes of the plane being ordered
};

struct Pixel {
  int64_t n, y, x;
};

// The pixel of GEMM row m, m in [0, batch * height * width).
ATROUS_HOST_DEVICE Pixel pixel_at(const PixelOrder& order, int64_t m) {
  const int64_t width = order.cols.begin[order.cols.count];
  int32_t bh = 0;
  int64_t band_h = order.rows.begin[1] - order.rows.begin[0];
  for (; bh + 1 < order.rows.count; ++bh) {
    band_h = order.rows.begin[bh + 1] - order.rows.begin[bh];
    const int64_t block = order.batch * band_h * width;
    if (m < block) break;
    m -= block;
  }
  band_h = order.rows.begin[bh + 1] - order.rows.begin[bh];
  int32_t bw = 0;
  for (; bw + 1 < order.cols.count; ++bw) {
    const int64_t block = order.batch * band_h * (order.cols.begin[bw + 1] - order.cols.begin[bw]);
    if (m < block) break;
    m -= block;
  }
  const int64_t band_w = order.cols.begin[bw + 1] - order.cols.begin[bw];
  const int64_t area = band_h * band_w;
  Pixel p;
  p.n = m / area;
  const int64_t local = m % area;
  p.y = order.rows.begin[bh] + local / band_w;
  p.x = order.cols.begin[bw] + local % band_w;
  return p;
}

}  // namespace atrous
