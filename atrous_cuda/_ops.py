"""Fake kernels and autograd for the atrous ops defined in csrc/atrous_conv.cpp.

Both ops are registered through torch.library, so torch.compile traces them
without a graph break and torch.library.opcheck passes. The backward op is
itself differentiable through the same two ops, which gives double backward.
"""
import torch

from ._extension import load_extension

_C = load_extension()  # registers the ops; a failure is explained

conv_forward = torch.ops.atrous.conv_forward.default
conv_backward = torch.ops.atrous.conv_backward.default


def strides_like_channels_last(t) -> bool:
    """Tensor.suggest_memory_format() == channels_last, as torch's CPU
    convolutions decide it (c10's is_channels_last_strides_2d): visiting
    C, W, H, N, each stride must be at least the extent of the dimensions
    visited before; size-1 dimensions make some layouts both, and those
    resolve by stride order, NCHW when strides tie."""
    if t.dim() != 4 or t.stride(1) == 0:
        return False
    smallest = 0
    for d in [1, 3, 2, 0]:
        if t.shape[d] == 0 or t.stride(d) < smallest:
            return False
        if d == 0 and smallest == t.stride(1):
            return False
        smallest = t.stride(d) * max(t.shape[d], 1)
    return True


def output_memory_format(input, weight):
    """Same rule as atrous::output_memory_format in C++, and as torch's conv:
    channels_last when the input's or the weight's strides suggest it. A 1x1
    weight made channels_last (model.to(memory_format=torch.channels_last)
    gives it strides (C, 1, C, C)) is contiguous in both senses, and still
    makes torch's output channels_last."""
    if strides_like_channels_last(input) or strides_like_channels_last(weight):
        return torch.channels_last
    return torch.contiguous_format


def _empty_like_in(t, shape, memory_format):
    # Tensor.new_empty takes no memory_format, so go through torch.empty.
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=memory_format)


def _out_size(size, pad_before, pad_after, kernel, stride, dilation):
    # Same formula as conv_out_size in csrc/atrous_index.h.
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def _check_devices(op, input, **others):
    for name, t in others.items():
        torch._check(t is None or t.device == input.device,
                     lambda: f"{op}: expected {name} on the input's device {input.device}, got {t.device}")


@torch.library.register_fake("atrous::conv_forward")
def _conv_forward_fake(input, weight, bias, stride, padding, dilation, groups):
    _check_devices("atrous_conv", input, weight=weight, bias=bias)
    torch._check(input.dim() == 4, lambda: f"atrous_conv: expected 4-D input, got {input.dim()}-D")
    torch._check(weight.dim() == 4, lambda: f"atrous_conv: expected 4-D weight, got {weight.dim()}-D")
    torch._check(
        weight.shape[1] * groups == input.shape[1],
        lambda: f"atrous_conv: weight {tuple(weight.shape)} with groups={groups} does not match "
        f"input channels {input.shape[1]}",
    )
    out_h = _out_size(input.shape[2], padding[0], padding[1], weight.shape[2], stride[0], dilation[0])
    out_w = _out_size(input.shape[3], padding[2], padding[3], weight.shape[3], stride[1], dilation[1])
    torch._check(out_h > 0 and out_w > 0, lambda: "atrous_conv: kernel larger than the padded input")
    return _empty_like_in(
        input, (input.shape[0], weight.shape[0], out_h, out_w), output_memory_format(input, weight)
    )


@torch.library.register_fake("atrous::conv_backward")
def _conv_backward_fake(grad_output, input, weight, stride, padding, dilation, groups, output_mask):
    _check_devices("atrous_conv_backward", input, weight=weight, grad_output=grad_output)
    fmt = output_memory_format(input, weight)
    grad_input = _empty_like_in(input, input.shape, fmt) if output_mask[0] else input.new_empty((0,))
    grad_weight = _empty_like_in(weight, weight.shape, fmt) if output_mask[1] else weight.new_empty((0,))
    grad_bias = weight.new_empty((weight.shape[0],)) if output_mask[2] else weight.new_empty((0,))
    return grad_input, grad_weight, grad_bias


def _forward_setup_context(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _forward_backward(ctx, grad_output):
    input, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    if not any(mask):
        return None, None, None, None, None, None, None
    grad_input, grad_weight, grad_bias = conv_backward(grad_output, input, weight, *ctx.conv_args, mask)
    return (
        grad_input if mask[0] else None,
        grad_weight if mask[1] else None,
        grad_bias if mask[2] else None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd(
    "atrous::conv_forward", _forward_backward, setup_context=_forward_setup_context
)


def _backward_setup_context(ctx, inputs, output):
    grad_output, input, weight, stride, padding, dilation, groups, output_mask = inputs
    ctx.save_for_backward(grad_output, input, weight)
    ctx.conv_args = (stride, padding, dilation, groups)
    ctx.output_mask = list(output_mask)


def _backward_backward(ctx, gg_input, gg_weight, gg_bias):
    """Differentiates (grad_input, grad_weight, grad_bias) = conv_backward(gy, x, w).

    With conv(x, w) linear in each argument:
      grad_input  = J_x(w)^T gy      -> d/d gy: conv(gg_input, w);    d/d w: grad_weight of conv(gg_input, w) against gy
      grad_weight = J_w(x)^T gy      -> d/d gy: conv(x, gg_weight);   d/d x: grad_input of conv(x, gg_weight) against gy
      grad_bias   = sum over N, H, W -> d/d gy: gg_bias broadcast
    Entries whose output_mask was false are empty placeholders and carry no
    gradient.
    """
    grad_output, input, weight = ctx.saved_tensors
    args = ctx.conv_args
    mask = ctx.output_mask
    gg_input = gg_input if mask[0] and gg_input is not None and gg_input.numel() > 0 else None
    gg_weight = gg_weight if mask[1] and gg_weight is not None and gg_weight.numel() > 0 else None
    gg_bias = gg_bias if mask[2] and gg_bias is not None and gg_bias.numel() > 0 else None

    d_grad_output = d_input = d_weight = None
    if ctx.needs_input_grad[0]:
        terms = []
        if gg_input is not None:
            terms.append(conv_forward(gg_input, weight, None, *args))
        if gg_weight is not None:
            terms.append(conv_forward(input, gg_weight, gg_bias, *args))
        elif gg_bias is not None:
            terms.append(gg_bias.reshape(1, -1, 1, 1).expand_as(grad_output))
        if terms:
            d_grad_output = terms[0]
            for t in terms[1:]:
                d_grad_output = d_grad_output + t
    if ctx.needs_input_grad[1] and gg_weight is not None:
        d_input = conv_backward(grad_output, input, gg_weight, *args, [True, False, False])[0]
    if ctx.needs_input_grad[2] and gg_input is not None:
        d_weight = conv_backward(grad_output, gg_input, weight, *args, [False, True, False])[1]
    return d_grad_output, d_input, d_weight, None, None, None, None, None


torch.library.register_autograd(
    "atrous::conv_backward", _backward_backward, setup_context=_backward_setup_context
)
