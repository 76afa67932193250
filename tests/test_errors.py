"""Bad arguments give a clear error that names the argument.

Malformed Python arguments raise ValueError/TypeError in atrous_cuda.functional
before any kernel runs; shape and dtype mismatches are caught by the C++
checks (csrc/atrous_conv.cpp) and raise RuntimeError. Where torch's own
F.conv raises for the same mistake, the test checks that too, so the API stays
a drop-in replacement.
"""
import pytest
import torch
import torch.nn.functional as F

import atrous_cuda
from atrous_cuda import atrous_conv1d, atrous_conv2d

conv_forward = torch.ops.atrous.conv_forward.default
conv_backward = torch.ops.atrous.conv_backward.default


def _x(*shape):
    return torch.randn(*shape) if shape else torch.randn(1, 4, 8, 8)


X = _x()
W = torch.randn(6, 4, 3, 3)
B = torch.randn(6)

# id -> (exception, message regex, keyword arguments for conv2d(input, weight, bias, ...))
BAD_CONV2D_CALLS = {
    "stride_zero": (ValueError, r"stride >= 1, got \(0, 0\)", dict(stride=0)),
    "stride_negative_in_tuple": (ValueError, r"stride >= 1, got \(1, -1\)", dict(stride=(1, -1))),
    "stride_float": (TypeError, r"expected stride to be an int", dict(stride=1.5)),
    "stride_wrong_length": (ValueError, r"expected stride to be an int or a tuple of 2 ints, got \(1, 1, 1\)",
                            dict(stride=(1, 1, 1))),
    "padding_negative": (ValueError, r"expected every padding >= 0, got \(-1, -1\)", dict(padding=-1)),
    "padding_negative_in_tuple": (ValueError, r"expected every padding >= 0, got \(1, -2\)", dict(padding=(1, -2))),
    "padding_negative_asymmetric": (ValueError, r"expected every padding >= 0, got \(0, 1, -1, 0\)",
                                    dict(padding=(0, 1, -1, 0))),
    "padding_float": (TypeError, r"expected padding to be an int.*got 1\.5", dict(padding=1.5)),
    "padding_unknown_string": (ValueError, r"expected padding to be one of \('valid', 'same'\).*got 'full'",
                               dict(padding="full")),
    "padding_causal_for_conv2d": (ValueError, r"expected padding to be one of \('valid', 'same'\).*got 'causal'",
                                  dict(padding="causal")),
    "padding_wrong_length": (ValueError, r"padding .*tuple of 2 ints, a tuple of 4 ints in F\.pad order.*got \(1, 2, 3\)",
                             dict(padding=(1, 2, 3))),
    "dilation_zero": (ValueError, r"dilation >= 1, got \(0, 0\)", dict(dilation=0)),
    "dilation_negative": (ValueError, r"dilation >= 1, got \(2, -1\)", dict(dilation=(2, -1))),
    "groups_zero": (ValueError, r"expected groups > 0, got 0", dict(groups=0)),
    "groups_negative": (ValueError, r"expected groups > 0, got -2", dict(groups=-2)),
    "groups_float": (TypeError, r"expected groups to be an int, got 1\.0", dict(groups=1.0)),
}

# Mistakes torch's F.conv2d also refuses (it may raise a different type).
TORCH_ALSO_RAISES = {"stride_zero", "stride_negative_in_tuple", "stride_float", "stride_wrong_length", "padding_negative",
                     "padding_negative_in_tuple", "padding_negative_asymmetric", "padding_float", "padding_unknown_string",
                     "padding_causal_for_conv2d", "padding_wrong_length", "dilation_zero", "dilation_negative",
                     "groups_zero", "groups_negative", "groups_float"}


@pytest.mark.parametrize("name", BAD_CONV2D_CALLS)
def test_malformed_argument_raises_python_error_naming_it(name):
    exc, regex, kwargs = BAD_CONV2D_CALLS[name]
    with pytest.raises(exc, match=r"^atrous_conv2d: .*" + regex):
        atrous_conv2d(X, W, B, **kwargs)
    if name in TORCH_ALSO_RAISES:
        with pytest.raises((RuntimeError, TypeError, ValueError)):
            F.conv2d(X, W, B, **kwargs)


# id -> (exception, message regex, (input, weight, bias), kwargs)
BAD_TENSORS = {
    "input_2d": (ValueError, r"expected 3-D \(unbatched\) or 4-D \(batched\) input, got input of size \(8, 8\)",
                 (_x(8, 8), W, B), {}),
    "input_5d": (ValueError, r"expected 3-D \(unbatched\) or 4-D \(batched\) input, got input of size \(1, 1, 4, 8, 8\)",
                 (_x(1, 1, 4, 8, 8), W, B), {}),
    "weight_3d": (ValueError, r"expected 4-D weight .*got weight of size \(6, 4, 3\)", (X, torch.randn(6, 4, 3), B), {}),
    "weight_5d": (ValueError, r"expected 4-D weight", (X, torch.randn(6, 4, 3, 3, 1), B), {}),
    "input_not_tensor": (TypeError, r"expected input to be a Tensor, got list", ([1.0], W, B), {}),
    "bias_not_tensor": (TypeError, r"expected bias to be a Tensor or None, got list", (X, W, [0.0] * 6), {}),
    "integer_input": (TypeError, r"expected input of dtype float32, float64, float16 or bfloat16, got torch\.int64",
                      (X.long(), W.long(), None), {}),
    "integer_weight": (TypeError, r"expected weight of dtype float32.*got torch\.int32", (X, W.int(), None), {}),
    "channel_mismatch": (RuntimeError, r"weight of size \[6, 3, 3, 3\] and groups=1 expect input with 3 channels, got input "
                         r"of size \[1, 4, 8, 8\] with 4 channels", (X, torch.randn(6, 3, 3, 3), B), {}),
    "groups_not_dividing_in_channels": (RuntimeError, r"expected in_channels \(4\) divisible by groups \(3\)",
                                        (X, torch.randn(6, 1, 3, 3), B), dict(groups=3)),
    "groups_not_dividing_out_channels": (RuntimeError, r"expected out_channels \(5\) divisible by groups \(2\)",
                                         (X, torch.randn(5, 2, 3, 3), None), dict(groups=2)),
    "bias_wrong_size": (RuntimeError, r"expected bias of size \[6\], got \[5\]", (X, W, torch.randn(5)), {}),
    "bias_2d": (RuntimeError, r"expected bias of size \[6\], got \[6, 1\]", (X, W, torch.randn(6, 1)), {}),
    "dtype_mismatch_input_weight": (RuntimeError, r"expected weight of the input's dtype Float, got Double",
                                    (X, W.double(), B), {}),
    "dtype_mismatch_bias": (RuntimeError, r"expected bias of the input's dtype Float, got Double", (X, W, B.double()), {}),
    "kernel_larger_than_padded_input": (RuntimeError, r"padded input of size \(5, 5\) is smaller than the dilated kernel "
                                        r"\(7, 7\); expected a kernel no larger than the padded input",
                                        (_x(1, 4, 3, 3), W, B), dict(padding=1, dilation=3)),
    "kernel_larger_than_padded_input_asymmetric": (RuntimeError, r"padded input of size \(4, 9\) is smaller than the "
                                                   r"dilated kernel \(5, 5\)", (_x(1, 4, 3, 8), W, B),
                                                   dict(padding=(1, 0, 1, 0), dilation=2)),
}

TORCH_ALSO_RAISES_TENSORS = {"input_2d", "input_5d", "weight_3d", "weight_5d", "input_not_tensor", "bias_not_tensor",
                             "channel_mismatch", "groups_not_dividing_in_channels", "groups_not_dividing_out_channels",
                             "bias_wrong_size", "bias_2d", "dtype_mismatch_input_weight", "dtype_mismatch_bias",
                             "kernel_larger_than_padded_input"}


@pytest.mark.parametrize("name", BAD_TENSORS)
def test_bad_tensor_raises_clear_error(name):
    exc, regex, (x, w, b), kwargs = BAD_TENSORS[name]
    with pytest.raises(exc, match=regex):
        atrous_conv2d(x, w, b, **kwargs)
    if name in TORCH_ALSO_RAISES_TENSORS:
        with pytest.raises((RuntimeError, TypeError, ValueError)):
            torch_pad = kwargs.get("padding", 0)
            if isinstance(torch_pad, tuple) and len(torch_pad) == 4:
                x, kwargs = F.pad(x, torch_pad), dict(kwargs, padding=0)
            F.conv2d(x, w, b, **kwargs)


def test_integer_input_is_refused_though_torch_accepts_it_on_cpu():
    """A deliberate limitation: the kernels are floating point only."""
    F.conv2d(X.long(), W.long())
    with pytest.raises(TypeError, match="dtype"):
        atrous_conv2d(X.long(), W.long())


# ------------------------------------------------------------------- 1-D --

X1, W1 = torch.randn(2, 4, 10), torch.randn(6, 4, 3)


@pytest.mark.parametrize(
    "kwargs, exc, regex",
    [
        (dict(padding=(1, 2, 3)), ValueError, r"tuple of 1 ints, a tuple of 2 ints in F\.pad order.*got \(1, 2, 3\)"),
        (dict(padding=(1, 1, 1, 1)), ValueError, r"got \(1, 1, 1, 1\)"),
        (dict(padding="full"), ValueError, r"one of \('valid', 'same', 'causal'\).*got 'full'"),
        (dict(padding=(-1, 2)), ValueError, r"expected every padding >= 0, got \(-1, 2\)"),
        (dict(stride=(1, 1)), ValueError, r"expected stride to be an int or a tuple of 1 ints"),
        (dict(dilation=0), ValueError, r"dilation >= 1"),
    ],
    ids=["padding_length3", "padding_length4", "unknown_string", "negative_asymmetric", "stride_2_values", "dilation_zero"],
)
def test_conv1d_bad_arguments(kwargs, exc, regex):
    with pytest.raises(exc, match=r"^atrous_conv1d: .*" + regex):
        atrous_conv1d(X1, W1, **kwargs)


def test_conv1d_wrong_input_dim():
    with pytest.raises(ValueError, match=r"atrous_conv1d: expected 2-D \(unbatched\) or 3-D \(batched\) input"):
        atrous_conv1d(torch.randn(1, 4, 8, 8), W1)
    with pytest.raises(ValueError, match=r"atrous_conv1d: expected 3-D weight"):
        atrous_conv1d(X1, W)


def test_conv1d_causal_kernel_never_too_large():
    """Causal padding makes the padded input at least as long as the dilated kernel."""
    out = atrous_conv1d(torch.randn(1, 4, 1), W1, padding="causal", dilation=50)
    assert out.shape == (1, 6, 1)


# ------------------------------------------------------------- the ops --

def _op(x=X, w=W, b=B, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    return conv_forward(x, w, b, list(stride), list(padding), list(dilation), groups)


@pytest.mark.parametrize(
    "kwargs, regex",
    [
        (dict(x=X[0]), r"expected input of 4 dimensions \(N, C, H, W\), got 3 dimensions"),
        (dict(w=W[0]), r"expected weight of 4 dimensions"),
        (dict(padding=(1, 1)), r"expected padding of 4 ints \(top, bottom, left, right\), got \[1, 1\]"),
        (dict(stride=(1, 1, 1)), r"expected stride of 2 ints \(H, W\), got \[1, 1, 1\]"),
        (dict(dilation=(1,)), r"expected dilation of 2 ints \(H, W\), got \[1\]"),
        (dict(stride=(0, 1)), r"expected every stride > 0, got \[0, 1\]"),
        (dict(dilation=(1, 0)), r"expected every dilation > 0, got \[1, 0\]"),
        (dict(padding=(0, 0, -1, 0)), r"expected every padding >= 0, got \[0, 0, -1, 0\]"),
        (dict(groups=0), r"expected groups > 0, got 0"),
        (dict(x=X.long(), w=W.long(), b=None), r"expected input of dtype float32, float64, float16 or bfloat16, got Long"),
        (dict(w=torch.randn(0, 4, 3, 3), b=None), r"expected weight with at least one output channel"),
        (dict(w=torch.randn(6, 4, 0, 3)), r"expected a kernel of at least 1x1"),
    ],
    ids=["input_3d", "weight_3d", "padding_2_values", "stride_3_values", "dilation_1_value", "stride_zero",
         "dilation_zero", "padding_negative", "groups_zero", "integer_input", "no_output_channels", "empty_kernel"],
)
def test_forward_op_checks_arguments(kwargs, regex):
    with pytest.raises(RuntimeError, match=r"atrous_conv: " + regex):
        _op(**kwargs)


def _backward(gy, x=X, w=W, mask=(True, True, True)):
    return conv_backward(gy, x, w, [1, 1], [0, 0, 0, 0], [1, 1], 1, list(mask))


@pytest.mark.parametrize(
    "grad_output, regex",
    [
        (torch.randn(1, 6, 5, 5), r"expected grad_output of size \[1, 6, 6, 6\], got \[1, 6, 5, 5\]"),
        (torch.randn(1, 5, 6, 6), r"expected grad_output of size \[1, 6, 6, 6\], got \[1, 5, 6, 6\]"),
        (torch.randn(6, 6, 6), r"expected grad_output of size \[1, 6, 6, 6\], got \[6, 6, 6\]"),
        (torch.randn(1, 6, 6, 6, dtype=torch.float64), r"expected grad_output of the input's dtype Float, got Double"),
    ],
    ids=["wrong_spatial_size", "wrong_channels", "wrong_dim", "wrong_dtype"],
)
def test_backward_op_rejects_bad_grad_output(grad_output, regex):
    with pytest.raises(RuntimeError, match=r"atrous_conv_backward: " + regex):
        _backward(grad_output)
    with pytest.raises(RuntimeError, match=r"atrous_conv_backward: " + regex):
        _backward(grad_output, mask=(False, True, False))


def test_backward_op_checks_its_conv_arguments_too():
    with pytest.raises(RuntimeError, match=r"atrous_conv_backward: weight of size \[6, 3, 3, 3\] .* expect input with 3 channels"):
        _backward(torch.randn(1, 6, 6, 6), w=torch.randn(6, 3, 3, 3))


def test_autograd_with_mismatched_grad_output_raises():
    x = X.clone().requires_grad_()
    out = atrous_conv2d(x, W, B)
    with pytest.raises(RuntimeError):
        out.backward(torch.randn(1, 6, 5, 5))


def test_set_cpu_isa_rejects_unknown_names():
    with pytest.raises(RuntimeError, match=r"expected a CPU instruction set of 'avx512_bf16', 'avx512', 'avx2' or 'baseline', got 'sse9'"):
        atrous_cuda._C.set_cpu_isa("sse9")
    assert atrous_cuda.build_info()["cpu_isa"] == atrous_cuda.build_info()["cpu_isas_available"].split(",")[0]


def test_input_without_channels_raises():
    # torch answers this with an empty tensor of shape (N, 0, H, W) whatever the
    # weight says; a clear error is more useful than copying that.
    with pytest.raises(RuntimeError, match=r"expected input with at least one channel, got input of size \[2, 0, 5, 5\]"):
        atrous_conv2d(torch.randn(2, 0, 5, 5), torch.randn(4, 0, 3, 3), padding=1)


# ------------------------------------------------- sizes, devices, layouts --

@pytest.mark.parametrize(
    "call, exc, regex",
    [
        (lambda: atrous_conv2d(X, W, padding=2**64), ValueError, r"^atrous_conv2d: expected padding values that fit in int64"),
        (lambda: atrous_conv2d(X, W, stride=(1, 2**63)), ValueError, r"^atrous_conv2d: expected stride values that fit in int64"),
        (lambda: atrous_conv2d(X, W, padding=2**62), RuntimeError,
         r"^atrous_conv: expected padding whose padded input size fits in int64, got padding \[4611686018427387904, "),
        (lambda: atrous_conv2d(X, W, dilation=2**62), RuntimeError,
         r"^atrous_conv: expected dilation whose dilated kernel extent dilation \* \(kernel - 1\) \+ 1 fits in int64"),
        (lambda: atrous_conv2d(X, W, padding=2**40), RuntimeError,
         r"^atrous_conv: the output of size \[1, 6, 2199023255558, 2199023255558\] would take more than 2\^63 bytes"),
        (lambda: atrous_conv1d(X1, W1, padding="causal", dilation=2**62), ValueError,
         r"^atrous_conv1d: padding='causal' with dilation \(4611686018427387904,\) and kernel \(3,\) needs per-side "
         r"padding .* past int64"),
        (lambda: atrous_conv2d(X, W.to("meta")), RuntimeError, r"^atrous_conv2d: expected weight on the input's device cpu, got meta"),
        (lambda: atrous_conv2d(X, W, B.to("meta")), RuntimeError, r"^atrous_conv2d: expected bias on the input's device cpu, got meta"),
        (lambda: _op(w=W.to("meta")), RuntimeError, r"atrous_conv: expected weight on the input's device cpu, got meta"),
        (lambda: atrous_conv2d(X.to_sparse(), W), TypeError, r"^atrous_conv2d: expected a dense \(torch\.strided\) input, got layout torch\.sparse_coo"),
    ],
    ids=["padding_past_int64", "stride_past_int64", "padded_size_past_int64", "dilated_extent_past_int64",
         "output_bytes_past_int64", "causal_padding_past_int64", "weight_on_meta", "bias_on_meta", "op_weight_on_meta",
         "sparse_input"],
)
def test_sizes_devices_and_layouts_raise_clear_errors(call, exc, regex):
    """Sizes past int64 would wrap in the index math (torch wraps silently for
    a huge dilation), a meta tensor among CPU ones would reach the shape-only
    kernel, and sparse tensors reach no kernel: each gets a clear error."""
    with pytest.raises(exc, match=regex):
        call()
