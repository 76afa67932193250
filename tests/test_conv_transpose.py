"""atrous_conv_transpose2d / AtrousConvTranspose2d: a transposed conv run as the
conv's grad_input kernel, against F.conv_transpose2d / nn.ConvTranspose2d."""
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_matches, seeded_randn
from torch import nn

from atrous_cuda import AtrousConvTranspose2d, atrous_conv_transpose2d

# (stride, padding, output_padding, dilation, groups, kernel): output_padding
# below stride, below dilation only, above padding (rows no tap reaches),
# grouped, depthwise-like and asymmetric per-axis settings.
CASES = [
    (1, 0, 0, 1, 1, (3, 3)),
    (2, 1, 1, 1, 1, (4, 4)),  # LinkNet's decoder layer
    (2, 1, 0, 2, 2, (3, 2)),
    (3, 2, 2, 1, 1, (3, 3)),
    (2, 0, 1, 3, 1, (3, 3)),
    (1, 0, 2, 3, 1, (3, 3)),  # output_padding < dilation only, and > padding
    (2, 0, 2, 3, 2, (2, 3)),
    ((2, 1), (1, 0), (1, 0), (1, 2), 4, (3, 1)),
    (2, 1, 1, 1, 12, (3, 3)),  # depthwise: one input and one output channel per group
]


@pytest.mark.parametrize("stride,padding,output_padding,dilation,groups,kernel", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d_matches_torch_forward_and_gradients(stride, padding, output_padding, dilation, groups,
                                                               kernel, bias):
    x = seeded_randn((2, 12, 5, 6), seed=1).requires_grad_()
    w = seeded_randn((12, 12 // groups, *kernel), seed=2).requires_grad_()
    b = seeded_randn((12,), seed=3).requires_grad_() if bias else None
    args = (stride, padding, output_padding, groups, dilation)
    ours = atrous_conv_transpose2d(x, w, b, *args)
    ref = F.conv_transpose2d(x, w, b, *args)
    assert_matches(ours, ref.detach(), what="output")
    gy = seeded_randn(ref.shape, seed=4)
    inputs = (x, w) + ((b,) if bias else ())
    ours_grads = torch.autograd.grad(ours, inputs, gy)
    ref_grads = torch.autograd.grad(ref, inputs, gy)
    for name, a, r in zip(("grad_input", "grad_weight", "grad_bias"), ours_grads, ref_grads):
        assert_matches(a, r, what=name)


def test_conv_transpose2d_unbatched_input():
    x, w = seeded_randn((4, 3, 3), seed=1), seeded_randn((4, 2, 3, 3), seed=2)
    assert_matches(atrous_conv_transpose2d(x, w, stride=2, padding=1, output_padding=1),
                   F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1), what="output")


def test_conv_transpose2d_gradcheck_and_gradgradcheck():
    x = seeded_randn((1, 4, 3, 4), seed=1).requires_grad_()
    w = seeded_randn((4, 2, 3, 3), seed=2).requires_grad_()
    b = seeded_randn((4,), seed=3).requires_grad_()

    def f(x, w, b):
        return atrous_conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2, dilation=2)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def test_conv_transpose2d_shape_only_input_is_not_materialized():
    """The conv's 'input' is an expanded scalar: storage of one element, whatever the output size."""
    captured = {}
    real = torch.ops.atrous.conv_backward.default

    def spy(grad_output, input, *rest):
        captured["input"] = input
        return real(grad_output, input, *rest)

    import atrous_cuda.functional as functional

    saved = functional._ops.conv_backward
    functional._ops.conv_backward = spy
    try:
        atrous_conv_transpose2d(seeded_randn((2, 8, 16, 16)), seeded_randn((8, 8, 4, 4)), stride=2, padding=1)
    finally:
        functional._ops.conv_backward = saved
    shape_only = captured["input"]
    assert shape_only.shape == (2, 8, 32, 32)
    assert shape_only.untyped_storage().nbytes() == shape_only.element_size()


@pytest.mark.parametrize("output_size", [None, (10, 10), (11, 11)])
def test_module_is_a_drop_in_conv_transpose2d(output_size):
    torch.manual_seed(0)
    ours = AtrousConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2).double()
    torch.manual_seed(0)
    theirs = nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2).double()
    assert isinstance(ours, nn.ConvTranspose2d)
    theirs.load_state_dict(ours.state_dict())
    x = seeded_randn((2, 4, 5, 5), seed=5).requires_grad_()
    out, ref = ours(x, output_size), theirs(x, output_size)
    assert_matches(out, ref.detach(), what="output")
    out.sum().backward()
    ref.sum().backward()
    assert_matches(ours.weight.grad, theirs.weight.grad, what="grad of weight")


def test_conv_transpose2d_errors_name_the_argument():
    x, w = seeded_randn((1, 4, 3, 3)), seeded_randn((4, 2, 3, 3))
    with pytest.raises(ValueError, match="output_padding smaller than stride or dilation"):
        atrous_conv_transpose2d(x, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="expects input with 4 channels"):
        atrous_conv_transpose2d(seeded_randn((1, 3, 3, 3)), w)
    with pytest.raises(ValueError, match="padding"):
        atrous_conv_transpose2d(x, w, padding="same")
    with pytest.raises(ValueError, match="non-positive output size"):
        atrous_conv_transpose2d(seeded_randn((1, 4, 1, 1)), w, padding=2)
    with pytest.raises(ValueError, match="groups"):
        atrous_conv_transpose2d(x, w, groups=3)


# --------------------------------------------------------------- autocast --
# F.conv_transpose2d is on autocast's lower_precision_fp list: every
# floating-point tensor on the autocast device that is not float64 runs in
# torch.get_autocast_dtype(device), and the output has that dtype.


def _autocast_case(device="cpu"):
    x = seeded_randn((2, 6, 5, 4), dtype=torch.float32, seed=1, device=device).requires_grad_()
    w = seeded_randn((6, 4, 4, 3), dtype=torch.float32, seed=2, device=device).requires_grad_()
    b = seeded_randn((8,), dtype=torch.float32, seed=3, device=device).requires_grad_()
    return x, w, b


def _assert_autocast_matches_torch(device, dtype):
    x, w, b = _autocast_case(device)
    args = dict(stride=2, padding=1, output_padding=1, groups=2, dilation=1)
    with torch.autocast(device, dtype=dtype):
        ours = atrous_conv_transpose2d(x, w, b, **args)
        ref = F.conv_transpose2d(x, w, b, **args)
    assert ref.dtype == dtype and ours.dtype == dtype
    # Both round the same inputs to `dtype` and accumulate in float32, so they
    # differ by the output's final rounding (assert_matches' 16-bit tolerance).
    # The reference is float64 from those rounded inputs.
    exact = F.conv_transpose2d(x.detach().to(dtype).double(), w.detach().to(dtype).double(),
                               b.detach().to(dtype).double(), **args)
    assert_matches(ours, exact, what="output under autocast")
    gy = seeded_randn(ref.shape, dtype=dtype, seed=4, device=device)
    ours_grads = torch.autograd.grad(ours, (x, w, b), gy)
    ref_grads = torch.autograd.grad(ref, (x, w, b), gy)
    for name, a, r in zip(("grad_input", "grad_weight", "grad_bias"), ours_grads, ref_grads):
        # float32 leaves get float32 grads, as with torch; the grads are
        # 16-bit results cast up, each within one output rounding of torch's.
        assert a.dtype == r.dtype == torch.float32, f"{name}: {a.dtype}, torch gives {r.dtype}"
        assert_matches(a.to(dtype), r.double(), what=name)


def test_conv_transpose2d_cpu_autocast_runs_in_the_autocast_dtype_like_torch():
    _assert_autocast_matches_torch("cpu", torch.bfloat16)


@pytest.mark.cuda
def test_conv_transpose2d_cuda_autocast_runs_in_the_autocast_dtype_like_torch(cuda):
    _assert_autocast_matches_torch("cuda", torch.float16)


def test_conv_transpose2d_autocast_mixed_and_float64_arguments_follow_torch():
    x, w, b = (t.detach() for t in _autocast_case())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # A bfloat16 input with float32 weight and bias: all cast, no dtype error.
        mixed = atrous_conv_transpose2d(x.bfloat16(), w, b, stride=2, groups=2)
        assert mixed.dtype == F.conv_transpose2d(x.bfloat16(), w, b, stride=2, groups=2).dtype == torch.bfloat16
        # float64 is left alone.
        wide = atrous_conv_transpose2d(x.double(), w.double(), b.double(), stride=2, groups=2)
        assert_matches(wide, F.conv_transpose2d(x.double(), w.double(), b.double(), stride=2, groups=2), what="float64")
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert atrous_conv_transpose2d(x, w, b, stride=2, groups=2).dtype == torch.float32


def _small_models():
    from atrous_cuda.models import AtrousFCN, LinkNet

    return [
        pytest.param(lambda: AtrousFCN(3, in_channels=3, widths=(4, 6, 8), rates=(2, 4)), id="AtrousFCN"),
        pytest.param(lambda: LinkNet(3, layers=(1, 1, 1, 1), width=8, output_stride=16), id="LinkNet"),
    ]


@pytest.mark.parametrize("make_model", _small_models())
def test_models_with_transposed_convs_train_under_cpu_autocast_like_torch_convs(make_model):
    import copy

    torch.manual_seed(0)
    model = make_model().eval()
    reference = copy.deepcopy(model)  # the same network on torch's convs
    for m in reference.modules():
        if type(m) is AtrousConvTranspose2d:
            m.__class__ = nn.ConvTranspose2d
        elif type(m).__name__ == "AtrousConv2d":
            m.__class__ = nn.Conv2d
    x = seeded_randn((2, 3, 33, 29), dtype=torch.float32, seed=7)
    with torch.no_grad():
        full = reference(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = model(x), reference(x)
    assert ours.dtype == theirs.dtype == torch.bfloat16
    assert torch.isfinite(ours).all()
    # bfloat16 rounds every layer's output by up to u = 2^-8, and those errors
    # add through the layers (measured: 0.08% and 0.56% of max|output| for
    # both networks). Ours and torch's differ only in float32 summation order,
    # so ours must be as close to the float32 output as torch's own bfloat16
    # network, within two more roundings.
    scale = full.abs().max()
    ours_err = (ours.float() - full).abs().max() / scale
    theirs_err = (theirs.float() - full).abs().max() / scale
    assert ours_err <= theirs_err + 2 * 2**-8, f"ours {ours_err:.4f}, torch's {theirs_err:.4f} (relative)"
    ours.float().square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, f"{name}: {p.grad}"
        assert torch.isfinite(p.grad).all(), f"no finite gradient for {name}"


# ------------------------------------------------------------ TorchScript --
# torch 2.14 deprecates torch.jit.script itself; that warning is torch's, not ours.
_quiet_jit = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


@_quiet_jit
@pytest.mark.parametrize("output_size", [None, [10, 10], [11, 11]])
@pytest.mark.parametrize("batched", [True, False])
def test_module_scripts_and_runs_the_atrous_op_bitwise_like_eager(output_size, batched):
    torch.manual_seed(0)
    module = AtrousConvTranspose2d(4, 6, 4, stride=2, padding=1, groups=2, dilation=1).double()
    scripted = torch.jit.script(module)
    assert "atrous::conv_backward" in str(scripted.inlined_graph)
    x = seeded_randn((2, 4, 5, 5) if batched else (4, 5, 5), seed=5)
    eager = module(x, output_size)
    out = scripted(x, output_size)
    assert torch.equal(out, eager), "scripted output differs from eager"
    assert_matches(out, nn.functional.conv_transpose2d(
        x, module.weight, module.bias, 2, 1, 0 if output_size != [11, 11] else 1, 2).detach(), what="output")


@_quiet_jit
def test_scripted_module_keeps_output_padding_above_padding_and_channels_last():
    torch.manual_seed(0)
    # output_padding 2 > padding 0: rows no tap reaches, appended as zeros.
    module = AtrousConvTranspose2d(4, 6, 3, stride=3, padding=0, output_padding=2).double()
    scripted = torch.jit.script(module)
    x = seeded_randn((2, 4, 5, 6), seed=5).to(memory_format=torch.channels_last)
    out = scripted(x)
    assert torch.equal(out, module(x))
    assert out.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------- bias, dtype, device --


@pytest.mark.parametrize("bias_shape", [(1,), (3, 1), (4,), ()])
def test_conv_transpose2d_rejects_a_bias_not_of_out_channels(bias_shape):
    x, w = seeded_randn((1, 4, 3, 3)), seeded_randn((4, 3, 3, 3))  # out_channels 3
    with pytest.raises(ValueError, match=r"expected bias of size \(3,\) .* got bias of size " + re.escape(
            str(tuple(bias_shape)))):
        atrous_conv_transpose2d(x, w, seeded_randn(bias_shape))
    with pytest.raises(RuntimeError):  # torch refuses them too
        F.conv_transpose2d(x, w, seeded_randn(bias_shape))


def test_conv_transpose2d_dtype_and_device_errors_name_this_function_and_the_argument():
    x, w, b = seeded_randn((1, 4, 3, 3)), seeded_randn((4, 3, 3, 3)), seeded_randn((3,))
    fn = "atrous_conv_transpose2d: "
    with pytest.raises(RuntimeError, match=fn + "expected bias of the input's dtype torch.float32, got torch.float64"):
        atrous_conv_transpose2d(x.float(), w.float(), b)  # no silent promotion to float64
    with pytest.raises(RuntimeError,
                       match=fn + "expected weight of the input's dtype torch.float64, got torch.float32"):
        atrous_conv_transpose2d(x, w.float())
    with pytest.raises(RuntimeError, match=fn + "expected weight on the input's device cpu, got meta"):
        atrous_conv_transpose2d(x, w.to("meta"))
    with pytest.raises(RuntimeError, match=fn + "expected bias on the input's device cpu, got meta"):
        atrous_conv_transpose2d(x, w, b.to("meta"))


# ---------------------------------------------------------- channels_last --


@pytest.mark.parametrize("layout", ["input", "weight"])
@pytest.mark.parametrize("kernel,stride,padding,output_padding,groups", [
    (4, 2, 1, 0, 1),
    (3, 3, 0, 2, 2),  # output_padding > padding: zero rows appended after the op
    (1, 2, 0, 1, 1),  # 1x1 weight: its channels_last strides are contiguous ones too
    (3, 2, 1, 1, 6),  # one output channel per group: likewise
])
def test_conv_transpose2d_keeps_channels_last_like_torch(layout, kernel, stride, padding, output_padding, groups):
    x, w = seeded_randn((2, 6, 5, 4), seed=1), seeded_randn((6, 6 // groups, kernel, kernel), seed=2)
    b = seeded_randn((6 // groups * groups,), seed=3)
    if layout == "input":
        x = x.to(memory_format=torch.channels_last)
    else:
        w = w.to(memory_format=torch.channels_last)
    x, w, b = x.requires_grad_(), w.requires_grad_(), b.requires_grad_()
    args = (stride, padding, output_padding, groups)
    ours, ref = atrous_conv_transpose2d(x, w, b, *args), F.conv_transpose2d(x, w, b, *args)
    assert_matches(ours, ref.detach(), what="output")
    for fmt in (torch.contiguous_format, torch.channels_last):
        assert ours.is_contiguous(memory_format=fmt) == ref.is_contiguous(memory_format=fmt), fmt
    gy = seeded_randn(ref.shape, seed=4)
    for name, a, r in zip(("grad_input", "grad_weight", "grad_bias"), torch.autograd.grad(ours, (x, w, b), gy),
                          torch.autograd.grad(ref, (x, w, b), gy)):
        assert_matches(a, r, what=name)
    module = AtrousConvTranspose2d(6, 6, kernel, stride, padding, output_padding, groups).double()
    assert module(x).is_contiguous(memory_format=torch.channels_last) == (layout == "input")


@_quiet_jit
def test_scripted_module_names_dtype_and_bias_errors():
    torch.manual_seed(0)
    module = AtrousConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
    scripted = torch.jit.script(module)
    x = seeded_randn((2, 4, 5, 6), dtype=torch.float32, seed=5)
    # TorchScript re-raises a scripted `raise` as torch.jit.Error with the message.
    with pytest.raises(torch.jit.Error, match="expected weight of the input's dtype torch.float64, got torch.float32"):
        scripted(x.double())
    module.bias = nn.Parameter(torch.zeros(5))
    with pytest.raises(torch.jit.Error, match=r"expected bias of size \(6,\), got bias of size \[5\]"):
        torch.jit.script(module)(x)
