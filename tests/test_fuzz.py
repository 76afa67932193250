"""Hostile and awkward input: fuzzing with invalid arguments, and NaN/Inf.

Fuzzing: random shapes and arguments, invalid ones included (zero, negative
and huge stride/dilation/padding, groups that do not divide, wrong ranks,
mismatched dtypes and devices, kernels larger than the input, empty
tensors). Every call must end one of three ways:
  * both torch and atrous_cuda succeed, and agree (float64, gradients too);
  * both raise, and ours is a clear error: a ValueError/TypeError/RuntimeError
    whose message starts with the function's name ('atrous_conv2d: ...') or
    comes from the op's C++ checks ('atrous_conv: ...');
  * they disagree in one of the deliberate, documented ways of
    DELIBERATE_DIFFERENCES, each checked to be that case.
A crash (segfault, abort) ends the test run. CI draws FUZZ_EXAMPLES examples
(derandomized, so every run is the same); ATROUS_FUZZ_EXAMPLES=N draws N
random ones for a long run.
"""
import collections
import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import explicit_pads

import atrous_cuda

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

LONG_RUN = int(os.environ.get("ATROUS_FUZZ_EXAMPLES", "0"))
FUZZ_SETTINGS = settings(
    max_examples=LONG_RUN or 300,
    deadline=None,
    derandomize=not LONG_RUN,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INT64_MAX = 2**63 - 1

# One of these (or none) is applied to an otherwise valid configuration, so
# about half the examples are valid calls and the rest fail in one known way.
MUTATIONS = [
    "stride_zero", "stride_negative", "stride_wrong_length", "stride_float", "dilation_zero", "dilation_negative",
    "dilation_past_int64", "padding_negative", "padding_huge", "padding_past_int64", "padding_unknown_string",
    "padding_causal_2d", "padding_wrong_length", "padding_negative_asymmetric", "groups_zero", "groups_negative",
    "groups_not_dividing", "weight_channels_mismatch", "input_rank", "weight_rank", "weight_float32",
    "input_int64", "input_complex", "bias_wrong_size", "bias_float32", "weight_on_meta", "input_without_channels",
    "empty_kernel", "empty_spatial",
]


@st.composite
def fuzz_cases(draw):
    ndim = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    in_per_group, out_per_group = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    spatial = tuple(draw(st.integers(1, 9)) for _ in range(ndim))
    batch = draw(st.sampled_from([0, 1, 2, 2, None]))  # None: unbatched
    stride = tuple(draw(st.sampled_from([1, 1, 2, 3, 2**40])) for _ in range(ndim))
    dilation = tuple(draw(st.sampled_from([1, 2, 3, 5])) for _ in range(ndim))
    forms = ["int", "tuple", "asymmetric", "same", "valid"] + (["causal"] if ndim == 1 else [])
    form = draw(st.sampled_from(forms))
    if form == "int":
        padding = draw(st.integers(0, 9))
    elif form == "tuple":
        padding = tuple(draw(st.integers(0, 9)) for _ in range(ndim))
    elif form == "asymmetric":
        padding = tuple(draw(st.integers(0, 6)) for _ in range(2 * ndim))
    else:
        padding = form
    case = dict(ndim=ndim, x_shape=((batch,) if batch is not None else ()) + (groups * in_per_group,) + spatial,
                w_shape=(groups * out_per_group, in_per_group) + kernel,
                dtypes={"input": torch.float64, "weight": torch.float64, "bias": torch.float64},
                bias=draw(st.sampled_from(["none", "ok"])), meta=None,
                stride=stride, padding=padding, dilation=dilation, groups=groups)

    mutation = draw(st.sampled_from(MUTATIONS + [None] * len(MUTATIONS)))
    case["mutation"] = mutation
    axis = draw(st.integers(0, ndim - 1))

    def set_axis(value_tuple, value):
        return tuple(value if i == axis else v for i, v in enumerate(value_tuple))

    if mutation == "stride_zero":
        case["stride"] = set_axis(stride, 0)
    elif mutation == "stride_negative":
        case["stride"] = set_axis(stride, -1)
    elif mutation == "stride_wrong_length":
        case["stride"] = stride + (1,)
    elif mutation == "stride_float":
        case["stride"] = 1.5
    elif mutation == "dilation_zero":
        case["dilation"] = set_axis(dilation, 0)
    elif mutation == "dilation_negative":
        case["dilation"] = set_axis(dilation, -2)
    elif mutation == "dilation_past_int64":
        case["dilation"] = set_axis(dilation, draw(st.sampled_from([2**62, INT64_MAX])))
        case["w_shape"] = case["w_shape"][:2] + tuple(max(k, 3) for k in kernel)
    elif mutation == "padding_negative":
        case["padding"] = -1
    elif mutation == "padding_huge":
        case["padding"] = draw(st.sampled_from([2**62, INT64_MAX, (2**62,) * ndim]))
    elif mutation == "padding_past_int64":
        case["padding"] = 2**64
    elif mutation == "padding_unknown_string":
        case["padding"] = "full"
    elif mutation == "padding_causal_2d":
        case["padding"] = "causal" if ndim == 2 else (1, 2, 3)
    elif mutation == "padding_wrong_length":
        case["padding"] = (1,) * (2 * ndim + 1)
    elif mutation == "padding_negative_asymmetric":
        case["padding"] = (0, 1, -1, 0)[: 2 * ndim]
    elif mutation == "groups_zero":
        case["groups"] = 0
    elif mutation == "groups_negative":
        case["groups"] = -1
    elif mutation == "groups_not_dividing":
        case["groups"] = groups + 1
    elif mutation == "weight_channels_mismatch":
        case["w_shape"] = (case["w_shape"][0], in_per_group + 1) + kernel
    elif mutation == "input_rank":
        case["x_shape"] = case["x_shape"] + (2,) if batch is not None else case["x_shape"][1:]
    elif mutation == "weight_rank":
        case["w_shape"] = case["w_shape"][:-1]
    elif mutation == "weight_float32":
        case["dtypes"]["weight"] = torch.float32
    elif mutation == "input_int64":
        case["dtypes"] = {k: torch.int64 for k in case["dtypes"]}
    elif mutation == "input_complex":
        case["dtypes"] = {k: torch.complex128 for k in case["dtypes"]}
    elif mutation == "bias_wrong_size":
        case["bias"] = "wrong_size"
    elif mutation == "bias_float32":
        case["bias"], case["dtypes"]["bias"] = "ok", torch.float32
    elif mutation == "weight_on_meta":
        case["meta"] = "weight"
    elif mutation == "input_without_channels":
        shape = list(case["x_shape"])
        shape[-ndim - 1] = 0
        case["x_shape"] = tuple(shape)
    elif mutation == "empty_kernel":
        case["w_shape"] = case["w_shape"][:2] + set_axis(kernel, 0)
    elif mutation == "empty_spatial":
        case["x_shape"] = case["x_shape"][:-ndim] + set_axis(spatial, 0)
    return case


def _tensors(case):
    g = torch.Generator().manual_seed(0)

    def make(shape, dtype):
        t = torch.randn(shape, generator=g, dtype=torch.float64)
        return (t * 4).round().to(dtype) if dtype == torch.int64 else t.to(dtype)

    x = make(case["x_shape"], case["dtypes"]["input"])
    w = make(case["w_shape"], case["dtypes"]["weight"])
    b = None
    if case["bias"] != "none":
        b = make((case["w_shape"][0] + (case["bias"] == "wrong_size"),), case["dtypes"]["bias"])
    if case["meta"] == "input":
        x = x.to("meta")
    elif case["meta"] == "weight":
        w = w.to("meta")
    return x, w, b


def _is_int_tuple(v, n):
    return isinstance(v, tuple) and len(v) == n and all(isinstance(i, int) for i in v)


def _torch_conv(case, x, w, b):
    """torch's answer: F.conv directly for the padding torch knows; for our
    extra forms ('same' with stride > 1, asymmetric tuples, 'causal'), valid
    ones become F.pad + F.conv with padding 0 and invalid ones go to F.conv
    unchanged, which refuses them."""
    ndim, stride, padding, dilation = case["ndim"], case["stride"], case["padding"], case["dilation"]
    conv = F.conv1d if ndim == 1 else F.conv2d
    args_valid = all(s > 0 for s in _as_tuple(stride, ndim) or [0]) and all(
        d > 0 for d in _as_tuple(dilation, ndim) or [0])
    strided = args_valid and any(s > 1 for s in _as_tuple(stride, ndim))
    extra_form = (padding == "causal" and ndim == 1) or (padding == "same" and strided) or (
        _is_int_tuple(padding, 2 * ndim) and all(0 <= p <= INT64_MAX for p in padding))
    if not extra_form or not args_valid or x.dim() < 2 or w.dim() != ndim + 2:
        return conv(x, w, b, stride, padding, dilation, case["groups"])
    spatial = tuple(x.shape[-ndim:])
    pads = explicit_pads(padding, ndim, spatial, tuple(w.shape[2:]), stride, dilation)
    return conv(F.pad(x, pads), w, b, stride, 0, dilation, case["groups"])


def _as_tuple(v, n):
    if isinstance(v, int):
        return (v,) * n
    return v if len(v) == n else None


def _ours(case, x, w, b):
    fn = atrous_cuda.atrous_conv1d if case["ndim"] == 1 else atrous_cuda.atrous_conv2d
    return fn(x, w, b, stride=case["stride"], padding=case["padding"], dilation=case["dilation"], groups=case["groups"])


def _attempt(fn, *args):
    try:
        return fn(*args), None
    except (RuntimeError, ValueError, TypeError, NotImplementedError, OverflowError, IndexError) as e:
        return None, e


def _dilated_extent_overflows(case, w):
    d = _as_tuple(case["dilation"], case["ndim"])
    return d is not None and any(dd > 0 and (k - 1) * dd + 1 > INT64_MAX for dd, k in zip(d, w.shape[2:]))


def _zero_size_spatial(x, ndim):
    return x.dim() >= ndim + 1 and any(s == 0 for s in x.shape[-ndim:])


# name -> (predicate on (case, x, w, b), who succeeds, why). Each is a
# deliberate difference, also stated in the README or test_errors.py.
DELIBERATE_DIFFERENCES = {
    "non_float_dtype": (lambda c, x, w, b: any(t is not None and not t.is_floating_point() for t in (x, w, b)),
                        "torch", "the kernels are floating point only; torch also convolves int64 and complex on the CPU"),
    "input_without_channels": (lambda c, x, w, b: x.dim() >= 2 and x.shape[-c["ndim"] - 1] == 0,
                               "torch", "torch returns an oddly shaped empty tensor; we raise a clear error"),
    "dilated_kernel_past_int64": (lambda c, x, w, b: _dilated_extent_overflows(c, w),
                                  "torch", "torch wraps dilation * (kernel - 1) around int64 and returns garbage"),
    "empty_batch": (lambda c, x, w, b: x.dim() == c["ndim"] + 2 and x.shape[0] == 0,
                    "torch", "torch returns an empty batch before checking the other arguments; we check them"),
    "devices_differ": (lambda c, x, w, b: len({t.device for t in (x, w, b) if t is not None}) > 1,
                       "torch", "with a meta weight and a CPU input torch returns uninitialized memory; we raise"),
    "empty_spatial_input": (lambda c, x, w, b: _zero_size_spatial(x, c["ndim"]),
                            "ours", "torch refuses a zero-size spatial input even when padding makes the "
                            "padded input large enough; we convolve the padded input (bias only), as F.pad + F.conv would"),
}


def _clear_error(fn_name, error):
    message = str(error)
    return isinstance(error, (ValueError, TypeError, RuntimeError)) and (
        message.startswith(f"{fn_name}: ") or message.startswith("atrous_conv: "))


def _check_case(case):
    x, w, b = _tensors(case)
    ours, our_error = _attempt(_ours, case, x, w, b)
    theirs, their_error = _attempt(_torch_conv, case, x, w, b)
    fn_name = f"atrous_conv{case['ndim']}d"
    if our_error is not None:
        assert _clear_error(fn_name, our_error), f"unclear error {type(our_error).__name__}: {our_error}"
    if (our_error is None) != (their_error is None):
        matching = [name for name, (pred, winner, _) in DELIBERATE_DIFFERENCES.items()
                    if pred(case, x, w, b) and winner == ("ours" if our_error is None else "torch")]
        assert matching, f"torch {'raised ' + repr(their_error) if their_error else 'succeeded'}, " \
                         f"we {'raised ' + repr(our_error) if our_error else 'succeeded'}"
        if "empty_spatial_input" in matching:
            # Our answer is that of F.pad + F.conv on the padded input.
            pads = explicit_pads(case["padding"], case["ndim"], tuple(x.shape[-case["ndim"]:]), tuple(w.shape[2:]),
                                 case["stride"], case["dilation"]) if not isinstance(case["padding"], int) else \
                (case["padding"],) * (2 * case["ndim"])
            conv = F.conv1d if case["ndim"] == 1 else F.conv2d
            torch.testing.assert_close(ours, conv(F.pad(x, pads), w, b, case["stride"], 0, case["dilation"], case["groups"]))
        return "deliberate"
    if our_error is not None:
        return "both_raise"
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype and ours.device == theirs.device
    if ours.device.type == "meta":
        return "agree"
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    if ours.numel() and x.numel() and w.numel():
        gy = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2), dtype=ours.dtype)
        ours_g = torch.autograd.grad(_ours(case, *[t.requires_grad_() for t in (x, w)], b), (x, w), gy)
        x2, w2 = x.detach().requires_grad_(), w.detach().requires_grad_()
        theirs_g = torch.autograd.grad(_torch_conv(case, x2, w2, b), (x2, w2), gy)
        for name, a, c in zip(("grad_input", "grad_weight"), ours_g, theirs_g):
            torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10, msg=lambda m: f"{name}: {m}")
    return "agree"


def test_fuzz_matches_torch_or_raises_clear_error():
    outcomes = collections.Counter()

    @FUZZ_SETTINGS
    @given(fuzz_cases())
    def run(case):
        outcomes[_check_case(case)] += 1

    run()
    # The strategy reaches every outcome, and a good share of valid calls, so
    # the test cannot pass by raising everywhere.
    assert set(outcomes) == {"agree", "both_raise", "deliberate"}, outcomes
    assert outcomes["agree"] >= 0.3 * sum(outcomes.values()), outcomes


# ----------------------------------------------------------------- NaN/Inf --

NAN, INF = math.nan, math.inf


def _classes(t):
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf, per element."""
    c = torch.zeros(t.shape, dtype=torch.int8)
    c[t.isnan()] = 1
    c[t == INF] = 2
    c[t == -INF] = 3
    return c


def _assert_same_values(actual, expected, what):
    assert torch.equal(_classes(actual), _classes(expected)), f"{what}: NaN/Inf in different places"
    finite = _classes(expected) == 0
    torch.testing.assert_close(actual[finite], expected[finite], msg=lambda m: f"{what}: {m}")


def _run(conv, x, w, b, gy, **kwargs):
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    out = conv(*leaves, **kwargs)
    return (out.detach(), *torch.autograd.grad(out, leaves, gy))


NONFINITE_INPUTS = {
    "nan_pixel": lambda x: x.__setitem__((0, 1, 3, 2), NAN),
    "inf_pixel_at_border": lambda x: x.__setitem__((1, 0, 0, 5), INF),
    "minus_inf_pixel": lambda x: x.__setitem__((1, 2, 6, 0), -INF),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", NONFINITE_INPUTS)
def test_nonfinite_input_propagates_exactly_like_torch(name, dtype):
    """A NaN or Inf pixel reaches every output whose receptive field holds it
    (through zero weights too: 0 * NaN = NaN), and the gradients it touches,
    exactly where torch's do."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g, dtype=dtype) for s in ((2, 3, 7, 6), (4, 3, 3, 3), (4,)))
    w[0, 1, 1, 1] = 0.0
    NONFINITE_INPUTS[name](x)
    kwargs = dict(padding=2, dilation=2)
    gy = torch.randn((2, 4, 7, 6), generator=g, dtype=dtype)
    ours = _run(atrous_cuda.atrous_conv2d, x, w, b, gy, **kwargs)
    theirs = _run(F.conv2d, x, w, b, gy, **kwargs)
    assert _classes(ours[0]).any()  # the NaN/Inf did reach outputs
    for what, a, c in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, theirs):
        _assert_same_values(a, c, what)


def _tap_skipping_conv(x, w, b, padding, dilation):
    """Reference for 'padding is never multiplied': every (tap, output pixel)
    product whose input lies in the padding is dropped before the sum, so
    Inf * 0 never happens there. Float64, groups 1, stride 1."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding)            # (n, c*kh*kw, L)
    inside = F.unfold(torch.ones(1, c, h, wd, dtype=x.dtype), (kh, kw), dilation=dilation, padding=padding) > 0
    products = w.reshape(1, o, -1, 1) * cols.unsqueeze(1)                       # (n, o, c*kh*kw, L)
    out = torch.where(inside.unsqueeze(1), products, 0.0).sum(2) + b.reshape(1, o, 1)
    return out.reshape(n, o, *F.conv2d(x, w, padding=padding, dilation=dilation).shape[2:])


def test_nonfinite_weight_meets_only_real_pixels():
    """A documented difference: our kernels never multiply padding, so an
    Inf/NaN weight tap that lands only on padding contributes nothing, and
    the output is the finite sum over real pixels. torch's im2col paths
    (float64 here) multiply the padding zeros and give NaN (Inf * 0) there;
    its oneDNN paths (most float32 and bfloat16 shapes) skip them like ours.
    Everywhere the tap reads a real pixel, ours equals torch's."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((2, 3, 7, 6), (4, 3, 3, 3), (4,)))
    w[1, 2, 0, 0] = INF
    w[2, 0, 2, 1] = NAN
    ours = atrous_cuda.atrous_conv2d(x, w, b, padding=2, dilation=2)
    _assert_same_values(ours, _tap_skipping_conv(x, w, b, padding=2, dilation=2), "output")
    theirs = F.conv2d(x, w, b, padding=2, dilation=2)
    differs = _classes(ours) != _classes(theirs)
    assert differs.any(), "no output of this case meets the non-finite tap only in padding"
    assert theirs[differs].isnan().all() and ours[differs].isfinite().all()
    _assert_same_values(ours[~differs], theirs[~differs], "outputs where the tap reads real pixels")


def test_nonfinite_grad_output_meets_only_real_pixels():
    """The same rule in the backward: grad_weight sums grad_output * input over
    real input pixels only, so an Inf gradient at an output whose tap lands in
    padding leaves that tap's grad_weight finite (torch's float64 path: NaN);
    grad_input and grad_bias match torch exactly."""
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((2, 3, 7, 6), (4, 3, 3, 3), (4,)))
    gy = torch.randn((2, 4, 7, 6), generator=g, dtype=torch.float64)
    gy[0, 2, 0, 0] = INF
    ours = _run(atrous_cuda.atrous_conv2d, x, w, b, gy, padding=2, dilation=2)
    theirs = _run(F.conv2d, x, w, b, gy, padding=2, dilation=2)
    _assert_same_values(ours[1], theirs[1], "grad_input")
    _assert_same_values(ours[3], theirs[3], "grad_bias")
    # grad_weight[o, c, tap] = sum over real pixels of gy * x: the Inf at output
    # (0, 0) reaches exactly the taps whose input pixel from (0, 0) is real.
    gw = ours[2]
    for ky in range(3):
        for kx in range(3):
            real = 0 <= 2 * ky - 2 < 7 and 0 <= 2 * kx - 2 < 6
            assert bool(gw[2, :, ky, kx].isfinite().all()) == (not real), (ky, kx)
    assert gw[[0, 1, 3]].isfinite().all()
