"""The integer index math of csrc/atrous_index.h, shared by the CPU and CUDA
kernels, checked through atrous_cuda._C against formulas and brute force."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tf_same_pads

from atrous_cuda import _C
from atrous_cuda.functional import same_padding

SIZES = range(1, 10)
KERNELS = range(1, 5)
STRIDES = range(1, 4)
DILATIONS = (1, 2, 3, 5, 12)


def _conv_out_size_formula(size, pad_before, pad_after, kernel, stride, dilation):
    span = size + pad_before + pad_after - dilation * (kernel - 1) - 1
    return 0 if span < 0 else span // stride + 1


def test_same_padding_python_agrees_with_cpp():
    for size, kernel, stride, dilation in itertools.product(range(1, 14), KERNELS, STRIDES, DILATIONS):
        assert same_padding(size, kernel, stride, dilation) == _C.same_padding(size, kernel, stride, dilation), (
            size, kernel, stride, dilation)


def test_same_padding_follows_tf_rule():
    for size, kernel, stride, dilation in itertools.product(range(1, 14), KERNELS, STRIDES, DILATIONS):
        before, after = _C.same_padding(size, kernel, stride, dilation)
        assert (before, after) == tf_same_pads(size, kernel, stride, dilation)
        assert 0 <= after - before <= 1
        # The output has ceil(size / stride) elements, torch's and TF's 'same' size.
        assert _C.conv_out_size(size, before, after, kernel, stride, dilation) == math.ceil(size / stride)


def test_same_padding_stride1_is_torch_same():
    """For stride 1 torch pads d*(k-1) in total, the extra pixel after."""
    for size, kernel, dilation in itertools.product(SIZES, KERNELS, DILATIONS):
        total = dilation * (kernel - 1)
        assert _C.same_padding(size, kernel, 1, dilation) == (total // 2, total - total // 2)


def test_conv_out_size_matches_formula():
    for size, pb, pe, kernel, stride, dilation in itertools.product(SIZES, range(4), range(4), KERNELS, STRIDES, DILATIONS):
        assert _C.conv_out_size(size, pb, pe, kernel, stride, dilation) == _conv_out_size_formula(
            size, pb, pe, kernel, stride, dilation), (size, pb, pe, kernel, stride, dilation)


def test_conv_out_size_matches_torch_output_size():
    x = torch.zeros(1, 1, 9)
    for size, pb, pe, kernel, stride, dilation in itertools.product(
        range(1, 8), (0, 2), (0, 1), (1, 2, 3), (1, 3), (1, 2, 4)
    ):
        expected = _C.conv_out_size(size, pb, pe, kernel, stride, dilation)
        xp = F.pad(x[..., :size], (pb, pe))
        w = torch.zeros(1, 1, kernel)
        if expected <= 0:
            with pytest.raises(RuntimeError):
                F.conv1d(xp, w, stride=stride, dilation=dilation)
        else:
            assert F.conv1d(xp, w, stride=stride, dilation=dilation).shape[-1] == expected


def test_conv_out_size_is_zero_not_negative_when_kernel_too_large():
    assert _C.conv_out_size(3, 0, 0, 3, 2, 5) == 0
    assert _C.conv_out_size(3, 1, 0, 3, 1, 2) == 0  # span = -1: must not round up to 1
    assert _C.conv_out_size(5, 12, 12, 3, 1, 12) == 5


def _brute_force_valid_outputs(size, out, tap, stride, pad_before, dilation):
    return [o for o in range(out) if 0 <= o * stride - pad_before + tap * dilation < size]


def test_valid_out_range_equals_brute_force():
    """Including offsets pb - t*d far below zero and dilations beyond the input."""
    checked = 0
    for size, stride, dilation, pad_before, tap in itertools.product(
        range(1, 8), STRIDES, (1, 2, 3, 7, 13), range(0, 15, 2), range(4)
    ):
        for out in (1, 3, _conv_out_size_formula(size, pad_before, pad_before, tap + 1, stride, dilation), 20):
            if out <= 0:
                continue
            begin, end = _C.valid_out_range(size, out, tap, stride, pad_before, dilation)
            valid = _brute_force_valid_outputs(size, out, tap, stride, pad_before, dilation)
            assert list(range(begin, end)) == valid, (size, out, tap, stride, pad_before, dilation)
            # Always inside [0, out]; an empty range is begin == end.
            assert 0 <= begin <= end <= out
            checked += 1
    assert checked > 5000


def test_valid_out_range_is_empty_when_tap_misses_the_input():
    # Tap 2 with dilation 12 reads 24 past the first output: beyond a 5-wide input.
    begin, end = _C.valid_out_range(5, 5, 2, 1, 0, 12)
    assert begin == end
    # With padding 12 only the centre tap (1) of dilation 12 lands inside.
    ranges = [_C.valid_out_range(5, 5, t, 1, 12, 12) for t in range(3)]
    assert [list(range(*r)) for r in ranges] == [[], [0, 1, 2, 3, 4], []]


def test_output_index_for_input_inverts_the_input_index():
    """o = output_index_for_input(i, ...) iff o*s - pb + t*d == i with 0 <= o < out, else -1."""
    for size, stride, dilation, pad_before, tap, out in itertools.product(
        range(1, 7), STRIDES, (1, 2, 5, 12), range(0, 13, 3), range(3), (1, 4, 9)
    ):
        for i in range(-2, size + 2):
            o = _C.output_index_for_input(i, out, tap, stride, pad_before, dilation)
            readers = [c for c in range(out) if c * stride - pad_before + tap * dilation == i]
            assert readers == ([] if o == -1 else [o]), (i, out, tap, stride, pad_before, dilation)


def test_output_index_for_input_round_trip():
    for out, stride, dilation, pad_before, tap in itertools.product(range(1, 8), STRIDES, (1, 3, 12), range(5), range(3)):
        for o in range(out):
            i = o * stride - pad_before + tap * dilation
            assert _C.output_index_for_input(i, out, tap, stride, pad_before, dilation) == o


# ------------------------------------------------ tap-class pixel order (CUDA) --
# The CUDA implicit GEMM walks pixels band by band so that a tile rarely mixes
# pixels with different sets of valid taps; these check the shared math it uses.

AXIS_CASES = [
    # size, kernel, stride, pad_before, pad_after, dilation
    (33, 3, 1, 12, 12, 12),   # ASPP rate 12 on a 33x33 map
    (33, 3, 1, 36, 36, 36),   # rate beyond the map
    (65, 3, 1, 24, 24, 24),
    (17, 5, 2, 3, 1, 2),      # strided, asymmetric
    (9, 2, 1, 0, 3, 3),       # even kernel
    (8192, 3, 1, 1024, 0, 512),  # causal WaveNet
    (12, 1, 1, 0, 0, 1),      # 1x1: a single band
    (40, 17, 1, 8, 8, 1),     # kernel too wide for the band table: plain order
]


def _valid_taps_forward(o, size, kernel, stride, pad, dilation):
    return frozenset(t for t in range(kernel) if 0 <= o * stride - pad + t * dilation < size)


def _valid_taps_grad_input(i, out, kernel, stride, pad, dilation):
    return frozenset(t for t in range(kernel) if _C.output_index_for_input(i, out, t, stride, pad, dilation) >= 0)


@pytest.mark.parametrize("case", AXIS_CASES, ids=str)
def test_forward_axis_bands_have_constant_valid_taps(case):
    size, kernel, stride, pb, pa, dilation = case
    out = _C.conv_out_size(size, pb, pa, kernel, stride, dilation)
    begins = _C.forward_axis_bands(size, out, kernel, stride, pb, dilation)
    assert begins[0] == 0 and begins[-1] == out and begins == sorted(set(begins))
    if kernel > 7:  # more bands than the table holds: the plain order
        assert begins == [0, out]
        return
    for b0, b1 in zip(begins, begins[1:]):
        sets = {_valid_taps_forward(o, size, kernel, stride, pb, dilation) for o in range(b0, b1)}
        assert len(sets) == 1, (b0, b1, sets)


@pytest.mark.parametrize("case", AXIS_CASES, ids=str)
def test_grad_input_axis_bands_have_constant_valid_taps(case):
    size, kernel, stride, pb, pa, dilation = case
    out = _C.conv_out_size(size, pb, pa, kernel, stride, dilation)
    begins = _C.grad_input_axis_bands(size, out, kernel, stride, pb, dilation)
    assert begins[0] == 0 and begins[-1] == size and begins == sorted(set(begins))
    if stride != 1 or kernel > 7:
        assert begins == [0, size]
        return
    for b0, b1 in zip(begins, begins[1:]):
        sets = {_valid_taps_grad_input(i, out, kernel, stride, pb, dilation) for i in range(b0, b1)}
        assert len(sets) == 1, (b0, b1, sets)


def test_aspp_bands_split_the_plane_into_nine_tap_classes():
    begins = _C.forward_axis_bands(33, 33, 3, 1, 12, 12)
    assert begins == [0, 12, 21, 33]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("rows,cols", [([0, 12, 21, 33], [0, 12, 21, 33]), ([0, 5], [0, 2, 7]), ([0, 1], [0, 9])])
def test_pixel_order_is_a_permutation_walking_band_rectangles(batch, rows, cols):
    pixels = _C.pixel_order(batch, rows, cols)
    height, width = rows[-1], cols[-1]
    assert sorted(pixels) == [(n, y, x) for n in range(batch) for y in range(height) for x in range(width)]
    # Consecutive rows stay inside one band rectangle until it is exhausted.
    def rect(p):
        return (max(i for i, b in enumerate(rows[:-1]) if b <= p[1]), max(i for i, b in enumerate(cols[:-1]) if b <= p[2]))
    seen, previous = set(), None
    for p in pixels:
        r = rect(p)
        if r != previous:
            assert r not in seen, "a band rectangle was visited twice"
            seen.add(r)
            previous = r
