"""atrous_conv_transpose2d / AtrousConvTranspose2d: a transposed conv run as the
conv's grad_input kernel, against F.conv_transpose2d / nn.ConvTranspose2d."""
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
