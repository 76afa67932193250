"""nn.Conv1d / nn.Conv2d subclasses that run the atrous kernels.

They keep nn.Conv's constructor, state_dict keys and every padding_mode, and
read stride, padding and dilation at forward time, because libraries change
them after construction (DeepLab's output-stride surgery, for one).
"""
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import (
    _PADDING_STRINGS,
    _atrous_conv,
    _int_tuple,
    atrous_conv_transpose2d,
    keeps_channels_last,
    resolve_padding,
    transpose_geometry,
)

__all__ = ["AtrousConv1d", "AtrousConv2d", "AtrousConvTranspose2d"]


def _scripted_same_padding(size: int, kernel: int, stride: int, dilation: int) -> List[int]:
    # functional.same_padding (TensorFlow's rule), in TorchScript's typed subset.
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return [total // 2, total - total // 2]


def _scripted_conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], ndim: int, stride: List[int],
                   padding_str: str, padding: List[int], dilation: List[int], groups: int,
                   padding_mode: str) -> Tensor:
    """The modules' forward under torch.jit.script: the same padding rules as
    functional.resolve_padding, calling the same op. The op's C++ checks
    catch bad shapes; the padding forms were checked at construction."""
    batched = input.dim() == ndim + 2
    x = input if batched else input.unsqueeze(0)
    pads: List[int] = []  # per side in F.pad order: last axis first
    for i in range(ndim - 1, -1, -1):
        size, kernel = x.shape[2 + i], weight.shape[2 + i]
        if padding_str == "valid":
            pads += [0, 0]
        elif padding_str == "same":
            pads += _scripted_same_padding(size, kernel, stride[i], dilation[i])
        elif padding_str == "causal":
            pads += [dilation[i] * (kernel - 1), 0]
        elif len(padding) == ndim:
            pads += [padding[i], padding[i]]
        else:  # explicit asymmetric padding, already in F.pad order
            j = 2 * (ndim - 1 - i)
            pads += [padding[j], padding[j + 1]]
    if padding_mode != "zeros":
        x = F.pad(x, pads, mode=padding_mode)
        pads = [0] * (2 * ndim)
    if ndim == 1:
        out = torch.ops.atrous.conv_forward(x.unsqueeze(2), weight.unsqueeze(2), bias, [1, stride[0]],
                                            [0, 0, pads[0], pads[1]], [1, dilation[0]], groups).squeeze(2)
    else:
        out = torch.ops.atrous.conv_forward(x, weight, bias, stride, [pads[2], pads[3], pads[0], pads[1]],
                                            dilation, groups)
    return out if batched else out.squeeze(0)


class _AtrousConvMixin:
    _ndim = 2
    _fn = "AtrousConv2d"

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if torch.jit.is_scripting():
            # TorchScript compiles only this branch (is_scripting() is a
            # compile-time constant there); stride, padding and dilation are
            # module constants, so isinstance picks one branch statically.
            stride: List[int] = []
            dilation: List[int] = []
            padding: List[int] = []
            for s in self.stride:
                stride.append(s)
            for d in self.dilation:
                dilation.append(d)
            if isinstance(self.padding, str):
                return _scripted_conv(input, weight, bias, len(stride), stride, self.padding, padding, dilation,
                                      self.groups, self.padding_mode)
            for p in self.padding:
                padding.append(p)
            return _scripted_conv(input, weight, bias, len(stride), stride, "", padding, dilation, self.groups,
                                  self.padding_mode)
        return self._eager_conv_forward(input, weight, bias)

    def _eager_conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            batched = input.dim() == self._ndim + 2
            x = input if batched else input.unsqueeze(0)
            pads = resolve_padding(
                self._fn, self.padding, self._ndim, tuple(x.shape[2:]), tuple(weight.shape[2:]),
                _int_tuple(self._fn, "stride", self.stride, self._ndim, 1),
                _int_tuple(self._fn, "dilation", self.dilation, self._ndim, 1),
            )
            # resolve_padding gives (top, bottom, left, right); F.pad wants the last axis first.
            pad_arg = (pads[2], pads[3]) if self._ndim == 1 else (pads[2], pads[3], pads[0], pads[1])
            x = F.pad(x, pad_arg, mode=self.padding_mode)
            out = _atrous_conv(self._fn, self._ndim, x, weight, bias, self.stride, 0, self.dilation, self.groups)
            return out if batched else out.squeeze(0)
        return _atrous_conv(self._fn, self._ndim, input, weight, bias, self.stride, self.padding, self.dilation,
                            self.groups)

    def extra_repr(self):
        return super().extra_repr() + ", backend=atrous_cuda"


def _construct(module, base, args, kwargs, allowed):
    """nn.Conv refuses 'causal' and 'same' with stride > 1; we accept them, so
    construct with padding 0 and put the string back."""
    padding = kwargs.get("padding", args[4] if len(args) > 4 else 0)
    if isinstance(padding, str) and padding not in _PADDING_STRINGS[module._ndim]:
        # nn.Conv raises at construction for an unknown string; so do we.
        raise ValueError(
            f"{module._fn}: expected padding to be one of {_PADDING_STRINGS[module._ndim]}, an int or a "
            f"tuple of ints, got '{padding}'"
        )
    deferred = isinstance(padding, str) and padding not in allowed
    stride = kwargs.get("stride", args[3] if len(args) > 3 else 1)
    strided = any(s != 1 for s in (stride if isinstance(stride, (tuple, list)) else (stride,)))
    if isinstance(padding, str) and padding == "same" and strided:
        deferred = True
    if deferred:
        if "padding" in kwargs:
            kwargs = dict(kwargs, padding=0)
        else:
            args = args[:4] + (0,) + args[5:]
    base.__init__(module, *args, **kwargs)
    if deferred:
        module.padding = padding
        if module.padding_mode != "zeros":
            # Kept for code that reads it; the forward recomputes padding.
            module._reversed_padding_repeated_twice = [0, 0] * module._ndim


class AtrousConv2d(_AtrousConvMixin, nn.Conv2d):
    """Drop-in nn.Conv2d whose forward runs atrous_cuda's kernels. Accepts every
    padding form of atrous_conv2d, including 'same' with stride > 1."""

    _ndim = 2
    _fn = "AtrousConv2d"

    def __init__(self, *args, **kwargs):
        _construct(self, nn.Conv2d, args, kwargs, ("same", "valid"))


class AtrousConv1d(_AtrousConvMixin, nn.Conv1d):
    """Drop-in nn.Conv1d whose forward runs atrous_cuda's kernels. Also takes
    padding='causal' (WaveNet) and 'same' with stride > 1."""

    _ndim = 1
    _fn = "AtrousConv1d"

    def __init__(self, *args, **kwargs):
        _construct(self, nn.Conv1d, args, kwargs, ("same", "valid"))


def _scripted_dtype_name(dtype: torch.dtype) -> str:
    # str() of a dtype is its enum number in TorchScript.
    for candidate, name in [(torch.float32, "torch.float32"), (torch.float64, "torch.float64"),
                            (torch.float16, "torch.float16"), (torch.bfloat16, "torch.bfloat16")]:
        if dtype == candidate:
            return name
    return "dtype #" + str(dtype)


def _scripted_conv_transpose(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                             padding: List[int], output_padding: List[int], groups: int,
                             dilation: List[int]) -> Tensor:
    """AtrousConvTranspose2d's forward under torch.jit.script: the same
    geometry and op call as functional.atrous_conv_transpose2d. The op's C++
    checks catch bad shapes; the bias and dtypes are checked here so the
    errors name this module rather than the op.

    No autocast here: torch.is_autocast_cpu_enabled() inside TorchScript
    crashes the process (segfault, torch 2.14) when called under
    torch.autocast, so the scripted module runs in its arguments' dtypes.
    """
    if weight.dtype != input.dtype:
        raise RuntimeError("AtrousConvTranspose2d: expected weight of the input's dtype "
                           + _scripted_dtype_name(input.dtype) + ", got " + _scripted_dtype_name(weight.dtype))
    if bias is not None:
        if bias.dtype != input.dtype:
            raise RuntimeError("AtrousConvTranspose2d: expected bias of the input's dtype "
                               + _scripted_dtype_name(input.dtype) + ", got " + _scripted_dtype_name(bias.dtype))
        if bias.dim() != 1 or bias.shape[0] != weight.shape[1] * groups:
            raise ValueError("AtrousConvTranspose2d: expected bias of size (" + str(weight.shape[1] * groups)
                             + ",), got bias of size " + str(bias.shape))
    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    out_size: List[int] = []
    pads: List[int] = []
    unreached: List[int] = []
    for axis in range(2):
        g = transpose_geometry(x.shape[2 + axis], weight.shape[2 + axis], stride[axis], padding[axis],
                               output_padding[axis], dilation[axis])
        out_size.append(g[0])
        pads += [g[1], g[2]]
        unreached.append(g[3])
    shape_only = x.new_zeros(()).expand([x.shape[0], weight.shape[1] * groups, out_size[0], out_size[1]])
    channels_last = keeps_channels_last(x, weight)
    w = weight.contiguous(memory_format=torch.channels_last) if channels_last else weight
    out = torch.ops.atrous.conv_backward(x, shape_only, w, stride, pads, dilation, groups, [True, False, False])[0]
    if unreached[0] > 0 or unreached[1] > 0:
        out = F.pad(out, [0, unreached[1], 0, unreached[0]])
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    if bias is not None:
        out = out + bias.reshape(1, -1, 1, 1)
    return out if batched else out.squeeze(0)


class AtrousConvTranspose2d(nn.ConvTranspose2d):
    """Drop-in nn.ConvTranspose2d (same constructor, state_dict keys and
    `forward(input, output_size=None)`) whose forward runs the atrous
    grad_input kernel (see atrous_conv_transpose2d). Scripts with
    torch.jit.script, like AtrousConv2d."""

    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(
                "AtrousConvTranspose2d: only padding_mode='zeros' is supported, got '" + self.padding_mode + "'"
            )
        # nn.ConvTranspose2d's own rule turns output_size into output_padding.
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation
        )
        if torch.jit.is_scripting():
            # Compiled alone (see _AtrousConvMixin._conv_forward); the module's
            # stride, padding and dilation are tuple constants there.
            stride: List[int] = []
            padding: List[int] = []
            dilation: List[int] = []
            for s in self.stride:
                stride.append(s)
            for p in self.padding:
                padding.append(p)
            for d in self.dilation:
                dilation.append(d)
            return _scripted_conv_transpose(input, self.weight, self.bias, stride, padding, output_padding,
                                            self.groups, dilation)
        return atrous_conv_transpose2d(
            input, self.weight, self.bias, self.stride, self.padding, output_padding, self.groups, self.dilation
        )

    def extra_repr(self):
        return super().extra_repr() + ", backend=atrous_cuda"
