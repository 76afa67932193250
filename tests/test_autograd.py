"""Autograd, op registration, torch.compile and reproducibility of the atrous ops."""
import pytest
import torch
from conftest import (
    assert_bitwise_equal,
    atrous_conv,
    conv_and_grads,
    random_conv_inputs,
    reference_conv,
    seeded_randn,
)
from torch import nn
from torch.autograd import gradcheck, gradgradcheck

import atrous_cuda

conv_forward = torch.ops.atrous.conv_forward.default
conv_backward = torch.ops.atrous.conv_backward.default

# (id, input shape, weight shape, bias, kwargs): small, so the numerical
# Jacobians of gradcheck/gradgradcheck stay cheap.
GRAD_CONFIGS = [
    ("dilation2_pad2", (2, 2, 5, 5), (3, 2, 3, 3), True, dict(padding=2, dilation=2)),
    ("stride2", (1, 2, 6, 5), (2, 2, 3, 3), True, dict(stride=2, padding=1, dilation=(1, 2))),
    ("groups2", (1, 4, 5, 5), (4, 2, 2, 3), True, dict(padding=(1, 2), dilation=(2, 1), groups=2)),
    ("depthwise_multiplier2", (1, 2, 5, 4), (4, 1, 3, 3), True, dict(padding=2, dilation=2, groups=2)),
    ("asymmetric_padding", (1, 2, 4, 5), (2, 2, 3, 2), True, dict(padding=(0, 3, 2, 1), dilation=2)),
    ("same_strided_no_bias", (1, 2, 5, 6), (3, 2, 3, 3), False, dict(padding="same", stride=2, dilation=2)),
    ("dilation_beyond_input_no_bias", (1, 2, 3, 3), (2, 2, 3, 3), False, dict(padding=5, dilation=5)),
    ("conv1d_causal", (2, 2, 7), (3, 2, 3), True, dict(padding="causal", dilation=2)),
]


def _grad_inputs(x_shape, w_shape, bias):
    x, w, b = random_conv_inputs(x_shape, w_shape, bias)
    return tuple(t.requires_grad_() for t in (x, w, b) if t is not None)


@pytest.mark.parametrize("x_shape, w_shape, bias, kwargs", [c[1:] for c in GRAD_CONFIGS], ids=[c[0] for c in GRAD_CONFIGS])
def test_gradcheck(x_shape, w_shape, bias, kwargs):
    inputs = _grad_inputs(x_shape, w_shape, bias)
    assert gradcheck(lambda *t: atrous_conv(*t, **kwargs), inputs, fast_mode=False)


@pytest.mark.parametrize("x_shape, w_shape, bias, kwargs", [c[1:] for c in GRAD_CONFIGS], ids=[c[0] for c in GRAD_CONFIGS])
def test_gradgradcheck(x_shape, w_shape, bias, kwargs):
    inputs = _grad_inputs(x_shape, w_shape, bias)
    assert gradgradcheck(lambda *t: atrous_conv(*t, **kwargs), inputs, fast_mode=True)


def test_gradgradcheck_of_backward_op_with_partial_mask():
    """conv_backward with only some gradients requested is itself differentiable."""
    x, w = _grad_inputs((1, 2, 5, 5), (3, 2, 3, 3), False)
    gy = seeded_randn((1, 3, 3, 3), seed=3).requires_grad_()
    args = ([1, 1], [1, 1, 1, 1], [2, 2], 1)
    for mask in ([True, False, False], [False, True, False], [False, False, True]):
        picked = mask.index(True)
        assert gradcheck(lambda g, a, b: conv_backward(g, a, b, *args, mask)[picked], (gy, x, w))


def test_no_grad_requested_for_bias_or_weight():
    x, w, b = random_conv_inputs((1, 2, 5, 5), (3, 2, 3, 3))
    x.requires_grad_()
    out = atrous_cuda.atrous_conv2d(x, w, b, padding=2, dilation=2)
    (gx,) = torch.autograd.grad(out.sum(), x)
    expected = torch.nn.functional.conv_transpose2d(torch.ones_like(out), w, padding=2, dilation=2)
    torch.testing.assert_close(gx, expected)
    assert w.grad is None and b.grad is None


# --------------------------------------------------------------- opcheck --


def _forward_args(x_shape, w_shape, bias, stride, padding, dilation, groups, channels_last=False, dtype=torch.float64):
    x, w, b = random_conv_inputs(x_shape, w_shape, bias, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x.requires_grad_(), w.requires_grad_(), None if b is None else b.requires_grad_(), stride, padding, dilation, groups)


FORWARD_OPCHECK_ARGS = {
    "basic": dict(x_shape=(2, 3, 6, 6), w_shape=(4, 3, 3, 3), bias=True, stride=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=1),
    "strided_dilated_asymmetric": dict(x_shape=(1, 4, 7, 8), w_shape=(4, 2, 3, 2), bias=False, stride=[2, 1],
                                       padding=[0, 3, 2, 1], dilation=[2, 3], groups=2),
    "depthwise": dict(x_shape=(2, 3, 5, 5), w_shape=(6, 1, 3, 3), bias=True, stride=[1, 2], padding=[2, 2, 2, 2], dilation=[2, 2], groups=3),
    "channels_last": dict(x_shape=(2, 4, 6, 5), w_shape=(3, 4, 3, 3), bias=True, stride=[1, 1], padding=[2, 2, 2, 2],
                          dilation=[2, 2], groups=1, channels_last=True),
    "float32_one_row": dict(x_shape=(2, 3, 1, 9), w_shape=(4, 3, 1, 3), bias=True, stride=[1, 1], padding=[0, 0, 4, 0],
                            dilation=[1, 2], groups=1, dtype=torch.float32),
}


@pytest.mark.parametrize("name", FORWARD_OPCHECK_ARGS)
def test_opcheck_conv_forward(name):
    torch.library.opcheck(conv_forward, _forward_args(**FORWARD_OPCHECK_ARGS[name]))


@pytest.mark.parametrize("mask", [[True, True, True], [True, False, False], [False, True, True]], ids=["all", "input_only", "weight_bias"])
@pytest.mark.parametrize("name", ["basic", "strided_dilated_asymmetric", "depthwise", "channels_last"])
def test_opcheck_conv_backward(name, mask):
    x, w, b, stride, padding, dilation, groups = _forward_args(**FORWARD_OPCHECK_ARGS[name])
    out = conv_forward(x.detach(), w.detach(), None, stride, padding, dilation, groups)
    gy = seeded_randn(out.shape, out.dtype, seed=5).requires_grad_()
    torch.library.opcheck(conv_backward, (gy, x, w, stride, padding, dilation, groups, mask))


def test_backward_op_masked_gradients_are_empty():
    x, w, _ = random_conv_inputs((1, 2, 5, 5), (3, 2, 3, 3), False)
    gy = seeded_randn((1, 3, 5, 5))
    gi, gw, gb = conv_backward(gy, x, w, [1, 1], [2, 2, 2, 2], [2, 2], 1, [False, True, False])
    assert gi.numel() == 0 and gb.numel() == 0
    assert gw.shape == w.shape and not torch.isnan(gw).any()


# --------------------------------------------------------- torch.compile --


def _small_atrous_net():
    torch.manual_seed(0)
    return nn.Sequential(
        atrous_cuda.AtrousConv2d(3, 8, 3, padding=2, dilation=2),
        nn.ReLU(),
        atrous_cuda.AtrousConv2d(8, 8, 3, padding="same", stride=2, dilation=3, groups=2),
        nn.ReLU(),
        atrous_cuda.AtrousConv2d(8, 8, 3, padding=4, dilation=4, groups=8, bias=False),
        nn.ReLU(),
        atrous_cuda.AtrousConv2d(8, 2, (3, 2), padding=(1, 0, 2, 1), dilation=(2, 1)),
    ).double()


def test_torch_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = _small_atrous_net()
    x = seeded_randn((2, 3, 11, 10), seed=7)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)

    def run(m):
        m.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        out = m(xi)
        out.backward(seeded_randn(out.shape, seed=8))
        return out.detach(), xi.grad, [p.grad.clone() for p in m.parameters()]

    eager_out, eager_gx, eager_gp = run(model)
    comp_out, comp_gx, comp_gp = run(compiled)
    torch.testing.assert_close(comp_out, eager_out, rtol=0, atol=0)
    torch.testing.assert_close(comp_gx, eager_gx, rtol=0, atol=0)
    for a, b in zip(comp_gp, eager_gp):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # The same model in plain torch agrees too.
    torch.testing.assert_close(eager_out, _torch_equivalent(model)(x))


def _torch_equivalent(model):
    """The same computation with torch's own convolution (F.pad for the padding torch lacks)."""

    def forward(x):
        for m in model:
            if isinstance(m, atrous_cuda.AtrousConv2d):
                x = reference_conv(x, m.weight, m.bias, m.stride, m.padding, m.dilation, m.groups)
            else:
                x = m(x)
        return x

    return forward


def test_torch_compile_functional_conv1d_fullgraph():
    torch._dynamo.reset()
    x, w, b = random_conv_inputs((2, 3, 16), (4, 3, 2))

    def f(x, w, b):
        return torch.tanh(atrous_cuda.atrous_conv1d(x, w, b, padding="causal", dilation=4))

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, w, b), f(x, w, b), rtol=0, atol=0)


# ---------------------------------------------------------- reproducible --

REPRO_CONFIGS = [
    ("gemm", (2, 6, 17, 15), (10, 6, 3, 3), dict(padding=2, dilation=2)),
    ("grouped_strided", (2, 8, 16, 13), (8, 4, 3, 3), dict(padding="same", stride=2, dilation=3, groups=2)),
    ("depthwise", (3, 6, 16, 16), (12, 1, 3, 3), dict(padding=(2, 1), dilation=(2, 1), groups=6)),
    ("conv1d", (4, 5, 300), (7, 5, 2), dict(padding="causal", dilation=8)),
    # 8960 output pixels and one channel block: grad_weight sums 4 pixel segments
    ("grad_weight_segments", (2, 7, 64, 70), (9, 7, 3, 3), dict(padding=3, dilation=3)),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", [c[1:] for c in REPRO_CONFIGS], ids=[c[0] for c in REPRO_CONFIGS])
def test_forward_and_grads_deterministic(x_shape, w_shape, kwargs, dtype):
    x, w, b = random_conv_inputs(x_shape, w_shape, dtype=dtype)
    first = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    second = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    assert_bitwise_equal(first, second)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [c[1:] for c in REPRO_CONFIGS], ids=[c[0] for c in REPRO_CONFIGS])
def test_results_independent_of_thread_count(x_shape, w_shape, kwargs):
    """The CPU kernels reduce in a fixed order, so 1, 2 or 3 threads agree bitwise."""
    x, w, b = random_conv_inputs(x_shape, w_shape, dtype=torch.float32)
    threads = torch.get_num_threads()
    try:
        results = {}
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results[n] = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert_bitwise_equal(results[1], results[2])
    assert_bitwise_equal(results[1], results[3])
