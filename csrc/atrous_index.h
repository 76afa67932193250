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

}  // namespace atrous
