// A small GEMM whose A and C rows are gathered through pointer lists:
//
//   C[m][0:n) += sum_k A[m][k] * B[k][0:n),   m < rows, k < depth
//
// This is the one inner loop of every CPU kernel. For the forward, A rows are
// the input pixels that one kernel tap reads (only the ones inside the image),
// B is that tap's weight slice and C rows are output pixels, so a dilated
// conv is an implicit GEMM that never multiplies padding.
//
// B is packed in column panels of kPanelBytes: b_panels[p][k][j] holds
// B[k][p*panel_width + j]. C rows are padded to a whole number of panels.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <string>

namespace atrous {
namespace cpu {

constexpr int64_t kPanelBytes = 64;
template <typename T>
constexpr int64_t panel_width() {
  return kPanelBytes / static_cast<int64_t>(sizeof(T));
}
template <typename T>
inline int64_t panels_for(int64_t columns) {
  return (columns + panel_width<T>() - 1) / panel_width<T>();
}

//
// A may be 16-bit (A = Half or BFloat16, T = float): each cache block of A
// (row block x depth block) is then widened once into float scratch that
// every panel reads (the next block's rows are prefetched meanwhile), so a
// 16-bit operand needs no float copy of its own.
//
// A rows need not be contiguous: A[m][k] is a_rows[m][k * a_step], so an
// NCHW tensor is read where it lies (a_step = the plane size: each k is the
// same pixel one channel further), as well as NHWC rows (a_step = 1). A may
// have a step only where gather_gemm_reads_planes(); 16-bit planes are
// widened block by block through registers (16 pixels of 16 planes at a time,
// transposed into the pixels' float rows) in runs of consecutive pixels.
template <typename T, typename A = T>
struct GatherGemmArgs {
  int64_t rows;            // M
  int64_t depth;           // K
  int64_t panels;          // N / panel_width, N padded up
  const A* const* a_rows;  // rows pointers to depth values, a_step apart
  T* const* c_rows;        // rows pointers to panels*panel_width contiguous values
  const T* b_panels;       // [panels][depth][panel_width]
  int64_t a_step = 1;      // elements between A[m][k] and A[m][k + 1]
};

void gather_gemm(const GatherGemmArgs<float>& args);
void gather_gemm(const GatherGemmArgs<double>& args);

// Whether gather_gemm reads A with a_step != 1 (NCHW planes; float and
// double, and 16-bit widened to float) on the active instruction set: AVX-512
// only. Its run tiles (12 rows x 2 panels, one pointer per run of consecutive
// pixels) match or beat an NHWC copy of a float operand; AVX2's 16 registers
// leave 6-row x 1-panel tiles, which measured 7-10% slower than the copy
// (bench/NOTES.md), so callers copy there.
bool gather_gemm_reads_planes();
void gather_gemm(const GatherGemmArgs<float, c10::Half>& args);
void gather_gemm(const GatherGemmArgs<float, c10::BFloat16>& args);

// The same GEMM on bfloat16 A and B with float32 C, on AVX512_BF16 dot
// products (vdpbf16ps): each instruction multiplies two consecutive k of a
// broadcast A pair with the matching pair of 16 B columns and adds both exact
// products to the float32 accumulators, k + 1 first, then k (round to nearest
// even, subnormal inputs and results flushed to zero). So k runs in pairs:
//   depth         is even (callers pad A rows and B with a zero k);
//   a_rows[m]     point to depth bfloat16 values, read as depth / 2 pairs;
//   b_panels      is [panels][depth / 2][16 columns][2], the pair of column j
//                 at k = 2q being (B[2q][j], B[2q + 1][j]);
//   c_rows[m]     hold panels * 16 floats.
// Only callable when bf16_dot_active() (asserted).
//
// A may also be NCHW planes (a_step != 1, the plane size): A[m][k] is then
// a_rows[m][k * a_step] for k < a_channels and zero for a_channels <= k <
// depth (an odd group's padding k, which the planes do not hold). Each cache
// block of A (row block x depth block) is packed into pairs once, in
// thread-local scratch that every panel reads: 16 pixels of a run of
// consecutive pixels, two planes at a time, are zero-extended into pairs and
// transposed in registers, so a bfloat16 NCHW operand needs no NHWC copy.
struct GatherGemmBf16Args {
  int64_t rows;
  int64_t depth;
  int64_t panels;
  const c10::BFloat16* const* a_rows;
  float* const* c_rows;
  const c10::BFloat16* b_panels;
  int64_t a_step = 1;      // 1: pair rows; else elements between channels k and k + 1
  int64_t a_channels = 0;  // a_step != 1: the k that the planes hold
};
constexpr int64_t kBf16PanelColumns = panel_width<float>();

void gather_gemm(const GatherGemmBf16Args& args);
bool bf16_dot_active();

// The pixel-reduction GEMM of grad_weight, read straight from NHWC rows:
//
//   C[i][0:n) += sum_k A_k[i] * B_k[0:n),   i < rows, k < depth
//
// where A_k (rows contiguous values) and B_k are the input and grad_output
// rows of pixel k. Each k is a rank-1 update, so neither operand is packed.
// C is row-major with panels*panel_width columns; every B_k must be readable
// for panels*panel_width values (the columns past the real ones are
// computed and ignored).
template <typename T>
struct OuterGemmArgs {
  int64_t rows;            // M
  int64_t depth;           // K
  int64_t panels;          // N / panel_width, N padded up
  const T* const* a_cols;  // depth pointers to rows contiguous values
  const T* const* b_rows;  // depth pointers to panels*panel_width readable values
  T* c;                    // rows x panels*panel_width, row-major
};

void outer_gemm(const OuterGemmArgs<float>& args);
void outer_gemm(const OuterGemmArgs<double>& args);

// outer_gemm on bfloat16 operands with float32 C, two pixels per vdpbf16ps:
//
//   C[i][0:n) += sum_q A_q[i][0] * B_q[0:n)[0] + A_q[i][1] * B_q[0:n)[1],   q < pairs
//
// where pair q holds two pixels k = 2q, 2q + 1 (a pixel that a caller leaves
// out of a pair is a zero A value):
//   a_cols[q]  points to rows x 2 values, (A_2q[i], A_2q+1[i]) for row i;
//   b_rows[q]  points to panels x 16 columns x 2 values, (B_2q[j], B_2q+1[j])
//              for column j.
// Rounding as in GatherGemmBf16Args. Only callable when bf16_dot_active().
struct OuterGemmBf16Args {
  int64_t rows;
  int64_t pairs;
  int64_t panels;
  const c10::BFloat16* const* a_cols;
  const c10::BFloat16* const* b_rows;
  float* c;  // rows x panels*16, row-major
};

void outer_gemm(const OuterGemmBf16Args& args);

// dst[i] += float(a[i]) * float(b[i]) for i < n: the row update of the
// depthwise kernels on the active instruction set (the kernels' own file is
// built for the baseline), with 16-bit operands widened in registers (AVX-512
// or F16C where the CPU has them) instead of copied to float first.
void row_fma(float* dst, const float* a, const float* b, int64_t n);
void row_fma(float* dst, const c10::Half* a, const float* b, int64_t n);
void row_fma(float* dst, const c10::BFloat16* a, const float* b, int64_t n);
void row_fma(float* dst, const c10::Half* a, const c10::Half* b, int64_t n);
void row_fma(float* dst, const c10::BFloat16* a, const c10::BFloat16* b, int64_t n);

// The rectangles of the depthwise kernels on NCHW planes, on the active
// instruction set, `rows` rows of `cols` contiguous values each:
//   rect_axpy: dst[r * dst_ld + c] += a * src[r * src_ld + c]
//   rect_dot:  sum over r, c of a[r * a_ld + c] * b[r * b_ld + c], in a fixed
//              order (vector lanes, then their sum), the same on every call.
void rect_axpy(float* dst, int64_t dst_ld, const float* src, int64_t src_ld, float a, int64_t rows,
               int64_t cols);
float rect_dot(const float* a, int64_t a_ld, const float* b, int64_t b_ld, int64_t rows,
               int64_t cols);

// dst[k * dst_ld + c] = src[c * src_ld + k] for k < pixels, c < channels: a
// run of `pixels` consecutive values in each of `channels` planes (channel
// c's run starting src_ld elements after channel c - 1's) becomes `pixels`
// rows of channels: grad_weight's chunk copies of NCHW operands, the NHWC
// copies of float NCHW tensors, and (with the roles of pixels and channels
// swapped) the stores of C rows into NCHW planes. 16 x 16 blocks are
// transposed in registers on AVX-512, 8 x 8 on AVX2.
void transpose_to_rows(const float* src, int64_t src_ld, int64_t pixels, int64_t channels,
                       float* dst, int64_t dst_ld);

// dst[i] = float(src[i]) for i < n: F16C's 8-wide conversion for float16
// where the CPU has it (plain C++ converts float16 in software, one value at
// a time), a vectorizable shift for bfloat16.
void widen_to_float(const c10::Half* src, float* dst, int64_t n);
void widen_to_float(const c10::BFloat16* src, float* dst, int64_t n);
// dst[i] = T(src[i]) for i < n, rounding to nearest even: F16C's 8-wide
// conversion for float16 where the CPU has it, plain C++ otherwise.
void narrow_from_float(const float* src, c10::Half* dst, int64_t n);
void narrow_from_float(const float* src, c10::BFloat16* dst, int64_t n);

// The instruction set the GEMM runs with: "avx512_bf16" (AVX-512 plus the
// bfloat16 dot products of gather_gemm(GatherGemmBf16Args)), "avx512", "avx2"
// or "baseline". The best one the CPU supports is chosen at load time;
// ATROUS_CPU_ISA or set_cpu_isa() pick a lower one (the tests run every path).
std::string cpu_isa();
std::string cpu_isas_available();
void set_cpu_isa(const std::string& isa);

// The measured fp32 FMA peak of this machine, in GFLOP/s, with the active
// instruction set on every intra-op thread (each thread runs
// `iters_per_thread` rounds of 12 independent register FMAs). The bench
// reports the kernels' share of it.
double cpu_peak_gflops(int64_t iters_per_thread);

}  // namespace cpu
}  // namespace atrous
