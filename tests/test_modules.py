"""AtrousConv1d/AtrousConv2d as drop-in nn.Conv modules, and convert_model/revert_model."""
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_matches, reference_conv, seeded_randn
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from atrous_cuda import AtrousConv1d, AtrousConv2d, convert_model, revert_model

PADDING_MODES = ["zeros", "reflect", "replicate", "circular"]


def _pair_of_modules(atrous_cls, torch_cls, *args, **kwargs):
    """The same layer twice, initialized from the same seed."""
    torch.manual_seed(0)
    ours = atrous_cls(*args, **kwargs).double()
    torch.manual_seed(0)
    theirs = torch_cls(*args, **kwargs).double()
    return ours, theirs


def _assert_module_outputs_and_grads_match(ours, theirs, x):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_a, out_b = ours(xa), theirs(xb)
    assert_matches(out_a, out_b.detach(), what="output")
    gy = seeded_randn(out_b.shape, seed=4)
    out_a.backward(gy)
    out_b.backward(gy)
    assert_matches(xa.grad, xb.grad, what="grad_input")
    for (name, pa), pb in zip(ours.named_parameters(), theirs.parameters()):
        assert_matches(pa.grad, pb.grad, what=f"grad of {name}")


# ---------------------------------------------------------------- modules --


def test_atrous_modules_are_nn_conv_subclasses():
    assert isinstance(AtrousConv2d(2, 3, 3), nn.Conv2d)
    assert isinstance(AtrousConv1d(2, 3, 3), nn.Conv1d)
    assert issubclass(AtrousConv2d, nn.Conv2d) and issubclass(AtrousConv1d, nn.Conv1d)
    assert "backend=atrous_cuda" in repr(AtrousConv2d(2, 3, 3))


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((4, 6, 3), {}),
        ((4, 6, (3, 2), (2, 1), (2, 1), (2, 1), 2, False, "reflect"), {}),
        ((4, 8, 3), dict(stride=1, padding="same", dilation=3, groups=4, bias=True, padding_mode="circular")),
        ((4, 6, 5), dict(padding="valid", dtype=torch.float64)),
    ],
    ids=["defaults", "positional", "keywords_same", "valid_dtype"],
)
def test_constructor_matches_nn_conv2d(args, kwargs):
    torch.manual_seed(0)
    ours = AtrousConv2d(*args, **kwargs)
    torch.manual_seed(0)
    theirs = nn.Conv2d(*args, **kwargs)
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode", "transposed", "output_padding"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours._reversed_padding_repeated_twice == theirs._reversed_padding_repeated_twice
    # Same initialization from the same seed.
    for (name_a, pa), (name_b, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name_a == name_b and pa.dtype == pb.dtype and torch.equal(pa, pb)


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_keys_match_nn_conv2d(bias):
    assert AtrousConv2d(2, 3, 3, bias=bias).state_dict().keys() == nn.Conv2d(2, 3, 3, bias=bias).state_dict().keys()
    assert AtrousConv1d(2, 3, 3, bias=bias).state_dict().keys() == nn.Conv1d(2, 3, 3, bias=bias).state_dict().keys()


def test_load_state_dict_interop_with_nn_conv2d():
    theirs = nn.Conv2d(3, 4, 3, padding=2, dilation=2).double()
    ours = AtrousConv2d(3, 4, 3, padding=2, dilation=2).double()
    ours.load_state_dict(theirs.state_dict())
    x = seeded_randn((2, 3, 8, 8))
    assert_matches(ours(x), theirs(x))
    back = nn.Conv2d(3, 4, 3, padding=2, dilation=2).double()
    back.load_state_dict(ours.state_dict())
    assert torch.equal(back(x), theirs(x))


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("padding", [2, (3, 1), "same"], ids=["int", "tuple", "same"])
def test_every_padding_mode_matches_nn_conv2d(padding_mode, padding):
    ours, theirs = _pair_of_modules(AtrousConv2d, nn.Conv2d, 3, 4, 3, padding=padding, dilation=(2, 1),
                                    padding_mode=padding_mode)
    _assert_module_outputs_and_grads_match(ours, theirs, seeded_randn((2, 3, 8, 7)))


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_every_padding_mode_matches_nn_conv1d(padding_mode):
    ours, theirs = _pair_of_modules(AtrousConv1d, nn.Conv1d, 3, 4, 3, padding=4, dilation=4, padding_mode=padding_mode)
    _assert_module_outputs_and_grads_match(ours, theirs, seeded_randn((2, 3, 11)))


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_padding_mode_unbatched_input(padding_mode):
    ours, theirs = _pair_of_modules(AtrousConv2d, nn.Conv2d, 3, 4, 3, padding=2, dilation=2, padding_mode=padding_mode)
    x = seeded_randn((3, 6, 7))
    assert_matches(ours(x), theirs(x))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_attribute_changes_take_effect_at_forward(padding_mode):
    """DeepLab-style surgery: stride, padding and dilation are read at forward time."""
    torch.manual_seed(0)
    conv = AtrousConv2d(3, 4, 3, stride=2, padding=1, padding_mode=padding_mode).double()
    x = seeded_randn((1, 3, 9, 9))
    conv.stride, conv.padding, conv.dilation = (1, 1), (2, 2), (2, 2)
    expected = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="constant" if padding_mode == "zeros" else padding_mode),
                        conv.weight, conv.bias, 1, 0, 2)
    assert_matches(conv(x), expected)
    conv.dilation = (3, 1)
    conv.padding = (3, 1)
    expected = F.conv2d(F.pad(x, (1, 1, 3, 3), mode="constant" if padding_mode == "zeros" else padding_mode),
                        conv.weight, conv.bias, 1, 0, (3, 1))
    assert_matches(conv(x), expected)


def test_conv1d_causal_padding_module():
    torch.manual_seed(0)
    conv = AtrousConv1d(3, 5, 2, padding="causal", dilation=8).double()
    assert conv.padding == "causal"
    x = seeded_randn((2, 3, 20))
    out = conv(x)
    assert out.shape == (2, 5, 20)
    assert_matches(out, F.conv1d(F.pad(x, (8, 0)), conv.weight, conv.bias, dilation=8))


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate"])
def test_same_padding_with_stride_module(padding_mode):
    with pytest.raises(ValueError):
        nn.Conv2d(3, 4, 3, stride=2, padding="same")  # what torch refuses, we accept
    torch.manual_seed(0)
    conv = AtrousConv2d(3, 4, 3, stride=2, padding="same", dilation=2, padding_mode=padding_mode).double()
    assert conv.padding == "same" and conv.stride == (2, 2)
    x = seeded_randn((1, 3, 9, 10))
    out = conv(x)
    assert out.shape == (1, 4, 5, 5)
    # TF rule: H total = (5-1)*2 + 2*2 + 1 - 9 = 4 -> (2, 2); W total = 3 -> (1, 2).
    mode = "constant" if padding_mode == "zeros" else padding_mode
    assert_matches(out, F.conv2d(F.pad(x, (1, 2, 2, 2), mode=mode), conv.weight, conv.bias, 2, 0, 2))


def test_asymmetric_padding_module():
    torch.manual_seed(0)
    conv = AtrousConv2d(2, 3, 3, padding=(0, 2, 1, 3), dilation=2).double()
    x = seeded_randn((1, 2, 7, 7))
    assert_matches(conv(x), reference_conv(x, conv.weight, conv.bias, padding=(0, 2, 1, 3), dilation=2))


@pytest.mark.parametrize("cls, padding", [(AtrousConv2d, "foo"), (AtrousConv2d, "causal"), (AtrousConv1d, "full")])
def test_unknown_padding_string_raises_at_construction(cls, padding):
    with pytest.raises(ValueError, match="padding"):
        cls(2, 3, 3, padding=padding)


def test_module_dtype_conversion():
    torch.manual_seed(0)
    conv = AtrousConv2d(3, 4, 3, padding=2, dilation=2)
    x = seeded_randn((1, 3, 6, 6), torch.float32)
    out32 = conv(x)
    assert out32.dtype == torch.float32
    conv.half()
    out16 = conv(x.half())
    assert out16.dtype == torch.float16
    assert_matches(out16, F.conv2d(x.half().float(), conv.weight.float(), conv.bias.float(), padding=2, dilation=2),
                   torch.float16)


# ----------------------------------------------------------- convert_model --


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.aspp = nn.ModuleList([nn.Conv2d(8, 4, 3, padding=d, dilation=d) for d in (1, 2, 6)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(12, 2, 1))
        self.temporal = nn.Conv1d(2, 2, 3, padding=4, dilation=4)

    def forward(self, x):
        x = self.bn(self.stem(x))
        x = self.head(torch.cat([c(x) for c in self.aspp], 1))
        n, c, h, w = x.shape
        return self.temporal(x.reshape(n, c, h * w))


def _net():
    torch.manual_seed(0)
    return _Net().double().eval()


def _conv_types(model):
    return {name: type(m) for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))}


def test_convert_swaps_only_dilated_convs_by_default():
    converted = convert_model(_net())
    types = _conv_types(converted)
    assert types == {
        "stem": nn.Conv2d,
        "aspp.0": nn.Conv2d,
        "aspp.1": AtrousConv2d,
        "aspp.2": AtrousConv2d,
        "head.1": nn.Conv2d,
        "temporal": AtrousConv1d,
    }


def test_convert_all_swaps_every_conv():
    types = _conv_types(convert_model(_net(), convert_all=True))
    assert all(t in (AtrousConv1d, AtrousConv2d) for t in types.values()), types
    assert types["temporal"] is AtrousConv1d and types["stem"] is AtrousConv2d


@pytest.mark.parametrize("convert_all", [False, True])
def test_converted_model_matches_original(convert_all):
    model = _net()
    converted = convert_model(model, convert_all=convert_all)
    x = seeded_randn((2, 3, 7, 6))
    assert_matches(converted(x), model(x))
    assert converted.state_dict().keys() == model.state_dict().keys()


def test_convert_keeps_the_same_parameter_and_buffer_objects():
    model = _net()
    converted = convert_model(model, convert_all=True)
    for (name, p), (name2, q) in zip(model.named_parameters(), converted.named_parameters()):
        assert name == name2 and p is q, name
    for (name, p), (name2, q) in zip(model.named_buffers(), converted.named_buffers()):
        assert name == name2 and p is q, name
    # A training step through the converted model updates the original's parameters.
    opt = torch.optim.SGD(converted.parameters(), lr=0.1)
    before = model.aspp[2].weight.detach().clone()
    converted(seeded_randn((1, 3, 5, 5))).sum().backward()
    opt.step()
    assert not torch.equal(model.aspp[2].weight, before)


def test_convert_not_inplace_leaves_original_module_types():
    model = _net()
    before = _conv_types(model)
    converted = convert_model(model, inplace=False, convert_all=True)
    assert _conv_types(model) == before
    assert converted is not model and converted.aspp is not model.aspp


def test_convert_not_inplace_copy_can_change_without_touching_the_original():
    model = _net()
    converted = convert_model(model, inplace=False, convert_all=True)
    original_weight = model.aspp[2].weight
    converted.aspp[2].weight = nn.Parameter(torch.zeros_like(original_weight))
    calls = []
    converted.aspp[2].register_forward_hook(lambda m, inp, out: calls.append("converted"))
    assert model.aspp[2].weight is original_weight
    model(seeded_randn((1, 3, 5, 5)))
    assert calls == []


def test_convert_inplace_modifies_the_model():
    model = _net()
    returned = convert_model(model, inplace=True)
    assert returned is model
    assert type(model.aspp[2]) is AtrousConv2d and type(model.stem) is nn.Conv2d


def test_convert_root_module_that_is_a_conv():
    conv = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
    converted = convert_model(conv)
    assert type(converted) is AtrousConv2d and converted.weight is conv.weight
    assert type(conv) is nn.Conv2d


def test_convert_keeps_forward_and_backward_hooks():
    model = _net()
    calls = []
    model.aspp[2].register_forward_pre_hook(lambda m, inp: calls.append("pre"))
    model.aspp[2].register_forward_hook(lambda m, inp, out: calls.append(("fwd", type(m).__name__)))
    model.temporal.register_full_backward_hook(lambda m, gin, gout: calls.append("bwd"))
    converted = convert_model(model)
    assert type(converted.aspp[2]) is AtrousConv2d
    x = seeded_randn((1, 3, 5, 5)).requires_grad_()
    converted(x).sum().backward()
    assert calls == ["pre", ("fwd", "AtrousConv2d"), "bwd"]


@pytest.mark.parametrize("inplace", [False, True])
def test_convert_keeps_weight_norm_parametrizations(inplace):
    torch.manual_seed(0)
    model = nn.Sequential(
        weight_norm(nn.Conv1d(2, 4, 3, padding=1)),  # not dilated: stays nn.Conv1d
        nn.Tanh(),
        weight_norm(nn.Conv1d(4, 4, 3, padding=2, dilation=2)),
        nn.Tanh(),
        weight_norm(nn.Conv1d(4, 2, 2, padding=8, dilation=8)),
    ).double()
    x = seeded_randn((2, 2, 12))
    expected = model(x).detach()
    originals = [(m.parametrizations.weight.original0, m.parametrizations.weight.original1) for m in model[::2]]
    converted = convert_model(model, inplace=inplace)
    for layer, (g, v) in zip(converted[::2], originals):
        assert parametrize.is_parametrized(layer, "weight")
        assert layer.parametrizations.weight.original0 is g and layer.parametrizations.weight.original1 is v
    assert isinstance(converted[2], AtrousConv1d) and isinstance(converted[4], AtrousConv1d)
    assert not isinstance(converted[0], AtrousConv1d)
    out = converted(x)
    assert_matches(out, expected)
    out.sum().backward()
    assert originals[1][0].grad is not None and originals[1][1].grad is not None
    # Reverting gives plain (parametrized) nn.Conv1d back with the same outputs.
    reverted = revert_model(converted)
    assert not any(isinstance(m, AtrousConv1d) for m in reverted.modules())
    assert parametrize.is_parametrized(reverted[2], "weight")
    assert_matches(reverted(x), expected)


def test_convert_keeps_dtype_device_and_channels_last():
    model = _net().to(memory_format=torch.channels_last)
    converted = convert_model(model, convert_all=True)
    w = converted.aspp[2].weight
    assert w.dtype == torch.float64 and w.device.type == "cpu"
    assert w.is_contiguous(memory_format=torch.channels_last)
    x = seeded_randn((2, 3, 7, 6)).contiguous(memory_format=torch.channels_last)
    features = seeded_randn((2, 8, 7, 6)).contiguous(memory_format=torch.channels_last)
    assert converted.aspp[2](features).is_contiguous(memory_format=torch.channels_last)
    assert_matches(converted(x), model(x))


def test_convert_model_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        convert_model(lambda x: x)
    with pytest.raises(TypeError, match="nn.Module"):
        revert_model(torch.zeros(1))


# ------------------------------------------------------------ revert_model --


def test_revert_gives_back_nn_conv_and_matching_outputs():
    model = _net()
    converted = convert_model(model, convert_all=True)
    reverted = revert_model(converted)
    assert _conv_types(reverted) == _conv_types(model)
    x = seeded_randn((2, 3, 7, 6))
    assert torch.equal(reverted(x), model(x))
    # The converted model is untouched by the non-inplace revert.
    assert type(converted.aspp[2]) is AtrousConv2d


@pytest.mark.parametrize(
    "module",
    [
        AtrousConv1d(2, 2, 3, padding="causal", dilation=2),
        AtrousConv2d(2, 2, 3, stride=2, padding="same"),
        AtrousConv2d(2, 2, 3, padding=(0, 1, 2, 3)),
    ],
    ids=["causal", "same_strided", "asymmetric"],
)
def test_revert_raises_for_padding_nn_conv_cannot_express(module):
    with pytest.raises(ValueError, match=r"revert_model: .*padding"):
        revert_model(nn.Sequential(module))


def test_revert_raises_for_causal_padding_names_it():
    with pytest.raises(ValueError, match="causal"):
        revert_model(AtrousConv1d(2, 2, 3, padding="causal"))

