// CPU kernels of atrous::conv_forward and atrous::conv_backward.
//
// Every kernel is an implicit GEMM over pixel rows, accumulated in float for
// float32/float16/bfloat16 and in double for float64. float and double
// operands are read where they lie, NCHW or channels_last (a pixel's
// channels one plane apart, or contiguous); 16-bit ones are NHWC rows widened
// as they are read, or multiplied in bfloat16 pairs by AVX512_BF16 dot
// products (bfloat16 planes packed into pairs block by block in the GEMM).
// For each kernel tap (kh, kw) only the output pixels whose input
// pixel lies inside the image take part (valid_out_range in atrous_index.h),
// so no multiply touches padding (the bfloat16 pairs of grad_weight excepted:
// a pair's second pixel may be one with a zero x). Work is split over
// independent output blocks with at::parallel_for and every reduction runs in
// a fixed order, so results do not depend on the number of threads.
//
// Convolutions with one input channel per group (depthwise, with any channel
// multiplier) have no GEMM depth to speak of and take direct paths instead:
// row updates over the channels of NHWC rows, or, for NCHW float/double
// tensors, whole planes read and written in place.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../atrous_conv.h"
#include "gather_gemm.h"
#include "weight_cache.h"
#include "workspace.h"

namespace atrous {
namespace {

using at::Tensor;
using c10::BFloat16;
using cpu::GatherGemmArgs;
using cpu::GatherGemmBf16Args;
using cpu::OuterGemmArgs;
using cpu::gather_gemm;
using cpu::outer_gemm;
using cpu::panel_width;
using cpu::panels_for;

// Output pixels per work unit: the M of one GEMM call. 192 rows amortize one
// pass over a tap's weights (Cin/g x Cout/g) over enough multiply-adds to be
// compute-bound, while the C tile (192 x Cout/g) stays in L2.
constexpr int64_t kPixelTile = 192;
// Images with at most this many pixels are one tile (see tiled_gather_gemm).
constexpr int64_t kWholeImageTile = 1536;
// Column panels per unit at most (1 KiB of each C row): wider C rows are
// split into column blocks, so that the rows gather_gemm sweeps per depth
// block (its kRowBlock x panels) stay in L2 beside A and B. 2048 columns in
// one unit measured 1.23x slower (ASPP grad_input, bench/NOTES.md).
constexpr int64_t kUnitPanels = 16;
// Pixels per unit in the depthwise path, whose tile spans every channel.
constexpr int64_t kDepthwiseTile = 32;
// grad_weight (see grad_weight_gemm): at most kGradWeightRows input channels
// per unit (the GEMM M), or kGradWeightReuse / taps when that is more, within
// kGradWeightAccBytes of accumulators for all taps; output pixels per chunk
// (the depth of one rank-1-update GEMM); pixel
// segments until there are kGradWeightUnits units, each segment at least
// kGradWeightSegmentPixels long, all partial sums within
// kGradWeightPartialBytes.
constexpr int64_t kGradWeightRows = 96;
constexpr int64_t kGradWeightReuse = 384;
constexpr int64_t kGradWeightAccBytes = 1024 * 1024;
constexpr int64_t kGradWeightChunk = 256;
static_assert(kGradWeightChunk % 2 == 0, "the bfloat16 pair buffers hold kGradWeightChunk / 2 pairs");
constexpr int64_t kGradWeightUnits = 16;
constexpr int64_t kGradWeightSegmentPixels = 2048;
constexpr int64_t kGradWeightPartialBytes = int64_t(64) << 20;
// Channels per unit in the depthwise grad_weight and in grad_bias.
constexpr int64_t kChannelBlock = 256;

// Copies a 4-D tensor into NHWC rows, converting the dtype in the same pass
// (t.to(dtype).contiguous(NHWC) would make two full copies, e.g. 4x a
// bfloat16 input's bytes at the peak): channel c of pixel p (= y * W + x) of
// image n goes to
//   dst[(n * HW + p) * pixel_stride + (c / per_group) * group_stride + c % per_group]
// (per_group = C, group_stride = 0 for plain NHWC; the bfloat16 pair rows pad
// each group). float planes (NCHW) are transposed in registers
// (cpu::transpose_to_rows), kNhwcCopyPixels pixels of every channel per step;
// anything else is described to torch as a strided view and filled by its
// copy_ (about 6.5 GB/s from NCHW here, bench/NOTES.md).
constexpr int64_t kNhwcCopyPixels = 64;

template <typename dst_t>
void copy_to_nhwc(const Tensor& t, dst_t* dst, int64_t pixel_stride, int64_t per_group,
                  int64_t group_stride) {
  const int64_t N = t.size(0), C = t.size(1), H = t.size(2), W = t.size(3);
  if (t.numel() == 0) return;
  if constexpr (std::is_same_v<dst_t, float>) {
    // Each plane's H x W pixels one element apart: a step is one transpose of
    // kNhwcCopyPixels x C into whole destination rows (64 KB-512 KB, in L2).
    const bool planes = t.scalar_type() == at::kFloat && t.stride(3) == 1 && (H == 1 || t.stride(2) == W);
    if (planes && per_group == C) {
      const float* src = t.data_ptr<float>();
      const int64_t hw = H * W, blocks = (hw + kNhwcCopyPixels - 1) / kNhwcCopyPixels;
      at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t n = unit / blocks, p0 = (unit % blocks) * kNhwcCopyPixels;
          cpu::transpose_to_rows(src + n * t.stride(0) + p0, t.stride(1),
                                 std::min(kNhwcCopyPixels, hw - p0), C,
                                 dst + (n * hw + p0) * pixel_stride, pixel_stride);
        }
      });
      return;
    }
  }
  const int64_t groups = C / per_group;
  // dst as [N][G][per_group][H][W] with the strides of the layout above.
  const Tensor view = at::from_blob(
      dst, {N, groups, per_group, H, W},
      {H * W * pixel_stride, group_stride, 1, W * pixel_stride, pixel_stride},
      t.options().dtype(c10::CppTypeToScalarType<dst_t>::value));
  view.copy_(t.unflatten(1, {groups, per_group}));
}

// acc_t NHWC (channels_last) form of t; t itself when it already is one.
template <typename acc_t>
Tensor to_nhwc(const Tensor& t) {
  const auto dtype = c10::CppTypeToScalarType<acc_t>::value;
  if (t.scalar_type() == dtype && t.is_contiguous(at::MemoryFormat::ChannelsLast)) return t;
  Tensor nhwc = cpu::workspace_empty(t.sizes(), dtype, at::MemoryFormat::ChannelsLast);
  if constexpr (std::is_same_v<acc_t, float>) {
    // channels_last 16-bit -> float: the same layout, widened in parallel blocks
    // (cpu::widen_to_float; torch's copy_ measured slower here).
    if ((t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16) &&
        t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      constexpr int64_t kBlock = 1 << 16;
      float* dst = nhwc.data_ptr<float>();
      AT_DISPATCH_REDUCED_FLOATING_TYPES(t.scalar_type(), "to_nhwc_widen", [&] {
        const scalar_t* src = t.data_ptr<scalar_t>();
        at::parallel_for(0, t.numel(), kBlock, [&](int64_t begin, int64_t end) {
          cpu::widen_to_float(src + begin, dst + begin, end - begin);
        });
      });
      return nhwc;
    }
  }
  copy_to_nhwc(t, nhwc.data_ptr<acc_t>(), t.size(1), t.size(1), 0);
  return nhwc;
}

// Element strides of a 4-D tensor, so outputs of any memory format are
// written in place.
struct Strides4 {
  int64_t n, c, h, w;
  explicit Strides4(const Tensor& t) : n(t.stride(0)), c(t.stride(1)), h(t.stride(2)), w(t.stride(3)) {}
  Strides4(int64_t n_, int64_t c_, int64_t h_, int64_t w_) : n(n_), c(c_), h(h_), w(w_) {}
  int64_t offset(int64_t in, int64_t ic, int64_t ih, int64_t iw) const {
    return in * n + ic * c + ih * h + iw * w;
  }
};

// The A operand of the gathered GEMM, read where it lies: channel c of group g
// of pixel (n, y, x) is at
//   data[n * s.n + y * s.h + x * s.w + g * group_stride + c * s.c]
// so a pixel's A row is `depth` values s.c apart (GatherGemmArgs::a_step):
// NHWC rows (s.c = 1) and NCHW planes (s.c = H * W) alike.
template <typename T>
struct PixelRows {
  const T* data;
  Strides4 s;
  int64_t group_stride;
  const T* at(int64_t n, int64_t y, int64_t x, int64_t g) const {
    return data + n * s.n + y * s.h + x * s.w + g * group_stride;
  }
  int64_t step() const { return s.c; }
};

template <typename T>
PixelRows<T> pixel_rows(const Tensor& t, int64_t groups) {
  return {t.data_ptr<T>(), Strides4(t), t.size(1) / groups * t.stride(1)};
}

// The B operand of the gathered GEMM, packed once per call into column panels
// of kWidth (the micro-kernel's panel) with k taken kPack at a time (1 for
// the float/double GEMM, 2 for the bfloat16 pairs of GatherGemmBf16Args):
//   packed[g][tap][panel][q][j][t] = B_{g,tap}[k = q*kPack + t][col = panel*kWidth + j],
// zero for k >= depth or col >= cols, where
//   forward:    B_{g,tap}[k][col] = w[g*Cog + col][k][tap]   (depth Cig, cols Cog)
//   grad_input: B_{g,tap}[k][col] = w[g*Cog + k][col][tap]   (depth Cog, cols Cig).
// A unit packs every tap of one (group, panel). It walks k, then taps, then
// columns: the taps of one w[.][.] are adjacent, so each weight line is read
// once, and each tap's panel is written sequentially.
template <typename T, int64_t kWidth, int64_t kPack>
Tensor pack_weight_panels_now(const Tensor& weight, const ConvParams& p, bool transposed) {
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  const Tensor w = weight.to(dtype).contiguous();  // [Cout][Cig][taps]
  const int64_t G = p.groups, cog = p.out_channels_per_group(), cig = p.in_channels_per_group();
  const int64_t taps = p.taps();
  const int64_t depth = transposed ? cog : cig, cols = transposed ? cig : cog;
  const int64_t kq = (depth + kPack - 1) / kPack, panels = (cols + kWidth - 1) / kWidth;
  // Element offsets of w[k][col] of B_{g,tap} at tap 0 along k and along col.
  const int64_t k_stride = transposed ? cig * taps : taps;
  const int64_t col_stride = transposed ? taps : cig * taps;
  Tensor packed = cpu::workspace_empty({G, taps, panels, kq, kWidth, kPack}, dtype);
  const T* src = w.data_ptr<T>();
  T* dst = packed.data_ptr<T>();
  const int64_t tap_stride = panels * kq * kWidth * kPack;
  at::parallel_for(0, G * panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t g = unit / panels, panel = unit % panels;
      const int64_t valid_cols = std::min(kWidth, cols - panel * kWidth);
      const T* group_src = src + g * cog * cig * taps + panel * kWidth * col_stride;
      T* panel_dst = dst + (g * taps * panels + panel) * kq * kWidth * kPack;
      for (int64_t q = 0; q < kq; ++q) {
        const bool full = valid_cols == kWidth && (q + 1) * kPack <= depth;
        for (int64_t tap = 0; tap < taps; ++tap) {
          T* out = panel_dst + tap * tap_stride + q * kWidth * kPack;
          const T* in = group_src + q * kPack * k_stride + tap;
          if (full) {  // the common case: fixed trip counts, no bounds
            for (int64_t j = 0; j < kWidth; ++j)
              for (int64_t t = 0; t < kPack; ++t) out[j * kPack + t] = in[t * k_stride + j * col_stride];
          } else {
            for (int64_t j = 0; j < kWidth; ++j)
              for (int64_t t = 0; t < kPack; ++t)
                out[j * kPack + t] = j < valid_cols && q * kPack + t < depth
                                         ? in[t * k_stride + j * col_stride]
                                         : T(0);
          }
        }
      }
    }
  });
  return packed;
}

// Packings are kept between calls while the weight does not change (see
// cpu/weight_cache.h), so a model's every call after the first skips this.
template <typename T, int64_t kWidth, int64_t kPack>
Tensor pack_weight_panels(const Tensor& weight, const ConvParams& p, bool transposed) {
  const auto dtype = c10::CppTypeToScalarType<T>::value;
  const auto packing = kPack == 2 ? (transposed ? cpu::WeightPacking::kBf16PairsTransposed
                                                : cpu::WeightPacking::kBf16Pairs)
                                  : (transposed ? cpu::WeightPacking::kPanelsTransposed
                                                : cpu::WeightPacking::kPanels);
  return cpu::cached_weight_packing(weight, packing, p.groups, dtype, [&] {
    return pack_weight_panels_now<T, kWidth, kPack>(weight, p, transposed);
  });
}

// The packed B operand's element type: acc_t, or bfloat16 pairs for the
// dot-product GEMM.
template <typename acc_t, bool kPairs>
using PackedB = std::conditional_t<kPairs, BFloat16, acc_t>;

// Depthwise-path weight as [tap][out_channel].
template <typename acc_t>
Tensor pack_weight_depthwise(const Tensor& weight, const ConvParams& p) {
  const auto dtype = c10::CppTypeToScalarType<acc_t>::value;
  return cpu::cached_weight_packing(weight, cpu::WeightPacking::kDepthwise, p.groups, dtype, [&] {
    return weight.to(dtype).reshape({p.out_channels, p.taps()}).t().contiguous();
  });
}

// Pixels [pix_begin, pix_end) of a plane `width` wide in row-major order,
// visited one row segment at a time: f(y, x_begin, x_end, tile_index_of_x_begin).
template <typename F>
void for_each_row_segment(int64_t pix_begin, int64_t pix_end, int64_t width, F&& f) {
  int64_t pix = pix_begin;
  while (pix < pix_end) {
    const int64_t row = pix / width, col = pix % width;
    const int64_t col_end = std::min(width, col + (pix_end - pix));
    f(row, col, col_end, pix - pix_begin);
    pix += col_end - col;
  }
}

// ------------------------------------------------------ tiled gather GEMM --

// dst[i] = scalar_t(src[i]), i < n: a copy, or a rounding to 16 bits
// (cpu::narrow_from_float; c10's scalar float16 conversion is software).
template <typename scalar_t, typename acc_t>
void store_row(scalar_t* dst, const acc_t* src, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>)
    std::copy(src, src + n, dst);
  else if constexpr (std::is_same_v<acc_t, float>)
    cpu::narrow_from_float(src, dst, n);
  else
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Writes `pixels` consecutive C rows (row_len apart, `channels` values each)
// to a strided destination, walking it in its own contiguous direction:
// channels innermost for channels_last, pixels innermost for NCHW (where a
// pixel's channels are a whole plane apart).
template <typename scalar_t, typename acc_t>
void store_segment(scalar_t* dst, int64_t stride_c, int64_t stride_x, const acc_t* rows,
                   int64_t row_len, int64_t pixels, int64_t channels) {
  if (stride_c == 1) {
    for (int64_t i = 0; i < pixels; ++i) store_row(dst + i * stride_x, rows + i * row_len, channels);
    return;
  }
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (stride_x == 1) {  // float NCHW: the rows transposed into the planes in registers
      cpu::transpose_to_rows(rows, row_len, channels, pixels, dst, stride_c);
      return;
    }
  }
  if (stride_c <= stride_x) {
    for (int64_t i = 0; i < pixels; ++i)
      for (int64_t c = 0; c < channels; ++c)
        dst[i * stride_x + c * stride_c] = static_cast<scalar_t>(rows[i * row_len + c]);
  } else {
    for (int64_t c = 0; c < channels; ++c)
      for (int64_t i = 0; i < pixels; ++i)
        dst[i * stride_x + c * stride_c] = static_cast<scalar_t>(rows[i * row_len + c]);
  }
}

// The work units of tiled_gather_gemm (below) for planes of `pixels` pixels
// and `panels` column panels per group.
struct GemmTiling {
  int64_t tile_pixels, tiles;        // pixels per tile, tiles per plane
  int64_t col_blocks, block_panels;  // column blocks per tile, panels per block
};

GemmTiling gemm_tiling(const ConvParams& p, int64_t pixels, int64_t panels) {
  GemmTiling t;
  t.tile_pixels = pixels <= kWholeImageTile ? std::max<int64_t>(pixels, 1) : kPixelTile;
  t.tiles = (pixels + t.tile_pixels - 1) / t.tile_pixels;
  const int64_t pixel_units = p.batch * p.groups * t.tiles;
  const int64_t wanted_units = 4 * static_cast<int64_t>(at::get_num_threads());
  int64_t col_blocks = 1;
  if (pixel_units > 0 && pixel_units < wanted_units)
    col_blocks = std::min(panels, (wanted_units + pixel_units - 1) / pixel_units);
  col_blocks = std::max(col_blocks, (panels + kUnitPanels - 1) / kUnitPanels);
  t.block_panels = (panels + col_blocks - 1) / col_blocks;
  t.col_blocks = (panels + t.block_panels - 1) / t.block_panels;
  return t;
}

// 16-bit A rows (float16, and bfloat16 off the dot-product path) are read as
// they are and widened block by block inside gather_gemm, once per unit, tap
// and column block. That matches or beats one float copy of the whole operand
// (WaveNet float16 grad_input 135 -> 115 ms, ASPP OS8 forward 182 -> 172 ms)
// when a unit spans at least kWidenInGemmPanels panels, every widened value
// then feeding as many vector FMAs; a unit of 2 panels (ASPP OS16 forward,
// where column blocks make the parallelism) measured 1.27x slower than the
// copy (bench/NOTES.md).
constexpr int64_t kWidenInGemmPanels = 8;

template <typename scalar_t, typename acc_t>
bool widen_in_gemm(const ConvParams& p, int64_t pixels, int64_t cols) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return false;
  } else {
    return gemm_tiling(p, pixels, panels_for<acc_t>(cols)).block_panels >= kWidenInGemmPanels;
  }
}

// Whether 16-bit planes `operand` (the forward's input, or grad_input's
// grad_output; a pixel's A rows pixel_step apart) are read where they lie by
// the GEMM that writes `output`, which packs them into bfloat16 pairs
// (pack_plane_pairs) or widens them to float (widen_plane_block_avx512) a
// cache block at a time, per unit, tap and column block. That is done where
// a copy would break the workspace bound (the operand larger than the output)
// and it costs about what the copy does: on AVX-512, where the gathered rows
// form runs of consecutive pixels (pixel_step == 1, as in gemm_reads_in_place)
// and a unit spans at least kWidenInGemmPanels panels (widen_in_gemm). There a
// forward measured level with the copy (bfloat16 pairs: ASPP OS8 d12 100-102
// ms packed, 100-105 copied; ResNet layer4 50-58 / 49-62; float16 widened:
// ASPP OS8 d36 96-99 / 100-103), a grad_input level to 12% slower (bfloat16
// ASPP OS8 d12 93-110 / 88-95, whose copy of grad_output is an eighth of the
// output and so within the bound; float16 WaveNet k=2 92-97 / 100-102); units
// of 2 panels (ASPP OS16 forward) 10-15% slower (26-28 / 24 ms).
bool planes_16bit_in_gemm(const ConvParams& p, const Tensor& operand, int64_t pixel_step,
                          const Tensor& output) {
  const int64_t pixels = output.size(2) * output.size(3), cols = output.size(1) / p.groups;
  return operand.stride(1) != 1 && pixel_step == 1 && operand.numel() > output.numel() &&
         cpu::gather_gemm_reads_planes() && widen_in_gemm<BFloat16, float>(p, pixels, cols);
}

// The bfloat16 dot-product GEMM reads k in pairs, so its A operand is either
//   - bfloat16 planes (NCHW) read where they lie, which the GEMM packs into
//     pairs a cache block at a time (GatherGemmBf16Args::a_step), where
//     planes_16bit_in_gemm, or
//   - bfloat16 NHWC rows whose groups each have an even number of channels:
//     a channels_last input with even groups as it is, else a copy with the
//     odd groups padded by a zero channel (a pair that starts at a group's
//     last channel must not read the next group's first one, or past the
//     allocation).
struct PairRows {
  Tensor storage;
  PixelRows<BFloat16> rows;
  int64_t depth;  // channels per group, rounded up to even
};

PairRows bf16_pair_rows(const Tensor& t, int64_t groups, bool planes_in_gemm) {
  const int64_t n = t.size(0), c = t.size(1), h = t.size(2), w = t.size(3);
  const int64_t per_group = c / groups, depth = per_group + per_group % 2;
  const bool bf16 = t.scalar_type() == at::kBFloat16;
  if (bf16 && planes_in_gemm) return {t, pixel_rows<BFloat16>(t, groups), depth};
  Tensor storage;
  if (bf16 && depth == per_group && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    storage = t;
  } else {
    storage = cpu::workspace_empty({n, h, w, groups, depth}, at::kBFloat16);
    if (depth != per_group) storage.narrow(4, per_group, 1).zero_();
    copy_to_nhwc(t, storage.data_ptr<BFloat16>(), groups * depth, per_group, depth);
  }
  const int64_t pixel = groups * depth;
  return {storage, {storage.data_ptr<BFloat16>(), Strides4(h * w * pixel, 1, w * pixel, pixel), depth},
          depth};
}

// float and double A operands are read where they lie (PixelRows) when
// their channels are contiguous (channels_last), or when they are planes
// whose gathered rows form runs of consecutive pixels: gather_gemm's run
// tiles then match or beat an NHWC copy (bench/NOTES.md, session 6), and the
// forward and grad_input need no workspace beyond the packed weights. That
// holds on AVX-512 (cpu::gather_gemm_reads_planes; elsewhere the copy is
// faster), and where the planes do not alias in the L1 cache
// (planes_spread_over_l1).
//
// `pixel_step` is the distance between the A rows of neighbouring pixels of
// a C row: the input's column stride times the conv stride for the
// forward, grad_output's column stride for grad_input (neighbouring valid
// input pixels read neighbouring output pixels). Planes without runs (a
// strided forward: pointer tiles measured 20% slower than the copy) take
// NHWC rows. (16-bit operands have a rule of their own, planes_16bit_in_gemm.)
//
// A run tile keeps the lines of a depth block of channels (one per channel,
// a plane apart) cached while it passes over the panels. Addresses 4 KiB
// apart share an L1 set (64 sets of 8 ways here), so planes a multiple of
// 2-4 KiB long (64 x 64, 32 x 32, 256 x 512 float maps) put 64 channels'
// lines into one or two sets: grad_input then measured 5-8% slower than the
// copy (64 x 64 maps, and the suite's 64-channel 256 x 512 map), while 16
// lines a set (48 x 48) or fewer (65 x 65: 2; WaveNet's 16000: 8) ran level
// or faster.
constexpr int64_t kL1Sets = 64, kMostLinesPerL1Set = 16;

template <typename T>
bool planes_spread_over_l1(int64_t plane_elems) {
  const int64_t plane_bytes = plane_elems * static_cast<int64_t>(sizeof(T));
  int64_t lines_in_set[kL1Sets] = {}, most = 0;
  for (int64_t k = 0; k < kL1Sets; ++k)  // 64 consecutive channels of one pixel
    most = std::max(most, ++lines_in_set[(k * plane_bytes / cpu::kPanelBytes) % kL1Sets]);
  return most <= kMostLinesPerL1Set;
}

template <typename scalar_t, typename acc_t>
bool gemm_reads_in_place(const Tensor& operand, int64_t pixel_step) {
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    return false;
  } else {
    if (operand.stride(1) == 1) return true;
    return pixel_step == 1 && cpu::gather_gemm_reads_planes() &&
           planes_spread_over_l1<acc_t>(operand.stride(1));
  }
}

// The forward and grad_input share one driver. Both compute, for every pixel
// of a plane (the output for the forward, the input for grad_input) and every
// column of a group,
//   C[pixel][col] = init(col) + sum_{tap} sum_{k < depth} A_tap[pixel][k] * B[g][tap][k][col]
// where A_tap[pixel] is the pixel row (PixelRows: NHWC, or NCHW planes read
// in place) the pixel reads through the tap, if any.
// A work unit is a tile of consecutive pixels of one image and one group, and
// a block of column panels; per tap, the pixels with a valid A row form one
// gathered GEMM into the unit's C tile, so no multiply touches padding.
//
// Tiles: a whole image when it has at most kWholeImageTile pixels (each tap's
// weights are then streamed once per image, which matters at large rates,
// where few pixels are valid per tap), else kPixelTile pixels. Column blocks
// split the panels when a C row would exceed kUnitPanels, and further when
// there are too few units to keep every thread busy. Neither choice changes
// any element's summation order (init, then taps in order, then k in order),
// so results do not depend on it.
//
// A rows (a_t) are acc_t, or 16-bit rows that gather_gemm widens block by
// block (a_t = Half or BFloat16, acc_t = float), and B is acc_t; or, with
// kPairs, both are the bfloat16 pairs of the dot-product GEMM (`depth` is
// then even, see GatherGemmBf16Args). A rows hold `a_channels` values of k,
// a_step apart: a_channels == depth but for bfloat16 planes of an odd group,
// whose last pair the GEMM completes with a zero.
//
//   init(g, col):                      the initial value of column col
//   gather(n, g, kh, kw, y, x0, x1, emit): calls emit(x, a_row) for each
//                                      pixel (y, x), x0 <= x < x1, with a valid A row
//   store(n, g, y, x0, x1, c0, c1, rows, row_len): writes columns [c0, c1) of
//                                      the finished C rows of pixels (y, x0..x1)
template <typename acc_t, typename a_t, bool kPairs, typename Init, typename Gather, typename Store>
void tiled_gather_gemm(const ConvParams& p, int64_t height, int64_t width, int64_t depth,
                       int64_t a_channels, int64_t a_step, int64_t cols,
                       const PackedB<acc_t, kPairs>* packed,
                       Init&& init, Gather&& gather, Store&& store) {
  const int64_t G = p.groups, width_elems = panel_width<acc_t>();
  const int64_t panels = panels_for<acc_t>(cols);
  const int64_t pixels = height * width;
  const GemmTiling t = gemm_tiling(p, pixels, panels);
  const int64_t tile_pixels = t.tile_pixels, tiles = t.tiles, col_blocks = t.col_blocks;
  const int64_t block_panels = t.block_panels, pixel_units = p.batch * G * tiles;
  const int64_t row_len = block_panels * width_elems;
  const int64_t tap_stride = panels * depth * width_elems;

  at::parallel_for(0, pixel_units * col_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(tile_pixels * row_len);
    std::vector<const a_t*> a_rows(tile_pixels);
    std::vector<acc_t*> c_rows(tile_pixels);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t block = unit % col_blocks, rest = unit / col_blocks;
      const int64_t tile = rest % tiles, g = (rest / tiles) % G, n = rest / (tiles * G);
      const int64_t p0 = block * block_panels, np = std::min(block_panels, panels - p0);
      const int64_t c0 = p0 * width_elems, c1 = std::min(cols, c0 + np * width_elems);
      const int64_t pix_begin = tile * tile_pixels;
      const int64_t pix_end = std::min(pixels, pix_begin + tile_pixels);
      for (int64_t i = 0; i < pix_end - pix_begin; ++i) {
        acc_t* row = acc.data() + i * row_len;
        for (int64_t c = c0; c < c1; ++c) row[c - c0] = init(g, c);
        std::fill(row + (c1 - c0), row + row_len, acc_t(0));
      }
      for (int64_t kh = 0; kh < p.kernel_height; ++kh) {
        for (int64_t kw = 0; kw < p.kernel_width; ++kw) {
          int64_t rows = 0;
          for_each_row_segment(pix_begin, pix_end, width,
                               [&](int64_t y, int64_t x0, int64_t x1, int64_t local) {
            gather(n, g, kh, kw, y, x0, x1, [&](int64_t x, const a_t* a_row) {
              a_rows[rows] = a_row;
              c_rows[rows] = acc.data() + (local + x - x0) * row_len;
              ++rows;
            });
          });
          const int64_t tap = kh * p.kernel_width + kw;
          const auto* b = packed + (g * p.taps() + tap) * tap_stride + p0 * depth * width_elems;
          if constexpr (kPairs)
            gather_gemm(GatherGemmBf16Args{rows, depth, np, a_rows.data(), c_rows.data(), b, a_step,
                                           a_channels});
          else
            gather_gemm(GatherGemmArgs<acc_t, a_t>{rows, depth, np, a_rows.data(), c_rows.data(), b,
                                                   a_step});
        }
      }
      for_each_row_segment(pix_begin, pix_end, width,
                           [&](int64_t y, int64_t x0, int64_t x1, int64_t local) {
        store(n, g, y, x0, x1, c0, c1, acc.data() + local * row_len, row_len);
      });
    }
  });
}

// ------------------------------------------------ depthwise on NCHW planes --
//
// In NCHW every channel is a plane of its own, and a depthwise conv maps
// planes to planes: for tap (kh, kw) the valid outputs are a rectangle
// (valid_out_range) and each of its rows reads one input row, advancing
// `stride` input columns per output column:
//   out[n][co][oh][ow0 + i] += w[co][tap] * x[n][co / mult][ih(oh)][iw(ow0) + i * stride_w]
// so per tap the forward and grad_input add a scaled rectangle of one plane
// to another (axpy) and grad_weight sums a rectangle's products, reading and
// writing the planes in place with no NHWC copies (with stride 1 and
// contiguous rows, on the active ISA: cpu::rect_axpy / cpu::rect_dot). float
// and double; 16-bit NCHW tensors take the NHWC path.

// dst[r * dst_ld + i * dst_step] += a * src[r * src_ld + i * src_step],
// r < rows, i < cols.
template <typename T>
void rect_axpy(T* dst, int64_t dst_ld, int64_t dst_step, const T* src, int64_t src_ld,
               int64_t src_step, T a, int64_t rows, int64_t cols) {
  if constexpr (std::is_same_v<T, float>) {
    if (dst_step == 1 && src_step == 1) return cpu::rect_axpy(dst, dst_ld, src, src_ld, a, rows, cols);
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i) dst[r * dst_ld + i * dst_step] += a * src[r * src_ld + i * src_step];
}

// sum over r < rows, i < cols of a[r * a_ld + i * a_step] * b[r * b_ld + i * b_step],
// in a fixed order.
template <typename T>
T rect_dot(const T* a, int64_t a_ld, int64_t a_step, const T* b, int64_t b_ld, int64_t b_step,
           int64_t rows, int64_t cols) {
  if constexpr (std::is_same_v<T, float>) {
    if (a_step == 1 && b_step == 1) return cpu::rect_dot(a, a_ld, b, b_ld, rows, cols);
  }
  T sum = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i) sum += a[r * a_ld + i * a_step] * b[r * b_ld + i * b_step];
  return sum;
}

// The valid rectangle of tap (kh, kw) and the first input row and column it
// reads.
struct TapRect {
  IndexRange oh, ow;
  int64_t kh, kw, ih_begin, iw_begin;
};

TapRect tap_rect(const ConvParams& p, int64_t tap) {
  TapRect r;
  r.kh = tap / p.kernel_width;
  r.kw = tap % p.kernel_width;
  r.oh = valid_out_range(p.in_height, p.out_height, r.kh, p.stride_h, p.pad_top, p.dilation_h);
  r.ow = valid_out_range(p.in_width, p.out_width, r.kw, p.stride_w, p.pad_left, p.dilation_w);
  r.ih_begin = input_index(r.oh.begin, r.kh, p.stride_h, p.pad_top, p.dilation_h);
  r.iw_begin = input_index(r.ow.begin, r.kw, p.stride_w, p.pad_left, p.dilation_w);
  return r;
}

// Stores a finished plane (rows x cols, contiguous) through strides.
template <typename T>
void store_plane(T* dst, int64_t row_stride, int64_t col_stride, const T* plane, int64_t rows,
                 int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    if (col_stride == 1)
      std::copy(plane + r * cols, plane + (r + 1) * cols, dst + r * row_stride);
    else
      for (int64_t c = 0; c < cols; ++c) dst[r * row_stride + c * col_stride] = plane[r * cols + c];
  }
}

template <typename T>
void forward_depthwise_planes(const ConvParams& p, const Tensor& input, const Tensor& weight,
                              const T* bias, Tensor& out) {
  const Tensor w_contiguous = weight.contiguous();  // [Cout][taps]
  const T* w = w_contiguous.data_ptr<T>();
  const int64_t mult = p.out_channels_per_group(), taps = p.taps();
  const int64_t oh_n = p.out_height, ow_n = p.out_width;
  const Strides4 xs(input), os(out);
  const T* x = input.data_ptr<T>();
  T* out_data = out.data_ptr<T>();
  at::parallel_for(0, p.batch * p.out_channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> plane(oh_n * ow_n);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t n = unit / p.out_channels, co = unit % p.out_channels;
      std::fill(plane.begin(), plane.end(), bias ? bias[co] : T(0));
      for (int64_t tap = 0; tap < taps; ++tap) {
        const TapRect r = tap_rect(p, tap);
        if (r.oh.size() == 0 || r.ow.size() == 0) continue;
        rect_axpy(plane.data() + r.oh.begin * ow_n + r.ow.begin, ow_n, 1,
                  x + xs.offset(n, co / mult, r.ih_begin, r.iw_begin), p.stride_h * xs.h,
                  p.stride_w * xs.w, w[co * taps + tap], r.oh.size(), r.ow.size());
      }
      store_plane(out_data + os.offset(n, co, 0, 0), os.h, os.w, plane.data(), oh_n, ow_n);
    }
  });
}

// grad_x[n][ci] = sum_{j < mult} sum_tap w[ci*mult + j][tap] * grad_y[n][ci*mult + j]
// scattered back through the tap: the forward's row additions with the roles
// of the planes swapped.
template <typename T>
void grad_input_depthwise_planes(const ConvParams& p, const Tensor& grad_output,
                                 const Tensor& weight, Tensor& grad_input) {
  const Tensor w_contiguous = weight.contiguous();  // [Cout][taps]
  const T* w = w_contiguous.data_ptr<T>();
  const int64_t mult = p.out_channels_per_group(), taps = p.taps();
  const int64_t ih_n = p.in_height, iw_n = p.in_width;
  const Strides4 gs(grad_output), xs(grad_input);
  const T* gy = grad_output.data_ptr<T>();
  T* gi_data = grad_input.data_ptr<T>();
  at::parallel_for(0, p.batch * p.in_channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> plane(ih_n * iw_n);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t n = unit / p.in_channels, ci = unit % p.in_channels;
      std::fill(plane.begin(), plane.end(), T(0));
      for (int64_t j = 0; j < mult; ++j) {
        const int64_t co = ci * mult + j;
        for (int64_t tap = 0; tap < taps; ++tap) {
          const TapRect r = tap_rect(p, tap);
          if (r.oh.size() == 0 || r.ow.size() == 0) continue;
          rect_axpy(plane.data() + r.ih_begin * iw_n + r.iw_begin, p.stride_h * iw_n, p.stride_w,
                    gy + gs.offset(n, co, r.oh.begin, r.ow.begin), gs.h, gs.w, w[co * taps + tap],
                    r.oh.size(), r.ow.size());
        }
      }
      store_plane(gi_data + xs.offset(n, ci, 0, 0), xs.h, xs.w, plane.data(), ih_n, iw_n);
    }
  });
}

// grad_w[co][tap] = sum_n (sum of grad_y x x over the tap's rectangle in
// image n), summed in image order.
template <typename T>
void grad_weight_depthwise_planes(const ConvParams& p, const Tensor& input,
                                  const Tensor& grad_output, Tensor& grad_weight) {
  const int64_t mult = p.out_channels_per_group(), taps = p.taps();
  const Strides4 xs(input), gs(grad_output), ws(grad_weight);
  const T* x = input.data_ptr<T>();
  const T* gy = grad_output.data_ptr<T>();
  T* gw_data = grad_weight.data_ptr<T>();
  at::parallel_for(0, p.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      for (int64_t tap = 0; tap < taps; ++tap) {
        const TapRect r = tap_rect(p, tap);
        T sum = 0;
        if (r.oh.size() > 0 && r.ow.size() > 0)
          for (int64_t n = 0; n < p.batch; ++n)
            sum += rect_dot(gy + gs.offset(n, co, r.oh.begin, r.ow.begin), gs.h, gs.w,
                            x + xs.offset(n, co / mult, r.ih_begin, r.iw_begin), p.stride_h * xs.h,
                            p.stride_w * xs.w, r.oh.size(), r.ow.size());
        gw_data[ws.offset(co, 0, r.kh, r.kw)] = sum;
      }
    }
  });
}

// NCHW-like float/double tensors take the plane kernels.
template <typename scalar_t>
bool depthwise_on_planes(const Tensor& input) {
  return (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) &&
         !input.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Calls f(scalar_t()) when scalar_t is float or double. The dispatch's
// lambdas are written once for every dtype, so a generic `f` keeps the plane
// kernels from being instantiated for the 16-bit types, which never take
// them (depthwise_on_planes).
template <typename scalar_t, typename F>
void with_plane_type(F&& f) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>)
    f(scalar_t());
  else
    TORCH_INTERNAL_ASSERT(false, "depthwise planes: float and double only");
}

// ---------------------------------------------------------------- forward --

// out[n, g*Cog + co, oh, ow] = bias[co] + sum_{tap, ci} x[n, ih, iw, g*Cig + ci] * w[co, ci, tap]
// with (ih, iw) from equation (1) of atrous_index.h: A rows are input pixels
// (depth Cig), B the tap's weights (Cig x Cog), C rows output pixels. For a
// tap, the valid outputs are a rectangle (valid_out_range on each axis).
template <typename scalar_t, typename acc_t, typename a_t, bool kPairs = false>
void forward_gemm(const ConvParams& p, const PixelRows<a_t>& x, int64_t depth,
                  const PackedB<acc_t, kPairs>* packed,
                  const acc_t* bias, Tensor& out) {
  const int64_t cog = p.out_channels_per_group();
  const Strides4 os(out);
  scalar_t* out_data = out.data_ptr<scalar_t>();
  tiled_gather_gemm<acc_t, a_t, kPairs>(
      p, p.out_height, p.out_width, depth, p.in_channels_per_group(), x.step(), cog, packed,
      [&](int64_t g, int64_t co) { return bias ? bias[g * cog + co] : acc_t(0); },
      [&](int64_t n, int64_t g, int64_t kh, int64_t kw, int64_t oh, int64_t ow0, int64_t ow1,
          auto&& emit) {
        const IndexRange oh_valid = valid_out_range(p.in_height, p.out_height, kh, p.stride_h,
                                                    p.pad_top, p.dilation_h);
        if (oh < oh_valid.begin || oh >= oh_valid.end) return;
        const IndexRange ow_valid = valid_out_range(p.in_width, p.out_width, kw, p.stride_w,
                                                    p.pad_left, p.dilation_w);
        const int64_t ih = input_index(oh, kh, p.stride_h, p.pad_top, p.dilation_h);
        for (int64_t ow = std::max(ow0, ow_valid.begin); ow < std::min(ow1, ow_valid.end); ++ow) {
          const int64_t iw = input_index(ow, kw, p.stride_w, p.pad_left, p.dilation_w);
          emit(ow, x.at(n, ih, iw, g));
        }
      },
      [&](int64_t n, int64_t g, int64_t oh, int64_t ow0, int64_t ow1, int64_t c0, int64_t c1,
          const acc_t* rows, int64_t row_len) {
        store_segment(out_data + os.offset(n, g * cog + c0, oh, ow0), os.c, os.w, rows, row_len,
                      ow1 - ow0, c1 - c0);
      });
}

// dst[c] += a[c] * b[c] for c < n in acc_t: cpu::row_fma on the active
// instruction set for float accumulators (16-bit rows widened in registers),
// a plain loop for double.
template <typename acc_t, typename A, typename B>
inline void depthwise_row(acc_t* dst, const A* a, const B* b, int64_t n) {
  if constexpr (std::is_same_v<acc_t, double>) {
    for (int64_t c = 0; c < n; ++c) dst[c] += a[c] * b[c];
  } else {
    cpu::row_fma(dst, a, b, n);
  }
}

// Whether the depthwise kernels read 16-bit rows as they are: with a channel
// multiplier of 1, where each row update is one depthwise_row; otherwise
// (and for float/double, where it is the same thing) they read acc_t copies.
template <typename scalar_t, typename acc_t>
bool depthwise_reads_16bit(const ConvParams& p) {
  return !std::is_same_v<scalar_t, acc_t> && p.out_channels_per_group() == 1;
}

// One input channel per group: out channel c reads input channel c / mult.
// The tile covers every channel, each row update one depthwise_row. x rows
// are acc_t, or 16-bit with mult == 1 (depthwise_reads_16bit).
template <typename scalar_t, typename acc_t, typename x_t>
void forward_depthwise(const ConvParams& p, const x_t* x, const acc_t* w_tap_major,
                       const acc_t* bias, Tensor& out) {
  const int64_t cout = p.out_channels, cin = p.in_channels, mult = p.out_channels_per_group();
  const int64_t pixels = p.out_height * p.out_width;
  const int64_t tiles = (pixels + kDepthwiseTile - 1) / kDepthwiseTile;
  const Strides4 os(out);
  scalar_t* out_data = out.data_ptr<scalar_t>();

  at::parallel_for(0, p.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kDepthwiseTile * cout);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t tile = unit % tiles, n = unit / tiles;
      const int64_t pix_begin = tile * kDepthwiseTile;
      const int64_t pix_end = std::min(pixels, pix_begin + kDepthwiseTile);
      for (int64_t i = 0; i < pix_end - pix_begin; ++i)
        for (int64_t c = 0; c < cout; ++c) acc[i * cout + c] = bias ? bias[c] : acc_t(0);
      for (int64_t kh = 0; kh < p.kernel_height; ++kh) {
        const IndexRange oh_valid = valid_out_range(p.in_height, p.out_height, kh, p.stride_h,
                                                    p.pad_top, p.dilation_h);
        for (int64_t kw = 0; kw < p.kernel_width; ++kw) {
          const IndexRange ow_valid = valid_out_range(p.in_width, p.out_width, kw, p.stride_w,
                                                      p.pad_left, p.dilation_w);
          const acc_t* w = w_tap_major + (kh * p.kernel_width + kw) * cout;
          for_each_row_segment(pix_begin, pix_end, p.out_width,
                               [&](int64_t oh, int64_t ow0, int64_t ow1, int64_t local) {
            if (oh < oh_valid.begin || oh >= oh_valid.end) return;
            const int64_t ih = input_index(oh, kh, p.stride_h, p.pad_top, p.dilation_h);
            for (int64_t ow = std::max(ow0, ow_valid.begin); ow < std::min(ow1, ow_valid.end); ++ow) {
              const int64_t iw = input_index(ow, kw, p.stride_w, p.pad_left, p.dilation_w);
              const x_t* src = x + ((n * p.in_height + ih) * p.in_width + iw) * cin;
              acc_t* dst = acc.data() + (local + ow - ow0) * cout;
              if (mult == 1) {
                depthwise_row(dst, src, w, cout);
              } else {
                for (int64_t c = 0; c < cout; ++c) dst[c] += static_cast<acc_t>(src[c / mult]) * w[c];
              }
            }
          });
        }
      }
      for_each_row_segment(pix_begin, pix_end, p.out_width,
                           [&](int64_t oh, int64_t ow0, int64_t ow1, int64_t local) {
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          const acc_t* row = acc.data() + (local + ow - ow0) * cout;
          scalar_t* dst = out_data + os.offset(n, 0, oh, ow);
          if (os.c == 1)
            store_row(dst, row, cout);
          else
            for (int64_t c = 0; c < cout; ++c) dst[c * os.c] = static_cast<scalar_t>(row[c]);
        }
      });
    }
  });
}

// A bfloat16 conv runs on the AVX512_BF16 dot-product GEMM where the CPU has
// it (float32 accumulation either way; elsewhere the float32 GEMM widens the
// bfloat16 rows). Returns false when that path does not apply.
template <typename scalar_t, typename acc_t>
bool forward_bf16_dot(const ConvParams& p, const Tensor& input, const Tensor& weight,
                      const acc_t* bias, Tensor& out) {
  if constexpr (!std::is_same_v<scalar_t, BFloat16>) {
    return false;
  } else {
    if (!cpu::bf16_dot_active()) return false;
    const PairRows x = bf16_pair_rows(input, p.groups,
                                      planes_16bit_in_gemm(p, input, input.stride(3) * p.stride_w, out));
    const Tensor w = pack_weight_panels<BFloat16, cpu::kBf16PanelColumns, 2>(weight, p, /*transposed=*/false);
    forward_gemm<scalar_t, float, BFloat16, /*kPairs=*/true>(p, x.rows, x.depth, w.data_ptr<BFloat16>(), bias, out);
    return true;
  }
}

Tensor conv_forward_cpu(const Tensor& input, const Tensor& weight,
                        const c10::optional<Tensor>& bias, c10::IntArrayRef stride,
                        c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups) {
  const ConvParams p =
      make_conv_params("atrous_conv", input, weight, bias, stride, padding, dilation, groups);
  Tensor out = allocate_output(p, input, weight);
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "atrous_conv_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Tensor bias_acc;
    if (bias.has_value() && bias->defined())
      bias_acc = bias->to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* bias_ptr = bias_acc.defined() ? bias_acc.data_ptr<acc_t>() : nullptr;
    if (p.in_channels_per_group() == 1 && depthwise_on_planes<scalar_t>(input)) {
      with_plane_type<scalar_t>([&](auto type) {
        forward_depthwise_planes<decltype(type)>(p, input, weight, bias_ptr, out);
      });
    } else if (p.in_channels_per_group() == 1) {
      const Tensor w = pack_weight_depthwise<acc_t>(weight, p);
      if (depthwise_reads_16bit<scalar_t, acc_t>(p)) {
        const Tensor x = to_nhwc<scalar_t>(input);  // channels_last: in place
        forward_depthwise<scalar_t, acc_t, scalar_t>(p, x.data_ptr<scalar_t>(), w.data_ptr<acc_t>(),
                                                     bias_ptr, out);
      } else {
        const Tensor x = to_nhwc<acc_t>(input);
        forward_depthwise<scalar_t, acc_t, acc_t>(p, x.data_ptr<acc_t>(), w.data_ptr<acc_t>(),
                                                  bias_ptr, out);
      }
    } else if (!forward_bf16_dot<scalar_t>(p, input, weight, bias_ptr, out)) {
      const Tensor w = pack_weight_panels<acc_t, panel_width<acc_t>(), 1>(weight, p, /*transposed=*/false);
      const int64_t depth = p.in_channels_per_group();
      if (widen_in_gemm<scalar_t, acc_t>(p, p.out_height * p.out_width, p.out_channels_per_group())) {
        const Tensor x = planes_16bit_in_gemm(p, input, input.stride(3) * p.stride_w, out)
                             ? input
                             : to_nhwc<scalar_t>(input);  // channels_last: in place
        forward_gemm<scalar_t, acc_t, scalar_t>(p, pixel_rows<scalar_t>(x, p.groups), depth,
                                                w.data_ptr<acc_t>(), bias_ptr, out);
      } else {
        const Tensor x = gemm_reads_in_place<scalar_t, acc_t>(input, input.stride(3) * p.stride_w)
                             ? input
                             : to_nhwc<acc_t>(input);
        forward_gemm<scalar_t, acc_t, acc_t>(p, pixel_rows<acc_t>(x, p.groups), depth,
                                             w.data_ptr<acc_t>(), bias_ptr, out);
      }
    }
  });
  return out;
}

// ------------------------------------------------------------- grad_input --

// grad_x[n, ih, iw, g*Cig + ci] = sum_{tap, co} grad_y[n, oh, ow, g*Cog + co] * w[co, ci, tap]
// over the (oh, ow) that read (ih, iw) through the tap, the inverse of (1)
// (output_index_for_input): A rows are grad_output pixels (depth Cog), B the
// tap's transposed weights (Cog x Cig), C rows input pixels. Input pixels no
// tap reaches keep their zero init.
template <typename scalar_t, typename acc_t, typename a_t, bool kPairs = false>
void grad_input_gemm(const ConvParams& p, const PixelRows<a_t>& gy, int64_t depth,
                     const PackedB<acc_t, kPairs>* packed_t, Tensor& grad_input) {
  const int64_t cig = p.in_channels_per_group();
  const Strides4 gs(grad_input);
  scalar_t* gi_data = grad_input.data_ptr<scalar_t>();
  tiled_gather_gemm<acc_t, a_t, kPairs>(
      p, p.in_height, p.in_width, depth, p.out_channels_per_group(), gy.step(), cig, packed_t,
      [&](int64_t, int64_t) { return acc_t(0); },
      [&](int64_t n, int64_t g, int64_t kh, int64_t kw, int64_t ih, int64_t iw0, int64_t iw1,
          auto&& emit) {
        const int64_t oh = output_index_for_input(ih, p.out_height, kh, p.stride_h, p.pad_top,
                                                  p.dilation_h);
        if (oh < 0) return;
        for (int64_t iw = iw0; iw < iw1; ++iw) {
          const int64_t ow = output_index_for_input(iw, p.out_width, kw, p.stride_w, p.pad_left,
                                                    p.dilation_w);
          if (ow >= 0) emit(iw, gy.at(n, oh, ow, g));
        }
      },
      [&](int64_t n, int64_t g, int64_t ih, int64_t iw0, int64_t iw1, int64_t c0, int64_t c1,
          const acc_t* rows, int64_t row_len) {
        store_segment(gi_data + gs.offset(n, g * cig + c0, ih, iw0), gs.c, gs.w, rows, row_len,
                      iw1 - iw0, c1 - c0);
      });
}

// Depthwise: grad_x[.., c] = sum_tap sum_{j < mult} grad_y[.., c*mult + j] * w[c*mult + j, tap].
template <typename scalar_t, typename acc_t, typename gy_t>
void grad_input_depthwise(const ConvParams& p, const gy_t* gy, const acc_t* w_tap_major,
                          Tensor& grad_input) {
  const int64_t cout = p.out_channels, cin = p.in_channels, mult = p.out_channels_per_group();
  const int64_t pixels = p.in_height * p.in_width;
  const int64_t tiles = (pixels + kDepthwiseTile - 1) / kDepthwiseTile;
  const Strides4 gs(grad_input);
  scalar_t* gi_data = grad_input.data_ptr<scalar_t>();

  at::parallel_for(0, p.batch * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kDepthwiseTile * cin);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t tile = unit % tiles, n = unit / tiles;
      const int64_t pix_begin = tile * kDepthwiseTile;
      const int64_t pix_end = std::min(pixels, pix_begin + kDepthwiseTile);
      std::fill(acc.begin(), acc.begin() + (pix_end - pix_begin) * cin, acc_t(0));
      for (int64_t kh = 0; kh < p.kernel_height; ++kh) {
        for (int64_t kw = 0; kw < p.kernel_width; ++kw) {
          const acc_t* w = w_tap_major + (kh * p.kernel_width + kw) * cout;
          for_each_row_segment(pix_begin, pix_end, p.in_width,
                               [&](int64_t ih, int64_t iw0, int64_t iw1, int64_t local) {
            const int64_t oh = output_index_for_input(ih, p.out_height, kh, p.stride_h, p.pad_top,
                                                      p.dilation_h);
            if (oh < 0) return;
            for (int64_t iw = iw0; iw < iw1; ++iw) {
              const int64_t ow = output_index_for_input(iw, p.out_width, kw, p.stride_w,
                                                        p.pad_left, p.dilation_w);
              if (ow < 0) continue;
              const gy_t* src = gy + ((n * p.out_height + oh) * p.out_width + ow) * cout;
              acc_t* dst = acc.data() + (local + iw - iw0) * cin;
              if (mult == 1) {
                depthwise_row(dst, src, w, cin);
              } else {
                for (int64_t c = 0; c < cin; ++c) {
                  acc_t sum = 0;
                  for (int64_t j = 0; j < mult; ++j)
                    sum += static_cast<acc_t>(src[c * mult + j]) * w[c * mult + j];
                  dst[c] += sum;
                }
              }
            }
          });
        }
      }
      for_each_row_segment(pix_begin, pix_end, p.in_width,
                           [&](int64_t ih, int64_t iw0, int64_t iw1, int64_t local) {
        for (int64_t iw = iw0; iw < iw1; ++iw) {
          const acc_t* row = acc.data() + (local + iw - iw0) * cin;
          scalar_t* dst = gi_data + gs.offset(n, 0, ih, iw);
          if (gs.c == 1)
            store_row(dst, row, cin);
          else
            for (int64_t c = 0; c < cin; ++c) dst[c * gs.c] = static_cast<scalar_t>(row[c]);
        }
      });
    }
  });
}

// ------------------------------------------------------------ grad_weight --

// Visits, in a fixed order, every (n, oh, ow) whose tap (kh, kw) reads inside
// the input: f(n, oh, ow, ih, iw).
template <typename F>
void for_each_valid_pixel(const ConvParams& p, int64_t kh, int64_t kw, F&& f) {
  const IndexRange oh_valid =
      valid_out_range(p.in_height, p.out_height, kh, p.stride_h, p.pad_top, p.dilation_h);
  const IndexRange ow_valid =
      valid_out_range(p.in_width, p.out_width, kw, p.stride_w, p.pad_left, p.dilation_w);
  for (int64_t n = 0; n < p.batch; ++n)
    for (int64_t oh = oh_valid.begin; oh < oh_valid.end; ++oh) {
      const int64_t ih = input_index(oh, kh, p.stride_h, p.pad_top, p.dilation_h);
      for (int64_t ow = ow_valid.begin; ow < ow_valid.end; ++ow)
        f(n, oh, ow, ih, input_index(ow, kw, p.stride_w, p.pad_left, p.dilation_w));
    }
}

// dst[i] = acc_t(src[i]), i < n: a copy, or a 16-bit widening (cpu::widen_to_float).
template <typename T, typename acc_t>
void widen(const T* src, acc_t* dst, int64_t n) {
  if constexpr (std::is_same_v<T, acc_t>)
    std::copy(src, src + n, dst);
  else
    cpu::widen_to_float(src, dst, n);
}

// An operand of grad_weight read where it lies: channel c of pixel (n, y, x)
// at data[n * s.n + c * s.c + y * s.h + x * s.w]. NHWC rows (s.c == 1) and
// NCHW planes (s.w == 1) are both read in place (copy_pixel_rows).
template <typename T>
struct PixelOperand {
  const T* data;
  Strides4 s;
};

template <typename T>
PixelOperand<T> pixel_operand(const Tensor& t) {
  return {t.data_ptr<T>(), Strides4(t)};
}

// Channels [0, channels) of a run of `count` pixels, one element apart in
// each plane (channel c at src[c * src_ld + k]), as rows of dst.
template <typename T, typename acc_t>
void transpose_run(const T* src, int64_t src_ld, int64_t count, int64_t channels, acc_t* dst,
                   int64_t dst_ld) {
  if constexpr (std::is_same_v<T, float> && std::is_same_v<acc_t, float>) {
    cpu::transpose_to_rows(src, src_ld, count, channels, dst, dst_ld);
  } else {
    for (int64_t k = 0; k < count; ++k)
      for (int64_t c = 0; c < channels; ++c)
        dst[k * dst_ld + c] = static_cast<acc_t>(src[c * src_ld + k]);
  }
}

// dst row j (dst_ld apart) = acc_t channels [0, channels) of the pixel whose
// channel 0 is at src.data + offsets[j], j < count: grad_weight's chunk
// copies. Contiguous channels are copied (widened) a pixel at a time; planes
// are transposed a run at a time, a run being consecutive pixels one element
// apart (a row of an NCHW plane, or several when the tap reads whole rows).
template <typename T, typename acc_t>
void copy_pixel_rows(const PixelOperand<T>& src, const int64_t* offsets, int64_t count,
                     int64_t channels, acc_t* dst, int64_t dst_ld) {
  if (src.s.c == 1) {
    for (int64_t j = 0; j < count; ++j) widen(src.data + offsets[j], dst + j * dst_ld, channels);
    return;
  }
  for (int64_t j = 0; j < count;) {
    int64_t end = j + 1;
    while (end < count && offsets[end] == offsets[end - 1] + 1) ++end;
    transpose_run(src.data + offsets[j], src.s.c, end - j, channels, dst + j * dst_ld, dst_ld);
    j = end;
  }
}

// Writes a grad_weight unit's sums, C_tap[i][co] at
// acc[(tap * block_rows + i) * row_len + co], to
//   dst[co * co_stride + i * ci_stride + tap_offset[tap]],  co < cog, i < rows.
// Sixteen output channels at a time, transposed through `scratch` (16 x rows
// x taps, in L1/L2) into the destination's own order: every read is a cache
// line of acc, and every write to dst a contiguous run of one output channel,
// all of its (ci, tap) values for a contiguous weight, one tap's ci values for
// a channels_last one. (Storing the sums one value at a time, Cin x taps
// apart or in sixteen interleaved streams, measured 20-60% of the GEMM's time
// on ASPP: each store missed.)
template <typename dst_t, typename acc_t>
void store_weight_sums(const acc_t* acc, int64_t block_rows, int64_t row_len, int64_t rows,
                       int64_t cog, int64_t taps, dst_t* dst, int64_t co_stride,
                       int64_t ci_stride, const int64_t* tap_offset, std::vector<acc_t>& scratch) {
  constexpr int64_t kChannels = 16;
  const int64_t run = rows * taps;
  scratch.resize(kChannels * run);
  bool taps_inner = ci_stride == taps;  // [co][ci][taps]
  for (int64_t tap = 0; tap < taps; ++tap) taps_inner = taps_inner && tap_offset[tap] == tap;
  const bool channels_inner = !taps_inner && ci_stride == 1;  // [co][taps][ci]
  // Position of (i, tap) in a scratch row: the destination's order where it
  // is one of the two above, else taps inner.
  const int64_t i_step = channels_inner ? 1 : taps, tap_step = channels_inner ? rows : 1;
  for (int64_t co0 = 0; co0 < cog; co0 += kChannels) {
    const int64_t n = std::min(kChannels, cog - co0);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t tap = 0; tap < taps; ++tap) {
        const acc_t* src = acc + (tap * block_rows + i) * row_len + co0;
        acc_t* to = scratch.data() + i * i_step + tap * tap_step;
        for (int64_t j = 0; j < n; ++j) to[j * run] = src[j];
      }
    for (int64_t j = 0; j < n; ++j) {
      dst_t* out = dst + (co0 + j) * co_stride;
      const acc_t* sums = scratch.data() + j * run;
      if (taps_inner) {
        store_row(out, sums, run);
      } else if (channels_inner) {
        for (int64_t tap = 0; tap < taps; ++tap) store_row(out + tap_offset[tap], sums + tap * rows, rows);
      } else {
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t tap = 0; tap < taps; ++tap)
            out[i * ci_stride + tap_offset[tap]] = static_cast<dst_t>(sums[i * taps + tap]);
      }
    }
  }
}

// dst[2j] = a[j], dst[2j + 1] = b[j] for j < n, a null row reading as zeros:
// two pixels' rows as the pairs of OuterGemmBf16Args.
inline void interleave_pairs(const BFloat16* a, const BFloat16* b, BFloat16* dst, int64_t n) {
  const BFloat16 zero(0.f);
  for (int64_t j = 0; j < n; ++j) {
    dst[2 * j] = a ? a[j] : zero;
    dst[2 * j + 1] = b ? b[j] : zero;
  }
}

// An operand of grad_weight_gemm (x or grad_y) as it is read: in place when
// its channels are contiguous (NHWC rows, any dtype) or, for float and
// double, when its plane rows are (NCHW planes, transposed a chunk at a
// time); otherwise an NHWC copy in its own dtype. Reading NCHW in place
// spares the two full NHWC copies, whose fresh pages alone cost 0.3-0.5 ms
// per MB here (bench/NOTES.md). The bfloat16 pair GEMM reads 16-bit rows, so
// 16-bit planes are copied.
template <typename scalar_t>
Tensor grad_weight_operand(const Tensor& t) {
  constexpr bool kPlanes = std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>;
  if (t.stride(1) == 1 || (kPlanes && t.stride(3) == 1)) return t;
  return to_nhwc<scalar_t>(t);
}

// grad_w[g*Cog + co, ci, tap] = sum_{valid pixels} x[n, ih, iw, g*Cig + ci] * grad_y[n, oh, ow, g*Cog + co].
// The GEMM depth is the pixel count: each output pixel is a rank-1 update of
// the transposed weight gradient of every tap that reads inside the image,
// C_tap[ci][co] += x[pixel through tap][ci] * grad_y[pixel][co] (outer_gemm).
//
// A unit owns a block of input channels of one group and a fixed segment of
// the output pixels, and keeps every tap's C block (taps x rows x Cout/g, at
// most kGradWeightAccBytes) while it walks its pixels in chunks:
//   - a chunk's grad_y rows are copied once into a contiguous buffer that all
//     taps then read (the tap loop inside the chunk loop reads grad_y once per
//     unit instead of once per tap), with zero columns up to a whole panel;
//   - per tap, the x rows of the chunk's valid pixels (the unit's channels)
//     are copied into a second buffer, so both operands of outer_gemm are
//     short sequential streams.
// Both copies read x and grad_y where they lie (copy_pixel_rows): NHWC rows
// of any dtype, widened to acc_t as they are copied, or float/double NCHW
// planes, transposed a run of pixels at a time, so neither operand needs a
// full NHWC copy (grad_weight_operand).
//
// kPairs (bfloat16 on AVX512_BF16): the copies stay bfloat16 and interleave
// the chunk's pixels two by two (2q, 2q + 1), the pairs of the vdpbf16ps
// outer_gemm (OuterGemmBf16Args). grad_y pairs are made once per chunk; per
// tap, a pair takes part when either pixel is valid, and a pixel that is not
// gets a zero x row (the multiply-adds it wastes are at most one per valid
// run of pixels and chunk end). Its grad_y is still multiplied, by zero: an
// infinite or NaN grad_y there gives NaN, as torch's zero padding does, where
// the other paths skip the pixel.
//
// Segments exist for parallelism when there are few channel blocks (64
// channels on a large map is one block): each segment sums its pixels into a
// partial, and the partials are added in segment order. The segment count
// depends on the shapes only, never on the thread count, so results are
// bitwise the same with any number of threads.
template <typename scalar_t, typename acc_t, bool kPairs = false, typename x_t, typename gy_t>
void grad_weight_gemm(const ConvParams& p, const PixelOperand<x_t>& x, const PixelOperand<gy_t>& gy,
                      Tensor& grad_weight) {
  static_assert(!kPairs || (std::is_same_v<x_t, BFloat16> && std::is_same_v<gy_t, BFloat16> &&
                            std::is_same_v<acc_t, float>),
                "the pair GEMM reads bfloat16 rows into float32 sums");
  TORCH_INTERNAL_ASSERT(!kPairs || (x.s.c == 1 && gy.s.c == 1), "the pair GEMM reads NHWC rows");
  using buf_t = std::conditional_t<kPairs, BFloat16, acc_t>;  // the copies' type
  const int64_t G = p.groups, cig = p.in_channels_per_group(), cog = p.out_channels_per_group();
  const int64_t taps = p.taps(), width = panel_width<acc_t>();
  const int64_t panels = panels_for<acc_t>(cog), row_len = panels * width;
  // Channel blocks: a multiple of the 6-row micro-tile, small enough for
  // every tap's C block to fit the budget, as even as possible so units
  // balance, and at most kGradWeightRows (96 measured best for 3x3 kernels:
  // 108 rows, their budget, was 1-5% slower on ASPP OS8). Each unit copies its
  // chunks' grad_y rows, and each copied value feeds rows x taps multiply-adds,
  // so a 1-D kernel of 2 or 3 taps takes up to kGradWeightReuse / taps rows:
  // fewer channel blocks, fewer copies of grad_y (WaveNet, channels_last:
  // k=2 94 -> 85-89 ms, k=3 137 -> 130-135 ms, bench/NOTES.md).
  const int64_t budget_rows =
      kGradWeightAccBytes / (taps * row_len * static_cast<int64_t>(sizeof(acc_t))) / 6 * 6;
  const int64_t row_cap = std::max(kGradWeightRows, kGradWeightReuse / taps);
  const int64_t max_rows = std::clamp<int64_t>(budget_rows, 6, row_cap);
  const int64_t row_blocks = (cig + max_rows - 1) / max_rows;
  const int64_t block_rows = ((cig + row_blocks - 1) / row_blocks + 5) / 6 * 6;
  // Pixel segments: enough units for kGradWeightUnits, each at least
  // kGradWeightSegmentPixels long, all partials within kGradWeightPartialBytes.
  const int64_t pixels = p.batch * p.out_height * p.out_width;
  const int64_t partial_bytes = grad_weight.numel() * static_cast<int64_t>(sizeof(acc_t));
  int64_t segments = (kGradWeightUnits + G * row_blocks - 1) / (G * row_blocks);
  segments = std::min(segments, std::max<int64_t>(1, pixels / kGradWeightSegmentPixels));
  segments = std::min(segments, std::max<int64_t>(1, kGradWeightPartialBytes / std::max<int64_t>(partial_bytes, 1)));
  const int64_t segment_pixels = (pixels + segments - 1) / segments;
  // Partials in the order of a contiguous weight, [segment][Cout][Cig][taps];
  // one segment writes grad_weight directly.
  Tensor partials;
  if (segments > 1)
    partials = cpu::workspace_empty({segments, p.out_channels, cig, taps},
                                    c10::CppTypeToScalarType<acc_t>::value);
  acc_t* partial_data = partials.defined() ? partials.data_ptr<acc_t>() : nullptr;
  const Strides4 ws(grad_weight);
  scalar_t* gw_data = grad_weight.data_ptr<scalar_t>();
  // Element offsets of each tap in grad_weight and in a partial.
  std::vector<int64_t> gw_tap_offset(taps), partial_tap_offset(taps);
  for (int64_t tap = 0; tap < taps; ++tap) {
    gw_tap_offset[tap] = ws.offset(0, 0, tap / p.kernel_width, tap % p.kernel_width);
    partial_tap_offset[tap] = tap;
  }
  // Buffer rows (per pixel, or per pixel pair: twice as long) are padded by
  // one panel so their stride is never a multiple of a large power of two
  // (rows 2^k bytes apart share a few L1 sets).
  const int64_t gy_ld = row_len + width, x_ld = block_rows + width;
  constexpr int64_t kPerSlot = kPairs ? 2 : 1;  // pixels per GEMM k step

  at::parallel_for(0, G * row_blocks * segments, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(taps * block_rows * row_len), store_scratch;
    std::vector<buf_t> gy_chunk(kGradWeightChunk * gy_ld), x_chunk(kGradWeightChunk * x_ld);
    std::vector<const buf_t*> x_rows(kGradWeightChunk), gy_rows(kGradWeightChunk);
    std::vector<int64_t> chunk_n(kGradWeightChunk), chunk_oh(kGradWeightChunk),
        chunk_ow(kGradWeightChunk), offsets(kGradWeightChunk);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t segment = unit % segments, block = (unit / segments) % row_blocks;
      const int64_t g = unit / (segments * row_blocks);
      const int64_t ci0 = block * block_rows, rows = std::min(block_rows, cig - ci0);
      const int64_t pix_begin = segment * segment_pixels;
      const int64_t pix_end = std::min(pixels, pix_begin + segment_pixels);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t c0 = pix_begin; c0 < pix_end; c0 += kGradWeightChunk) {
        const int64_t count = std::min(kGradWeightChunk, pix_end - c0);
        const int64_t slots = (count + kPerSlot - 1) / kPerSlot;
        // offsets[k]: channel g * cog of chunk pixel k in grad_y.
        for (int64_t k = 0; k < count; ++k) {
          const int64_t pix = c0 + k;
          chunk_ow[k] = pix % p.out_width;
          chunk_oh[k] = (pix / p.out_width) % p.out_height;
          chunk_n[k] = pix / (p.out_width * p.out_height);
          offsets[k] = gy.s.offset(chunk_n[k], g * cog, chunk_oh[k], chunk_ow[k]);
        }
        if constexpr (kPairs) {
          auto gy_row = [&](int64_t k) { return gy.data + offsets[k]; };
          for (int64_t s = 0; s < slots; ++s)
            interleave_pairs(gy_row(2 * s), 2 * s + 1 < count ? gy_row(2 * s + 1) : nullptr,
                             gy_chunk.data() + s * 2 * gy_ld, cog);
        } else {
          copy_pixel_rows(gy, offsets.data(), count, cog, gy_chunk.data(), gy_ld);
        }
        for (int64_t s = 0; s < slots; ++s) {
          buf_t* dst = gy_chunk.data() + s * kPerSlot * gy_ld;
          std::fill(dst + kPerSlot * cog, dst + kPerSlot * row_len, buf_t(0));
        }
        for (int64_t tap = 0; tap < taps; ++tap) {
          const int64_t kh = tap / p.kernel_width, kw = tap % p.kernel_width;
          const IndexRange oh_valid =
              valid_out_range(p.in_height, p.out_height, kh, p.stride_h, p.pad_top, p.dilation_h);
          const IndexRange ow_valid =
              valid_out_range(p.in_width, p.out_width, kw, p.stride_w, p.pad_left, p.dilation_w);
          // Offset of the unit's first x channel that chunk pixel k reads
          // through the tap, or -1 when it reads padding.
          auto x_offset = [&](int64_t k) -> int64_t {
            if (k >= count) return -1;
            const int64_t oh = chunk_oh[k], ow = chunk_ow[k];
            if (oh < oh_valid.begin || oh >= oh_valid.end || ow < ow_valid.begin || ow >= ow_valid.end)
              return -1;
            const int64_t ih = input_index(oh, kh, p.stride_h, p.pad_top, p.dilation_h);
            const int64_t iw = input_index(ow, kw, p.stride_w, p.pad_left, p.dilation_w);
            return x.s.offset(chunk_n[k], g * cig + ci0, ih, iw);
          };
          int64_t depth = 0;
          if constexpr (kPairs) {
            for (int64_t s = 0; s < slots; ++s) {
              const int64_t first = x_offset(2 * s), second = x_offset(2 * s + 1);
              if (first < 0 && second < 0) continue;
              BFloat16* dst = x_chunk.data() + depth * 2 * x_ld;
              interleave_pairs(first < 0 ? nullptr : x.data + first,
                               second < 0 ? nullptr : x.data + second, dst, rows);
              x_rows[depth] = dst;
              gy_rows[depth] = gy_chunk.data() + s * 2 * gy_ld;
              ++depth;
            }
          } else {
            // The valid pixels' offsets, then one copy of all their rows.
            for (int64_t k = 0; k < count; ++k) {
              const int64_t offset = x_offset(k);
              if (offset < 0) continue;
              offsets[depth] = offset;
              x_rows[depth] = x_chunk.data() + depth * x_ld;
              gy_rows[depth] = gy_chunk.data() + k * gy_ld;
              ++depth;
            }
            copy_pixel_rows(x, offsets.data(), depth, rows, x_chunk.data(), x_ld);
          }
          acc_t* c = acc.data() + tap * block_rows * row_len;
          if constexpr (kPairs)
            outer_gemm(cpu::OuterGemmBf16Args{rows, depth, panels, x_rows.data(), gy_rows.data(), c});
          else
            outer_gemm(OuterGemmArgs<acc_t>{rows, depth, panels, x_rows.data(), gy_rows.data(), c});
        }
      }
      if (partial_data) {
        acc_t* dst = partial_data + ((segment * p.out_channels + g * cog) * cig + ci0) * taps;
        store_weight_sums(acc.data(), block_rows, row_len, rows, cog, taps, dst, cig * taps, taps,
                          partial_tap_offset.data(), store_scratch);
      } else {
        scalar_t* dst = gw_data + ws.offset(g * cog, ci0, 0, 0);
        store_weight_sums(acc.data(), block_rows, row_len, rows, cog, taps, dst, ws.n, ws.c,
                          gw_tap_offset.data(), store_scratch);
      }
    }
  });
  if (!partial_data) return;
  // grad_w = partial[0] + partial[1] + ..., in segment order, walking the
  // partials sequentially (one output channel's Cig x taps values per step).
  const int64_t per_segment = p.out_channels * cig * taps;
  at::parallel_for(0, p.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t co = begin; co < end; ++co) {
      for (int64_t ci = 0; ci < cig; ++ci) {
        for (int64_t tap = 0; tap < taps; ++tap) {
          const int64_t r = (co * cig + ci) * taps + tap;
          acc_t sum = partial_data[r];
          for (int64_t s = 1; s < segments; ++s) sum += partial_data[s * per_segment + r];
          gw_data[co * ws.n + ci * ws.c + gw_tap_offset[tap]] = static_cast<scalar_t>(sum);
        }
      }
    }
  });
}

// Depthwise: grad_w[c, 0, tap] = sum_{valid pixels} grad_y[.., c] * x[.., c / mult].
template <typename scalar_t, typename acc_t, typename in_t>
void grad_weight_depthwise(const ConvParams& p, const in_t* x, const in_t* gy,
                           Tensor& grad_weight) {
  const int64_t cout = p.out_channels, cin = p.in_channels, mult = p.out_channels_per_group();
  const int64_t blocks = (cout + kChannelBlock - 1) / kChannelBlock;
  const Strides4 ws(grad_weight);
  scalar_t* gw_data = grad_weight.data_ptr<scalar_t>();

  at::parallel_for(0, p.taps() * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(kChannelBlock);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t block = unit % blocks, tap = unit / blocks;
      const int64_t kh = tap / p.kernel_width, kw = tap % p.kernel_width;
      const int64_t c0 = block * kChannelBlock, c1 = std::min(cout, c0 + kChannelBlock);
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for_each_valid_pixel(p, kh, kw, [&](int64_t n, int64_t oh, int64_t ow, int64_t ih, int64_t iw) {
        const in_t* g_px = gy + ((n * p.out_height + oh) * p.out_width + ow) * cout;
        const in_t* x_px = x + ((n * p.in_height + ih) * p.in_width + iw) * cin;
        if (mult == 1) {
          depthwise_row(acc.data(), g_px + c0, x_px + c0, c1 - c0);
        } else {
          for (int64_t c = c0; c < c1; ++c)
            acc[c - c0] += static_cast<acc_t>(g_px[c]) * static_cast<acc_t>(x_px[c / mult]);
        }
      });
      for (int64_t c = c0; c < c1; ++c)
        gw_data[ws.offset(c, 0, kh, kw)] = static_cast<scalar_t>(acc[c - c0]);
    }
  });
}

// -------------------------------------------------------------- grad_bias --


// grad_b[c] = sum_{n, oh, ow} grad_y[n, oh, ow, c], per channel block in a
// fixed order: per image first, then across images.
template <typename scalar_t, typename acc_t, typename gy_t>
void grad_bias_sum(const ConvParams& p, const PixelOperand<gy_t>& gy, Tensor& grad_bias) {
  const int64_t cout = p.out_channels;
  const int64_t blocks = (cout + kChannelBlock - 1) / kChannelBlock;
  scalar_t* gb_data = grad_bias.data_ptr<scalar_t>();
  const int64_t gb_stride = grad_bias.stride(0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> total(kChannelBlock), image(kChannelBlock);
    for (int64_t block = begin; block < end; ++block) {
      const int64_t c0 = block * kChannelBlock, c1 = std::min(cout, c0 + kChannelBlock);
      std::fill(total.begin(), total.end(), acc_t(0));
      for (int64_t n = 0; n < p.batch; ++n) {
        std::fill(image.begin(), image.end(), acc_t(0));
        for (int64_t oh = 0; oh < p.out_height; ++oh)
          for (int64_t ow = 0; ow < p.out_width; ++ow) {
            const gy_t* src = gy.data + gy.s.offset(n, 0, oh, ow);
            if (gy.s.c == 1)
              for (int64_t c = c0; c < c1; ++c) image[c - c0] += static_cast<acc_t>(src[c]);
            else
              for (int64_t c = c0; c < c1; ++c) image[c - c0] += static_cast<acc_t>(src[c * gy.s.c]);
          }
        for (int64_t c = c0; c < c1; ++c) total[c - c0] += image[c - c0];
      }
      for (int64_t c = c0; c < c1; ++c) gb_data[c * gb_stride] = static_cast<scalar_t>(total[c - c0]);
    }
  });
}

// grad_input's counterpart of forward_bf16_dot.
template <typename scalar_t>
bool grad_input_bf16_dot(const ConvParams& p, const Tensor& grad_output, const Tensor& weight,
                         Tensor& grad_input) {
  if constexpr (!std::is_same_v<scalar_t, BFloat16>) {
    return false;
  } else {
    if (!cpu::bf16_dot_active()) return false;
    const PairRows gy = bf16_pair_rows(grad_output, p.groups,
                                       planes_16bit_in_gemm(p, grad_output, grad_output.stride(3), grad_input));
    const Tensor w = pack_weight_panels<BFloat16, cpu::kBf16PanelColumns, 2>(weight, p, /*transposed=*/true);
    grad_input_gemm<scalar_t, float, BFloat16, /*kPairs=*/true>(p, gy.rows, gy.depth, w.data_ptr<BFloat16>(),
                                               grad_input);
    return true;
  }
}

std::tuple<Tensor, Tensor, Tensor> conv_backward_cpu(
    const Tensor& grad_output, const Tensor& input, const Tensor& weight, c10::IntArrayRef stride,
    c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
    std::array<bool, 3> output_mask) {
  const ConvParams p = make_conv_params("atrous_conv_backward", input, weight, c10::nullopt,
                                        stride, padding, dilation, groups);
  check_grad_output("atrous_conv_backward", p, grad_output, input);
  auto [grad_input, grad_weight, grad_bias] =
      allocate_gradients(p, input, weight, output_mask);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "atrous_conv_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool depthwise = p.in_channels_per_group() == 1;
    // grad_output as NHWC rows, each made once and only if a path below reads
    // it (a float or double grad_input reads grad_output in place, see
    // gemm_reads_in_place): in acc_t where a depthwise kernel or grad_input wants float rows
    // (depthwise_reads_16bit / widen_in_gemm false for a 16-bit tensor), in
    // its own dtype for the other paths and grad_bias (16-bit rows are
    // widened as they are read; a channels_last grad_output is used in
    // place). The bfloat16 dot-product grad_input reads its own pair copy.
    Tensor gy_acc, gy_own;
    auto gy_acc_rows = [&]() -> const Tensor& {
      if (!gy_acc.defined()) gy_acc = to_nhwc<acc_t>(grad_output);
      return gy_acc;
    };
    auto gy_own_rows = [&]() -> const Tensor& {
      if (!gy_own.defined()) gy_own = to_nhwc<scalar_t>(grad_output);
      return gy_own;
    };
    const bool planes = depthwise && depthwise_on_planes<scalar_t>(input);
    if (output_mask[0] && grad_input.numel() > 0) {
      if (planes) {
        with_plane_type<scalar_t>([&](auto type) {
          grad_input_depthwise_planes<decltype(type)>(p, grad_output, weight, grad_input);
        });
      } else if (depthwise) {
        const Tensor w = pack_weight_depthwise<acc_t>(weight, p);
        if (depthwise_reads_16bit<scalar_t, acc_t>(p))
          grad_input_depthwise<scalar_t, acc_t>(p, gy_own_rows().data_ptr<scalar_t>(),
                                                w.data_ptr<acc_t>(), grad_input);
        else
          grad_input_depthwise<scalar_t, acc_t>(p, gy_acc_rows().data_ptr<acc_t>(),
                                                w.data_ptr<acc_t>(), grad_input);
      } else if (!grad_input_bf16_dot<scalar_t>(p, grad_output, weight, grad_input)) {
        const Tensor w = pack_weight_panels<acc_t, panel_width<acc_t>(), 1>(weight, p, /*transposed=*/true);
        const int64_t depth = p.out_channels_per_group();
        if (widen_in_gemm<scalar_t, acc_t>(p, p.in_height * p.in_width, p.in_channels_per_group()))
          grad_input_gemm<scalar_t, acc_t, scalar_t>(
              p,
              pixel_rows<scalar_t>(planes_16bit_in_gemm(p, grad_output, grad_output.stride(3), grad_input)
                                       ? grad_output
                                       : gy_own_rows(),
                                   p.groups),
              depth, w.data_ptr<acc_t>(), grad_input);
        else
          grad_input_gemm<scalar_t, acc_t, acc_t>(
              p,
              pixel_rows<acc_t>(gemm_reads_in_place<scalar_t, acc_t>(grad_output, grad_output.stride(3))
                                    ? grad_output
                                    : gy_acc_rows(),
                                p.groups),
              depth, w.data_ptr<acc_t>(), grad_input);
      }
    }
    // grad_weight (GEMM path) and grad_bias widen what they read, so they take
    // grad_output's NHWC rows when grad_input already made them, and
    // otherwise grad_output where it lies when grad_weight_operand allows.
    Tensor gy_operand;
    auto for_gy_source = [&](auto&& f) {
      if (gy_acc.defined()) return f(pixel_operand<acc_t>(gy_acc));
      if (gy_own.defined()) return f(pixel_operand<scalar_t>(gy_own));
      if (!gy_operand.defined()) gy_operand = grad_weight_operand<scalar_t>(grad_output);
      f(pixel_operand<scalar_t>(gy_operand));
    };
    if (output_mask[1]) {
      if (planes) {
        with_plane_type<scalar_t>([&](auto type) {
          grad_weight_depthwise_planes<decltype(type)>(p, input, grad_output, grad_weight);
        });
      } else if (depthwise) {
        if (depthwise_reads_16bit<scalar_t, acc_t>(p)) {
          const Tensor x = to_nhwc<scalar_t>(input);
          grad_weight_depthwise<scalar_t, acc_t>(p, x.data_ptr<scalar_t>(),
                                                 gy_own_rows().data_ptr<scalar_t>(), grad_weight);
        } else {
          const Tensor x = to_nhwc<acc_t>(input);
          grad_weight_depthwise<scalar_t, acc_t>(p, x.data_ptr<acc_t>(),
                                                 gy_acc_rows().data_ptr<acc_t>(), grad_weight);
        }
      } else {
        const Tensor x = grad_weight_operand<scalar_t>(input);
        for_gy_source([&](const auto& gy) {
          using gy_t = std::remove_cv_t<std::remove_pointer_t<decltype(gy.data)>>;
          if constexpr (std::is_same_v<scalar_t, BFloat16> && std::is_same_v<gy_t, BFloat16>) {
            if (cpu::bf16_dot_active()) {
              grad_weight_gemm<scalar_t, acc_t, /*kPairs=*/true>(p, pixel_operand<scalar_t>(x), gy,
                                                                 grad_weight);
              return;
            }
          }
          grad_weight_gemm<scalar_t, acc_t>(p, pixel_operand<scalar_t>(x), gy, grad_weight);
        });
      }
    }
    if (output_mask[2])
      for_gy_source([&](const auto& gy) { grad_bias_sum<scalar_t, acc_t>(p, gy, grad_bias); });
  });
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(atrous, CPU, m) {
  m.impl("conv_forward", &conv_forward_cpu);
  m.impl("conv_backward", &conv_backward_cpu);
}

}  // namespace atrous
