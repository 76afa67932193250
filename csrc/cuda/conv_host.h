// Host side of the CUDA ops, shared by csrc/cuda/atrous_conv_cuda.cu and the
// CPU emulation the tests build (tests/emulation/): argument checks, NHWC
// views of the data, packed weights, the tap-class pixel order, and dispatch
// by dtype and kernel family onto the launchers of conv_kernels.cuh. The
// caller holds the device guard and passes the stream.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/version.h>

#include <array>
#include <cstdint>
#include <tuple>

#include "../atrous_conv.h"
#include "launch_args.h"

#define ATROUS_CUDA_DISPATCH(type, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, type, name, __VA_ARGS__)

namespace atrous {
namespace cuda {

// The number of fixed pixel ranges grad_weight is split into. It depends on
// the shapes only, never on the device or the thread count, so results are
// bitwise reproducible: enough blocks to fill a large GPU, and ranges no
// shorter than 1024 pixels.
inline int64_t grad_weight_splits(const ConvParams& p) {
  // About 512 blocks of 128 x 128 (enough to fill every SM of an H100 a few
  // times over), with no split shorter than 1024 pixels and at most 64 splits.
  const int64_t tiles = ((p.out_channels_per_group() + 127) / 128) *
                        ((p.in_channels_per_group() + 127) / 128) * p.groups * p.taps();
  const int64_t pixels = p.batch * p.out_height * p.out_width;
  if (tiles == 0) return 1;
  int64_t splits = (512 + tiles - 1) / tiles;
  const int64_t by_length = (pixels + 1023) / 1024;
  if (splits > by_length) splits = by_length;
  if (splits > 64) splits = 64;
  return splits < 1 ? 1 : splits;
}

// The same for the channel-tile reductions (depthwise grad_weight, grad_bias),
// given how many (tap, 32-channel tile) blocks there are.
inline int64_t reduction_splits(const ConvParams& p, int64_t tiles) {
  // About 512 blocks in all, each range at least 2048 pixels, at most 64 splits.
  const int64_t pixels = p.batch * p.out_height * p.out_width;
  int64_t splits = tiles > 0 ? (512 + tiles - 1) / tiles : 1;
  const int64_t by_length = (pixels + 2047) / 2048;
  if (splits > by_length) splits = by_length;
  if (splits > 64) splits = 64;
  return splits < 1 ? 1 : splits;
}

namespace host {

using at::Tensor;

inline at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline Strides4 strides_of(const Tensor& t) {
  return Strides4{t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

// NHWC data with the canonical strides the kernels index by (a channels_last
// input is used as it is).
inline Tensor to_nhwc(const Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

inline bool aligned16(const void* ptr) { return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0; }

inline int64_t round_up8(int64_t v) { return (v + 7) / 8 * 8; }

// float32 uses TF32 tensor cores only when torch's matmul setting asks for
// it (torch.backends.cuda.matmul.fp32_precision = "tf32", or the legacy
// allow_tf32 / set_float32_matmul_precision("high"/"medium")), which is off by
// default: exact fp32 is the default. torch.backends.cudnn.allow_tf32 is on by
// default, so it is not the switch. A NoTF32Guard in scope also disables it.
inline bool allow_tf32(const Tensor& input) {
  if (input.scalar_type() != at::kFloat || at::NoTF32Guard::should_disable_tf32()) return false;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 10)
  // The per-backend setting; the legacy query throws when the legacy and new
  // settings disagree.
  return at::globalContext().float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
         at::Float32Precision::TF32;
#else
  try {
    return at::globalContext().allowTF32CuBLAS();
  } catch (const c10::Error&) {
    return false;  // mixed legacy/new settings on an older torch: stay exact
  }
#endif
}

// Forward B: packed[g][tap][ci][co], co padded with zeros to `cols`.
inline Tensor pack_weight_forward(const Tensor& weight, const ConvParams& p, int64_t cols) {
  const Tensor w = weight
                       .reshape({p.groups, p.out_channels_per_group(), p.in_channels_per_group(),
                                 p.taps()})
                       .permute({0, 3, 2, 1});
  return at::constant_pad_nd(w, {0, cols - p.out_channels_per_group()}).contiguous();
}

// grad_input B: packed[g][tap][co][ci], ci padded with zeros to `cols`.
inline Tensor pack_weight_grad_input(const Tensor& weight, const ConvParams& p, int64_t cols) {
  const Tensor w = weight
                       .reshape({p.groups, p.out_channels_per_group(), p.in_channels_per_group(),
                                 p.taps()})
                       .permute({0, 3, 1, 2});
  return at::constant_pad_nd(w, {0, cols - p.in_channels_per_group()}).contiguous();
}

inline Tensor conv_forward(const Tensor& input, const Tensor& weight,
                           const c10::optional<Tensor>& bias, c10::IntArrayRef stride,
                           c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                           cudaStream_t stream) {
  const ConvParams p =
      make_conv_params("atrous_conv", input, weight, bias, stride, padding, dilation, groups);
  Tensor out = allocate_output(p, input, weight);
  if (out.numel() == 0) return out;
  const Tensor x = to_nhwc(input);
  const Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : Tensor();
  const void* bias_ptr = b.defined() ? b.data_ptr() : nullptr;

  ATROUS_CUDA_DISPATCH(input.scalar_type(), "atrous_conv_forward_cuda", [&] {
    if (p.in_channels_per_group() == 1) {
      const Tensor w = weight.reshape({p.out_channels, p.taps()}).contiguous();
      launch_depthwise_forward<scalar_t>(DirectArgs{p, x.data_ptr(), w.data_ptr(), bias_ptr,
                                                    out.data_ptr(), strides_of(out), nullptr, 0,
                                                    stream});
    } else {
      const int64_t cols = round_up8(p.out_channels_per_group());
      const Tensor w = pack_weight_forward(weight, p, cols);
      const bool vector_ok = p.in_channels % 8 == 0 && p.in_channels_per_group() % 8 == 0 &&
                             aligned16(x.data_ptr());
      const PixelOrder order{
          p.batch,
          forward_axis_bands(p.in_height, p.out_height, p.kernel_height, p.stride_h, p.pad_top,
                             p.dilation_h),
          forward_axis_bands(p.in_width, p.out_width, p.kernel_width, p.stride_w, p.pad_left,
                             p.dilation_w)};
      launch_implicit_gemm_forward<scalar_t>(ImplicitGemmArgs{
          p, order, x.data_ptr(), w.data_ptr(), bias_ptr, out.data_ptr(), strides_of(out), cols,
          vector_ok, allow_tf32(input), stream});
    }
  });
  return out;
}

inline std::tuple<Tensor, Tensor, Tensor> conv_backward(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask, cudaStream_t stream) {
  const ConvParams p = make_conv_params("atrous_conv_backward", input, weight, c10::nullopt,
                                        stride, padding, dilation, groups);
  check_grad_output("atrous_conv_backward", p, grad_output, input);
  auto [grad_input, grad_weight, grad_bias] =
      allocate_gradients(p, input, weight, output_mask);
  const Tensor gy = to_nhwc(grad_output);
  const bool depthwise = p.in_channels_per_group() == 1;

  ATROUS_CUDA_DISPATCH(input.scalar_type(), "atrous_conv_backward_cuda", [&] {
    if (output_mask[0] && grad_input.numel() > 0) {
      if (depthwise) {
        const Tensor w = weight.reshape({p.out_channels, p.taps()}).contiguous();
        launch_depthwise_grad_input<scalar_t>(DirectArgs{p, gy.data_ptr(), w.data_ptr(), nullptr,
                                                         grad_input.data_ptr(),
                                                         strides_of(grad_input), nullptr, 0,
                                                         stream});
      } else {
        const int64_t cols = round_up8(p.in_channels_per_group());
        const Tensor w = pack_weight_grad_input(weight, p, cols);
        const bool vector_ok = p.out_channels % 8 == 0 && p.out_channels_per_group() % 8 == 0 &&
                               aligned16(gy.data_ptr());
        const PixelOrder order{
            p.batch,
            grad_input_axis_bands(p.in_height, p.out_height, p.kernel_height, p.stride_h,
                                  p.pad_top, p.dilation_h),
            grad_input_axis_bands(p.in_width, p.out_width, p.kernel_width, p.stride_w,
                                  p.pad_left, p.dilation_w)};
        launch_implicit_gemm_grad_input<scalar_t>(ImplicitGemmArgs{
            p, order, gy.data_ptr(), w.data_ptr(), nullptr, grad_input.data_ptr(),
            strides_of(grad_input), cols, vector_ok, allow_tf32(input), stream});
      }
    }
    if (output_mask[1] && grad_weight.numel() > 0) {
      const Tensor x = to_nhwc(input);
      if (depthwise) {
        const int64_t splits = reduction_splits(p, p.taps() * ((p.out_channels + 31) / 32));
        const Tensor partials = at::empty({splits * p.taps() * p.out_channels},
                                          input.options().dtype(accumulation_type(input.scalar_type())));
        launch_depthwise_grad_weight<scalar_t>(DirectArgs{p, gy.data_ptr(), x.data_ptr(), nullptr,
                                                          grad_weight.data_ptr(),
                                                          strides_of(grad_weight),
                                                          partials.data_ptr(), splits, stream});
      } else {
        const int64_t splits = grad_weight_splits(p);
        const Tensor partials =
            at::empty({splits * p.groups * p.taps() * p.out_channels_per_group() *
                       p.in_channels_per_group()},
                      input.options().dtype(accumulation_type(input.scalar_type())));
        const bool vector_ok = p.out_channels % 8 == 0 && p.out_channels_per_group() % 8 == 0 &&
                               p.in_channels % 8 == 0 && p.in_channels_per_group() % 8 == 0 &&
                               aligned16(gy.data_ptr()) && aligned16(x.data_ptr());
        launch_grad_weight<scalar_t>(GradWeightArgs{p, gy.data_ptr(), x.data_ptr(),
                                                    partials.data_ptr(), grad_weight.data_ptr(),
                                                    strides_of(grad_weight), splits, vector_ok,
                                                    allow_tf32(input), stream});
      }
    }
    if (output_mask[2] && grad_bias.numel() > 0) {
      const int64_t splits = reduction_splits(p, (p.out_channels + 31) / 32);
      const Tensor partials = at::empty({splits * p.out_channels},
                                        input.options().dtype(accumulation_type(input.scalar_type())));
      launch_grad_bias<scalar_t>(DirectArgs{p, gy.data_ptr(), nullptr, nullptr,
                                            grad_bias.data_ptr(),
                                            Strides4{grad_bias.stride(0), 0, 0, 0},
                                            partials.data_ptr(), splits, stream});
    }
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace host
}  // namespace cuda
}  // namespace atrous
