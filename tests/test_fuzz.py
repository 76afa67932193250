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

The instance-assembling ops (instance_assemble, fcis_assemble) are fuzzed the
same way against the plain-torch float64 references of test_assemble.py:
every call either matches the reference or raises a clear error whose
message starts with the op's name, exactly when the arguments are invalid.

Wall clock: each example has a hypothesis deadline (EXAMPLE_DEADLINE), and
the file has a budget (FUZZ_BUDGET_S, from the file's first test;
ATROUS_FUZZ_BUDGET_S changes it): once spent, the remaining examples of a fuzz test are drawn but
not run, counted, and reported in a warning (never silently). The default
budget is far above the file's normal runtime, so CI checks every example.
"""
import collections
import datetime
import math
import os
import sys
import time
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import explicit_pads

import atrous_cuda

pytest.importorskip("hypothesis", reason="hypothesis is not installed (pip install hypothesis)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_assemble import ref_fcis_assemble, ref_instance_assemble  # noqa: E402

LONG_RUN = int(os.environ.get("ATROUS_FUZZ_EXAMPLES", "0"))
# Generous: an example takes milliseconds; a loaded CI machine must not make it flaky.
EXAMPLE_DEADLINE = datetime.timedelta(seconds=5)
# The file normally runs in about 15 s on a loaded 2-core machine.
FUZZ_BUDGET_S = float(os.environ.get("ATROUS_FUZZ_BUDGET_S", "0")) or (None if LONG_RUN else 25.0)
_FILE_CLOCK = {"start": None}


@pytest.fixture(autouse=True, scope="module")
def _start_file_clock():
    # From this file's first test, not from import: pytest imports every test file before running any.
    _FILE_CLOCK["start"] = time.monotonic()


def _budget_spent():
    return FUZZ_BUDGET_S is not None and time.monotonic() - _FILE_CLOCK["start"] > FUZZ_BUDGET_S


def _run_within_budget(check, outcomes):
    """Runs check() unless the file's time budget is spent; counts what happened."""
    if _budget_spent():
        outcomes["not run (time budget spent)"] += 1
        return
    outcomes[check()] += 1


def _report_budget(outcomes, name):
    skipped = outcomes.pop("not run (time budget spent)", 0)
    if skipped:
        warnings.warn(f"{name}: {skipped} examples not run, the fuzz time budget of {FUZZ_BUDGET_S} s was spent")
    return skipped


FUZZ_SETTINGS = settings(
    max_examples=LONG_RUN or 300,
    deadline=EXAMPLE_DEADLINE,
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
    "bias_dtype_with_string_padding": (
        lambda c, x, w, b: isinstance(c["padding"], str) and b is not None and b.dtype != x.dtype,
        "torch", "torch's padding='same'/'valid' path skips the bias dtype check that its integer-padding path "
        "makes (F.conv2d of float64 input, float32 bias, padding='same' returns float64); we raise either way"),
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
        _run_within_budget(lambda: _check_case(case), outcomes)

    run()
    if _report_budget(outcomes, "conv fuzz"):
        return
    # The strategy reaches every outcome, and a good share of valid calls, so
    # the test cannot pass by raising everywhere.
    assert set(outcomes) == {"agree", "both_raise", "deliberate"}, outcomes
    assert outcomes["agree"] >= 0.3 * sum(outcomes.values()), outcomes


def test_time_budget_stops_running_examples_and_says_so(monkeypatch):
    outcomes = collections.Counter()
    monkeypatch.setattr(sys.modules[__name__], "FUZZ_BUDGET_S", 1e9)
    _run_within_budget(lambda: "agree", outcomes)
    monkeypatch.setattr(sys.modules[__name__], "FUZZ_BUDGET_S", 0.0)  # spent from the start
    ran = []
    _run_within_budget(lambda: ran.append(1) or "agree", outcomes)
    assert ran == [] and outcomes == {"agree": 1, "not run (time budget spent)": 1}
    with pytest.warns(UserWarning, match="1 examples not run, the fuzz time budget of 0.0 s was spent"):
        assert _report_budget(outcomes, "demo") == 1
    assert outcomes == {"agree": 1}


# ------------------------------------------------------- assembling ops --

ASSEMBLE_SETTINGS = settings(FUZZ_SETTINGS, max_examples=LONG_RUN or 150)

# window_stride values and whether each is valid
STRIDES = [(1, True), (2, True), (3, True), ((1, 2), True), ((2, 1), True), ((3, 3), True), (0, False), (-1, False),
           ((0, 1), False), ((1, -2), False), (1.5, False), ((1, 2, 3), False), (True, False), ("1", False)]


@st.composite
def instance_cases(draw):
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    # Each argument is valid most of the time, so about a third of the calls are valid.
    k = draw(st.sampled_from([1, 1, 2, 2, 3, 3, 0]))
    m = draw(st.integers(k, 7)) if draw(st.integers(0, 5)) else draw(st.integers(0, max(k - 1, 0)))
    extra_channel = draw(st.sampled_from([0] * 7 + [1]))
    stride, stride_ok = draw(st.sampled_from(STRIDES[:6] * 3 + STRIDES[6:]))
    centers_kind = draw(st.sampled_from(["none"] * 5 + ["valid"] * 4 + ["int32", "row_out_of_range",
                                         "batch_out_of_range", "negative", "float", "bool", "shape", "list"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scores = torch.randn(n, k * k + extra_channel, h, w, generator=gen, dtype=torch.float64)
    valid = k >= 1 and m >= k and extra_channel == 0 and stride_ok
    centers = None
    if centers_kind != "none":
        sh, sw = (stride, stride) if not isinstance(stride, tuple) else (stride + (1, 1))[:2]
        gh, gw = (h - 1) // max(int(sh), 1) + 1, (w - 1) // max(int(sw), 1) + 1
        p = draw(st.integers(0, 4))
        centers = torch.stack([torch.randint(0, n, (p,), generator=gen), torch.randint(0, gh, (p,), generator=gen),
                               torch.randint(0, gw, (p,), generator=gen)], dim=1)
        if centers_kind == "int32":
            centers = centers.int()
        elif centers_kind == "row_out_of_range" and p:
            centers[0, 1] = gh
        elif centers_kind == "batch_out_of_range" and p:
            centers[-1, 0] = n
        elif centers_kind == "negative" and p:
            centers[0, 2] = -1
        elif centers_kind == "float":
            centers = centers.double()
        elif centers_kind == "bool":
            centers = centers.bool()
        elif centers_kind == "shape":
            centers = centers[:, :2]
        elif centers_kind == "list":
            centers = centers.tolist()
        # An out-of-range index needs a row to put it in; the wrong dtypes, shapes and types are wrong even empty.
        centers_ok = centers_kind in ("valid", "int32") or (
            centers_kind in ("row_out_of_range", "batch_out_of_range", "negative") and p == 0)
        valid = valid and centers_ok
    return dict(scores=scores, k=k, m=m, stride=stride, centers=centers, valid=valid)


def _clear_assemble_error(name, error):
    return isinstance(error, (ValueError, TypeError, RuntimeError)) and str(error).startswith(f"{name}: ")


def _check_instance_case(case):
    scores, k, m, stride, centers = case["scores"], case["k"], case["m"], case["stride"], case["centers"]
    out, error = _attempt(lambda: atrous_cuda.instance_assemble(scores, k, m, stride, centers))
    if not case["valid"]:
        assert error is not None, f"invalid arguments accepted: k={k}, m={m}, stride={stride!r}, centers={centers!r}"
        assert _clear_assemble_error("instance_assemble", error), f"unclear error {type(error).__name__}: {error}"
        return "raises"
    assert error is None, f"valid arguments refused: {error!r}"
    pair = (stride, stride) if isinstance(stride, int) else stride
    expected = ref_instance_assemble(scores, k, m, pair, None if centers is None else centers.long())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)  # a copy: exact
    return "agree"


def test_instance_assemble_fuzz_matches_reference_or_raises_clear_error():
    outcomes = collections.Counter()

    @ASSEMBLE_SETTINGS
    @given(instance_cases())
    def run(case):
        _run_within_budget(lambda: _check_instance_case(case), outcomes)

    run()
    if _report_budget(outcomes, "instance_assemble fuzz"):
        return
    assert set(outcomes) == {"agree", "raises"}, outcomes
    assert outcomes["agree"] >= 0.2 * sum(outcomes.values()), outcomes


# spatial_scale values and whether each is valid
SCALES = [(1.0, True), (0.5, True), (0.25, True), (2, True), (0.0, False), (-0.5, False), (math.nan, False),
          (math.inf, False), (True, False), ("1", False)]


@st.composite
def fcis_cases(draw):
    n, h, w = draw(st.integers(1, 2)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    # Each argument is valid most of the time, so about a third of the calls are valid.
    k, classes = draw(st.sampled_from([1, 1, 2, 2, 3, 3, 0])), draw(st.integers(1, 2))
    size = draw(st.integers(k, 6)) if draw(st.integers(0, 5)) else draw(st.integers(0, max(k - 1, 0)))
    extra_channel = draw(st.sampled_from([0] * 7 + [1]))
    scale, scale_ok = draw(st.sampled_from(SCALES[:4] * 3 + SCALES[4:]))
    rois_kind = draw(st.sampled_from(["valid"] * 8 + ["float32", "batch_out_of_range", "batch_fraction",
                                                      "shape", "rank"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    maps = torch.randn(n, 2 * k * k * classes + extra_channel, h, w, generator=gen, dtype=torch.float64)
    r = draw(st.integers(0, 3))
    img_scale = scale if scale_ok else 1.0
    # Boxes in image coordinates, some past the border (as random_rois in test_assemble.py).
    xy = torch.rand(r, 2, 2, generator=gen, dtype=torch.float64) * 1.3 - 0.15
    xs, ys = xy[:, 0] * w / img_scale, xy[:, 1] * h / img_scale
    batch = torch.randint(0, n, (r,), generator=gen).double()
    rois = torch.stack([batch, xs.min(1).values, ys.min(1).values, xs.max(1).values, ys.max(1).values], dim=1)
    rois_ok = True
    if rois_kind == "float32":
        rois = rois.float()
    elif rois_kind == "batch_out_of_range" and r:
        rois[0, 0], rois_ok = n, False
    elif rois_kind == "batch_fraction" and r:
        rois[-1, 0], rois_ok = 0.5, False
    elif rois_kind == "shape":
        rois, rois_ok = rois[:, :4], False
    elif rois_kind == "rank":
        rois, rois_ok = rois.reshape(-1), False
    channels_ok = extra_channel == 0 and k >= 1
    valid = k >= 1 and size >= k and channels_ok and rois_ok and scale_ok
    return dict(maps=maps, rois=rois, k=k, size=size, scale=scale, valid=valid)


def _check_fcis_case(case):
    maps, rois, k, size, scale = case["maps"], case["rois"], case["k"], case["size"], case["scale"]
    out, error = _attempt(lambda: atrous_cuda.fcis_assemble(maps, rois, k, size, scale))
    if not case["valid"]:
        assert error is not None, f"invalid arguments accepted: k={k}, size={size}, scale={scale!r}, rois={rois!r}"
        assert _clear_assemble_error("fcis_assemble", error), f"unclear error {type(error).__name__}: {error}"
        return "raises"
    assert error is None, f"valid arguments refused: {error!r}"
    expected = ref_fcis_assemble(maps, rois, k, size, float(scale))
    for ours, ref in zip(out, expected):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    return "agree"


def test_fcis_assemble_fuzz_matches_reference_or_raises_clear_error():
    outcomes = collections.Counter()

    @ASSEMBLE_SETTINGS
    @given(fcis_cases())
    def run(case):
        _run_within_budget(lambda: _check_fcis_case(case), outcomes)

    run()
    if _report_budget(outcomes, "fcis_assemble fuzz"):
        return
    assert set(outcomes) == {"agree", "raises"}, outcomes
    assert outcomes["agree"] >= 0.2 * sum(outcomes.values()), outcomes


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
