// The schema of the atrous ops, defined once. Device kernels register in
// csrc/cpu/atrous_conv_kernel.cpp and csrc/cuda/atrous_conv_cuda.cu (the
// convolution) and csrc/cpu/assemble_kernel.cpp and csrc/cuda/assemble_kernel.cu
// (instance assembling), csrc/cpu/wavenet_kernel.cpp (WaveNet's gate and
// incremental generation, CPU only); fake kernels and autograd are registered from Python
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

  // WaveNet's gated activation unit: pre (N, 2G, ...) -> z (N, G, ...),
  // z = tanh(pre[:, :G]) * sigmoid(pre[:, G:]). Its backward is composed of
  // torch ops (atrous_cuda/_wavenet_ops.py).
  m.def("gated_activation(Tensor pre) -> Tensor");
  // WaveNet incremental generation (csrc/cpu/wavenet_kernel.cpp):
  //   wavenet_pack      packs a WaveNet's weights once: gather_gemm panels in
  //                     `packed`, and a `plan` of where each layer's are and
  //                     how large the state is; weights_dtype=bfloat16 packs
  //                     float32 weights as bfloat16 (activations and sums
  //                     stay float32).
  //   wavenet_step      advances every layer by the S teacher-forced steps of
  //                     inputs (N, in, S), returning the logits (N, out, S).
  //   wavenet_generate  runs `steps` autoregressive steps, each sampled class
  //                     picking the row of `feedback` (classes, in) that is
  //                     the next input; returns the classes (N, steps).
  // state (slots, N, residual) holds every layer's ring of past inputs and
  // `position` (int64, (1,)) the steps taken; both ops advance them, and
  // wavenet_generate's `input`, the first step's input, ends as the input of
  // the step after the last. Conditioning comes projected to every layer's
  // gate pre-activations: local (N, layers * 2G, S), global (N, layers * 2G).
  m.def(
      "wavenet_pack(Tensor input_weight, Tensor input_bias, Tensor[] conv_weight, Tensor[] conv_bias, "
      "Tensor[] residual_weight, Tensor[] residual_bias, Tensor[] skip_weight, Tensor[] skip_bias, "
      "Tensor hidden_weight, Tensor hidden_bias, Tensor output_weight, Tensor output_bias, "
      "int[] dilations, ScalarType? weights_dtype=None) -> (Tensor packed, Tensor plan)");
  m.def(
      "wavenet_step(Tensor(a!) state, Tensor packed, Tensor plan, Tensor inputs, "
      "Tensor? local_conditioning, Tensor? global_conditioning, Tensor(b!) position) -> Tensor");
  m.def(
      "wavenet_generate(Tensor(a!) state, Tensor packed, Tensor plan, Tensor(b!) input, "
      "Tensor feedback, Tensor? local_conditioning, Tensor? global_conditioning, Tensor(c!) position, "
      "int steps, float temperature, bool greedy, Generator? generator) -> Tensor");
}
