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
//     step calls gather_gemm on the same packed panels with one C row per
//     sequence, skips exactly the taps whose input lies before t = 0 (the
//     forward's causal padding), and keeps the chain;
//   - the gate's value depends on its two inputs only, never on its position
//     in a row (tails go through the same vector code, zero-padded);
//   - the residual add, the running sum of skips, the conditioning adds and
//     the ReLUs are single operations on the same operands, in the forward's
//     order.
// The residual and skip 1x1 convs of a layer read the same z and are one
// GEMM here (their columns side by side): each column's chain is unchanged.
//
// State. A layer with dilation d and k taps reads its inputs at
// t, t - d, ..., t - (k-1) d, so it keeps the last history = (k-1) d inputs
// in a ring: input t' lives in slot t' mod history. All rings are one tensor
//   state[slot_offset(layer) + slot][n][c]     (slots, N, residual channels)
// with a sequence's channels contiguous (the A row of the next GEMM).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <vector>

#include "gather_gemm.h"

namespace atrous {
namespace {

using at::Tensor;

// ------------------------------------------------------ gated activation --
//
// z = tanh(f) * sigmoid(g) for float is evaluated in double and rounded once,
// which makes it accurate to about half an ulp of float. Both functions come
// from one exponential of a non-negative argument y <= 128:
//   exp(y) = exp(y / 256)^256: r = y / 256 lies in [0, 0.5], where the Taylor
//   polynomial of degree 13 is within 7e-16 (0.5^14 / 14!) of exp(r), and
//   eight squarings multiply that relative error by 256: about 2e-13.
//   tanh(a) = 1 - 2 / (exp(2a) + 1) for a = |f| >= 2^-9, where the absolute
//     error stays under 1e-13 (relative 5e-11 at a = 2^-9); below 2^-9 the
//     series a - a^3/3 + 2a^5/15 (next term 17a^7/315, relative 1e-17).
//     a is capped at 10: tanh(10) = 1 - 4e-9 already rounds to 1.0f.
//   sigmoid(g) = E / (E + 1) for g >= 0 and 1 / (E + 1) for g < 0, with
//     E = exp(|g|), |g| capped at 110 (sigmoid(-110) = 1.7e-48 rounds to 0.0f).
// NaN in f or g gives NaN; infinities give the limits. Every element, the
// tail of a row included, goes through the same vector code, so a value never
// depends on where it sits (a step's 64 channels and a forward's long rows
// agree bitwise). double uses libm's tanh and exp, one element at a time.
template <int VB>
struct GateVec {
  typedef double vd __attribute__((vector_size(VB)));
  typedef float vf __attribute__((vector_size(VB / 2)));
  static constexpr int kLanes = VB / 8;
};

template <typename vd>
inline vd exp_nonnegative(vd y) {
  constexpr double c[14] = {1.0,
                            1.0,
                            1.0 / 2,
                            1.0 / 6,
                            1.0 / 24,
                            1.0 / 120,
                            1.0 / 720,
                            1.0 / 5040,
                            1.0 / 40320,
                            1.0 / 362880,
                            1.0 / 3628800,
                            1.0 / 39916800,
                            1.0 / 479001600,
                            1.0 / 6227020800.0};
  const vd r = y * (1.0 / 256);
  vd p = r * c[13] + c[12];
  for (int i = 11; i >= 0; --i) p = p * r + c[i];
  for (int i = 0; i < 8; ++i) p = p * p;
  return p;
}

template <int VB>
inline void gate_vector(const float* f_in, const float* g_in, float* z_out) {
  using V = GateVec<VB>;
  typename V::vf f32, g32;
  std::memcpy(&f32, f_in, sizeof(f32));
  std::memcpy(&g32, g_in, sizeof(g32));
  const typename V::vd f = __builtin_convertvector(f32, typename V::vd);
  const typename V::vd g = __builtin_convertvector(g32, typename V::vd);
  typename V::vd a = f < 0 ? -f : f;
  a = a < 10.0 ? a : 10.0;  // NaN becomes 10 here; restored below
  const typename V::vd f2 = f * f;
  const typename V::vd t_small = f + f * f2 * (-1.0 / 3 + f2 * (2.0 / 15));  // odd: keeps -0
  const typename V::vd t_large = 1.0 - 2.0 / (exp_nonnegative(a + a) + 1.0);
  const typename V::vd t = a < 0x1p-9 ? t_small : (f < 0 ? -t_large : t_large);
  typename V::vd ga = g < 0 ? -g : g;
  ga = ga < 110.0 ? ga : 110.0;
  const typename V::vd e = exp_nonnegative(ga);
  const typename V::vd s = (g < 0 ? typename V::vd{} + 1.0 : e) / (e + 1.0);
  typename V::vd z = t * s;
  z = (f != f) | (g != g) ? f + g : z;
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

// The instruction set of gather_gemm, which the gate follows so that a
// forward and a step in one process agree (cpu::set_cpu_isa changes both).
using GateRowFn = void (*)(const float*, const float*, float*, int64_t);
GateRowFn active_gate_row() {
#if defined(__x86_64__)
  const std::string isa = cpu::cpu_isa();
  if (isa == "avx512" || isa == "avx512_bf16") return gate_row_avx512;
  if (isa == "avx2") return gate_row_avx2;
#endif
  return gate_row_baseline;
}

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
  kSlots,  // ring-buffer slots of all layers
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
  kConvW,  // [tap][panels of 2G][R][width]
  kConvB,
  kResSkipW,  // [panels of R + S][G][width]: residual columns, then skip columns
  kResSkipB,
  kLayerFields
};
constexpr int64_t kPlanFormat = 1;

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
  TORCH_CHECK(p[kPlanVersion] == kPlanFormat && plan.numel() == kHeaderFields + p[kLayers] * kLayerFields,
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
                                            c10::IntArrayRef dilations) {
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
  std::vector<int64_t> plan(kHeaderFields + layers * kLayerFields, 0);
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
    auto pointwise = [&](const Tensor& w) { return append_panels(buf, w.data_ptr<T>(), w.size(1), 1, w.size(1), w.size(0)); };
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
      // Tap m: B_m[k][col] = w[col][k][m].
      lp[kConvW] = static_cast<int64_t>(buf.size());
      for (int64_t m = 0; m < taps; ++m) append_panels(buf, cw.data_ptr<T>() + m, R * taps, taps, R, G2);
      lp[kConvB] = bias(conv_b[l], "conv_bias", G2);
      // Residual and skip side by side: columns [0, R) and [R, R + S).
      const Tensor rs = at::cat({weights(residual_w[l], "residual_weight", R, G, 1),
                                 weights(skip_w[l], "skip_weight", S, G, 1)}, 0);
      lp[kResSkipW] = pointwise(rs);
      const Tensor rsb = at::cat({conv_bias(residual_b[l], "residual_bias", R, dtype),
                                  conv_bias(skip_b[l], "skip_bias", S, dtype)}, 0);
      lp[kResSkipB] = append_row(buf, rsb.data_ptr<T>(), R + S);
    }
    plan[kSlots] = slots;
    plan[kHiddenW] = pointwise(weights(hidden_w, "hidden_weight", S, S, 1));
    plan[kHiddenB] = bias(hidden_b, "hidden_bias", S);
    plan[kOutputW] = pointwise(weights(output_w, "output_weight", out, S, 1));
    plan[kOutputB] = bias(output_b, "output_bias", out);
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

// Where the inputs of the steps come from: given columns (teacher forcing)
// or the rows of a feedback table picked by the previous step's sample.
template <typename T>
struct StepIo {
  View3<T> inputs;        // (N, in, steps), or none when generating
  const T* feedback = nullptr;   // (classes, in) contiguous
  const T* first_input = nullptr;  // (N, in) contiguous
  View3<T> local;         // (N, layers * 2G, steps) or none
  View3<T> global;        // (N, layers * 2G) or none
  T* logits_out = nullptr;  // (N, out, steps) contiguous, or none when generating
  int64_t* samples_out = nullptr;  // (N, steps) contiguous, or none
  const double* uniforms = nullptr;  // [step][n]
  int64_t batch = 0;
  double temperature = 1.0;
  bool greedy = false;
};

// ReLU as torch's clamp_min(x, 0): NaN and -0 pass through.
template <typename T>
inline T relu(T x) {
  return x < T(0) ? T(0) : x;
}

// The class a step emits from its logits: the first largest (NaN counts as
// largest, as in torch.argmax) when greedy, else a draw from
// softmax(logits / temperature) by inverse CDF with uniform u in [0, 1).
template <typename T>
int64_t pick_class(const T* logits, int64_t classes, bool greedy, double temperature, double u) {
  int64_t best = 0;
  for (int64_t i = 1; i < classes; ++i) {
    if (std::isnan(static_cast<double>(logits[best]))) break;
    if (std::isnan(static_cast<double>(logits[i])) || logits[i] > logits[best]) best = i;
  }
  if (greedy || std::isnan(static_cast<double>(logits[best])) ||
      std::isinf(static_cast<double>(logits[best])))
    return best;
  const double top = static_cast<double>(logits[best]);
  double total = 0;
  for (int64_t i = 0; i < classes; ++i) total += std::exp((static_cast<double>(logits[i]) - top) / temperature);
  const double target = u * total;
  double running = 0;
  for (int64_t i = 0; i < classes; ++i) {
    const double w = std::exp((static_cast<double>(logits[i]) - top) / temperature);
    running += w;
    if (running > target && w > 0) return i;
  }
  return best;  // u * total rounded up to the very end
}

// Runs `steps` steps from time t for sequences [row_begin, row_end) of the
// batch. Each sequence's values depend on its own inputs and state only.
template <typename T>
void run_steps(const Plan& plan, const T* packed, T* state, const StepIo<T>& io, int64_t t0,
               int64_t steps, int64_t row_begin, int64_t row_end) {
  const int64_t in = plan[kInChannels], R = plan[kResidual], G = plan[kGates], S = plan[kSkip];
  const int64_t out = plan[kOutChannels], taps = plan[kTaps], layers = plan[kLayers];
  const int64_t rows = row_end - row_begin, N = io.batch;
  const int64_t h_ld = padded<T>(R), pre_ld = padded<T>(2 * G), z_ld = padded<T>(G);
  const int64_t rs_ld = padded<T>(R + S), skip_ld = padded<T>(S), out_ld = padded<T>(out);
  std::vector<T> h(rows * h_ld), pre(rows * pre_ld), z(rows * z_ld), rs(rows * rs_ld);
  std::vector<T> skips(rows * skip_ld), act(rows * skip_ld), hidden(rows * skip_ld), logits(rows * out_ld);
  std::vector<T> x(rows * in);
  std::vector<const T*> a_rows(rows);
  std::vector<T*> c_rows(rows);
  std::vector<const T*> inputs_now(rows);
  for (int64_t i = 0; i < rows; ++i)
    inputs_now[i] = io.first_input != nullptr ? io.first_input + (row_begin + i) * in : nullptr;
  const GateRow gate_row;

  // C rows [i * ld] = bias, then += A rows x packed panels.
  auto gemm = [&](const T* const* a, T* c, int64_t ld, int64_t depth, int64_t cols, int64_t b_offset) {
    for (int64_t i = 0; i < rows; ++i) c_rows[i] = c + i * ld;
    cpu::gather_gemm(cpu::GatherGemmArgs<T>{rows, depth, cpu::panels_for<T>(cols), a, c_rows.data(),
                                            packed + b_offset});
  };
  auto init_rows = [&](T* c, int64_t ld, int64_t cols, int64_t bias_offset) {
    for (int64_t i = 0; i < rows; ++i) std::copy(packed + bias_offset, packed + bias_offset + ld, c + i * ld);
    (void)cols;
  };
  auto rows_of = [&](const T* base, int64_t ld) {
    for (int64_t i = 0; i < rows; ++i) a_rows[i] = base + i * ld;
    return a_rows.data();
  };

  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = t0 + s;
    // The step's input rows: a teacher-forced column, or the fed-back class.
    const T* const* x_rows;
    if (io.inputs.data != nullptr) {
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t c = 0; c < in; ++c) x[i * in + c] = io.inputs.at(row_begin + i, c, s);
      x_rows = rows_of(x.data(), in);
    } else {
      for (int64_t i = 0; i < rows; ++i) a_rows[i] = inputs_now[i];
      x_rows = a_rows.data();
    }
    init_rows(h.data(), h_ld, R, plan[kInputB]);
    gemm(x_rows, h.data(), h_ld, in, R, plan[kInputW]);

    for (int64_t l = 0; l < layers; ++l) {
      const int64_t d = plan.layer(l, kDilation), history = plan.layer(l, kHistory);
      T* ring = state + plan.layer(l, kSlotOffset) * N * R;
      init_rows(pre.data(), pre_ld, 2 * G, plan.layer(l, kConvB));
      const int64_t tap_size = cpu::panels_for<T>(2 * G) * R * kWidth<T>;
      for (int64_t m = 0; m < taps; ++m) {
        const int64_t src_t = t - (taps - 1 - m) * d;
        if (src_t < 0) continue;  // the forward's causal padding: no term
        if (m == taps - 1) {
          rows_of(h.data(), h_ld);
        } else {
          const T* slot = ring + (src_t % history) * N * R;
          for (int64_t i = 0; i < rows; ++i) a_rows[i] = slot + (row_begin + i) * R;
        }
        gemm(a_rows.data(), pre.data(), pre_ld, R, 2 * G, plan.layer(l, kConvW) + m * tap_size);
      }
      if (history > 0) {  // input t goes to slot t mod history, after its last read
        T* slot = ring + (t % history) * N * R;
        for (int64_t i = 0; i < rows; ++i)
          std::copy(h.data() + i * h_ld, h.data() + i * h_ld + R, slot + (row_begin + i) * R);
      }
      for (int64_t i = 0; i < rows; ++i) {
        T* p = pre.data() + i * pre_ld;
        if (io.local.data != nullptr)
          for (int64_t c = 0; c < 2 * G; ++c) p[c] = p[c] + io.local.at(row_begin + i, l * 2 * G + c, s);
        if (io.global.data != nullptr)
          for (int64_t c = 0; c < 2 * G; ++c) p[c] = p[c] + io.global.at(row_begin + i, l * 2 * G + c, 0);
        gate_row(p, p + G, z.data() + i * z_ld, G);
      }
      init_rows(rs.data(), rs_ld, R + S, plan.layer(l, kResSkipB));
      gemm(rows_of(z.data(), z_ld), rs.data(), rs_ld, G, R + S, plan.layer(l, kResSkipW));
      for (int64_t i = 0; i < rows; ++i) {
        T* hi = h.data() + i * h_ld;
        const T* ri = rs.data() + i * rs_ld;
        for (int64_t c = 0; c < R; ++c) hi[c] = hi[c] + ri[c];
        T* si = skips.data() + i * skip_ld;
        if (l == 0)
          std::copy(ri + R, ri + R + S, si);
        else
          for (int64_t c = 0; c < S; ++c) si[c] = si[c] + ri[R + c];
      }
    }

    // Output head: ReLU, 1x1, ReLU, 1x1.
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t c = 0; c < S; ++c) act[i * skip_ld + c] = relu(skips[i * skip_ld + c]);
    init_rows(hidden.data(), skip_ld, S, plan[kHiddenB]);
    gemm(rows_of(act.data(), skip_ld), hidden.data(), skip_ld, S, S, plan[kHiddenW]);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t c = 0; c < S; ++c) act[i * skip_ld + c] = relu(hidden[i * skip_ld + c]);
    init_rows(logits.data(), out_ld, out, plan[kOutputB]);
    gemm(rows_of(act.data(), skip_ld), logits.data(), out_ld, S, out, plan[kOutputW]);

    for (int64_t i = 0; i < rows; ++i) {
      const int64_t n = row_begin + i;
      const T* li = logits.data() + i * out_ld;
      if (io.logits_out != nullptr)
        for (int64_t o = 0; o < out; ++o) io.logits_out[(n * out + o) * steps + s] = li[o];
      if (io.samples_out != nullptr) {
        const int64_t k = pick_class(li, out, io.greedy, io.temperature, io.uniforms[s * N + n]);
        io.samples_out[n * steps + s] = k;
        inputs_now[i] = io.feedback + k * in;
      }
    }
  }
}

// Sequences per parallel unit: each unit runs every layer of every step for
// its sequences, so threads never wait on each other within a call.
void for_row_blocks(int64_t batch, const std::function<void(int64_t, int64_t)>& f) {
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) { f(begin, end); });
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

void check_packed(const Tensor& packed) {
  TORCH_CHECK(packed.device().is_cpu() && packed.dim() == 1 && packed.is_contiguous() &&
                  (packed.scalar_type() == at::kFloat || packed.scalar_type() == at::kDouble),
              "wavenet: expected packed to be the tensor returned by wavenet_pack");
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

// Teacher-forced steps: inputs (N, in, S) -> logits (N, out, S), state advanced by S steps from t.
Tensor wavenet_step_cpu(Tensor& state, const Tensor& packed, const Tensor& plan_tensor, const Tensor& inputs,
                        const c10::optional<Tensor>& local, const c10::optional<Tensor>& global, int64_t t) {
  const Plan plan = read_plan(plan_tensor);
  check_packed(packed);
  check_state(state, plan, packed.scalar_type());
  const int64_t N = state.size(1);
  TORCH_CHECK(inputs.dim() == 3 && inputs.size(0) == N && inputs.size(1) == plan[kInChannels],
              "wavenet_step: expected inputs of size (", N, ", ", plan[kInChannels], ", steps), got ",
              inputs.sizes());
  TORCH_CHECK(inputs.device().is_cpu() && inputs.scalar_type() == packed.scalar_type(),
              "wavenet_step: expected inputs to be a CPU tensor of dtype ", packed.scalar_type(), ", got ",
              inputs.scalar_type(), " on ", inputs.device());
  TORCH_CHECK(t >= 0, "wavenet_step: expected t >= 0, got ", t);
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
    for_row_blocks(N, [&](int64_t begin, int64_t end) { run_steps(plan, p, st, io, t, steps, begin, end); });
  });
  return logits;
}

// Autoregressive generation of `steps` samples from t: first_input (N, in)
// feeds step t; the class sampled at each step picks the row of feedback
// (classes, in) that feeds the next. Returns the classes (N, steps).
Tensor wavenet_generate_cpu(Tensor& state, const Tensor& packed, const Tensor& plan_tensor,
                            const Tensor& first_input, const Tensor& feedback_in,
                            const c10::optional<Tensor>& local, const c10::optional<Tensor>& global, int64_t t,
                            int64_t steps, double temperature, bool greedy,
                            c10::optional<at::Generator> generator) {
  const Plan plan = read_plan(plan_tensor);
  check_packed(packed);
  check_state(state, plan, packed.scalar_type());
  const int64_t N = state.size(1), in = plan[kInChannels], classes = plan[kOutChannels];
  const at::ScalarType dtype = packed.scalar_type();
  TORCH_CHECK(steps >= 1, "wavenet_generate: expected steps >= 1, got ", steps);
  TORCH_CHECK(t >= 0, "wavenet_generate: expected t >= 0, got ", t);
  TORCH_CHECK(greedy || (std::isfinite(temperature) && temperature > 0),
              "wavenet_generate: expected temperature > 0, got ", temperature);
  TORCH_CHECK(first_input.dim() == 2 && first_input.size(0) == N && first_input.size(1) == in &&
                  first_input.device().is_cpu() && first_input.scalar_type() == dtype,
              "wavenet_generate: expected first_input to be a CPU tensor of size (", N, ", ", in, ") and dtype ",
              dtype, ", got ", first_input.sizes(), " ", first_input.scalar_type(), " on ", first_input.device());
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
  const Tensor x0 = first_input.contiguous(), feedback = feedback_in.contiguous();
  AT_DISPATCH_FLOATING_TYPES(dtype, "wavenet_generate", [&] {
    StepIo<scalar_t> io;
    io.first_input = x0.data_ptr<scalar_t>();
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
    for_row_blocks(N, [&](int64_t begin, int64_t end) { run_steps(plan, p, st, io, t, steps, begin, end); });
  });
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
