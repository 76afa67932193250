"""Shared setup and helpers for the atrous_cuda tests.

ATROUS_POISON=1 must be set before the extension is loaded: the kernels then
fill every output with NaN before writing it, so an element a kernel forgets
to write shows up as a NaN mismatch in every parity test.

The reference for every padding form is torch itself: F.conv1d/F.conv2d with
the padding torch understands, or F.pad with explicit per-side padding
followed by F.conv with padding 0 for the forms torch lacks ('same' with
stride > 1, asymmetric tuples, 'causal'). The explicit padding is computed
here, independently of atrous_cuda's own resolve_padding.
"""
import math
import os
from typing import NamedTuple, Optional

os.environ["ATROUS_POISON"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import atrous_cuda  # noqa: E402,F401

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")


# -------------------------------------------------------- CPU instruction sets --

CPU_ISAS = ["avx512_bf16", "avx512", "avx2", "baseline"]


@pytest.fixture
def restore_cpu_isa():
    """Puts the best instruction set back after a test that picks another (use_cpu_isa)."""
    best = atrous_cuda.build_info()["cpu_isas_available"].split(",")[0]
    yield
    atrous_cuda._C.set_cpu_isa(best)
    assert atrous_cuda.build_info()["cpu_isa"] == best


@pytest.fixture
def two_threads():
    """Runs the test on 2 intra-op threads (the tiling, never the results,
    depends on the thread count), then puts the count back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def use_cpu_isa(isa):
    """Runs the rest of the test on `isa`, or skips it (saying why) where the CPU lacks it."""
    available = atrous_cuda.build_info()["cpu_isas_available"].split(",")
    if isa not in available:
        pytest.skip(f"this CPU does not support {isa} (available: {available})")
    atrous_cuda._C.set_cpu_isa(isa)
    assert atrous_cuda.build_info()["cpu_isa"] == isa


def pytest_configure(config):
    # torch's own 'same' with an even kernel (used as the reference) warns about a copy.
    config.addinivalue_line("filterwarnings", "ignore:Using padding='same' with even kernel:UserWarning")


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip cleanly, with a reason, on a machine without a GPU."""
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tf32_matmul():
    """float32 GEMMs may use TF32 (torch.backends.cuda.matmul.allow_tf32) for the test."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def cuda():
    """The CUDA device, or a clean skip when there is none."""
    if not HAS_CUDA:
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    return torch.device("cuda")


# ------------------------------------------------------------------ padding --


def tf_same_pads(size, kernel, stride, dilation):
    """(before, after) of TensorFlow's 'same': out = ceil(in/s), the odd pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def _tuple(v, n):
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    return v * n if len(v) == 1 else v


def explicit_pads(padding, ndim, spatial, kernel, stride, dilation):
    """Any padding form as explicit F.pad-order padding (last axis first)."""
    stride, dilation = _tuple(stride, ndim), _tuple(dilation, ndim)
    if padding == "valid":
        per_axis = [(0, 0)] * ndim
    elif padding == "same":
        per_axis = [tf_same_pads(spatial[i], kernel[i], stride[i], dilation[i]) for i in range(ndim)]
    elif padding == "causal":
        assert ndim == 1
        per_axis = [(dilation[0] * (kernel[0] - 1), 0)]
    elif isinstance(padding, int) or len(padding) in (1, ndim):
        per_axis = [(p, p) for p in _tuple(padding, ndim)]
    else:
        assert len(padding) == 2 * ndim, padding
        return tuple(padding)  # already F.pad order
    out = []
    for before, after in reversed(per_axis):
        out += [before, after]
    return tuple(out)


def _torch_native_padding(padding, ndim, stride):
    """The padding argument to hand F.conv directly, or None when torch lacks the form."""
    if isinstance(padding, int) or padding == "valid":
        return padding
    if padding == "same":
        return "same" if all(s == 1 for s in _tuple(stride, ndim)) else None
    if isinstance(padding, (tuple, list)) and len(padding) in (1, ndim):
        return tuple(padding)
    return None


def reference_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """torch's F.conv1d/F.conv2d for every padding form atrous_cuda accepts."""
    ndim = w.dim() - 2
    conv = F.conv1d if ndim == 1 else F.conv2d
    native = _torch_native_padding(padding, ndim, stride)
    if native is not None:
        return conv(x, w, b, stride, native, dilation, groups)
    pads = explicit_pads(padding, ndim, tuple(x.shape[-ndim:]), tuple(w.shape[2:]), stride, dilation)
    return conv(F.pad(x, pads), w, b, stride, 0, dilation, groups)


def atrous_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """atrous_conv1d or atrous_conv2d, picked by the weight's rank."""
    fn = atrous_cuda.atrous_conv1d if w.dim() == 3 else atrous_cuda.atrous_conv2d
    return fn(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


# ---------------------------------------------------------------- running --


class ConvResult(NamedTuple):
    out: torch.Tensor
    grad_input: torch.Tensor
    grad_weight: torch.Tensor
    grad_bias: Optional[torch.Tensor]


def seeded_randn(shape, dtype=torch.float64, seed=0, device="cpu"):
    """Reproducible N(0, 1) values, generated in float64 and then rounded to dtype."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def conv_and_grads(conv, x, w, b=None, grad_output=None, prepare=None, **kwargs):
    """Runs conv forward and backward on fresh leaf copies of x, w, b.

    `prepare` maps the input leaf to what conv sees (a slice, a transpose), so
    non-contiguous views still get their gradient through the leaf. Without
    `grad_output`, a seeded random one of the output's shape and dtype is used.
    """
    leaves = [t.detach().clone().requires_grad_() for t in (x, w)]
    lb = None if b is None else b.detach().clone().requires_grad_()
    if lb is not None:
        leaves.append(lb)
    xin = prepare(leaves[0]) if prepare is not None else leaves[0]
    out = conv(xin, leaves[1], lb, **kwargs)
    if grad_output is None:
        grad_output = seeded_randn(out.shape, out.dtype, seed=1, device=out.device)
    grads = torch.autograd.grad(out, leaves, grad_output)
    return ConvResult(out.detach(), grads[0], grads[1], grads[2] if lb is not None else None)


def random_conv_inputs(x_shape, w_shape, bias=True, dtype=torch.float64, seed=0, device="cpu"):
    x = seeded_randn(x_shape, dtype, seed, device)
    w = seeded_randn(w_shape, dtype, seed + 100, device)
    b = seeded_randn((w_shape[0],), dtype, seed + 200, device) if bias else None
    return x, w, b


# -------------------------------------------------------------- tolerance --

# Unit roundoff (half an ulp at 1.0) of each dtype.
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


def tolerance(dtype):
    """(rtol, atol factor) for comparing a `dtype` result with a more precise reference.

    float64 / float32: the reference is float64 and the only difference is
    summation order, so the error is a small multiple of the unit roundoff
    times the number of terms (tens to a few hundred here) times the magnitude.

    float16 / bfloat16: the kernels accumulate in float32 and round once at
    the end, so against a float32 reference computed from the same rounded
    inputs the error is one rounding of the output: at most the unit roundoff
    (2^-11 for float16, 2^-8 for bfloat16) relative to the value, plus float32
    accumulation noise (~2^-24 per term, negligible). We allow 2x the unit
    roundoff relative, plus one unit roundoff times the output's largest
    magnitude absolute (for float16 subnormals and elements that cancel to
    near zero). Measured: about 0.8 u * max|ref|. A kernel that rounded its
    partial sums to 16 bits lands at 5 u * max|ref| or more and fails.
    """
    if dtype == torch.float64:
        return 1e-10, 1e-10
    if dtype == torch.float32:
        return 2e-5, 2e-5
    u = UNIT_ROUNDOFF[dtype]
    return 2 * u, u


def assert_matches(actual, expected, dtype=None, what=""):
    """actual (computed in `dtype`) against a reference of equal or higher precision."""
    dtype = dtype or actual.dtype
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{what}: NaN in the result (an element the kernel never wrote?)"
    if expected.numel() == 0:
        return
    rtol, atol_factor = tolerance(dtype)
    scale = max(expected.abs().max().item(), 1e-30)
    torch.testing.assert_close(
        actual.to(expected.dtype), expected, rtol=rtol, atol=atol_factor * scale, msg=lambda m: f"{what}: {m}"
    )


def assert_results_match(ours: ConvResult, ref: ConvResult, dtype):
    assert_matches(ours.out, ref.out, dtype, "output")
    assert_matches(ours.grad_input, ref.grad_input, dtype, "grad_input")
    assert_matches(ours.grad_weight, ref.grad_weight, dtype, "grad_weight")
    assert (ours.grad_bias is None) == (ref.grad_bias is None)
    if ref.grad_bias is not None:
        assert_matches(ours.grad_bias, ref.grad_bias, dtype, "grad_bias")


def check_against_torch(x, w, b=None, prepare=None, **kwargs):
    """float64 parity of forward and every gradient with the torch reference."""
    ours = conv_and_grads(atrous_conv, x, w, b, prepare=prepare, **kwargs)
    ref = conv_and_grads(reference_conv, x, w, b, grad_output=seeded_randn(ours.out.shape, x.dtype, seed=1),
                         prepare=prepare, **kwargs)
    assert_results_match(ours, ref, x.dtype)
    return ours, ref


def assert_bitwise_equal(a: ConvResult, b: ConvResult):
    for name in ConvResult._fields:
        ta, tb = getattr(a, name), getattr(b, name)
        if ta is None:
            assert tb is None
            continue
        assert torch.equal(ta, tb), f"{name} differs between runs"
