// The schema of the atrous ops, defined once. Device kernels register in
// csrc/cpu/atrous_conv_kernel.cpp and csrc/cuda/atrous_conv_cuda.cu; fake
// kernels and autograd are registered from Python in atrous_cuda/_ops.py.
#include <torch/library.h>

// padding is per side in axis order: (top, bottom, left, right). The Python
// API turns every padding form (ints, 'same', 'causal', F.pad-order tuples)
// into this, so asymmetric padding never copies the input.
//
// conv_backward returns a zero-element tensor for each gradient whose
// output_mask entry is false; nothing is computed for it.
TORCH_LIBRARY(atrous, m) {
  m.def(
      "conv_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, "
      "int[2] dilation, int groups) -> Tensor");
  m.def(
      "conv_backward(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
      "int[4] padding, int[2] dilation, int groups, bool[3] output_mask) -> "
      "(Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}
