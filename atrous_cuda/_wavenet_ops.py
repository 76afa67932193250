"""Fake kernels, autograd and the Python entry points of WaveNet's ops.

The ops are defined in csrc/schema.cpp and run on the CPU
(csrc/cpu/wavenet_kernel.cpp):

- ``gated_activation(pre)``: WaveNet's gate, tanh(filter) * sigmoid(gate) of
  the two channel halves of ``pre``, in one pass. On other devices the same
  function runs as torch ops. Its backward is composed of torch ops, so it is
  differentiable again (gradgradcheck).
- ``wavenet_pack``, ``wavenet_step``, ``wavenet_generate``: incremental
  generation, used by ``atrous_cuda.models.WaveNet.step`` and ``generate``.
"""
import torch

from ._extension import load_extension

load_extension()  # the op registrations; a load failure is explained

__all__ = ["gated_activation"]

_gated_activation = torch.ops.atrous.gated_activation.default


def _check_pre(pre):
    torch._check(pre.dim() >= 2, lambda: f"gated_activation: expected pre of at least 2 dimensions, got {pre.dim()}-D")
    torch._check(pre.shape[1] % 2 == 0,
                 lambda: f"gated_activation: expected pre with an even number of channels, got {pre.shape[1]}")


@torch.library.register_fake("atrous::gated_activation")
def _gated_activation_fake(pre):
    _check_pre(pre)
    shape = list(pre.shape)
    shape[1] //= 2
    return pre.new_empty(shape)


def _gated_setup_context(ctx, inputs, output):
    (pre,) = inputs
    ctx.save_for_backward(pre)


def _gated_backward(ctx, grad_z):
    # z = tanh(f) * s with s = sigmoid(g):
    #   dz/df = (1 - tanh(f)^2) * s,   dz/dg = tanh(f) * s * (1 - s).
    (pre,) = ctx.saved_tensors
    f, g = pre.chunk(2, dim=1)
    t, s = torch.tanh(f), torch.sigmoid(g)
    return torch.cat([grad_z * (1 - t * t) * s, grad_z * t * s * (1 - s)], dim=1)


torch.library.register_autograd("atrous::gated_activation", _gated_backward, setup_context=_gated_setup_context)


def gated_activation(pre):
    """WaveNet's gated activation unit: pre (N, 2G, ...) -> tanh(pre[:, :G]) * sigmoid(pre[:, G:]).

    On the CPU one fused kernel (float32 is evaluated in double and rounded
    once; each value depends on its two inputs only, so a one-column step and
    a whole sequence agree bitwise); elsewhere torch ops.
    """
    if not isinstance(pre, torch.Tensor):
        raise TypeError(f"gated_activation: expected pre to be a tensor, got {type(pre).__name__}")
    if pre.device.type == "cpu":
        return _gated_activation(pre)
    if pre.dim() < 2 or pre.shape[1] % 2 != 0:
        raise ValueError(f"gated_activation: expected pre (N, 2*G, ...) with an even number of channels, "
                         f"got size {list(pre.shape)}")
    f, g = pre.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


# ------------------------------------------------------ incremental generation --

@torch.library.register_fake("atrous::wavenet_pack")
def _wavenet_pack_fake(input_weight, input_bias, conv_weight, conv_bias, residual_weight, residual_bias,
                       skip_weight, skip_bias, hidden_weight, hidden_bias, output_weight, output_bias, dilations,
                       weights_dtype=None):
    # The packed layout (panels, padding) is the kernel's business: sizes are data-dependent here.
    ctx = torch.library.get_ctx()
    packed = input_weight.new_empty((ctx.new_dynamic_size(),))
    plan = input_weight.new_empty((ctx.new_dynamic_size(),), dtype=torch.int64)
    return packed, plan


@torch.library.register_fake("atrous::wavenet_step")
def _wavenet_step_fake(state, packed, plan, inputs, local_conditioning, global_conditioning, position):
    ctx = torch.library.get_ctx()
    return inputs.new_empty((inputs.shape[0], ctx.new_dynamic_size(), inputs.shape[2]))


@torch.library.register_fake("atrous::wavenet_generate")
def _wavenet_generate_fake(state, packed, plan, input, feedback, local_conditioning, global_conditioning,
                           position, steps, temperature, greedy, generator):
    return input.new_empty((input.shape[0], steps), dtype=torch.int64)


wavenet_pack = torch.ops.atrous.wavenet_pack.default
wavenet_step = torch.ops.atrous.wavenet_step.default
wavenet_generate = torch.ops.atrous.wavenet_generate.default
