"""CUDA kernels: parity with torch, agreement with the CPU kernels, determinism,
no unwritten (poisoned) elements, CUDA-graph capture and device checks.

Every test skips cleanly without a GPU. With a GPU, an extension built without
its CUDA kernels is a failure, not a skip.
"""
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    HAS_CUDA,
    assert_bitwise_equal,
    assert_matches,
    assert_results_match,
    atrous_conv,
    conv_and_grads,
    random_conv_inputs,
    reference_conv,
    seeded_randn,
)

import atrous_cuda

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)"),
]

DEVICE = "cuda"


@pytest.fixture(autouse=True, scope="module")
def _extension_has_cuda_kernels():
    if not atrous_cuda.build_info()["with_cuda"]:
        pytest.fail("a GPU is present but atrous_cuda was built without its CUDA kernels; rebuild with FORCE_CUDA=1")


@pytest.fixture
def no_tf32():
    """The float32 reference must be true float32, not TF32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


CUDA_CASES = {
    "pad1": ((2, 8, 17, 19), (16, 8, 3, 3), dict(padding=1)),
    "dilation6": ((2, 16, 23, 21), (24, 16, 3, 3), dict(padding=6, dilation=6)),
    "stride2_unequal_dilation": ((2, 8, 20, 17), (12, 8, 3, 3), dict(stride=2, padding=(2, 3), dilation=(2, 3))),
    "same_strided": ((1, 8, 19, 20), (8, 8, 3, 3), dict(stride=(2, 3), padding="same", dilation=2)),
    "same_even_kernel": ((1, 8, 15, 16), (8, 8, 2, 4), dict(padding="same", dilation=3)),
    "asymmetric": ((2, 6, 13, 14), (10, 6, 3, 3), dict(padding=(0, 4, 3, 1), dilation=2)),
    "dilation_beyond_input": ((2, 8, 5, 5), (8, 8, 3, 3), dict(padding=12, dilation=12)),
    "groups4": ((2, 16, 15, 15), (16, 4, 3, 3), dict(padding=2, dilation=2, groups=4)),
    "depthwise": ((2, 16, 21, 22), (16, 1, 3, 3), dict(padding=4, dilation=4, groups=16)),
    "depthwise_multiplier2": ((2, 8, 17, 16), (16, 1, 3, 3), dict(padding=(3, 1), dilation=(3, 1), stride=2, groups=8)),
    "wide_channels": ((1, 96, 9, 10), (130, 96, 3, 3), dict(padding=2, dilation=2)),
    "kernel_1x1_strided": ((2, 12, 11, 9), (7, 12, 1, 1), dict(stride=2)),
}


def _cuda_inputs(name, dtype, bias=True):
    x_shape, w_shape, kwargs = CUDA_CASES[name]
    x, w, b = random_conv_inputs(x_shape, w_shape, bias, dtype=dtype, device=DEVICE)
    return x, w, b, kwargs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16],
                         ids=["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("name", CUDA_CASES)
def test_cuda_matches_torch(name, dtype, no_tf32):
    """float64 against torch's float64; the others against a float32 reference
    (TF32 off) computed from the same rounded inputs, see conftest.tolerance."""
    x, w, b, kwargs = _cuda_inputs(name, dtype)
    ours = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    assert ours.out.device.type == torch.device(DEVICE).type
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    gy = seeded_randn(ours.out.shape, dtype, seed=1, device=DEVICE)
    ref = conv_and_grads(reference_conv, x.to(ref_dtype), w.to(ref_dtype), b.to(ref_dtype), grad_output=gy.to(ref_dtype),
                         **kwargs)
    assert_results_match(ours, ref, dtype)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_cuda_conv1d_causal_matches_torch(bias, no_tf32):
    x, w, b = random_conv_inputs((2, 8, 300), (12, 8, 2), bias, dtype=torch.float32, device=DEVICE)
    for dilation in (1, 4, 64, 512):
        ours = conv_and_grads(atrous_conv, x, w, b, padding="causal", dilation=dilation)
        ref = conv_and_grads(reference_conv, x, w, b, grad_output=seeded_randn(ours.out.shape, torch.float32, seed=1,
                                                                                device=DEVICE),
                             padding="causal", dilation=dilation)
        assert_results_match(ours, ref, torch.float32)


def test_cpu_and_cuda_agree_on_large_input():
    x, w, b = random_conv_inputs((4, 64, 65, 67), (64, 64, 3, 3), dtype=torch.float32)
    kwargs = dict(padding=6, dilation=6)
    on_cpu = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    on_gpu = conv_and_grads(atrous_conv, x.to(DEVICE), w.to(DEVICE), b.to(DEVICE),
                            grad_output=seeded_randn(on_cpu.out.shape, torch.float32, seed=1, device=DEVICE), **kwargs)
    for name, a, c in zip(on_cpu._fields, on_gpu, on_cpu):
        # Both float32 with different summation orders over up to 4*65*67 terms.
        scale = c.abs().max().item()
        torch.testing.assert_close(a.cpu(), c, rtol=1e-4, atol=1e-4 * scale, msg=lambda m: f"{name}: {m}")


def test_cpu_and_cuda_agree_in_float64():
    x, w, b = random_conv_inputs((2, 24, 33, 31), (32, 12, 3, 3))
    kwargs = dict(padding="same", stride=2, dilation=(3, 2), groups=2)
    on_cpu = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    on_gpu = conv_and_grads(atrous_conv, x.to(DEVICE), w.to(DEVICE), b.to(DEVICE),
                            grad_output=seeded_randn(on_cpu.out.shape, seed=1, device=DEVICE), **kwargs)
    for name, a, c in zip(on_cpu._fields, on_gpu, on_cpu):
        assert_matches(a.cpu(), c, what=name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("name", ["dilation6", "groups4", "depthwise", "depthwise_multiplier2", "wide_channels"])
def test_cuda_deterministic(name, dtype):
    x, w, b, kwargs = _cuda_inputs(name, dtype)
    first = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    second = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    assert_bitwise_equal(first, second)


def test_cuda_poisoned_outputs_are_all_written():
    """ATROUS_POISON=1 (conftest) fills outputs with NaN before the kernels run."""
    assert os.environ.get("ATROUS_POISON") == "1"
    for name in CUDA_CASES:
        for dtype in (torch.float32, torch.bfloat16):
            x, w, b, kwargs = _cuda_inputs(name, dtype)
            result = conv_and_grads(atrous_conv, x, w, b, **kwargs)
            for field, t in zip(result._fields, result):
                assert not torch.isnan(t).any(), f"{name} {dtype} {field}: unwritten elements"


def test_cuda_backward_op_partial_masks_write_everything():
    x, w, _, kwargs = _cuda_inputs("groups4", torch.float32, bias=False)
    out = atrous_cuda.atrous_conv2d(x, w, padding=2, dilation=2, groups=4)
    gy = seeded_randn(out.shape, torch.float32, device=DEVICE)
    args = ([1, 1], [2, 2, 2, 2], [2, 2], 4)
    full = torch.ops.atrous.conv_backward(gy, x, w, *args, [True, True, True])
    for mask in ([True, False, False], [False, True, False], [False, False, True]):
        grads = torch.ops.atrous.conv_backward(gy, x, w, *args, mask)
        for wanted, g, f in zip(mask, grads, full):
            if wanted:
                assert torch.equal(g, f)
            else:
                assert g.numel() == 0


def test_cuda_graph_capture_and_replay():
    torch.manual_seed(0)
    conv = atrous_cuda.AtrousConv2d(8, 16, 3, padding=4, dilation=4, stride=(1, 2)).to(DEVICE)
    static_x = seeded_randn((2, 8, 20, 21), torch.float32, device=DEVICE)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up outside the capture
                conv(static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = conv(static_x)
        for seed in (3, 4):
            new_x = seeded_randn(static_x.shape, torch.float32, seed=seed, device=DEVICE)
            static_x.copy_(new_x)
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(static_out, conv(new_x))
            assert_matches(static_out, F.conv2d(new_x, conv.weight, conv.bias, (1, 2), 4, 4), torch.float32)


@pytest.mark.parametrize("which", ["weight", "bias", "input"])
def test_cuda_mixed_devices_raise(which):
    x, w, b, _ = _cuda_inputs("pad1", torch.float32)
    if which == "weight":
        w = w.cpu()
    elif which == "bias":
        b = b.cpu()
    else:
        x = x.cpu()
    with pytest.raises(RuntimeError, match="device"):
        atrous_cuda.atrous_conv2d(x, w, b, padding=1)
    with pytest.raises(RuntimeError):
        F.conv2d(x, w, b, padding=1)  # torch refuses it too


def test_cuda_backward_op_grad_output_on_wrong_device_raises():
    x, w, _, _ = _cuda_inputs("pad1", torch.float32, bias=False)
    gy = torch.zeros(2, 16, 17, 19)  # right shape, on the CPU
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.atrous.conv_backward(gy, x, w, [1, 1], [1, 1, 1, 1], [1, 1], 1, [True, True, True])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("name", ["dilation6", "asymmetric", "depthwise_multiplier2"])
def test_cuda_channels_last(name, dtype, no_tf32):
    x, w, b, kwargs = _cuda_inputs(name, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    ours = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    assert ours.out.is_contiguous(memory_format=torch.channels_last)
    assert ours.grad_input.is_contiguous(memory_format=torch.channels_last)
    gy = seeded_randn(ours.out.shape, dtype, seed=1, device=DEVICE)
    ref = conv_and_grads(reference_conv, x.float(), w.float(), b.float(), grad_output=gy.float(), **kwargs)
    assert_results_match(ours, ref, dtype)


@pytest.mark.parametrize("name", ["pad1", "same_strided", "depthwise"])
def test_cuda_empty_batch(name, no_tf32):
    x_shape, w_shape, kwargs = CUDA_CASES[name]
    x, w, b = random_conv_inputs((0,) + x_shape[1:], w_shape, dtype=torch.float32, device=DEVICE)
    ours = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    ref = conv_and_grads(reference_conv, x, w, b, grad_output=torch.zeros_like(ours.out), **kwargs)
    assert_results_match(ours, ref, torch.float32)
    assert torch.equal(ours.grad_weight, torch.zeros_like(w))
    assert torch.equal(ours.grad_bias, torch.zeros_like(b))


@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_cuda_depthwise(multiplier, no_tf32):
    channels = 12
    x, w, b = random_conv_inputs((2, channels, 25, 24), (channels * multiplier, 1, 3, 3), dtype=torch.float32,
                                 device=DEVICE)
    kwargs = dict(padding=(6, 2), dilation=(6, 2), groups=channels)
    ours = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    ref = conv_and_grads(reference_conv, x, w, b, grad_output=seeded_randn(ours.out.shape, torch.float32, seed=1,
                                                                            device=DEVICE), **kwargs)
    assert_results_match(ours, ref, torch.float32)


def test_cuda_runs_on_the_current_stream():
    """Runs on the current stream of the tensors' device."""
    x, w, b, kwargs = _cuda_inputs("dilation6", torch.float32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = atrous_cuda.atrous_conv2d(x, w, b, **kwargs)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    assert torch.equal(out, atrous_cuda.atrous_conv2d(x, w, b, **kwargs))


def test_cuda_opcheck():
    x, w, b, _ = _cuda_inputs("groups4", torch.float32)
    args = (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), [1, 2], [2, 1, 0, 3], [2, 1], 4)
    torch.library.opcheck(torch.ops.atrous.conv_forward.default, args)



@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="this torch has no torch.backends.cuda.matmul.fp32_precision")
def test_cuda_float32_follows_the_new_fp32_precision_api():
    """Setting only the new per-backend API must work (torch's legacy query
    raises when the two disagree) and must select TF32."""
    saved = torch.backends.cuda.matmul.fp32_precision
    x, w, b, kwargs = _cuda_inputs("wide_channels", torch.float32)
    try:
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        tf32 = atrous_conv(x, w, b, **kwargs)
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        exact = atrous_conv(x, w, b, **kwargs)
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved
    assert not torch.equal(tf32, exact)
    ref = reference_conv(x.double(), w.double(), b.double(), **kwargs)
    torch.testing.assert_close(exact.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("name", ["dilation6", "wide_channels", "groups4"])
def test_cuda_float32_uses_tf32_only_when_torch_allows_it(name, tf32_matmul):
    """With torch.backends.cuda.matmul.allow_tf32 the float32 GEMMs run on TF32
    tensor cores: inputs rounded to a 10-bit mantissa (unit roundoff 2^-11),
    products summed in fp32. Against a float64 reference the error is then a
    few 2^-11 relative to the terms, so we allow 2^-11 * sqrt(K) * max|ref|
    with K = Cin/g * kH * kW terms (random rounding errors add like a random
    walk), times 4. The result is also deterministic and, for K in the
    hundreds, different from the exact float32 path, which shows TF32 ran."""
    x, w, b, kwargs = _cuda_inputs(name, torch.float32)
    tf32 = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    again = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    assert_bitwise_equal(tf32, again)
    ref = conv_and_grads(reference_conv, x.double(), w.double(), b.double(),
                         grad_output=seeded_randn(tf32.out.shape, torch.float64, seed=1, device=DEVICE), **kwargs)
    k_forward = w.shape[1] * w.shape[2] * w.shape[3]
    groups = kwargs.get("groups", 1)
    pixels = tf32.out.numel() // tf32.out.shape[1]
    terms = {"out": k_forward, "grad_input": w.shape[0] // groups * w.shape[2] * w.shape[3],
             "grad_weight": pixels, "grad_bias": pixels}
    for field, ours, want in zip(tf32._fields, tf32, ref):
        if want is None:
            continue
        scale = want.abs().max().item()
        atol = 4 * 2.0**-11 * terms[field] ** 0.5 * scale
        torch.testing.assert_close(ours.double(), want, rtol=0, atol=atol, msg=lambda m: f"{field}: {m}")
    torch.backends.cuda.matmul.allow_tf32 = False
    exact = conv_and_grads(atrous_conv, x, w, b, **kwargs)
    if k_forward >= 100:
        assert not torch.equal(exact.out, tf32.out), "allow_tf32 had no effect on the float32 forward"
