// Host-side pieces shared by every device's kernels: argument validation into
// a ConvParams, the output memory-format rule, and the debug poisoning of
// outputs. Kept free of torch/extension.h so the .cu files stay cheap to build.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <array>
#include <tuple>

#include "atrous_index.h"

namespace atrous {

// Checks every argument of atrous::conv_forward (grad_output is checked too
// when given) and derives the output extent. Errors name the argument, what
// was given and what was expected.
ConvParams make_conv_params(const char* op, const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups);

// Checks grad_output of atrous::conv_backward against the shape the forward
// would have produced.
void check_grad_output(const char* op, const ConvParams& p, const at::Tensor& grad_output,
                       const at::Tensor& input);

// The output (and every gradient) is channels_last when the input or the
// weight is strictly channels_last, as torch's own convolution decides. The
// Python fake kernels in atrous_cuda/_ops.py apply the same rule.
at::MemoryFormat output_memory_format(const at::Tensor& input, const at::Tensor& weight);

// With ATROUS_POISON=1 in the environment, outputs are filled with NaN before
// the kernels write them, so a test sees every element a kernel forgot.
bool poison_outputs_requested();
void poison(at::Tensor& t);

// The forward's output, in the output memory format, poisoned when requested.
at::Tensor allocate_output(const ConvParams& p, const at::Tensor& input, const at::Tensor& weight);

// The gradients conv_backward returns, allocated in the output memory format
// and poisoned when requested; a gradient whose output_mask entry is false is
// a zero-element tensor.
std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_gradients(const ConvParams& p,
                                                                  const at::Tensor& input,
                                                                  const at::Tensor& weight,
                                                                  std::array<bool, 3> output_mask);

// Shape of grad_input / grad_weight / output in NCHW order.
std::array<int64_t, 4> output_shape(const ConvParams& p);

}  // namespace atrous
