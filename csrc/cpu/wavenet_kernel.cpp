// CPU kernels of WaveNet (atrous_cuda/models/wavenet.py): the gated
// activation unit, and incremental generation that advances every layer of a
// stack by one or more time steps in one call.
//
// Exactness. `WaveNet.forward` runs its convs through atrous::conv_forward
// (gather_gemm, csrc/cpu/gather_gemm.h) and its gates through
// atrous::gated_activation below. A step computes each value with the same
// operations in the same order, so teacher-forced steps equal the forward
// bitwise:
//   - every conv output c of a pixel is the chain
//       init(bias[c]), then for each valid tap in order, for k in order: acc += a[k] * B[k][c]
//     whatever the tiling (tiled_gather_gemm in atrous_conv_kernel.cpp). A
//     step multiplies the same weights, packed in the same panel layout, one
//     C row per sequence, with tiles of its own (step_tile) that compute
//     that very chain per element, and skips exactly the taps whose input
//     lies before t = 0 (the forward's causal padding);
//   - the gate's value depends on its two inputs only, never on its position
//     in a row (tails go through the same vector code, zero-padded);
//   - the residual add, the running sum of skips, the conditioning adds and
//     the ReLUs are single operations on the same operands, in the forward's
//     order.
// The residual and skip 1x1 convs of a layer read the same z and are one
// GEMM here (their columns side by side), and a dilated conv's filter and
// gate panels come in pairs: each column's chain is unchanged.
//
// State. A layer with dilation d and k taps reads its inputs at
// t, t - d, ..., t - (k-1) d, so it keeps the last history = (k-1) d inputs
// in a ring: input t' lives in slot t' mod history. All rings are one tensor
//   state[slot_offset(layer) + slot][n][c]     (slots, N, residual channels)
// with a sequence's channels contiguous (the A row of the next GEMM), and the
// steps taken are an int64 `position` tensor that the ops advance with them.
//
// Threads. At a few sequences the weights (2.5 MB in float32 for the
// nv-wavenet-sized model) are what a step reads most, and they do not fit one
// core's L2: a team of threads shares the columns of every product (see "the
// step team" below). From kRowSplitBatch sequences the threads share the rows.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <atomic>
#include <memory>
#include <limits>
#include <vector>

#include "gather_gemm.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace atrous {
namespace {

using at::Tensor;

// ------------------------------------------------------ gated activation --
//
// z = tanh(f) * sigmoid(g) for float is evaluated in double and rounded once,
// which makes it accurate to about half an ulp of float. Both functions come
// from exponentials of non-negative arguments y <= 220:
//   exp(y) = 2^k * exp(r), k = round(y / ln 2), r = y - k ln 2 in [-0.35, 0.35]
//   (ln 2 in two parts, so r is exact to double rounding), where the Taylor
//   polynomial of degree 11 is within 7e-15 (0.35^12 / 12!) of exp(r); 2^k is
//   put into the exponent bits directly.
//   With a = |f| capped at 20 (tanh(20) = 1 - 8e-18, 1 to double precision)
//   and e = exp(2a):  tanh(a) = (e - 1) / (e + 1). For a < 2^-9, where e - 1
//   would lose bits, the series a - a^3/3 + 2a^5/15 (next term 17a^7/315,
//   relative 1e-17) takes the place of e - 1 as t * (e + 1).
//   With E = exp(|g|), |g| capped at 110 (sigmoid(-110) = 1.7e-48 rounds to
//   0.0f): sigmoid(g) = E / (E + 1) for g >= 0 and 1 / (E + 1) for g < 0.
//   So z = sign(f) * (e - 1) * (g >= 0 ? E : 1) / ((e + 1) * (E + 1)): one
//   division. The largest intermediate, (e + 1)(E + 1) < 1e66, is far from
//   overflow.
// NaN in f or g gives NaN; infinities give the limits; tanh(-0) = -0. Every
// element, the tail of a row included, goes through the same vector code, so
// a value never depends on where it sits (a step's 64 channels and a
// forward's long rows agree bitwise). double uses libm's tanh and exp, one
// element at a time.
template <int VB>
struct GateVec {
  typedef double vd __attribute__((vector_size(VB)));
  typedef int64_t vi __attribute__((vector_size(VB)));
  typedef float vf __attribute__((vector_size(VB / 2)));
  static constexpr int kLanes = VB / 8;
};

template <int VB>
inline typename GateVec<VB>::vd exp_nonnegative(typename GateVec<VB>::vd y) {
  using vd = typename GateVec<VB>::vd;
  using vi = typename GateVec<VB>::vi;
  constexpr double kLog2e = 1.4426950408889634, kLn2Hi = 6.93147180369123816490e-01,
                   kLn2Lo = 1.90821492927058770002e-10;
  constexpr double kShifter = 0x1.8p52;  // adding it rounds to an integer held in the low bits
  constexpr double c[12] = {1.0,          1.0,           1.0 / 2,        1.0 / 6,
                            1.0 / 24,     1.0 / 120,     1.0 / 720,      1.0 / 5040,
                            1.0 / 40320,  1.0 / 362880,  1.0 / 3628800,  1.0 / 39916800};
  const vd shifted = y * kLog2e + kShifter;
  const vd k = shifted - kShifter;
  const vd r = (y - k * kLn2Hi) - k * kLn2Lo;
  vd p = r * c[11] + c[10];
  for (int i = 9; i >= 0; --i) p = p * r + c[i];
  const vi two_k = (((vi)shifted - (vi)(vd{} + kShifter)) + 1023) << 52;
  return p * (vd)two_k;
}

// 1 / d for d in [4, 1e66]. A division of 8 doubles occupies AVX-512's
// divider for 16 cycles, more than the rest of a gate vector's arithmetic;
// there, the 14-bit estimate (vrcp14pd) refined by two Newton steps
// r' = r + r (1 - d r), each squaring the relative error (2^-14 -> 2^-28 ->
// 2^-56, plus the steps' own rounding, a few 2^-53) costs 5 pipelined
// operations instead. That error stays far below the 7e-15 of the
// polynomial, so the float result is still the double value rounded once
// (test_gated_activation_float32_is_correctly_rounded_to_an_ulp). Narrower
// vectors have no estimate for doubles (the float one cannot hold 1e66): they
// divide.
template <int VB>
inline typename GateVec<VB>::vd reciprocal(typename GateVec<VB>::vd d) {
  using vd = typename GateVec<VB>::vd;
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (VB == 64) {
    vd r = (vd)__builtin_ia32_rcp14pd512_mask((__v8df)d, (__v8df)(vd{}), (__mmask8)0xFF);
    r = r + r * (1.0 - d * r);
    r = r + r * (1.0 - d * r);
    return r;
  }
#endif
  return 1.0 / d;
}

template <int VB>
inline void gate_vector(const float* f_in, const float* g_in, float* z_out) {
  using V = GateVec<VB>;
  using vd = typename V::vd;
  using vi = typename V::vi;
  typename V::vf f32, g32;
  std::memcpy(&f32, f_in, sizeof(f32));
  std::memcpy(&g32, g_in, sizeof(g32));
  const vd f = __builtin_convertvector(f32, vd);
  const vd g = __builtin_convertvector(g32, vd);
  const vi sign_bit = vi{} + INT64_MIN;
  vd a = (vd)((vi)f & ~sign_bit);
  a = a < 20.0 ? a : 20.0;  // NaN becomes 20 here; restored below
  const vd e = exp_nonnegative<VB>(a + a);
  const vd a2 = a * a;
  const vd t_small = a + a * a2 * (-1.0 / 3 + a2 * (2.0 / 15));
  const vd tanh_numerator = a < 0x1p-9 ? t_small * (e + 1.0) : e - 1.0;
  vd ga = (vd)((vi)g & ~sign_bit);
  ga = ga < 110.0 ? ga : 110.0;
  const vd big = exp_nonnegative<VB>(ga);
  const vd sigmoid_numerator = g < 0 ? vd{} + 1.0 : big;
  const vd z_abs = tanh_numerator * sigmoid_numerator * reciprocal<VB>((e + 1.0) * (big + 1.0));
  vd z = (vd)((vi)z_abs | ((vi)f & sign_bit));
  // NaN in, NaN out: one select per input. GCC turned the single select on
  // (f != f) | (g != g) into a scalar compare per lane (a third of the
  // gate's instructions); a select on one comparison stays a vector blend.
  z = f != f ? f : z;
  z = g != g ? g : z;
  const typename V::vf z32 = __builtin_convertvector(z, typename V::vf);
  std::memcpy(z_out, &z32, sizeof(z32));
}

template <int VB>
inline void gate_row_impl(const float* f, const float* g, float* z, int64_t n) {
  constexpr int kLanes = GateVec<VB>::kLanes;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) gate_vector<VB>(f + i, g + i, z + i);
  if (i < n) {  // the tail, zero-padded to a whole vector
    float fb[kLanes] = {}, gb[kLanes] = {}, zb[kLanes];
    std::copy(f + i, f + n, fb);
    std::copy(g + i, g + n, gb);
    gate_vector<VB>(fb, gb, zb);
    std::copy(zb, zb + (n - i), z + i);
  }
}

__attribute__((flatten)) void gate_row_baseline(const float* f, const float* g, float* z, int64_t n) {
  gate_row_impl<16>(f, g, z, n);
}
#if defined(__x86_64__)
__attribute__((target("avx2,fma"), flatten)) void gate_row_avx2(const float* f, const float* g,
                                                                 float* z, int64_t n) {
  gate_row_impl<32>(f, g, z, n);
}
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma"), flatten)) void gate_row_avx512(
    const float* f, const float* g, float* z, int64_t n) {
  gate_row_impl<64>(f, g, z, n);
}
#endif

// The entry point for gather_gemm's active instruction set, which the gate,
// the step GEMM and the sampling follow so that a forward and a step in one
// process compile their values alike (cpu::set_cpu_isa changes all of them).
// ATROUS_ACTIVE_ISA(Fn, name) picks among name_baseline, name_avx2 and
// name_avx512 (only name_baseline exists off x86).
#if defined(__x86_64__)
template <typename Fn>
Fn for_active_isa(Fn baseline, Fn avx2, Fn avx512) {
  const std::string isa = cpu::cpu_isa();
  if (isa == "avx512" || isa == "avx512_bf16") return avx512;
  if (isa == "avx2") return avx2;
  return baseline;
}
#define ATROUS_ACTIVE_ISA(Fn, name) for_active_isa<Fn>(name##_baseline, name##_avx2, name##_avx512)
#else
#define ATROUS_ACTIVE_ISA(Fn, name) static_cast<Fn>(name##_baseline)
#endif

using GateRowFn = void (*)(const float*, const float*, float*, int64_t);
GateRowFn active_gate_row() { return ATROUS_ACTIVE_ISA(GateRowFn, gate_row); }

inline double gate_scalar(double f, double g) {
  return std::tanh(f) * (1.0 / (1.0 + std::exp(-g)));
}

// z[i] = tanh(f[i]) * sigmoid(g[i]), i < n.
struct GateRow {
  GateRowFn float_row = active_gate_row();
  void operator()(const float* f, const float* g, float* z, int64_t n) const { float_row(f, g, z, n); }
  void operator()(const double* f, const double* g, double* z, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) z[i] = gate_scalar(f[i], g[i]);
  }
};

void check_gate_input(const Tensor& pre) {
  TORCH_CHECK(pre.dim() >= 2, "gated_activation: expected pre of at least 2 dimensions (N, 2 * G, ...), got ",
              pre.dim(), "-D");
  TORCH_CHECK(pre.size(1) % 2 == 0,
              "gated_activation: expected pre with an even number of channels (filter and gate halves), got ",
              pre.size(1));
  TORCH_CHECK(at::isFloatingType(pre.scalar_type()),
              "gated_activation: expected a floating-point pre, got ", pre.scalar_type());
}

// The rows of gated_activation: z row (n, c) from pre rows (n, c) and (n, G + c), `inner` long.
template <typename scalar_t>
void gate_planes(const scalar_t* src, scalar_t* dst, int64_t batch, int64_t gates, int64_t inner) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const GateRow gate_row;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, inner));
  at::parallel_for(0, batch * gates, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> f_row, g_row, z_row;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / gates, c = row % gates;
      const scalar_t* f = src + (n * 2 * gates + c) * inner;
      const scalar_t* g = f + gates * inner;
      scalar_t* out = dst + row * inner;
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        gate_row(f, g, out, inner);
      } else {  // 16-bit: widened to float, rounded back once
        f_row.assign(f, f + inner);
        g_row.assign(g, g + inner);
        z_row.resize(inner);
        gate_row(f_row.data(), g_row.data(), z_row.data(), inner);
        std::copy(z_row.begin(), z_row.end(), out);
      }
    }
  });
}

// pre (N, 2G, ...) -> z (N, G, ...), z[n][c][i] = tanh(pre[n][c][i]) * sigmoid(pre[n][G + c][i]).
Tensor gated_activation_cpu(const Tensor& pre_in) {
  check_gate_input(pre_in);
  const Tensor pre = pre_in.contiguous();
  auto sizes = pre.sizes().vec();
  const int64_t batch = sizes[0], gates = sizes[1] / 2;
  sizes[1] = gates;
  Tensor z = at::empty(sizes, pre.options());
  const int64_t inner = gates == 0 || batch == 0 ? 0 : pre.numel() / (batch * 2 * gates);
  if (z.numel() == 0) return z;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, pre.scalar_type(), "gated_activation", [&] {
    gate_planes(pre.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(), batch, gates, inner);
  });
  return z;
}

// ------------------------------------------------------------ the plan --
//
// wavenet_pack turns the module's weights into one flat tensor of packed
// gather_gemm panels and biases (`packed`, the model's dtype) and an int64
// `plan` that says where everything is. The kernels read both on every call;
// packing happens once per generation (the Python side re-packs when a
// parameter changes).
enum PlanField : int64_t {
  kPlanVersion,
  kInChannels,
  kResidual,
  kGates,
  kSkip,
  kOutChannels,
  kTaps,
  kLayers,
  kSlots,        // ring-buffer slots of all layers
  kWeightsBf16,  // 1: the weight panels are bfloat16 (two to a float of `packed`), biases float
  kPackedSize,   // elements of `packed`
  kInputW,
  kInputB,
  kHiddenW,
  kHiddenB,
  kOutputW,
  kOutputB,
  kHeaderFields
};
enum LayerField : int64_t {
  kDilation,
  kSlotOffset,
  kHistory,
  kConvW,     // [tap][panel pairs: filter panel p, gate panel p][R][width]
  kConvB,     // the same pairs: 16 filter biases, 16 gate biases, ...
  kResSkipW,  // [panels of R (residual), then of S (skip)][G][width]
  kResSkipB,
  kLayerFields
};
constexpr int64_t kPlanFormat = 5;

template <typename T>
constexpr int64_t kWidth = cpu::panel_width<T>();

// Elements of a padded C row of `cols` columns.
template <typename T>
int64_t padded(int64_t cols) {
  return cpu::panels_for<T>(cols) * kWidth<T>;
}

struct Plan {
  const int64_t* v;
  int64_t operator[](PlanField f) const { return v[f]; }
  int64_t layer(int64_t l, LayerField f) const { return v[kHeaderFields + l * kLayerFields + f]; }
};

Plan read_plan(const Tensor& plan) {
  TORCH_CHECK(plan.scalar_type() == at::kLong && plan.dim() == 1 && plan.is_contiguous() &&
                  plan.device().is_cpu() && plan.numel() >= kHeaderFields,
              "wavenet: expected plan to be the int64 plan returned by wavenet_pack");
  Plan p{plan.data_ptr<int64_t>()};
  TORCH_CHECK(p[kPlanVersion] == kPlanFormat && p[kLayers] >= 1 && p[kLayers] <= plan.numel() &&
                  plan.numel() == kHeaderFields + p[kLayers] * kLayerFields,
              "wavenet: expected plan to be the int64 plan returned by wavenet_pack (of this build)");
  return p;
}

// Appends B[k][col] = w[col * col_stride + k * k_stride] (k < depth, col <
// cols) as gather_gemm panels [panel][k][width], zero past the columns, and
// returns its offset.
template <typename T>
int64_t append_panels(std::vector<T>& out, const T* w, int64_t col_stride, int64_t k_stride,
                      int64_t depth, int64_t cols) {
  const int64_t offset = static_cast<int64_t>(out.size()), panels = cpu::panels_for<T>(cols);
  out.resize(out.size() + panels * depth * kWidth<T>, T(0));
  T* dst = out.data() + offset;
  for (int64_t panel = 0; panel < panels; ++panel)
    for (int64_t k = 0; k < depth; ++k)
      for (int64_t j = 0; j < kWidth<T>; ++j) {
        const int64_t col = panel * kWidth<T> + j;
        if (col < cols) dst[(panel * depth + k) * kWidth<T> + j] = w[col * col_stride + k * k_stride];
      }
  return offset;
}

// append_panels with the panels rounded to bfloat16 (nearest even), two to
// a float of `out`; the offset counts floats, as every offset of the plan.
int64_t append_panels_bf16(std::vector<float>& out, const float* w, int64_t col_stride, int64_t k_stride,
                           int64_t depth, int64_t cols) {
  std::vector<float> panels;
  append_panels(panels, w, col_stride, k_stride, depth, cols);
  const int64_t offset = static_cast<int64_t>(out.size());
  out.resize(out.size() + panels.size() / 2);  // a whole number of 16-wide panel rows: even
  auto* dst = reinterpret_cast<c10::BFloat16*>(out.data() + offset);
  for (size_t i = 0; i < panels.size(); ++i) dst[i] = c10::BFloat16(panels[i]);
  return offset;
}

// The weight panels of `packed`: in the weights' dtype, or bfloat16 (float32 weights only).
inline int64_t append_weight_panels(std::vector<float>& out, bool bf16, const float* w, int64_t col_stride,
                                    int64_t k_stride, int64_t depth, int64_t cols) {
  return bf16 ? append_panels_bf16(out, w, col_stride, k_stride, depth, cols)
              : append_panels(out, w, col_stride, k_stride, depth, cols);
}
inline int64_t append_weight_panels(std::vector<double>& out, bool bf16, const double* w, int64_t col_stride,
                                    int64_t k_stride, int64_t depth, int64_t cols) {
  TORCH_INTERNAL_ASSERT(!bf16, "bfloat16 panels of float64 weights");
  return append_panels(out, w, col_stride, k_stride, depth, cols);
}

template <typename T>
int64_t append_row(std::vector<T>& out, const T* values, int64_t cols) {
  const int64_t offset = static_cast<int64_t>(out.size());
  out.resize(out.size() + padded<T>(cols), T(0));
  std::copy(values, values + cols, out.data() + offset);
  return offset;
}

// A conv1d weight (out, in, taps) of the expected sizes, contiguous in the model's dtype.
Tensor conv_weight(const Tensor& w, const char* name, int64_t out, int64_t in, int64_t taps,
                   at::ScalarType dtype) {
  TORCH_CHECK(w.dim() == 3 && w.size(0) == out && w.size(1) == in && w.size(2) == taps,
              "wavenet_pack: expected ", name, " of size (", out, ", ", in, ", ", taps, "), got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == dtype && w.device().is_cpu(), "wavenet_pack: expected ", name,
              " to be a CPU tensor of dtype ", dtype, ", got ", w.scalar_type(), " on ", w.device());
  return w.contiguous();
}

Tensor conv_bias(const Tensor& b, const char* name, int64_t out, at::ScalarType dtype) {
  TORCH_CHECK(b.dim() == 1 && b.size(0) == out, "wavenet_pack: expected ", name, " of size (", out,
              "), got ", b.sizes());
  TORCH_CHECK(b.scalar_type() == dtype && b.device().is_cpu(), "wavenet_pack: expected ", name,
              " to be a CPU tensor of dtype ", dtype, ", got ", b.scalar_type(), " on ", b.device());
  return b.contiguous();
}

std::tuple<Tensor, Tensor> wavenet_pack_cpu(const Tensor& input_w, const Tensor& input_b,
                                            at::TensorList conv_w, at::TensorList conv_b,
                                            at::TensorList residual_w, at::TensorList residual_b,
                                            at::TensorList skip_w, at::TensorList skip_b,
                                            const Tensor& hidden_w, const Tensor& hidden_b,
                                            const Tensor& output_w, const Tensor& output_b,
                                            c10::IntArrayRef dilations,
                                            c10::optional<at::ScalarType> weights_dtype) {
  const int64_t layers = static_cast<int64_t>(dilations.size());
  TORCH_CHECK(layers >= 1, "wavenet_pack: expected at least one layer, got no dilations");
  TORCH_CHECK(static_cast<int64_t>(conv_w.size()) == layers && static_cast<int64_t>(conv_b.size()) == layers &&
                  static_cast<int64_t>(residual_w.size()) == layers &&
                  static_cast<int64_t>(residual_b.size()) == layers &&
                  static_cast<int64_t>(skip_w.size()) == layers && static_cast<int64_t>(skip_b.size()) == layers,
              "wavenet_pack: expected one conv, residual and skip weight and bias per dilation (", layers, ")");
  const at::ScalarType dtype = input_w.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble,
              "wavenet_pack: expected float32 or float64 weights, got ", dtype);
  TORCH_CHECK(input_w.dim() == 3 && conv_w[0].dim() == 3 && skip_w[0].dim() == 3 && output_w.dim() == 3,
              "wavenet_pack: expected conv1d weights (out, in, taps)");
  const int64_t in = input_w.size(1), R = input_w.size(0), G2 = conv_w[0].size(0), taps = conv_w[0].size(2);
  const int64_t S = skip_w[0].size(0), out = output_w.size(0);
  TORCH_CHECK(G2 % 2 == 0, "wavenet_pack: expected conv weights with an even number of output channels, got ", G2);
  const int64_t G = G2 / 2;
  const bool bf16 = weights_dtype.has_value() && *weights_dtype != dtype;
  TORCH_CHECK(!bf16 || (*weights_dtype == at::kBFloat16 && dtype == at::kFloat),
              "wavenet_pack: expected weights_dtype to be None, the weights' dtype or bfloat16 (with float32 "
              "weights), got ", *weights_dtype, " for ", dtype, " weights");
  std::vector<int64_t> plan(kHeaderFields + layers * kLayerFields, 0);
  plan[kWeightsBf16] = bf16;
  plan[kPlanVersion] = kPlanFormat;
  plan[kInChannels] = in;
  plan[kResidual] = R;
  plan[kGates] = G;
  plan[kSkip] = S;
  plan[kOutChannels] = out;
  plan[kTaps] = taps;
  plan[kLayers] = layers;
  Tensor packed;
  AT_DISPATCH_FLOATING_TYPES(dtype, "wavenet_pack", [&] {
    using T = scalar_t;
    std::vector<T> buf;
    auto weights = [&](const Tensor& w, const char* name, int64_t o, int64_t i, int64_t k) {
      return conv_weight(w, name, o, i, k, dtype);
    };
    // 1x1 conv (o, i, 1): B[k][col] = w[col][k].
    // B[k][col] = w[col * col_stride + k * k_stride], in the weights' dtype or bfloat16.
    auto panels = [&](const T* w, int64_t col_stride, int64_t k_stride, int64_t depth, int64_t cols) {
      return append_weight_panels(buf, bf16, w, col_stride, k_stride, depth, cols);
    };
    auto pointwise = [&](const Tensor& w) { return panels(w.data_ptr<T>(), w.size(1), 1, w.size(1), w.size(0)); };
    auto bias = [&](const Tensor& b, const char* name, int64_t o) {
      return append_row(buf, conv_bias(b, name, o, dtype).data_ptr<T>(), o);
    };
    plan[kInputW] = pointwise(weights(input_w, "input_weight", R, in, 1));
    plan[kInputB] = bias(input_b, "input_bias", R);
    int64_t slots = 0;
    for (int64_t l = 0; l < layers; ++l) {
      int64_t* lp = plan.data() + kHeaderFields + l * kLayerFields;
      TORCH_CHECK(dilations[l] >= 1, "wavenet_pack: expected dilations >= 1, got ", dilations[l]);
      lp[kDilation] = dilations[l];
      lp[kSlotOffset] = slots;
      lp[kHistory] = (taps - 1) * dilations[l];
      slots += lp[kHistory];
      const Tensor cw = weights(conv_w[l], "conv_weight", G2, R, taps);
      // Tap m: B_m[k][col] = w[col][k][m] in pairs of panels, filter channels
      // [16p, 16p + 16) then the gate channels of the same numbers, so that the
      // panels a thread owns (its channels' filters and gates) are adjacent.
      const int64_t channel_panels = cpu::panels_for<T>(G), W = kWidth<T>;
      lp[kConvW] = static_cast<int64_t>(buf.size());
      for (int64_t m = 0; m < taps; ++m)
        for (int64_t p = 0; p < channel_panels; ++p)
          for (int64_t half = 0; half < 2; ++half)
            panels(cw.data_ptr<T>() + (half * G + p * W) * R * taps + m, R * taps, taps, R,
                   std::min(W, G - p * W));
      const Tensor cb = conv_bias(conv_b[l], "conv_bias", G2, dtype);
      lp[kConvB] = static_cast<int64_t>(buf.size());
      for (int64_t p = 0; p < channel_panels; ++p)
        for (int64_t half = 0; half < 2; ++half)
          append_row(buf, cb.data_ptr<T>() + half * G + p * W, std::min(W, G - p * W));
      // The residual panels, then the skip panels.
      lp[kResSkipW] = pointwise(weights(residual_w[l], "residual_weight", R, G, 1));
      pointwise(weights(skip_w[l], "skip_weight", S, G, 1));
      lp[kResSkipB] = bias(residual_b[l], "residual_bias", R);
      bias(skip_b[l], "skip_bias", S);
    }
    plan[kSlots] = slots;
    plan[kHiddenW] = pointwise(weights(hidden_w, "hidden_weight", S, S, 1));
    plan[kHiddenB] = bias(hidden_b, "hidden_bias", S);
    plan[kOutputW] = pointwise(weights(output_w, "output_weight", out, S, 1));
    plan[kOutputB] = bias(output_b, "output_bias", out);
    plan[kPackedSize] = static_cast<int64_t>(buf.size());
    packed = at::empty({static_cast<int64_t>(buf.size())}, input_w.options().dtype(dtype));
    std::copy(buf.begin(), buf.end(), packed.data_ptr<T>());
  });
  Tensor plan_tensor = at::empty({static_cast<int64_t>(plan.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(plan.begin(), plan.end(), plan_tensor.data_ptr<int64_t>());
  return {packed, plan_tensor};
}

// ------------------------------------------------------ the step kernel --

// A strided 3-D view (N, C, S) read element by element.
template <typename T>
struct View3 {
  const T* data = nullptr;
  int64_t s0 = 0, s1 = 0, s2 = 0;
  T at(int64_t n, int64_t c, int64_t s) const { return data[n * s0 + c * s1 + s * s2]; }
};

template <typename T>
View3<T> view3(const c10::optional<Tensor>& t) {
  View3<T> v;
  if (!t.has_value()) return v;
  v.data = t->data_ptr<T>();
  v.s0 = t->stride(0);
  v.s1 = t->stride(1);
  v.s2 = t->dim() == 3 ? t->stride(2) : 0;
  return v;
}

// ReLU as torch's clamp_min(x, 0): NaN and -0 pass through.
template <typename T>
inline T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// The unnormalized softmax weights of a row of logits, for sampling:
// w[i] = exp((logits[i] - top) * scale), every argument <= 0. The same
// range reduction and polynomial as the gate's (exp_nonnegative holds for
// arguments down to -700, where 2^k is still a normal double); arguments
// below -700 (a weight under 1e-304 beside the top class's 1, or a -inf
// logit) give exactly 0. Vector code for every element, the tail zero-padded
// (so a weight never depends on its position): 256 classes take about 0.3 us
// instead of the 3-4 us of 256 calls to libm's exp, which at batch 8 was
// every step's largest cost after the products.
template <int VB, typename T>
inline void softmax_weights_impl(const T* logits, int64_t n, double top, double scale, double* w) {
  using vd = typename GateVec<VB>::vd;
  constexpr int kLanes = GateVec<VB>::kLanes;
  for (int64_t i = 0; i < n; i += kLanes) {
    vd x;
    for (int j = 0; j < kLanes; ++j) x[j] = i + j < n ? static_cast<double>(logits[i + j]) : top;
    const vd y = (x - top) * scale;
    const vd e = exp_nonnegative<VB>(y > -700.0 ? y : -700.0);
    const vd weight = y < -700.0 ? vd{} : e;
    for (int j = 0; j < kLanes && i + j < n; ++j) w[i + j] = weight[j];
  }
}

#define ATROUS_SOFTMAX_WEIGHTS(isa, attributes, VB)                                                          \
  attributes void softmax_weights_##isa(const float* l, int64_t n, double top, double scale, double* w) {   \
    softmax_weights_impl<VB>(l, n, top, scale, w);                                                          \
  }                                                                                                          \
  attributes void softmax_weights_##isa(const double* l, int64_t n, double top, double scale, double* w) {  \
    softmax_weights_impl<VB>(l, n, top, scale, w);                                                          \
  }
ATROUS_SOFTMAX_WEIGHTS(baseline, __attribute__((flatten)), 16)
#if defined(__x86_64__)
ATROUS_SOFTMAX_WEIGHTS(avx2, __attribute__((target("avx2,fma"), flatten)), 32)
ATROUS_SOFTMAX_WEIGHTS(avx512, __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma"), flatten)), 64)
#endif
#undef ATROUS_SOFTMAX_WEIGHTS

template <typename T>
struct SoftmaxWeights {
  using Fn = void (*)(const T*, int64_t, double, double, double*);
  Fn run = ATROUS_ACTIVE_ISA(Fn, softmax_weights);
};

// The class a step emits from its logits: the first largest (NaN counts as
// largest, as in torch.argmax) when greedy, else a draw from
// softmax(logits / temperature) by inverse CDF with uniform u in [0, 1).
// `weights` is scratch of `classes` doubles.
template <typename T>
int64_t pick_class(const T* logits, int64_t classes, bool greedy, double temperature, double u,
                   double* weights, const SoftmaxWeights<T>& softmax_weights) {
  int64_t best = 0;
  for (int64_t i = 1; i < classes; ++i) {
    if (std::isnan(static_cast<double>(logits[best]))) break;
    if (std::isnan(static_cast<double>(logits[i])) || logits[i] > logits[best]) best = i;
  }
  if (greedy || !std::isfinite(static_cast<double>(logits[best]))) return best;
  softmax_weights.run(logits, classes, static_cast<double>(logits[best]), 1.0 / temperature, weights);
  double total = 0;
  for (int64_t i = 0; i < classes; ++i) total += weights[i];
  const double target = u * total;
  double running = 0;
  for (int64_t i = 0; i < classes; ++i) {
    running += weights[i];
    if (running > target && weights[i] > 0) return i;
  }
  return best;  // u * total rounded up to the very end
}

// ------------------------------------------------------- the step GEMM --
//
// C[i][col] += sum_k A[i][k] * B[k][col] for a few rows (the batch) and the
// panels [panel_begin, panel_end) of B (gather_gemm's packed layout,
// b[panel][k][width]). Each C element is the chain `acc += a * b` over k in
// order, the very expression of gather_gemm's tiles compiled for the same
// instruction set (a fused multiply-add where it has one), so the values are
// gather_gemm's bitwise. The tiles differ: generation multiplies a handful of
// rows by weights that stay in cache, so a tile covers every row of the batch
// (up to kStepRows) and NP panels, each B vector feeding `rows` FMAs while the
// NP independent chains of a row hide the FMA latency.
template <typename T, int VB>
struct StepVec {
  typedef T type __attribute__((vector_size(VB)));
  static constexpr int kPerPanel = static_cast<int>(cpu::kPanelBytes) / VB;  // vectors per panel row
  static constexpr int kLanes = VB / static_cast<int>(sizeof(T));
};

template <typename T>
struct StepGemmArgs {
  int64_t rows, depth;
  const T* const* a;  // rows pointers to depth values
  T* const* c;        // rows pointers to the C rows (column 0)
  const T* b;         // packed panels, panel p at b + p * depth * width
  int64_t panel_begin, panel_end;
  const uint16_t* b_bf16 = nullptr;  // instead of b: bfloat16 panels (float C only), same layout
};

// VB / 4 bfloat16 bit patterns, and the 32-bit words they widen into.
template <int VB>
struct Bf16Vec {
  typedef uint16_t half __attribute__((vector_size(VB / 2)));
  typedef uint32_t word __attribute__((vector_size(VB)));
};

// The B vector at b + offset: values of T, or bfloat16 widened to float (its
// 16 bits are the high half of the float's).
template <typename T, int VB, bool kBf16>
inline typename StepVec<T, VB>::type load_b(const StepGemmArgs<T>& g, int64_t offset) {
  using V = typename StepVec<T, VB>::type;
  V v;
  if constexpr (kBf16) {
    using vh = typename Bf16Vec<VB>::half;
    using vu = typename Bf16Vec<VB>::word;
    vh h;
    std::memcpy(&h, g.b_bf16 + offset, sizeof(h));
    const vu widened = __builtin_convertvector(h, vu) << 16;
    std::memcpy(&v, &widened, VB);
  } else {
    std::memcpy(&v, g.b + offset, VB);
  }
  return v;
}

template <typename T, int VB, int ROWS, int NP, bool kBf16>
inline void step_tile(const StepGemmArgs<T>& g, int64_t row0, int64_t panel) {
  using V = typename StepVec<T, VB>::type;
  constexpr int NV = StepVec<T, VB>::kPerPanel, lanes = StepVec<T, VB>::kLanes;
  constexpr int64_t width = kWidth<T>;
  V acc[ROWS][NP * NV];
  const T* a[ROWS];
  for (int i = 0; i < ROWS; ++i) {
    a[i] = g.a[row0 + i];
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < NV; ++v)
        std::memcpy(&acc[i][q * NV + v], g.c[row0 + i] + (panel + q) * width + v * lanes, VB);
  }
  const int64_t b0 = panel * g.depth * width, panel_stride = g.depth * width;
  for (int64_t k = 0; k < g.depth; ++k) {
    V bv[NP * NV];
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < NV; ++v)
        bv[q * NV + v] = load_b<T, VB, kBf16>(g, b0 + q * panel_stride + k * width + v * lanes);
    for (int i = 0; i < ROWS; ++i) {
      const T ai = a[i][k];
      for (int v = 0; v < NP * NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  for (int i = 0; i < ROWS; ++i)
    for (int q = 0; q < NP; ++q)
      for (int v = 0; v < NV; ++v)
        std::memcpy(g.c[row0 + i] + (panel + q) * width + v * lanes, &acc[i][q * NV + v], VB);
}

// Panels of a tile: enough independent chains to cover the FMA latency with
// one or two rows, within the vector registers (32 on AVX-512, 16 below):
// ROWS * NP * NV accumulators + NP * NV B vectors.
template <int VB, int ROWS>
constexpr int step_panels() {
  constexpr int nv = static_cast<int>(cpu::kPanelBytes) / VB, regs = VB == 64 ? 32 : 16;
  for (int np = 8; np > 1; --np)
    if ((ROWS + 1) * np * nv <= regs - 2) return np;
  return 1;
}

// The panels left after the full tiles, as one tile of exactly that many
// (REM < NP): a member's share is often narrower than a full tile (4 panels
// of 8 at batch 1), and a tile of one panel per row is one dependent FMA
// chain, a quarter of the FMA throughput.
template <typename T, int VB, int ROWS, int REM, bool kBf16>
inline void step_tail(const StepGemmArgs<T>& g, int64_t row0, int64_t p, int64_t left) {
  if constexpr (REM > 0) {
    if (left == REM) return step_tile<T, VB, ROWS, REM, kBf16>(g, row0, p);
    step_tail<T, VB, ROWS, REM - 1, kBf16>(g, row0, p, left);
  }
}

template <typename T, int VB, int ROWS, bool kBf16>
inline void step_rows_of(const StepGemmArgs<T>& g, int64_t row0) {
  constexpr int NP = step_panels<VB, ROWS>();
  int64_t p = g.panel_begin;
  for (; p + NP <= g.panel_end; p += NP) step_tile<T, VB, ROWS, NP, kBf16>(g, row0, p);
  step_tail<T, VB, ROWS, NP - 1, kBf16>(g, row0, p, g.panel_end - p);
}

template <typename T, int VB, int ROWS>
inline void step_rows(const StepGemmArgs<T>& g, int64_t row0) {
  if constexpr (std::is_same_v<T, float>) {
    if (g.b_bf16 != nullptr) return step_rows_of<T, VB, ROWS, true>(g, row0);
  }
  step_rows_of<T, VB, ROWS, false>(g, row0);
}

// Rows in tiles of at most MaxRows, the last one peeled to its size.
template <typename T, int VB, int MaxRows>
inline void step_gemm_impl(const StepGemmArgs<T>& g) {
  int64_t row = 0;
  for (; row + MaxRows <= g.rows; row += MaxRows) step_rows<T, VB, MaxRows>(g, row);
  const int64_t left = g.rows - row;
  if constexpr (MaxRows > 1) {
    if (left > 0) {
      StepGemmArgs<T> tail = g;
      tail.rows = left;
      tail.a = g.a + row;
      tail.c = g.c + row;
      step_gemm_impl<T, VB, MaxRows - 1>(tail);
    }
  }
}

// Rows per tile: ROWS * NV accumulators of one panel and its NV B vectors fit
// the registers (AVX-512: 8 rows; AVX2: 6; SSE: 3).
#define ATROUS_STEP_GEMM(isa, attributes, VB, ROWS)                                        \
  attributes void step_gemm_##isa(const StepGemmArgs<float>& g) { step_gemm_impl<float, VB, ROWS>(g); } \
  attributes void step_gemm_##isa(const StepGemmArgs<double>& g) { step_gemm_impl<double, VB, ROWS>(g); }
ATROUS_STEP_GEMM(baseline, __attribute__((flatten)), 16, 3)
#if defined(__x86_64__)
ATROUS_STEP_GEMM(avx2, __attribute__((target("avx2,fma"), flatten)), 32, 6)
ATROUS_STEP_GEMM(avx512, __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,fma"), flatten)), 64, 8)
#endif
#undef ATROUS_STEP_GEMM

// gather_gemm's instruction set, so that the chains are compiled alike.
template <typename T>
struct StepGemm {
  using Fn = void (*)(const StepGemmArgs<T>&);
  Fn run = ATROUS_ACTIVE_ISA(Fn, step_gemm);
};

// The step's kernels for the active instruction set, chosen once per call.
template <typename T>
struct StepKernels {
  StepGemm<T> gemm;
  GateRow gate_row;
  SoftmaxWeights<T> softmax_weights;
};

// ------------------------------------------------------- the step team --
//
// At a batch of a few sequences a step is a chain of small matrix-vector
// products whose weights (2.5 MB in float32 for the 20-layer nv-wavenet-sized
// model) do not fit one core's L2. So every thread of a team owns a share of
// the columns of every GEMM (its panels), keeps that share of the weights in
// its own cache, and the team meets at a barrier wherever a product needs a
// whole vector that several threads wrote: per layer, once the gate's z is
// complete (the residual product, which every member computes whole, spares
// a second one: see run_member). Every column's chain is the same
// whatever the team size, so results do not depend on it; every thread
// samples the class itself from the whole logits (the same draw), so the
// next input needs no extra barrier.

constexpr int kMaxTeam = 8;

// A barrier for a team that runs concurrently (an OpenMP team): each member
// counts its own arrivals on a cache line of its own and waits until every
// other member's count reaches it (no member can be more than one barrier
// ahead, so the comparison is exact; the counts wrap, hence the difference).
// For two members a barrier is one line handed over each way. A member spins
// for kSpinsBeforeSleep pauses (about 20 us), then sleeps on the other's
// counter (C++20 atomic wait, a futex), and every arrival notifies: where the
// team shares cores with other work, a member would otherwise spin through
// time slices that the member it waits for needs (measured: 6 ms a step with
// a busy second core, instead of 60 us).
constexpr int kSpinsBeforeSleep = 400;

class SpinBarrier {
 public:
  explicit SpinBarrier(int threads) : threads_(threads) {}
  void wait(int member) {
    if (threads_ == 1) return;
    std::atomic<uint32_t>& own = arrivals_[member].count;
    const uint32_t mine = own.load(std::memory_order_relaxed) + 1;  // wraps
    own.store(mine, std::memory_order_seq_cst);
    // A notify is a system call: only when someone sleeps on this counter
    // (a sleeper announces itself before it looks at the count a last time,
    // and both sides are seq_cst, so one of them sees the other).
    if (arrivals_[member].sleepers.load(std::memory_order_seq_cst) > 0) own.notify_all();
    for (int other = 0; other < threads_; ++other) {
      if (other == member) continue;
      std::atomic<uint32_t>& theirs = arrivals_[other].count;
      uint32_t seen = theirs.load(std::memory_order_acquire);
      for (int spins = 0; static_cast<int32_t>(seen - mine) < 0; ++spins) {  // modular difference
        if (spins < kSpinsBeforeSleep) {
#if defined(__x86_64__)
          _mm_pause();
#endif
        } else {
          if (spins == kSpinsBeforeSleep) arrivals_[member].sleeps += 1;
          arrivals_[other].sleepers.fetch_add(1, std::memory_order_seq_cst);
          if (theirs.load(std::memory_order_seq_cst) == seen) theirs.wait(seen, std::memory_order_acquire);
          arrivals_[other].sleepers.fetch_sub(1, std::memory_order_relaxed);
        }
        seen = theirs.load(std::memory_order_acquire);
      }
    }
  }

 private:

 public:
  // Barriers at which some member had to sleep: where that happens at most
  // steps, the team shares its cores with other work.
  int64_t sleeps() const {
    int64_t total = 0;
    for (int m = 0; m < threads_; ++m) total += arrivals_[m].sleeps;
    return total;
  }

 private:
  struct alignas(64) Arrivals {
    std::atomic<uint32_t> count{0};
    std::atomic<int32_t> sleepers{0};  // members asleep on count
    int64_t sleeps = 0;                // written by its member only
  };
  const int threads_;
  Arrivals arrivals_[kMaxTeam];
};

// [begin, end) of `count` items for member `member` of `team`.
struct Share {
  int64_t begin, end;
};
inline Share share_of(int64_t count, int member, int team) {
  return {count * member / team, count * (member + 1) / team};
}

// Where the inputs of the steps come from: given columns (teacher forcing)
// or the rows of a feedback table picked by the previous step's sample.
template <typename T>
struct StepIo {
  View3<T> inputs;                  // (N, in, steps), or none when generating
  const T* feedback = nullptr;      // (classes, in) contiguous
  const T* first_input = nullptr;   // (N, in) contiguous
  View3<T> local;                   // (N, layers * 2G, steps) or none
  View3<T> global;                  // (N, layers * 2G) or none
  T* logits_out = nullptr;          // (N, out, steps) contiguous, or none when generating
  int64_t* samples_out = nullptr;   // (N, steps) contiguous, or none
  const double* uniforms = nullptr;  // [step][n]
  int64_t batch = 0;
  double temperature = 1.0;
  bool greedy = false;
};

// The activations members share, one padded row per sequence: the gate's
// pre-activations and outputs (z twice, see run_member), the skip sums and
// the head's hidden layer and logits. Every member writes its own columns
// (of classes, its own rows).
template <typename T>
struct StepBuffers {
  int64_t pre_ld, z_ld, skip_ld, out_ld;
  Tensor storage;
  T *pre, *z[2], *skips, *hidden, *logits;
  std::vector<int64_t> classes;  // the class drawn for each row, when the members share the drawing
  StepBuffers(const Plan& plan, int64_t rows) : classes(rows) {
    pre_ld = 2 * padded<T>(plan[kGates]);
    z_ld = padded<T>(plan[kGates]);
    skip_ld = padded<T>(plan[kSkip]);
    out_ld = padded<T>(plan[kOutChannels]);
    const int64_t sizes[] = {pre_ld, z_ld, z_ld, skip_ld, skip_ld, out_ld};
    int64_t total = 0;
    for (int64_t s : sizes) total += s * rows;
    storage = at::zeros({total}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
    T* next = storage.data_ptr<T>();
    T** parts[] = {&pre, &z[0], &z[1], &skips, &hidden, &logits};
    for (int i = 0; i < 6; ++i) {
      *parts[i] = next;
      next += sizes[i] * rows;
    }
  }
};

// What a member keeps to itself: the step's inputs, its own copy of the
// residual stream h (every member computes all of it, see run_member), the
// residual and skip products it computes, and the ReLUs of the head (which
// every member reads whole). Allocated before the team starts, so that
// nothing inside the team can throw (a member that left would leave the
// others waiting at a barrier).
template <typename T>
struct MemberScratch {
  int64_t h_ld, rs_ld;
  std::vector<T> x, h, rs, act;
  std::vector<double> class_weights;
  std::vector<const T*> a, inputs_now;
  std::vector<T*> c;
  MemberScratch(const Plan& plan, int64_t rows)
      : h_ld(padded<T>(plan[kResidual])),
        rs_ld(padded<T>(plan[kResidual]) + padded<T>(plan[kSkip])),
        x(rows * plan[kInChannels]),
        h(rows * h_ld, T(0)),
        rs(rows * rs_ld, T(0)),
        act(rows * padded<T>(plan[kSkip]), T(0)),
        class_weights(plan[kOutChannels]),
        a(rows),
        inputs_now(rows),
        c(rows) {}
};

// One member's run of `steps` steps from t0 for rows [row0, row0 + rows).
//
// The team meets once per layer. A member computes its share of the dilated
// conv's columns (its gate channels' filter and gate panel pairs) and their
// gate, so z is whole only once every member has written its channels: the
// barrier. After it, every member computes the whole residual product itself
// (64 x 64 multiply-adds a row, 14% more than its share of the layer) and its
// share of the skip product, so each member holds the whole next residual
// stream h in its own copy and goes on to the next layer without a second
// barrier (which used to cost as much as the multiply-adds it spared). z is
// double-buffered: a member can run one layer ahead of another (writing z of
// layer l + 1 while the other still reads z of layer l), never two, since it
// cannot pass layer l + 1's barrier before the other reaches it. A member
// writes its channel share of h into the layer's ring, after the barrier,
// which follows every member's reads of the slot. The head meets three more
// times (skips, hidden, logits whole): 23 barriers a step for 20 layers.
template <typename T>
void run_member(const Plan& plan, const T* packed, T* state, const StepIo<T>& io, int64_t t0, int64_t steps,
                StepBuffers<T>& buf, SpinBarrier& barrier, const StepKernels<T>& kernels,
                MemberScratch<T>& scratch, int member, int team, int64_t row0, int64_t rows) {
  const int64_t in = plan[kInChannels], R = plan[kResidual], G = plan[kGates], S = plan[kSkip];
  const int64_t out = plan[kOutChannels], taps = plan[kTaps], layers = plan[kLayers], N = io.batch;
  const int64_t W = kWidth<T>;
  const int64_t r_panels = cpu::panels_for<T>(R), g_panels = cpu::panels_for<T>(G);
  const int64_t s_panels = cpu::panels_for<T>(S), o_panels = cpu::panels_for<T>(out);
  // bfloat16 weight panels take half the floats of `packed` (offsets count floats).
  const bool bf16 = plan[kWeightsBf16] != 0;
  const int64_t tap_size = 2 * g_panels * R * W / (bf16 ? 2 : 1);
  // This member's panels of each product: all of the input conv's and the
  // residual product's; a share of the others.
  const Share all_residual{0, r_panels}, gate_share = share_of(g_panels, member, team);
  const Share pairs{2 * gate_share.begin, 2 * gate_share.end};
  const Share skip_share = share_of(s_panels, member, team);
  const Share skip_columns{r_panels + skip_share.begin, r_panels + skip_share.end};  // of the res+skip product
  const Share hidden_share = share_of(s_panels, member, team), out_share = share_of(o_panels, member, team);
  // The channels of h this member writes into the rings, and of the skips it sums.
  const Share ring_share = share_of(r_panels, member, team);
  const int64_t ring_c0 = std::min(R, ring_share.begin * W), ring_c1 = std::min(R, ring_share.end * W);
  const int64_t skip_c0 = std::min(S, skip_share.begin * W), skip_c1 = std::min(S, skip_share.end * W);
  std::vector<T>& x = scratch.x;
  std::vector<T>& act = scratch.act;
  std::vector<const T*>& a = scratch.a;
  std::vector<const T*>& inputs_now = scratch.inputs_now;
  std::vector<T*>& c = scratch.c;
  T* const h = scratch.h.data();
  T* const rs = scratch.rs.data();
  const int64_t h_ld = scratch.h_ld, rs_ld = scratch.rs_ld;
  for (int64_t r = 0; r < rows; ++r)
    inputs_now[r] = io.first_input != nullptr ? io.first_input + (row0 + r) * in : nullptr;

  // C rows (ld apart, from `base`) += A rows x panels [share) of the packed B at b_offset.
  auto product = [&](const T* const* a_rows, T* base, int64_t ld, int64_t depth, int64_t b_offset, Share panels) {
    if (panels.begin >= panels.end) return;
    for (int64_t r = 0; r < rows; ++r) c[r] = base + r * ld;
    kernels.gemm.run(StepGemmArgs<T>{rows, depth, a_rows, c.data(), packed + b_offset, panels.begin, panels.end,
                                     bf16 ? reinterpret_cast<const uint16_t*>(packed + b_offset) : nullptr});
  };
  // Columns [panels) of C rows = the bias row at bias_offset.
  auto set_bias = [&](T* base, int64_t ld, int64_t bias_offset, Share panels) {
    for (int64_t r = 0; r < rows; ++r)
      std::copy(packed + bias_offset + panels.begin * W, packed + bias_offset + panels.end * W,
                base + r * ld + panels.begin * W);
  };
  auto rows_of = [&](const T* base, int64_t ld) {
    for (int64_t r = 0; r < rows; ++r) a[r] = base + r * ld;
    return a.data();
  };

  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = t0 + s;
    // The ring slots this step reads were last touched (t - slot) steps ago and
    // have mostly left the caches: ask for them into L2 now, while the first
    // layers run.
    for (int64_t l = 0; l < layers; ++l) {
      const int64_t history = plan.layer(l, kHistory);
      const T* ring = state + plan.layer(l, kSlotOffset) * N * R;
      for (int64_t m = 0; m + 1 < taps; ++m) {
        const int64_t src_t = t - (taps - 1 - m) * plan.layer(l, kDilation);
        if (src_t < 0) continue;
        const char* slot = reinterpret_cast<const char*>(ring + ((src_t % history) * N + row0) * R);
        for (int64_t byte = 0; byte < rows * R * static_cast<int64_t>(sizeof(T)); byte += 64)
          __builtin_prefetch(slot + byte, 0, 2);
      }
    }
    // Input 1x1 conv into all of this member's h.
    if (io.inputs.data != nullptr) {
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t ci = 0; ci < in; ++ci) x[r * in + ci] = io.inputs.at(row0 + r, ci, s);
      rows_of(x.data(), in);
    } else {
      for (int64_t r = 0; r < rows; ++r) a[r] = inputs_now[r];
    }
    set_bias(h, h_ld, plan[kInputB], all_residual);
    product(a.data(), h, h_ld, in, plan[kInputW], all_residual);

    for (int64_t l = 0; l < layers; ++l) {
      const int64_t d = plan.layer(l, kDilation), history = plan.layer(l, kHistory);
      T* ring = state + plan.layer(l, kSlotOffset) * N * R;
      T* const z = buf.z[l & 1];
      // The dilated conv into this member's filter and gate columns.
      set_bias(buf.pre, buf.pre_ld, plan.layer(l, kConvB), pairs);
      for (int64_t m = 0; m < taps; ++m) {
        const int64_t src_t = t - (taps - 1 - m) * d;
        if (src_t < 0) continue;  // the forward's causal padding: no term
        if (m == taps - 1) {
          rows_of(h, h_ld);
        } else {
          const T* slot = ring + ((src_t % history) * N + row0) * R;
          rows_of(slot, R);
        }
        const int64_t b = plan.layer(l, kConvW) + m * tap_size;
        product(a.data(), buf.pre, buf.pre_ld, R, b, pairs);
      }
      // Conditioning, then the gate, on this member's channels.
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t n = row0 + r;
        for (int64_t p = gate_share.begin; p < gate_share.end; ++p) {
          T* f = buf.pre + r * buf.pre_ld + 2 * p * W;  // channels p*W + j: filter f[j], gate f[W + j]
          T* g = f + W;
          const int64_t c0 = p * W, count = std::min(W, G - c0);
          for (int64_t j = 0; j < count; ++j) {
            if (io.local.data != nullptr) {
              f[j] = f[j] + io.local.at(n, l * 2 * G + c0 + j, s);
              g[j] = g[j] + io.local.at(n, l * 2 * G + G + c0 + j, s);
            }
            if (io.global.data != nullptr) {
              f[j] = f[j] + io.global.at(n, l * 2 * G + c0 + j, 0);
              g[j] = g[j] + io.global.at(n, l * 2 * G + G + c0 + j, 0);
            }
          }
          kernels.gate_row(f, g, z + r * buf.z_ld + c0, count);
        }
      }
      barrier.wait(member);  // z complete; every member's reads of the ring slot done

      // The whole residual product and this member's skip columns.
      rows_of(z, buf.z_ld);
      set_bias(rs, rs_ld, plan.layer(l, kResSkipB), all_residual);
      product(a.data(), rs, rs_ld, G, plan.layer(l, kResSkipW), all_residual);
      set_bias(rs, rs_ld, plan.layer(l, kResSkipB), skip_columns);
      product(a.data(), rs, rs_ld, G, plan.layer(l, kResSkipW), skip_columns);
      for (int64_t r = 0; r < rows; ++r) {
        T* hn = h + r * h_ld;
        const T* rn = rs + r * rs_ld;
        if (history > 0) {  // input t goes to slot t mod history, after every read of the slot
          T* slot = ring + ((t % history) * N + row0 + r) * R;
          std::copy(hn + ring_c0, hn + ring_c1, slot + ring_c0);
        }
        for (int64_t ch = 0; ch < R; ++ch) hn[ch] = hn[ch] + rn[ch];
        T* sn = buf.skips + r * buf.skip_ld;
        const T* skip = rn + r_panels * W;
        if (l == 0)
          std::copy(skip + skip_c0, skip + skip_c1, sn + skip_c0);
        else
          for (int64_t ch = skip_c0; ch < skip_c1; ++ch) sn[ch] = sn[ch] + skip[ch];
      }
    }
    barrier.wait(member);  // the skips complete

    // Output head: ReLU, 1x1, ReLU, 1x1.
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t ch = 0; ch < S; ++ch) act[r * buf.skip_ld + ch] = relu(buf.skips[r * buf.skip_ld + ch]);
    set_bias(buf.hidden, buf.skip_ld, plan[kHiddenB], hidden_share);
    product(rows_of(act.data(), buf.skip_ld), buf.hidden, buf.skip_ld, S, plan[kHiddenW], hidden_share);
    barrier.wait(member);  // hidden complete
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t ch = 0; ch < S; ++ch) act[r * buf.skip_ld + ch] = relu(buf.hidden[r * buf.skip_ld + ch]);
    set_bias(buf.logits, buf.out_ld, plan[kOutputB], out_share);
    product(rows_of(act.data(), buf.skip_ld), buf.logits, buf.out_ld, S, plan[kOutputW], out_share);
    barrier.wait(member);  // logits complete

    if (io.logits_out != nullptr && member == 0)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = 0; o < out; ++o)
          io.logits_out[((row0 + r) * out + o) * steps + s] = buf.logits[r * buf.out_ld + o];
    if (io.samples_out != nullptr) {
      // Each member draws the classes of its share of the rows (the same draw
      // whoever makes it), then the team meets so that every member feeds every
      // row's class to its input product. A single row is drawn by every member,
      // which costs no more than one drawing it while the others wait.
      const bool split = team > 1 && rows >= team;
      const Share mine = split ? share_of(rows, member, team) : Share{0, rows};
      for (int64_t r = mine.begin; r < mine.end; ++r) {
        const int64_t n = row0 + r;
        const double u = io.greedy ? 0.0 : io.uniforms[s * N + n];  // none are drawn when greedy
        const int64_t k = pick_class(buf.logits + r * buf.out_ld, out, io.greedy, io.temperature, u,
                                     scratch.class_weights.data(), kernels.softmax_weights);
        if (split || member == 0) io.samples_out[n * steps + s] = k;
        if (split)
          buf.classes[r] = k;
        else
          inputs_now[r] = io.feedback + k * in;
      }
      if (split) {
        barrier.wait(member);  // every row's class drawn
        for (int64_t r = 0; r < rows; ++r) inputs_now[r] = io.feedback + buf.classes[r] * in;
      }
    }
  }
}

// A team that shares its cores with other work sleeps at nearly every
// barrier, and its barriers (43 a step then, 23 now) cost a scheduler wake-up each (0.5-0.6
// ms a step measured beside one busy process, against 95 us on one thread).
// Where a call slept at more than a tenth of its barriers (beyond the first
// few, where a member may start late), the calls that follow run on one
// thread, then a team is tried again. Results do not depend on the team, so
// this changes speed only.
constexpr int64_t kSleepsPerStepUnderContention = 4, kSleepsAtStart = 4;
constexpr int64_t kSoloCallsAfterContention = 64;
std::atomic<int64_t> g_solo_calls{0};

// Team size: the intra-op threads, at most one per panel of the widest share
// that matters (beyond that members would idle), and one inside a parallel
// region (no nested teams) or after contention.
int step_team_size(const Plan& plan) {
  if (at::in_parallel_region()) return 1;
  if (g_solo_calls.load(std::memory_order_relaxed) > 0) {
    g_solo_calls.fetch_sub(1, std::memory_order_relaxed);
    return 1;
  }
  const int64_t panels = cpu::panels_for<float>(plan[kGates]);
  return static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(at::get_num_threads(), panels), 1, kMaxTeam));
}

// Batches of at least kRowSplitBatch sequences split their rows over the
// threads instead (each thread runs every product for its rows, with no
// barrier): there every weight panel feeds several rows, the products are
// no longer bound by reading the weights, and the team's 23 barriers a step
// cost more than streaming all the weights per thread saves (batch 8
// generate, 2 threads, medians of 7 interleaved: rows 114 us a step,
// columns 140 us).
constexpr int64_t kRowSplitBatch = 4;

// Runs `steps` steps from time t for the whole batch: on one thread, on a
// team that shares the columns (few sequences), or on threads that share the
// rows (kRowSplitBatch and more).
template <typename T>
void run_steps(const Plan& plan, const T* packed, T* state, const StepIo<T>& io, int64_t t0, int64_t steps) {
  const StepKernels<T> kernels;
  const int wanted = step_team_size(plan);
  if (wanted > 1 && io.batch >= kRowSplitBatch) {
    at::parallel_for(0, io.batch, 1, [&](int64_t begin, int64_t end) {
      StepBuffers<T> buf(plan, end - begin);
      MemberScratch<T> scratch(plan, end - begin);
      SpinBarrier alone(1);
      run_member(plan, packed, state, io, t0, steps, buf, alone, kernels, scratch, 0, 1, begin, end - begin);
    });
    return;
  }
  StepBuffers<T> buf(plan, io.batch);
  std::vector<MemberScratch<T>> scratch(wanted, MemberScratch<T>(plan, io.batch));
  if (wanted == 1) {
    SpinBarrier barrier(1);
    run_member(plan, packed, state, io, t0, steps, buf, barrier, kernels, scratch[0], 0, 1, 0, io.batch);
    return;
  }
  // The team's size is what OpenMP gives (at most `wanted`), known only inside the region.
  std::unique_ptr<SpinBarrier> barriers[kMaxTeam];
  for (int size = 1; size <= wanted; ++size) barriers[size - 1] = std::make_unique<SpinBarrier>(size);
  std::atomic<int> team_size{1};
#pragma omp parallel num_threads(wanted)
  {
    const int team = omp_get_num_threads(), member = omp_get_thread_num();
    if (member == 0) team_size.store(team, std::memory_order_relaxed);
    run_member(plan, packed, state, io, t0, steps, buf, *barriers[team - 1], kernels, scratch[member],
               member, team, 0, io.batch);
  }
  if (barriers[team_size.load() - 1]->sleeps() > kSleepsPerStepUnderContention * steps + kSleepsAtStart)
    g_solo_calls.store(kSoloCallsAfterContention, std::memory_order_relaxed);
}

void check_state(const Tensor& state, const Plan& plan, at::ScalarType dtype) {
  TORCH_CHECK(state.device().is_cpu() && state.scalar_type() == dtype,
              "wavenet: expected state to be a CPU tensor of dtype ", dtype, " (the weights'), got ",
              state.scalar_type(), " on ", state.device());
  TORCH_CHECK(state.dim() == 3 && state.size(0) == plan[kSlots] && state.size(2) == plan[kResidual] &&
                  state.is_contiguous(),
              "wavenet: expected a contiguous state of size (", plan[kSlots], ", N, ", plan[kResidual],
              "), got ", state.sizes(), state.is_contiguous() ? "" : " (not contiguous)");
}

// packed and plan as wavenet_pack returned them: the kernels trust every
// offset of the plan, so a plan from elsewhere, or a packed tensor of another
// model, must fail here and not read past `packed`.
void check_packed(const Tensor& packed, const Plan& plan) {
  TORCH_CHECK(packed.device().is_cpu() && packed.dim() == 1 && packed.is_contiguous() &&
                  (packed.scalar_type() == at::kFloat || packed.scalar_type() == at::kDouble),
              "wavenet: expected packed to be the tensor returned by wavenet_pack");
  // Bounds far beyond any model, under which no size below can overflow.
  constexpr int64_t kMostChannels = int64_t(1) << 16, kMostTaps = 1024, kMostLayers = int64_t(1) << 16;
  const int64_t dims[] = {plan[kInChannels], plan[kResidual], plan[kGates], plan[kSkip], plan[kOutChannels]};
  bool ok = plan[kPackedSize] == packed.numel() && plan[kLayers] >= 1 && plan[kLayers] <= kMostLayers &&
            plan[kSlots] >= 0 && plan[kTaps] >= 1 &&
            plan[kTaps] <= kMostTaps &&
            (plan[kWeightsBf16] == 0 || (plan[kWeightsBf16] == 1 && packed.scalar_type() == at::kFloat));
  for (int64_t d : dims) ok = ok && d >= 1 && d <= kMostChannels;
  const bool doubles = packed.scalar_type() == at::kDouble;
  const int64_t W = doubles ? kWidth<double> : kWidth<float>, bf16_divisor = plan[kWeightsBf16] ? 2 : 1;
  auto panels = [&](int64_t cols) { return (cols + W - 1) / W; };
  const int64_t R = plan[kResidual], G = plan[kGates], S = plan[kSkip];
  // Each region: its offset, and its size in elements of `packed`.
  std::vector<std::pair<int64_t, int64_t>> regions;
  if (ok) {
    regions = {{plan[kInputW], panels(R) * plan[kInChannels] * W / bf16_divisor},
               {plan[kInputB], panels(R) * W},
               {plan[kHiddenW], panels(S) * S * W / bf16_divisor},
               {plan[kHiddenB], panels(S) * W},
               {plan[kOutputW], panels(plan[kOutChannels]) * S * W / bf16_divisor},
               {plan[kOutputB], panels(plan[kOutChannels]) * W}};
    int64_t slots = 0;
    for (int64_t l = 0; l < plan[kLayers] && ok; ++l) {
      const int64_t d = plan.layer(l, kDilation);
      ok = d >= 1 && d <= (int64_t(1) << 30) && plan.layer(l, kHistory) == (plan[kTaps] - 1) * d &&
           plan.layer(l, kSlotOffset) == slots;
      slots += plan.layer(l, kHistory);
      regions.push_back({plan.layer(l, kConvW), plan[kTaps] * 2 * panels(G) * R * W / bf16_divisor});
      regions.push_back({plan.layer(l, kConvB), 2 * panels(G) * W});
      regions.push_back({plan.layer(l, kResSkipW), (panels(R) + panels(S)) * G * W / bf16_divisor});
      regions.push_back({plan.layer(l, kResSkipB), (panels(R) + panels(S)) * W});
    }
    ok = ok && slots == plan[kSlots];
  }
  for (const auto& [offset, size] : regions) ok = ok && offset >= 0 && size <= packed.numel() - offset;
  TORCH_CHECK(ok, "wavenet: expected packed (", packed.numel(), " elements of ", packed.scalar_type(),
              ") and plan to be the pair returned by one wavenet_pack call");
}

void check_conditioning(const c10::optional<Tensor>& c, const char* name, const Plan& plan, int64_t batch,
                        int64_t steps, at::ScalarType dtype) {
  if (!c.has_value()) return;
  const int64_t cols = plan[kLayers] * 2 * plan[kGates];
  const bool per_step = steps >= 0;
  TORCH_CHECK(c->device().is_cpu() && c->scalar_type() == dtype, "wavenet: expected ", name,
              " to be a CPU tensor of dtype ", dtype, ", got ", c->scalar_type(), " on ", c->device());
  if (per_step) {
    TORCH_CHECK(c->dim() == 3 && c->size(0) == batch && c->size(1) == cols && c->size(2) == steps,
                "wavenet: expected ", name, " of size (", batch, ", ", cols, ", ", steps, "), got ", c->sizes());
  } else {
    TORCH_CHECK(c->dim() == 2 && c->size(0) == batch && c->size(1) == cols, "wavenet: expected ", name,
                " of size (", batch, ", ", cols, "), got ", c->sizes());
  }
}

// The state's position t (steps taken), an int64 (1,) CPU tensor that the
// ops advance themselves: the rings, the position and the next input change
// together in one call, so an interrupt between calls (Ctrl-C lands when the
// op returns, before any Python after it) never leaves them disagreeing.
int64_t read_position(const Tensor& position, const char* op) {
  TORCH_CHECK(position.device().is_cpu() && position.scalar_type() == at::kLong && position.numel() == 1 &&
                  position.dim() == 1,
              op, ": expected position to be an int64 CPU tensor of size (1), got ", position.scalar_type(), " ",
              position.sizes(), " on ", position.device());
  const int64_t t = position.data_ptr<int64_t>()[0];
  TORCH_CHECK(t >= 0, op, ": expected position >= 0, got ", t);
  return t;
}

// Teacher-forced steps: inputs (N, in, S) -> logits (N, out, S), state and position advanced by S steps.
Tensor wavenet_step_cpu(Tensor& state, const Tensor& packed, const Tensor& plan_tensor, const Tensor& inputs,
                        const c10::optional<Tensor>& local, const c10::optional<Tensor>& global,
                        Tensor& position) {
  const Plan plan = read_plan(plan_tensor);
  check_packed(packed, plan);
  check_state(state, plan, packed.scalar_type());
  const int64_t N = state.size(1);
  TORCH_CHECK(inputs.dim() == 3 && inputs.size(0) == N && inputs.size(1) == plan[kInChannels],
              "wavenet_step: expected inputs of size (", N, ", ", plan[kInChannels], ", steps), got ",
              inputs.sizes());
  TORCH_CHECK(inputs.device().is_cpu() && inputs.scalar_type() == packed.scalar_type(),
              "wavenet_step: expected inputs to be a CPU tensor of dtype ", packed.scalar_type(), ", got ",
              inputs.scalar_type(), " on ", inputs.device());
  const int64_t t = read_position(position, "wavenet_step");
  const int64_t steps = inputs.size(2);
  check_conditioning(local, "local_conditioning", plan, N, steps, packed.scalar_type());
  check_conditioning(global, "global_conditioning", plan, N, -1, packed.scalar_type());
  Tensor logits = at::empty({N, plan[kOutChannels], steps}, packed.options());
  if (N == 0 || steps == 0) return logits;
  AT_DISPATCH_FLOATING_TYPES(packed.scalar_type(), "wavenet_step", [&] {
    StepIo<scalar_t> io;
    io.inputs = view3<scalar_t>(inputs);
    io.local = view3<scalar_t>(local);
    io.global = view3<scalar_t>(global);
    io.logits_out = logits.data_ptr<scalar_t>();
    io.batch = N;
    const scalar_t* p = packed.data_ptr<scalar_t>();
    scalar_t* st = state.data_ptr<scalar_t>();
    run_steps(plan, p, st, io, t, steps);
  });
  position.data_ptr<int64_t>()[0] = t + steps;
  return logits;
}

// Autoregressive generation of `steps` samples from the state's position t:
// `input` (N, in) feeds step t; the class sampled at each step picks the row
// of feedback (classes, in) that feeds the next. Returns the classes (N,
// steps); `input` ends as the input of the step after the last, and the
// position as t + steps.
Tensor wavenet_generate_cpu(Tensor& state, const Tensor& packed, const Tensor& plan_tensor, Tensor& first_input,
                            const Tensor& feedback_in, const c10::optional<Tensor>& local,
                            const c10::optional<Tensor>& global, Tensor& position, int64_t steps,
                            double temperature, bool greedy, c10::optional<at::Generator> generator) {
  const Plan plan = read_plan(plan_tensor);
  check_packed(packed, plan);
  check_state(state, plan, packed.scalar_type());
  const int64_t N = state.size(1), in = plan[kInChannels], classes = plan[kOutChannels];
  const at::ScalarType dtype = packed.scalar_type();
  TORCH_CHECK(steps >= 1, "wavenet_generate: expected steps >= 1, got ", steps);
  const int64_t t = read_position(position, "wavenet_generate");
  TORCH_CHECK(greedy || (std::isfinite(temperature) && temperature > 0),
              "wavenet_generate: expected temperature > 0, got ", temperature);
  TORCH_CHECK(first_input.dim() == 2 && first_input.size(0) == N && first_input.size(1) == in &&
                  first_input.device().is_cpu() && first_input.scalar_type() == dtype &&
                  first_input.is_contiguous(),
              "wavenet_generate: expected input to be a contiguous CPU tensor of size (", N, ", ", in,
              ") and dtype ", dtype, ", got ", first_input.sizes(), " ", first_input.scalar_type(), " on ",
              first_input.device(), first_input.is_contiguous() ? "" : " (not contiguous)");
  TORCH_CHECK(feedback_in.dim() == 2 && feedback_in.size(0) == classes && feedback_in.size(1) == in &&
                  feedback_in.device().is_cpu() && feedback_in.scalar_type() == dtype,
              "wavenet_generate: expected feedback to be a CPU tensor of size (", classes, ", ", in,
              ") (a model input per output class) and dtype ", dtype, ", got ", feedback_in.sizes(), " ",
              feedback_in.scalar_type(), " on ", feedback_in.device());
  check_conditioning(local, "local_conditioning", plan, N, steps, dtype);
  check_conditioning(global, "global_conditioning", plan, N, -1, dtype);
  Tensor samples = at::empty({N, steps}, at::TensorOptions().dtype(at::kLong));
  if (N == 0) return samples;
  // One uniform per step and sequence, drawn in that order before any thread
  // runs, so a seeded generator gives the same samples at any thread count.
  std::vector<double> uniforms(greedy ? 0 : steps * N);
  if (!greedy) {
    auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
    std::lock_guard<std::mutex> lock(gen->mutex_);
    for (double& u : uniforms) u = static_cast<double>(gen->random64() >> 11) * 0x1.0p-53;
  }
  const Tensor feedback = feedback_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "wavenet_generate", [&] {
    StepIo<scalar_t> io;
    io.first_input = first_input.data_ptr<scalar_t>();
    io.feedback = feedback.data_ptr<scalar_t>();
    io.local = view3<scalar_t>(local);
    io.global = view3<scalar_t>(global);
    io.samples_out = samples.data_ptr<int64_t>();
    io.uniforms = uniforms.data();
    io.batch = N;
    io.temperature = temperature;
    io.greedy = greedy;
    const scalar_t* p = packed.data_ptr<scalar_t>();
    scalar_t* st = state.data_ptr<scalar_t>();
    run_steps(plan, p, st, io, t, steps);
    // The next input: the fed-back row of each sequence's last class (read by step 0 above only).
    scalar_t* next = first_input.data_ptr<scalar_t>();
    const scalar_t* rows = feedback.data_ptr<scalar_t>();
    const int64_t* last = samples.data_ptr<int64_t>();
    for (int64_t n = 0; n < N; ++n)
      std::copy(rows + last[n * steps + steps - 1] * in, rows + (last[n * steps + steps - 1] + 1) * in,
                next + n * in);
  });
  position.data_ptr<int64_t>()[0] = t + steps;
  return samples;
}

}  // namespace

TORCH_LIBRARY_IMPL(atrous, CPU, m) {
  m.impl("gated_activation", &gated_activation_cpu);
  m.impl("wavenet_pack", &wavenet_pack_cpu);
  m.impl("wavenet_step", &wavenet_step_cpu);
  m.impl("wavenet_generate", &wavenet_generate_cpu);
}

}  // namespace atrous
