// The schema of the atrous ops, defined once. Device kernels register in
// csrc/cpu/atrous_conv_kernel.cpp and csrc/cuda/atrous_conv_cuda.cu (the
// convolution) and csrc/cpu/assemble_kernel.cpp and csrc/cuda/assemble_kernel.cu
// (instance assembling); fake kernels and autograd are registered from Python
// in atrous_cuda/_ops.py and atrous_cuda/_assemble_ops.py.
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

  // InstanceFCN's instance assembling (csrc/assemble_index.h, equation (1)):
  // scores (N, k*k, H, W) -> (N, Hc, Wc, m, m), one m x m window per point of
  // the window grid of stride window_stride (Hc = ceil(H / sh)); with centers,
  // an int64 (P, 3) tensor of (n, yc, xc) grid points, -> (P, m, m), only
  // those windows. The backward takes the scores' sizes instead of the scores.
  m.def("instance_assemble(Tensor scores, int k, int m, int[2] window_stride, Tensor? centers) "
        "-> Tensor");
  m.def(
      "instance_assemble_backward(Tensor grad_output, SymInt batch, SymInt height, SymInt width, "
      "int k, int m, int[2] window_stride, Tensor? centers) -> Tensor");
  // FCIS's joint inside/outside assembling on given RoIs (equation (2) of
  // csrc/assemble_index.h): score maps (N, 2*k*k*(C+1), H, W) and rois (R, 5)
  // = (batch index, x1, y1, x2, y2) -> inside, outside, each (R, C+1, P, P).
  m.def(
      "fcis_assemble(Tensor score_maps, Tensor rois, int group_size, int output_size, "
      "float spatial_scale) -> (Tensor inside, Tensor outside)");
  m.def(
      "fcis_assemble_backward(Tensor grad_inside, Tensor grad_outside, Tensor rois, "
      "int group_size, int output_size, float spatial_scale, SymInt batch, SymInt height, "
      "SymInt width) -> Tensor");
}
