"""Forward and every gradient of atrous_conv1d/atrous_conv2d against F.conv1d/F.conv2d.

float64 over a broad grid of strides, paddings, dilations and groups; then
every dtype, memory layout, batch form and CPU instruction-set path.
"""
from typing import NamedTuple

import pytest
import torch
from conftest import (
    CPU_ISAS,
    assert_matches,
    assert_results_match,
    atrous_conv,
    check_against_torch,
    conv_and_grads,
    random_conv_inputs,
    reference_conv,
    seeded_randn,
    tf_same_pads,
    use_cpu_isa,
)

import atrous_cuda


class Case(NamedTuple):
    id: str
    x_shape: tuple
    w_shape: tuple
    kwargs: dict


CASES_2D = [
    # strides
    Case("stride1_pad1", (2, 4, 9, 9), (6, 4, 3, 3), dict(padding=1)),
    Case("stride2", (2, 4, 9, 9), (6, 4, 3, 3), dict(stride=2, padding=1)),
    Case("stride3", (2, 4, 10, 11), (6, 4, 3, 3), dict(stride=3, padding=1, dilation=2)),
    Case("stride_unequal_1x2", (2, 4, 9, 10), (5, 4, 3, 3), dict(stride=(1, 2), padding=2, dilation=2)),
    Case("stride_unequal_3x1", (1, 3, 11, 7), (4, 3, 3, 2), dict(stride=(3, 1), padding=(1, 2))),
    # paddings
    Case("padding_int0", (2, 4, 8, 8), (6, 4, 3, 3), dict(padding=0, dilation=2)),
    Case("padding_tuple", (2, 4, 8, 9), (6, 4, 3, 3), dict(padding=(2, 1), dilation=(2, 1))),
    Case("padding_valid", (2, 4, 8, 9), (6, 4, 3, 3), dict(padding="valid", dilation=2)),
    Case("padding_same", (2, 4, 8, 9), (6, 4, 3, 3), dict(padding="same", dilation=3)),
    Case("padding_same_strided", (2, 4, 9, 10), (6, 4, 3, 3), dict(padding="same", stride=2, dilation=2)),
    Case("padding_same_strided_unequal", (1, 3, 10, 7), (4, 3, 3, 3), dict(padding="same", stride=(2, 3), dilation=(2, 1))),
    Case("padding_same_even_kernel", (2, 4, 8, 9), (6, 4, 2, 4), dict(padding="same", dilation=(1, 3))),
    Case("padding_same_even_kernel_strided", (1, 4, 9, 8), (5, 4, 4, 2), dict(padding="same", stride=2, dilation=2)),
    Case("padding_asymmetric", (2, 4, 8, 9), (6, 4, 3, 3), dict(padding=(1, 2, 0, 3), dilation=2)),
    Case("padding_asymmetric_strided", (1, 3, 9, 9), (4, 3, 3, 3), dict(padding=(0, 4, 3, 1), stride=(2, 3), dilation=(3, 2))),
    # dilations
    Case("dilation_unequal_1x3", (2, 4, 9, 12), (6, 4, 3, 3), dict(padding=(1, 3), dilation=(1, 3))),
    Case("dilation_unequal_4x1", (2, 4, 12, 7), (6, 4, 3, 3), dict(padding=(4, 1), dilation=(4, 1))),
    Case("dilation_beyond_input", (2, 4, 5, 5), (6, 4, 3, 3), dict(padding=12, dilation=12)),
    Case("dilation_beyond_input_strided", (1, 4, 5, 6), (3, 4, 3, 3), dict(padding=12, dilation=12, stride=2)),
    Case("dilation_beyond_input_partial_pad", (1, 2, 5, 5), (3, 2, 2, 2), dict(padding=3, dilation=6)),
    # groups
    Case("groups2", (2, 4, 8, 8), (6, 2, 3, 3), dict(padding=2, dilation=2, groups=2)),
    Case("groups4_strided", (1, 8, 9, 9), (8, 2, 3, 3), dict(padding=1, stride=2, groups=4)),
    Case("depthwise", (2, 4, 9, 9), (4, 1, 3, 3), dict(padding=2, dilation=2, groups=4)),
    Case("depthwise_multiplier2", (2, 4, 9, 9), (8, 1, 3, 3), dict(padding=(3, 1), dilation=(3, 1), groups=4)),
    Case("depthwise_strided_asymmetric", (1, 3, 10, 9), (6, 1, 3, 2), dict(padding=(1, 0, 2, 1), stride=2, groups=3)),
    Case("single_input_channel", (2, 1, 9, 9), (5, 1, 3, 3), dict(padding=2, dilation=2)),
    # odd sizes and blocking boundaries of the CPU kernels
    Case("odd_sizes", (3, 5, 7, 13), (3, 5, 5, 1), dict(padding=(4, 0), dilation=(2, 1))),
    Case("kernel_1x1", (2, 5, 7, 6), (3, 5, 1, 1), dict(stride=2)),
    Case("many_pixel_tiles", (2, 6, 17, 15), (17, 6, 3, 3), dict(padding=2, dilation=2)),
    Case("many_channels", (1, 100, 5, 6), (20, 100, 3, 3), dict(padding=1)),
    Case("many_channels_groups2", (1, 100, 5, 6), (20, 50, 3, 3), dict(padding=2, dilation=2, groups=2)),
    Case("deep_gemm", (1, 260, 4, 4), (9, 260, 2, 2), dict(padding=1)),
    # more than 16 column panels in forward (290 outputs) and grad_input (150 inputs, float64):
    # several column blocks per pixel tile
    Case("wide_gemm_column_blocks", (1, 150, 5, 7), (290, 150, 3, 3), dict(padding=2, dilation=2)),
    Case("grad_weight_segments", (2, 7, 64, 70), (9, 7, 3, 3), dict(padding=(3, 5), dilation=(3, 5))),
    Case("grad_weight_segments_groups", (1, 12, 70, 64), (18, 4, 3, 3), dict(padding=2, dilation=2, groups=3)),
    Case("depthwise_many_pixels", (2, 3, 12, 11), (6, 1, 3, 3), dict(padding=3, dilation=3, groups=3)),
    # 37 channels: whole vectors and a tail in the depthwise row updates (16 and 8 lanes)
    Case("depthwise_vector_rows", (2, 37, 9, 8), (37, 1, 3, 3), dict(padding=(2, 3), dilation=(2, 3), groups=37)),
    # rows of 37-41 pixels: whole vectors and a tail in the NCHW plane rows (axpy and dot)
    Case("depthwise_long_rows", (2, 5, 7, 41), (10, 1, 3, 3), dict(padding=(1, 4), dilation=(1, 2), groups=5)),
    # rows of 41 pixels and 37 input / 21 output channels: whole 16 x 16 and 8 x 8 blocks and tails in
    # grad_weight's transposes of NCHW planes
    Case("long_rows_many_channels", (2, 37, 6, 41), (21, 37, 3, 3), dict(padding=(1, 4), dilation=(1, 2))),
    # 2 taps and 200 input channels: grad_weight's channel blocks grow past 96 rows for few taps (2 of 100)
    Case("grad_weight_few_taps_wide_blocks", (2, 200, 3, 40), (24, 200, 1, 2), dict(padding=(0, 5), dilation=(1, 5))),
]


def _case_id(case):
    return case.id


def cases(*ids):
    by_id = {c.id: c for c in CASES_2D}
    return [by_id[i] for i in ids]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", CASES_2D, ids=_case_id)
def test_conv2d_matches_torch_float64(case, bias):
    x, w, b = random_conv_inputs(case.x_shape, case.w_shape, bias)
    check_against_torch(x, w, b, **case.kwargs)


@pytest.mark.parametrize("case", CASES_2D[::3], ids=_case_id)
def test_conv2d_unbatched_matches_torch(case):
    x, w, b = random_conv_inputs(case.x_shape[1:], case.w_shape)
    ours, _ = check_against_torch(x, w, b, **case.kwargs)
    assert ours.out.dim() == 3


@pytest.mark.parametrize("case", cases("stride1_pad1", "padding_same_strided", "padding_asymmetric", "depthwise"), ids=_case_id)
def test_conv2d_empty_batch(case):
    x, w, b = random_conv_inputs((0,) + case.x_shape[1:], case.w_shape)
    ours, ref = check_against_torch(x, w, b, **case.kwargs)
    assert ours.out.shape[0] == 0
    # Nothing flows into the weight and bias: exact zeros, not poisoned NaN.
    assert torch.equal(ours.grad_weight, torch.zeros_like(ours.grad_weight))
    assert torch.equal(ours.grad_bias, torch.zeros_like(ours.grad_bias))


def test_padding_same_strided_matches_tf_rule():
    """'same' with stride > 1: out = ceil(in / s), total padding split with the odd pixel after."""
    for size in range(3, 12):
        for stride in (2, 3):
            for kernel, dilation in ((3, 1), (3, 2), (2, 3), (4, 1)):
                x, w, b = random_conv_inputs((1, 2, size, size + 1), (2, 2, kernel, kernel))
                out = atrous_cuda.atrous_conv2d(x, w, b, stride=stride, padding="same", dilation=dilation)
                assert out.shape[2:] == (-(-size // stride), -(-(size + 1) // stride))
                top, bottom = tf_same_pads(size, kernel, stride, dilation)
                left, right = tf_same_pads(size + 1, kernel, stride, dilation)
                assert bottom - top in (0, 1) and right - left in (0, 1)
                expected = torch.nn.functional.conv2d(
                    torch.nn.functional.pad(x, (left, right, top, bottom)), w, b, stride, 0, dilation
                )
                assert_matches(out, expected)


def test_padding_same_stride1_equals_torch_same():
    for kernel in ((3, 3), (2, 4), (4, 1), (5, 2)):
        x, w, b = random_conv_inputs((1, 3, 7, 8), (4, 3) + kernel)
        out = atrous_cuda.atrous_conv2d(x, w, b, padding="same", dilation=(2, 3))
        assert_matches(out, torch.nn.functional.conv2d(x, w, b, padding="same", dilation=(2, 3)))


def test_asymmetric_padding_is_fpad_order():
    """(left, right, top, bottom), as F.pad takes them."""
    x, w, b = random_conv_inputs((1, 2, 6, 7), (3, 2, 3, 3))
    out = atrous_cuda.atrous_conv2d(x, w, b, padding=(0, 3, 2, 1))
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 3, 2, 1)), w, b)
    assert_matches(out, expected)
    assert out.shape == (1, 3, 6 + 2 + 1 - 2, 7 + 0 + 3 - 2)


def test_dilation_far_beyond_input_uses_only_centre_tap():
    """H = W = 5, dilation 12, padding 12: only the centre tap ever reads the image."""
    x, w, b = random_conv_inputs((2, 4, 5, 5), (6, 4, 3, 3))
    out = atrous_cuda.atrous_conv2d(x, w, b, padding=12, dilation=12)
    centre = torch.nn.functional.conv2d(x, w[:, :, 1:2, 1:2], b)
    assert_matches(out, centre)


# -------------------------------------------------------------- layouts --


NONCONTIGUOUS_VIEWS = {
    "strided_slice": lambda x: x[:, 1:, 1::2, 2:],
    "hw_transpose": lambda x: x[:, 1:].transpose(2, 3),
    "channel_slice": lambda x: x[:, 1:],
    "batch_step": lambda x: x[::2, 1:],
}


@pytest.mark.parametrize("view", NONCONTIGUOUS_VIEWS.values(), ids=NONCONTIGUOUS_VIEWS.keys())
def test_noncontiguous_input_matches_torch(view):
    x, w, b = random_conv_inputs((4, 5, 14, 11), (6, 4, 3, 3))
    assert not view(x).is_contiguous()
    check_against_torch(x, w, b, prepare=view, padding=(2, 1), dilation=(2, 1))


def test_noncontiguous_weight_matches_torch():
    x, w, b = random_conv_inputs((2, 4, 9, 9), (6, 4, 3, 3))
    w_t = w.transpose(2, 3)
    assert not w_t.is_contiguous()
    ours = atrous_cuda.atrous_conv2d(x, w_t, b, padding=2, dilation=2)
    assert_matches(ours, torch.nn.functional.conv2d(x, w_t, b, padding=2, dilation=2))


@pytest.mark.parametrize("case", cases("stride2", "padding_asymmetric", "groups2", "depthwise_multiplier2"), ids=_case_id)
def test_channels_last_input_gives_channels_last_output(case):
    x, w, b = random_conv_inputs(case.x_shape, case.w_shape)
    x = x.contiguous(memory_format=torch.channels_last)
    ours, _ = check_against_torch(x, w, b, **case.kwargs)
    assert ours.out.is_contiguous(memory_format=torch.channels_last)
    assert ours.grad_input.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["float64", "float32", "bfloat16"])
@pytest.mark.parametrize("groups", [1, 2])
def test_channels_last_input_and_grad_output_read_in_place(dtype, groups):
    """Channels-last operands whose channels per group fill whole GEMM panels
    (32 output channels, even input channels per group) are read without NHWC copies."""
    x, w, b = (t.to(dtype) for t in random_conv_inputs((2, 8, 9, 10), (32, 8 // groups, 3, 3)))
    x = x.contiguous(memory_format=torch.channels_last)
    gy = seeded_randn((2, 32, 9, 10), dtype, seed=1).contiguous(memory_format=torch.channels_last)
    kwargs = dict(padding=2, dilation=2, groups=groups)
    ours = conv_and_grads(atrous_conv, x, w, b, grad_output=gy, **kwargs)
    ref = conv_and_grads(reference_conv, x.double(), w.double(), b.double(), grad_output=gy.double(), **kwargs)
    assert_results_match(ours, ref, dtype)


def test_channels_last_weight_matches_torch():
    x, w, b = random_conv_inputs((2, 4, 9, 9), (6, 4, 3, 3))
    w = w.contiguous(memory_format=torch.channels_last)
    ours, ref = check_against_torch(x, w, b, padding=2, dilation=2)
    assert ours.out.is_contiguous(memory_format=torch.channels_last) == ref.out.is_contiguous(
        memory_format=torch.channels_last
    )


def _layout(t):
    """Where each element lies: the strides of the dimensions longer than 1
    (a size-1 dimension's stride places nothing)."""
    return tuple(st if n > 1 else None for n, st in zip(t.shape, t.stride()))


def _channels_last_empty(shape, dtype):
    # What model.to(memory_format=torch.channels_last) makes: a 1x1 weight gets strides
    # (C, 1, C, C), contiguous in both senses, yet torch's conv then returns channels_last.
    return torch.empty(shape, dtype=dtype, memory_format=torch.channels_last).normal_(generator=torch.Generator().manual_seed(3))


LAYOUT_SHAPES = {  # (input, weight, padding)
    "3x3": ((2, 4, 7, 8), (6, 4, 3, 3), 2),
    "1x1": ((2, 8, 7, 8), (6, 8, 1, 1), 0),
    "1x1_image": ((2, 8, 1, 1), (6, 8, 1, 1), 0),
    "one_channel": ((2, 1, 7, 8), (3, 1, 3, 3), 2),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("input_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shapes", LAYOUT_SHAPES.values(), ids=LAYOUT_SHAPES.keys())
def test_output_and_grad_input_layout_follow_torch(shapes, input_layout, weight_layout, dtype):
    """The output's and grad_input's layout is torch's: channels_last when the
    input's or the weight's strides suggest it, including a channels_last 1x1
    weight (which is also contiguous) and (N, C, 1, 1) inputs; the fake kernel
    gives the same strides as the real one."""
    (x_shape, w_shape, padding) = shapes
    make = {"contiguous": lambda shape: seeded_randn(shape, dtype), "channels_last": lambda shape: _channels_last_empty(shape, dtype)}
    x, w = make[input_layout](x_shape), make[weight_layout](w_shape)
    kwargs = dict(padding=padding, dilation=2)
    ours = atrous_conv(x.requires_grad_(), w.requires_grad_(), None, **kwargs)
    ref = reference_conv(x, w, None, **kwargs)
    assert _layout(ours) == _layout(ref), f"output strides {ours.stride()}, torch's {ref.stride()}"
    gy = seeded_randn(ref.shape, dtype, seed=4)
    (ours_gx,) = torch.autograd.grad(ours, x, gy)
    (ref_gx,) = torch.autograd.grad(ref, x, gy)
    assert _layout(ours_gx) == _layout(ref_gx), f"grad_input strides {ours_gx.stride()}, torch's {ref_gx.stride()}"
    assert_matches(ours, ref.detach(), dtype)
    mode = torch._subclasses.FakeTensorMode()
    fake_x, fake_w = mode.from_tensor(x.detach()), mode.from_tensor(w.detach())
    with mode:
        fake = atrous_conv(fake_x, fake_w, None, **kwargs)
    assert fake.stride() == ours.stride()


# --------------------------------------------------------------- dtypes --

DTYPE_CASES = [c for c in CASES_2D if c.id not in ("deep_gemm", "many_channels", "many_channels_groups2")]


@pytest.mark.parametrize("case", DTYPE_CASES, ids=_case_id)
def test_float32_matches_float64_reference(case):
    x, w, b = random_conv_inputs(case.x_shape, case.w_shape)
    ours = conv_and_grads(atrous_conv, x.float(), w.float(), b.float(), **case.kwargs)
    gy = seeded_randn(ours.out.shape, torch.float32, seed=1)  # the one conv_and_grads used
    ref = conv_and_grads(reference_conv, x, w, b, grad_output=gy.double(), **case.kwargs)
    assert_results_match(ours, ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", DTYPE_CASES, ids=_case_id)
def test_half_precision_matches_float32_reference(case, dtype):
    """The reference sees exactly the rounded inputs, in float32 (see conftest.tolerance)."""
    x, w, b = random_conv_inputs(case.x_shape, case.w_shape, dtype=dtype)
    ours = conv_and_grads(atrous_conv, x, w, b, **case.kwargs)
    gy = seeded_randn(ours.out.shape, dtype, seed=1)
    ref = conv_and_grads(reference_conv, x.float(), w.float(), b.float(), grad_output=gy.float(), **case.kwargs)
    assert_results_match(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_channels_last(dtype):
    x, w, b = random_conv_inputs((2, 4, 9, 9), (6, 4, 3, 3), dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    out = atrous_cuda.atrous_conv2d(x, w, b, padding=2, dilation=2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    ref = torch.nn.functional.conv2d(x.float(), w.float(), b.float(), padding=2, dilation=2)
    assert_matches(out, ref, dtype)


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("shapes", [((2, 136, 40, 40), (136, 136, 3, 3)), ((1, 300, 40, 40), (136, 300, 3, 3))],
                         ids=["136_channels", "300_inputs"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("isa", ["best", "avx512"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_wide_gemm(dtype, isa, layout, shapes, restore_cpu_isa, two_threads):
    """At 2 threads, 136 output channels on a 40x40 map make units of 9 column
    panels, so 16-bit A rows are widened block by block inside the GEMM
    (forward and grad_input) instead of copied to float first; 300 input
    channels add a second depth block (widening at k0 > 0, the prefetch of the
    next block) and 19-panel grad_input rows. bfloat16 on avx512 takes this
    path as well."""
    if isa != "best":
        use_cpu_isa(isa)
    x, w, b = random_conv_inputs(*shapes, dtype=dtype)
    prepare = (lambda t: t.contiguous(memory_format=torch.channels_last)) if layout == "channels_last" else None
    kwargs = dict(padding=(2, 3), dilation=(2, 3))
    ours = conv_and_grads(atrous_conv, x, w, b, prepare=prepare, **kwargs)
    gy = seeded_randn(ours.out.shape, dtype, seed=1)
    ref = conv_and_grads(reference_conv, x.float(), w.float(), b.float(), grad_output=gy.float(), **kwargs)
    assert_results_match(ours, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("case", cases("grad_weight_segments", "grad_weight_segments_groups"), ids=_case_id)
def test_channels_last_grad_weight_segments(case, dtype):
    """Pixel-segment partials summed into the weight gradient of a channels_last
    input and weight (the sums are stored in the weight's own order)."""
    x, w, b = random_conv_inputs(case.x_shape, case.w_shape, dtype=dtype)
    w = w.contiguous(memory_format=torch.channels_last)
    to_cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    ours = conv_and_grads(atrous_conv, x, w, b, prepare=to_cl, **case.kwargs)
    gy = seeded_randn(ours.out.shape, dtype, seed=1)
    ref = conv_and_grads(reference_conv, x.double(), w.double(), b.double(), grad_output=gy.double(), **case.kwargs)
    assert_results_match(ours, ref, dtype)


@pytest.mark.parametrize("case", cases("depthwise_long_rows", "depthwise_multiplier2", "depthwise_strided_asymmetric"),
                         ids=_case_id)
def test_depthwise_planes_read_any_strides(case):
    """The NCHW depthwise planes with a channels_last grad_output and a
    channels_last weight: the strided fallbacks of the plane kernels."""
    x, w, b = random_conv_inputs(case.x_shape, case.w_shape)
    w = w.contiguous(memory_format=torch.channels_last)
    out = atrous_conv(x, w, b, **case.kwargs)
    gy = seeded_randn(out.shape, torch.float64, seed=1).contiguous(memory_format=torch.channels_last)
    ours = conv_and_grads(atrous_conv, x, w, b, grad_output=gy, **case.kwargs)
    ref = conv_and_grads(reference_conv, x, w, b, grad_output=gy, **case.kwargs)
    assert_results_match(ours, ref, torch.float64)


# ------------------------------------------------------------ CPU paths --

ISA_CASES = cases(
    "stride1_pad1", "stride_unequal_1x2", "padding_same_strided", "padding_asymmetric", "groups2", "depthwise",
    "depthwise_multiplier2", "many_pixel_tiles", "many_channels", "many_channels_groups2", "deep_gemm",
    "wide_gemm_column_blocks", "depthwise_vector_rows", "depthwise_long_rows",
)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize(
    "dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16], ids=["float64", "float32", "bfloat16", "float16"]
)
def test_every_cpu_isa_matches_torch(isa, dtype, restore_cpu_isa):
    """bfloat16 takes the AVX512_BF16 dot-product GEMM on avx512_bf16 and
    float rows on the others; 16-bit depthwise rows are widened in registers
    (AVX-512, F16C or plain C++). The reference sees the rounded inputs in float64."""
    use_cpu_isa(isa)
    for case in ISA_CASES:
        x, w, b = (t.to(dtype) for t in random_conv_inputs(case.x_shape, case.w_shape))
        ours = conv_and_grads(atrous_conv, x, w, b, **case.kwargs)
        gy = seeded_randn(ours.out.shape, dtype, seed=1)
        ref = conv_and_grads(reference_conv, x.double(), w.double(), b.double(), grad_output=gy.double(),
                             **case.kwargs)
        assert_results_match(ours, ref, dtype)


# grad_weight without grad_input reads NCHW x and grad_y where they lie: runs of
# plane pixels are transposed into pixel rows a chunk at a time (16 x 16 blocks
# on AVX-512, 8 x 8 on AVX2, values on the baseline). Channel counts off the
# block size, rows of 7-70 pixels (whole blocks and tails), taps whose valid
# rows are partial, strides that break runs, groups, and pixel segments.
PLANE_CASES = cases("stride1_pad1", "stride_unequal_1x2", "padding_asymmetric_strided", "dilation_beyond_input",
                    "groups2", "odd_sizes", "many_channels_groups2", "deep_gemm", "wide_gemm_column_blocks",
                    "grad_weight_segments_groups", "depthwise_multiplier2", "long_rows_many_channels",
                    "grad_weight_few_taps_wide_blocks")
PLANE_VIEWS = {  # name: (view, the shape to make so that the view has a given shape)
    "nchw": (lambda t: t, lambda s: s),
    # plane rows one element apart, the rows themselves not contiguous
    "row_slice": (lambda t: t[..., 1:], lambda s: (*s[:3], s[3] + 1)),
    "channel_step": (lambda t: t[:, ::2], lambda s: (s[0], 2 * s[1], *s[2:])),
    # no runs at all: one value per pixel and channel
    "pixel_step": (lambda t: t[..., ::2], lambda s: (*s[:3], 2 * s[3] - 1)),
}


def viewed_case_inputs(case, layout, dtype):
    """x, w, b of `case` with x seen through the layout's view, and a function
    giving a grad_output of a shape through the same view."""
    view, source_shape = layout
    x, w, b = random_conv_inputs(source_shape(case.x_shape), case.w_shape, dtype=dtype)
    x = view(x)
    assert x.shape == case.x_shape

    def grad_output(shape):
        return view(seeded_randn(source_shape(tuple(shape)), dtype, seed=1))

    return x, w, b, grad_output


def on_every_isa_float_dtype_and_plane_view(test):
    """Parametrizes `test` over every CPU instruction set, float64/float32 and
    PLANE_VIEWS (arguments isa, dtype, layout)."""
    test = pytest.mark.parametrize("layout", PLANE_VIEWS.values(), ids=PLANE_VIEWS.keys())(test)
    test = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])(test)
    return pytest.mark.parametrize("isa", CPU_ISAS)(test)


@on_every_isa_float_dtype_and_plane_view
def test_grad_weight_reads_nchw_planes_in_place(isa, dtype, layout, restore_cpu_isa):
    use_cpu_isa(isa)
    for case in PLANE_CASES:
        x, w, b, grad_output = viewed_case_inputs(case, layout, dtype)
        w, b = w.requires_grad_(), b.requires_grad_()
        out = atrous_conv(x, w, b, **case.kwargs)  # x needs no gradient: grad_input is not computed
        gy = grad_output(out.shape)
        gw, gb = torch.autograd.grad(out, (w, b), gy)
        rw, rb = (t.detach().double().requires_grad_() for t in (w, b))
        ref = reference_conv(x.double(), rw, rb, **case.kwargs)
        ref_gw, ref_gb = torch.autograd.grad(ref, (rw, rb), gy.double())
        assert_matches(out.detach(), ref.detach(), dtype, f"{case.id} output")
        assert_matches(gw, ref_gw, dtype, f"{case.id} grad_weight")
        assert_matches(gb, ref_gb, dtype, f"{case.id} grad_bias")


# On AVX-512 the forward and grad_input read float and double x and grad_y
# where they lie too when the rows they gather form runs of consecutive pixels
# (a forward of stride 1, any grad_input; the pixel_step view and strided
# forwards copy to NHWC, as every plane operand does on AVX2 and the baseline):
# gather_gemm with a_step = the plane size. Runs take run tiles of 12 rows x 2
# panels (their tails peeled one size at a time), lone rows pointer tiles; the
# views and cases above break runs in every way.
@on_every_isa_float_dtype_and_plane_view
def test_forward_and_grad_input_read_nchw_planes_in_place(isa, dtype, layout, restore_cpu_isa):
    use_cpu_isa(isa)
    for case in PLANE_CASES:
        check_viewed_forward_and_grad_input(case, layout, dtype)


def check_viewed_forward_and_grad_input(case, layout, dtype):
    """The output and grad_input of `case`, x and grad_output seen through the
    layout's view, against float64 torch."""
    x, w, b, grad_output = viewed_case_inputs(case, layout, dtype)
    x = x.requires_grad_()
    out = atrous_conv(x, w, b, **case.kwargs)
    gy = grad_output(out.shape)
    (gx,) = torch.autograd.grad(out, (x,), gy)
    rx = x.detach().double().requires_grad_()
    ref = reference_conv(rx, w.double(), b.double(), **case.kwargs)
    (ref_gx,) = torch.autograd.grad(ref, (rx,), gy.double())
    assert_matches(out.detach(), ref.detach(), dtype, f"{case.id} output")
    assert_matches(gx, ref_gx, dtype, f"{case.id} grad_input")


# 16-bit planes are read where they lie too, on AVX-512, where a copy would be
# larger than the output, the rows form runs and a unit spans at least 8
# column panels (128 float columns): the bfloat16 dot-product GEMM
# (avx512_bf16) packs each cache block of rows x pairs of channels (16 pixels
# of two planes zero-extended into pairs, transposed in registers), the float
# GEMM widens each block (16 pixels of a plane into one vector, transposed in
# registers: float16 on any AVX-512, bfloat16 on plain avx512). Elsewhere
# (pixel_step, strided forwards, the narrow PLANE_CASES, AVX2) an NHWC copy.
# The four cases below read planes, two in each direction: more than one depth
# block (over 512 channels), odd channel counts (the last pair completed with
# a zero k), groups, and images of more than one row block (120 rows). Each has
# 8 (image, group) units, so that on the 2 threads the test runs with, column
# blocks are not split further for parallelism (gemm_tiling).
SIXTEEN_BIT_PLANE_CASES = PLANE_CASES + [
    Case("deep_forward", (8, 529, 5, 6), (517, 529, 3, 3), dict(padding=2, dilation=2)),
    Case("deep_grad_input", (8, 515, 5, 6), (529, 515, 3, 3), dict(padding=2, dilation=2)),
    Case("wide_groups_forward", (4, 294, 13, 29), (260, 147, 3, 3), dict(padding=(1, 2), dilation=(1, 2), groups=2)),
    Case("wide_groups_grad_input", (4, 258, 11, 23), (266, 129, 3, 3), dict(padding=2, dilation=2, groups=2)),
]
SIXTEEN_BIT_PATHS = {  # id: (isa, dtype)
    "bfloat16_pairs": ("avx512_bf16", torch.bfloat16),
    "bfloat16_widened": ("avx512", torch.bfloat16),
    "float16_widened": ("avx512_bf16", torch.float16),
    "float16_copied_avx2": ("avx2", torch.float16),
}


@pytest.mark.parametrize("layout", PLANE_VIEWS.values(), ids=PLANE_VIEWS.keys())
@pytest.mark.parametrize("path", SIXTEEN_BIT_PATHS.values(), ids=SIXTEEN_BIT_PATHS.keys())
def test_16bit_nchw_planes_are_packed_or_widened_in_place(path, layout, restore_cpu_isa, two_threads):
    isa, dtype = path
    use_cpu_isa(isa)
    for case in SIXTEEN_BIT_PLANE_CASES:
        check_viewed_forward_and_grad_input(case, layout, dtype)


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


@pytest.mark.skipif(not _cpu_flags(), reason="no /proc/cpuinfo flags to compare with")
def test_cpu_isas_follow_the_cpu_flags():
    """avx512_bf16 is offered exactly when the kernel reports AVX-512 with bf16."""
    flags = set(_cpu_flags())
    available = atrous_cuda.build_info()["cpu_isas_available"].split(",")
    avx512 = {"avx512f", "avx512vl", "avx512dq", "avx512bw"} <= flags
    assert ("avx512" in available) == avx512
    assert ("avx512_bf16" in available) == (avx512 and "avx512_bf16" in flags)


def test_best_cpu_isa_is_the_default():
    info = atrous_cuda.build_info()
    assert info["cpu_isa"] == info["cpu_isas_available"].split(",")[0]
    assert set(info["cpu_isas_available"].split(",")) <= set(CPU_ISAS)
    assert "baseline" in info["cpu_isas_available"].split(",")


def test_build_info_reports_the_build():
    info = atrous_cuda.build_info()
    assert set(info) >= {"with_cuda", "cuda_archs", "cpu_isa", "cpu_isas_available", "cpu_threads"}
    assert isinstance(info["with_cuda"], bool)
    assert info["cpu_isa"] in info["cpu_isas_available"].split(",")


# ------------------------------------------------------------------ 1-D --

CASES_1D = [
    Case("conv1d_pad1", (2, 4, 17), (6, 4, 3), dict(padding=1)),
    Case("conv1d_stride2_dilation3", (2, 4, 20), (5, 4, 3), dict(stride=2, padding=3, dilation=3)),
    Case("conv1d_valid", (2, 4, 20), (5, 4, 4), dict(padding="valid", dilation=2)),
    Case("conv1d_same", (2, 4, 19), (5, 4, 3), dict(padding="same", dilation=4)),
    Case("conv1d_same_even_kernel", (2, 4, 19), (5, 4, 4), dict(padding="same", dilation=2)),
    Case("conv1d_same_strided", (2, 4, 19), (5, 4, 3), dict(padding="same", stride=3, dilation=2)),
    Case("conv1d_asymmetric", (2, 4, 15), (5, 4, 3), dict(padding=(4, 1), dilation=2)),
    Case("conv1d_causal", (2, 4, 16), (5, 4, 2), dict(padding="causal", dilation=4)),
    Case("conv1d_causal_strided", (2, 4, 16), (5, 4, 3), dict(padding="causal", dilation=2, stride=2)),
    Case("conv1d_groups2", (2, 4, 16), (6, 2, 3), dict(padding=2, dilation=2, groups=2)),
    Case("conv1d_depthwise", (2, 4, 16), (4, 1, 3), dict(padding="causal", dilation=3, groups=4)),
    Case("conv1d_depthwise_multiplier2", (2, 4, 16), (8, 1, 3), dict(padding=5, dilation=5, groups=4)),
    Case("conv1d_dilation_beyond_input", (2, 3, 6), (4, 3, 3), dict(padding=20, dilation=20)),
    Case("conv1d_empty_batch", (0, 3, 6), (4, 3, 3), dict(padding=1)),
]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("case", CASES_1D, ids=_case_id)
def test_conv1d_matches_torch_float64(case, bias):
    x, w, b = random_conv_inputs(case.x_shape, case.w_shape, bias)
    check_against_torch(x, w, b, **case.kwargs)


@pytest.mark.parametrize("case", CASES_1D[::4], ids=_case_id)
def test_conv1d_unbatched_matches_torch(case):
    x, w, b = random_conv_inputs(case.x_shape[1:], case.w_shape)
    ours, _ = check_against_torch(x, w, b, **case.kwargs)
    assert ours.out.dim() == 2


def test_conv1d_noncontiguous_input_matches_torch():
    x, w, b = random_conv_inputs((2, 13, 5), (4, 5, 3))
    check_against_torch(x, w, b, prepare=lambda t: t.transpose(1, 2), padding="causal", dilation=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["float32", "float16", "bfloat16"])
def test_conv1d_reduced_precision_matches_reference(dtype):
    x, w, b = random_conv_inputs((2, 4, 32), (6, 4, 3), dtype=dtype)
    ours = conv_and_grads(atrous_conv, x, w, b, padding="causal", dilation=4)
    gy = seeded_randn(ours.out.shape, dtype, seed=1)
    ref_dtype = torch.float64 if dtype == torch.float32 else torch.float32
    ref = conv_and_grads(reference_conv, x.to(ref_dtype), w.to(ref_dtype), b.to(ref_dtype),
                         grad_output=gy.to(ref_dtype), padding="causal", dilation=4)
    assert_results_match(ours, ref, dtype)


def test_conv1d_causal_output_never_sees_the_future():
    x, w, b = random_conv_inputs((1, 2, 24), (3, 2, 3))
    out = atrous_cuda.atrous_conv1d(x, w, b, padding="causal", dilation=4)
    assert out.shape == x.shape[:1] + (3, 24)
    x2 = x.clone()
    x2[..., 15:] += 1.0  # change the future of t = 14
    out2 = atrous_cuda.atrous_conv1d(x2, w, b, padding="causal", dilation=4)
    assert torch.equal(out[..., :15], out2[..., :15])
    assert not torch.equal(out[..., 15:], out2[..., 15:])


def test_conv1d_wavenet_dilation_stack():
    """Dilations 1, 2, 4, ..., 512 with causal padding on a short sequence."""
    x, _, _ = random_conv_inputs((2, 4, 40), (4, 4, 2))
    for i, dilation in enumerate(2**k for k in range(10)):
        _, w, b = random_conv_inputs((2, 4, 40), (4, 4, 2), seed=i)
        ours, ref = check_against_torch(x, w, b, padding="causal", dilation=dilation)
        assert ours.out.shape == x.shape
        x = torch.tanh(ref.out)
