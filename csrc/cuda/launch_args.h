// Arguments of the CUDA launchers: raw pointers plus a ConvParams, so the
// kernel translation units (one per dtype, built in parallel) include no ATen.
#pragma once

#if defined(ATROUS_CUDA_EMULATION)
#include "emulation.h"
#else
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "../atrous_index.h"

namespace atrous {
namespace cuda {

// Element strides of a 4-D output (any memory format).
struct Strides4 {
  int64_t n, c, h, w;
};

// Forward and grad_input as one implicit GEMM, C[m][col] = sum_k A[m][k] B[k][col]:
//   forward:    m = output pixel (n, oh, ow), col = out channel of the group,
//               k = (tap, in channel), A gathered from the NHWC input;
//   grad_input: m = input pixel (n, ih, iw), col = in channel of the group,
//               k = (tap, out channel), A gathered from the NHWC grad_output.
struct ImplicitGemmArgs {
  ConvParams conv;
  PixelOrder order;    // GEMM row m -> pixel, grouped by which taps are valid
  const void* a;       // NHWC input (forward) or grad_output (grad_input)
  const void* b;       // packed weights [groups][taps][depth][b_cols], zero-padded columns
  const void* bias;    // forward only; nullptr for none
  void* out;           // output or grad_input, strided by out_strides
  Strides4 out_strides;
  int64_t b_cols;      // columns per packed row, a multiple of 8
  bool a_vector_ok;    // A rows are 16-byte aligned, depth a multiple of 16 bytes
  bool allow_tf32;     // float may use TF32 tensor cores (torch.backends.cuda.matmul.allow_tf32)
  cudaStream_t stream;
};

// grad_weight per (group, tap): C[co][ci] = sum over valid pixels of
// grad_y[pixel][co] * x[input pixel][ci], split over `splits` fixed, shape-only
// ranges of pixels whose partial sums are added in order by a second kernel.
struct GradWeightArgs {
  ConvParams conv;
  const void* grad_output;  // NHWC
  const void* input;        // NHWC
  void* partials;           // [splits][groups*taps][Cout/g][Cin/g] in the accumulation type
  void* grad_weight;        // strided by weight_strides
  Strides4 weight_strides;
  int64_t splits;
  bool vector_ok;           // channel rows 16-byte aligned, channels per group multiple of 16 bytes
  bool allow_tf32;          // as in ImplicitGemmArgs
  cudaStream_t stream;
};

// Depthwise (one input channel per group) and grad_bias kernels.
struct DirectArgs {
  ConvParams conv;
  const void* a;          // forward: NHWC input; grad_input / grad_weight / grad_bias: NHWC grad_output
  const void* b;          // weight [Cout][taps] (forward, grad_input) or NHWC input (grad_weight)
  const void* bias;       // forward only
  void* out;              // strided by out_strides (grad_bias: stride n is the element stride)
  Strides4 out_strides;
  void* partials;         // reductions only: [splits][taps or 1][Cout] in the accumulation type
  int64_t splits;         // reductions only: fixed pixel ranges, see reduction_splits
  cudaStream_t stream;
};

template <typename scalar_t>
void launch_implicit_gemm_forward(const ImplicitGemmArgs& args);
template <typename scalar_t>
void launch_implicit_gemm_grad_input(const ImplicitGemmArgs& args);
template <typename scalar_t>
void launch_grad_weight(const GradWeightArgs& args);
template <typename scalar_t>
void launch_depthwise_forward(const DirectArgs& args);
template <typename scalar_t>
void launch_depthwise_grad_input(const DirectArgs& args);
template <typename scalar_t>
void launch_depthwise_grad_weight(const DirectArgs& args);
template <typename scalar_t>
void launch_grad_bias(const DirectArgs& args);

}  // namespace cuda
}  // namespace atrous
