"""The functional API: drop-in replacements for F.conv1d and F.conv2d.

Beyond torch, `padding` also takes:
  * 'same' with stride > 1, by TensorFlow's rule (the odd pixel goes after);
  * 'same' with even kernels;
  * explicit asymmetric padding, 2*ndim ints in F.pad order:
    (left, right) for 1-D, (left, right, top, bottom) for 2-D;
  * 'causal' for 1-D: all padding before, so output t never sees input after t.
Every form becomes explicit per-side padding for the op, so no form copies
the input.
"""
import numbers
from typing import List

import torch
from torch import Tensor

from . import _ops

__all__ = ["atrous_conv1d", "atrous_conv2d", "atrous_conv_transpose2d", "resolve_padding", "same_padding"]

_PADDING_STRINGS = {1: ("valid", "same", "causal"), 2: ("valid", "same")}


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _int_tuple(fn, name, value, ndim, minimum):
    """Normalizes an int or a sequence of ndim ints (a 1-element sequence is
    broadcast, as torch does); raises TypeError/ValueError naming `name`."""
    if _is_int(value):
        values = (int(value),) * ndim
    elif isinstance(value, (tuple, list, torch.Size)):
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{fn}: expected {name} to be an int or a tuple of {ndim} ints, got {value!r}")
        if len(value) == 1:
            values = (int(value[0]),) * ndim
        elif len(value) == ndim:
            values = tuple(int(v) for v in value)
        else:
            raise ValueError(f"{fn}: expected {name} to be an int or a tuple of {ndim} ints, got {tuple(value)}")
    else:
        raise TypeError(f"{fn}: expected {name} to be an int or a tuple of {ndim} ints, got {type(value).__name__}")
    if any(v < minimum for v in values):
        raise ValueError(f"{fn}: expected every {name} >= {minimum}, got {values}")
    if minimum != float("-inf"):  # resolve_padding checks the form first, then the range
        _check_int64(fn, name, values)
    return values


_INT64_MAX = 2**63 - 1


def _check_int64(fn, name, values):
    """The op takes int64 arguments; a larger Python int would fail inside the
    dispatcher with a message that names no argument."""
    if any(abs(v) > _INT64_MAX for v in values):
        raise ValueError(f"{fn}: expected {name} values that fit in int64, got {tuple(values)}")


def same_padding(size, kernel, stride, dilation):
    """(before, after) for padding='same' on one axis, by TensorFlow's rule.

    out = ceil(size / stride); total = max((out-1)*stride + dilation*(kernel-1) + 1 - size, 0);
    the odd pixel goes after. For stride 1 this is torch's 'same'. Mirrors
    same_padding in csrc/atrous_index.h (tests/test_index_math.py checks both agree).
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_padding(fn, padding, ndim, spatial, kernel, stride, dilation):
    """Every padding form -> per-side padding in axis order
    (top, bottom, left, right) for the 2-D op. `spatial`, `kernel`,
    `stride`, `dilation` have ndim entries."""
    if isinstance(padding, str):
        if padding not in _PADDING_STRINGS[ndim]:
            raise ValueError(
                f"{fn}: expected padding to be one of {_PADDING_STRINGS[ndim]}, an int, a tuple of {ndim} "
                f"ints or a tuple of {2 * ndim} ints in F.pad order, got '{padding}'"
            )
        if padding == "valid":
            per_axis = [(0, 0)] * ndim
        elif padding == "same":
            per_axis = [same_padding(spatial[i], kernel[i], stride[i], dilation[i]) for i in range(ndim)]
        else:  # causal, 1-D only
            per_axis = [(dilation[0] * (kernel[0] - 1), 0)]
    elif isinstance(padding, (tuple, list, torch.Size)) and len(padding) == 2 * ndim:
        if not all(_is_int(v) for v in padding):
            raise TypeError(f"{fn}: expected padding of ints, got {padding!r}")
        if any(v < 0 for v in padding):
            raise ValueError(f"{fn}: expected every padding >= 0, got {tuple(padding)}")
        # F.pad order lists the last axis first: (left, right[, top, bottom]).
        _check_int64(fn, "padding", padding)
        pairs = [(int(padding[2 * i]), int(padding[2 * i + 1])) for i in range(ndim)]
        per_axis = pairs[::-1]
    else:
        try:
            sym = _int_tuple(fn, "padding", padding, ndim, float("-inf"))  # form only; sign below
        except (TypeError, ValueError) as e:
            raise type(e)(
                f"{fn}: expected padding to be an int, a tuple of {ndim} ints, a tuple of {2 * ndim} ints "
                f"in F.pad order or one of {_PADDING_STRINGS[ndim]}, got {padding!r}"
            ) from None
        if any(p < 0 for p in sym):
            raise ValueError(f"{fn}: expected every padding >= 0, got {sym}")
        _check_int64(fn, "padding", sym)
        per_axis = [(p, p) for p in sym]
    if ndim == 1:
        per_axis = [(0, 0)] + per_axis
    pads = [per_axis[0][0], per_axis[0][1], per_axis[1][0], per_axis[1][1]]
    if isinstance(padding, str) and any(p > _INT64_MAX for p in pads):
        # 'same'/'causal' grow with dilation * (kernel - 1).
        raise ValueError(f"{fn}: padding='{padding}' with dilation {tuple(dilation)} and kernel {tuple(kernel)} "
                         f"needs per-side padding {pads}, past int64; expected a smaller dilation")
    return pads


def _check_tensors(fn, input, weight, bias, ndim):
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{fn}: expected {name} to be a Tensor, got {type(t).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"{fn}: expected bias to be a Tensor or None, got {type(bias).__name__}")
    if input.dim() not in (ndim + 1, ndim + 2):
        raise ValueError(
            f"{fn}: expected {ndim + 1}-D (unbatched) or {ndim + 2}-D (batched) input, "
            f"got input of size {tuple(input.shape)}"
        )
    if weight.dim() != ndim + 2:
        raise ValueError(
            f"{fn}: expected {ndim + 2}-D weight (out_channels, in_channels/groups, "
            f"{'kW' if ndim == 1 else 'kH, kW'}), got weight of size {tuple(weight.shape)}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        # Checked here too, not only in C++: with a meta tensor among CPU ones
        # the dispatcher would pick the shape-only meta kernel, and torch's own
        # conv returns uninitialized memory for that mix.
        if t is not None and t.device != input.device:
            raise RuntimeError(f"{fn}: expected {name} on the input's device {input.device}, got {t.device}")
    for name, t in (("input", input), ("weight", weight), ("bias", bias)):
        if t is not None and t.layout != torch.strided:
            raise TypeError(f"{fn}: expected a dense (torch.strided) {name}, got layout {t.layout}")
        if t is not None and not t.is_floating_point():
            raise TypeError(
                f"{fn}: expected {name} of dtype float32, float64, float16 or bfloat16, got {t.dtype}"
            )


def _atrous_conv(fn, ndim, input, weight, bias, stride, padding, dilation, groups):
    _check_tensors(fn, input, weight, bias, ndim)
    if not _is_int(groups):
        raise TypeError(f"{fn}: expected groups to be an int, got {groups!r}")
    if groups <= 0:
        raise ValueError(f"{fn}: expected groups > 0, got {groups}")
    _check_int64(fn, "groups", (groups,))
    stride = _int_tuple(fn, "stride", stride, ndim, 1)
    dilation = _int_tuple(fn, "dilation", dilation, ndim, 1)
    batched = input.dim() == ndim + 2
    x = input if batched else input.unsqueeze(0)
    kernel = tuple(weight.shape[2:])
    pads = resolve_padding(fn, padding, ndim, tuple(x.shape[2:]), kernel, stride, dilation)
    w = weight
    if ndim == 1:
        # A 1-D conv is the 2-D op with H = 1: views, no copies.
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        stride, dilation = (1, stride[0]), (1, dilation[0])
    out = _ops.conv_forward(x, w, bias, list(stride), pads, list(dilation), int(groups))
    if ndim == 1:
        out = out.squeeze(2)
    return out if batched else out.squeeze(0)


def atrous_conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Same signature and results as torch.nn.functional.conv2d, plus the padding
    forms listed in this module's docstring."""
    return _atrous_conv("atrous_conv2d", 2, input, weight, bias, stride, padding, dilation, groups)


def atrous_conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """Same signature and results as torch.nn.functional.conv1d, plus 'causal'
    padding and the padding forms listed in this module's docstring."""
    return _atrous_conv("atrous_conv1d", 1, input, weight, bias, stride, padding, dilation, groups)


def _autocast_dtype(device):
    """torch.get_autocast_dtype(device type) when autocast is on for the
    input's device, else None. Device types autocast does not know (meta)
    never autocast."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except RuntimeError:
        return None
    return torch.get_autocast_dtype(device.type) if enabled else None


def _autocast_cast(dtype, device, t):
    """Autocast's lower_precision_fp rule (the one F.conv_transpose2d follows):
    a floating-point tensor on the autocast device is cast to the autocast
    dtype unless it is float64. `.to` is differentiable, so a float32
    parameter still gets a float32 grad."""
    if t is None or t.device != device or t.dtype in (torch.float64, dtype):
        return t
    return t.to(dtype)


def transpose_geometry(in_size: int, kernel: int, stride: int, padding: int, output_padding: int,
                       dilation: int) -> List[int]:
    """One axis of a transposed conv as conv_backward's grad_input:
    [out_size, pad_before, pad_after, unreached], where the op produces
    out_size rows and `unreached` zero rows are appended after them (see
    atrous_conv_transpose2d). TorchScript-typed: the scripted module uses it too."""
    s, p, d, k, op = stride, padding, dilation, kernel, output_padding
    size = (in_size - 1) * s - 2 * p + d * (k - 1) + op + 1
    unreached = max(op - p, 0)
    return [size - unreached, p, p - (op - unreached), unreached]


def keeps_channels_last(x: Tensor, weight: Tensor) -> bool:
    """F.conv_transpose2d on CPU returns channels_last when the (batched)
    input's or the weight's strides suggest channels_last."""
    return _ops.strides_like_channels_last(x) or _ops.strides_like_channels_last(weight)


def channels_last_weight(weight: Tensor) -> Tensor:
    """The op's grad_input is channels_last when its input or weight is
    strictly channels_last; its input here is a layout-less expanded scalar,
    so the weight carries the layout: a copy of the weight, much smaller
    than the output. Weights whose channels_last strides are also contiguous
    ones (1x1 kernels, one output channel per group) cannot say it and are
    returned unchanged."""
    return weight.contiguous(memory_format=torch.channels_last)


def atrous_conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Same signature and results as torch.nn.functional.conv_transpose2d.

    A transposed conv is the input-gradient of a conv, so it runs as
    conv_backward with output_mask (True, False, False). Shapes, with
    (s, p, d, k, op) per axis and the transposed input of size H:
      * the conv whose grad_input we take maps an image of size
        H_out = (H-1)*s - 2p + d*(k-1) + op + 1 to H pixels;
      * its weight (out = Cin_t, in/groups = Cout_t/groups, kh, kw) is
        ConvTranspose2d's weight layout, unchanged;
      * output_padding adds op rows at the end. The last conv window starts
        at (H-1)*s - p and reaches row (H-1)*s - p + d*(k-1) = H_out - 1 - (op - p),
        so the conv pads the end by p - op when op <= p (its output size
        floor((H_out + 2p - op - d*(k-1) - 1)/s) + 1 is then exactly H), and
        when op > p the last op - p rows are reached by no tap: they are
        zeros appended after a conv with op = p.
    The conv's input is only a shape here (the kernels read it only for
    grad_weight), so it is an expanded scalar zero: nothing is allocated.
    Like torch: under torch.autocast the float32 tensors run in the autocast
    dtype, and a channels_last input or weight gives a channels_last output.
    """
    fn = "atrous_conv_transpose2d"
    _check_tensors(fn, input, weight, bias, 2)
    autocast_dtype = _autocast_dtype(input.device)
    if autocast_dtype is not None:
        input, weight, bias = (_autocast_cast(autocast_dtype, input.device, t) for t in (input, weight, bias))
    for name, t in (("weight", weight), ("bias", bias)):
        # Checked here: the op would name itself (atrous_conv_backward), not this function.
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(f"{fn}: expected {name} of the input's dtype {input.dtype}, got {t.dtype}")
    if not _is_int(groups):
        raise TypeError(f"{fn}: expected groups to be an int, got {groups!r}")
    if groups <= 0:
        raise ValueError(f"{fn}: expected groups > 0, got {groups}")
    stride = _int_tuple(fn, "stride", stride, 2, 1)
    dilation = _int_tuple(fn, "dilation", dilation, 2, 1)
    if isinstance(padding, str):
        raise ValueError(f"{fn}: expected padding to be an int or a tuple of 2 ints, got '{padding}'")
    padding = _int_tuple(fn, "padding", padding, 2, 0)
    output_padding = _int_tuple(fn, "output_padding", output_padding, 2, 0)
    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    if x.shape[1] != weight.shape[0]:
        raise ValueError(
            f"{fn}: weight of size {tuple(weight.shape)} expects input with {weight.shape[0]} channels "
            f"(weight is (in_channels, out_channels/groups, kH, kW)), got input of size {tuple(input.shape)}"
        )
    if weight.shape[0] % groups != 0:
        raise ValueError(f"{fn}: expected in_channels ({weight.shape[0]}) divisible by groups ({groups})")
    out_channels = weight.shape[1] * groups
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != out_channels):
        raise ValueError(
            f"{fn}: expected bias of size ({out_channels},) (out_channels = weight.shape[1] * groups = "
            f"{weight.shape[1]} * {groups}), got bias of size {tuple(bias.shape)}"
        )
    kernel = tuple(weight.shape[2:])
    out_size, pads, unreached_rows = [], [], []
    for axis in range(2):
        if output_padding[axis] >= max(stride[axis], dilation[axis]):
            raise ValueError(
                f"{fn}: expected output_padding smaller than stride or dilation, got output_padding="
                f"{output_padding}, stride={stride}, dilation={dilation}"
            )
        size, before, after, unreached = transpose_geometry(
            x.shape[2 + axis], kernel[axis], stride[axis], padding[axis], output_padding[axis], dilation[axis]
        )
        if size + unreached <= 0:
            raise ValueError(
                f"{fn}: input of size {tuple(input.shape)} with stride={stride}, padding={padding}, "
                f"dilation={dilation} and kernel {kernel} gives a non-positive output size {size + unreached}"
            )
        out_size.append(size)
        unreached_rows.append(unreached)
        pads += [before, after]
    shape_only = x.new_zeros(()).expand(x.shape[0], out_channels, *out_size)
    channels_last = keeps_channels_last(x, weight)
    out = _ops.conv_backward(
        x, shape_only, channels_last_weight(weight) if channels_last else weight, list(stride), pads,
        list(dilation), int(groups), [True, False, False]
    )[0]
    if any(unreached_rows):
        out = torch.nn.functional.pad(out, (0, unreached_rows[1], 0, unreached_rows[0]))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)  # a no-op unless the weight could not say it
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out if batched else out.squeeze(0)
