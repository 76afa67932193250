"""The guide's architectures (atrous_cuda.models): shapes and gradients, every conv on
the atrous kernels, float64 equivalence with torchvision and with the same network on
torch's convs, ASPP at batch size 1 (WaveNet's own tests are in test_wavenet.py)."""
import copy

import pytest
import torch
from conftest import assert_matches, seeded_randn
from torch import nn

# The reference implementations these tests compare against. `make test` installs torchvision;
# the GPU machine of bench/gpu_check.sh has only torch and pytest.
torchvision = pytest.importorskip("torchvision", reason="torchvision is not installed (make setup installs it)")
from torchvision.models._utils import IntermediateLayerGetter  # noqa: E402
from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP  # noqa: E402
from torchvision.models.segmentation.deeplabv3 import DeepLabHead as TorchvisionDeepLabHead  # noqa: E402

from atrous_cuda import AtrousConv1d, AtrousConv2d, AtrousConvTranspose2d
from atrous_cuda.models import (ASPP, AtrousFCN, DeepLabV3, DeepLabV3Plus, DilatedResNet, LinkNet,
                                SingleValueBatchNorm2d, WaveNet, dilated_resnet18, dilated_resnet50)

_TO_TORCH = {AtrousConv1d: nn.Conv1d, AtrousConv2d: nn.Conv2d, AtrousConvTranspose2d: nn.ConvTranspose2d}


def _randomize_batchnorm(model, seed=0):
    """Non-trivial running statistics and affine parameters, so eval-mode
    comparisons exercise them."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g, dtype=torch.float64) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g, dtype=torch.float64) * 0.1)
    return model


def _on_torch_convs(model):
    """The same network (same parameters) with every atrous conv back on torch's."""
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if type(m) in _TO_TORCH:
            m.__class__ = _TO_TORCH[type(m)]
    return reference


def _assert_every_conv_is_atrous(model):
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    assert convs, "no conv in the model"
    plain = [type(m).__name__ for m in convs if type(m) not in _TO_TORCH]
    assert not plain, f"convs not on the atrous kernels: {plain}"


def _assert_matches_torch_convs_and_trains(model, x):
    """float64 eval output equal to the same network on torch's convs; a
    training step gives finite gradients to every parameter."""
    model = _randomize_batchnorm(model.double()).eval()
    reference = _on_torch_convs(model)
    with torch.no_grad():
        assert_matches(model(x), reference(x), what="output against torch's convs")
    model.train()
    model(x).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"no finite gradient for {name}"


# -------------------------------------------------------------------- ASPP --


def test_aspp_loads_torchvision_state_dict_and_gives_its_output():
    torch.manual_seed(0)
    theirs = _randomize_batchnorm(TorchvisionASPP(16, [2, 3, 5], out_channels=8).double()).eval()
    ours = ASPP(16, [2, 3, 5], out_channels=8).double().eval()
    ours.load_state_dict(theirs.state_dict())  # strict: the same keys
    x = seeded_randn((2, 16, 9, 11))
    with torch.no_grad():
        assert_matches(ours(x), theirs(x), what="ASPP output against torchvision")
    _assert_every_conv_is_atrous(ours)


def test_aspp_branches_have_rate_as_padding_and_dilation():
    aspp = ASPP(8, [6, 12, 18], out_channels=4)
    atrous = [branch[0] for branch in aspp.convs[1:-1]]
    assert [(c.kernel_size, c.padding, c.dilation) for c in atrous] == [
        ((3, 3), (r, r), (r, r)) for r in (6, 12, 18)
    ]
    assert aspp.convs[0][0].kernel_size == (1, 1)
    assert isinstance(aspp.convs[-1][0], nn.AdaptiveAvgPool2d)
    assert aspp.project[0].in_channels == 5 * 4 and aspp.project[3].p == 0.5


def test_aspp_separable_branches_are_depthwise_dilated_then_pointwise():
    aspp = _randomize_batchnorm(ASPP(8, [2, 4], out_channels=6, separable=True, dropout=0.1).double())
    for branch, rate in zip(aspp.convs[1:-1], (2, 4)):
        depthwise, pointwise = branch[0]
        assert depthwise.groups == 8 and depthwise.dilation == (rate, rate) and depthwise.padding == (rate, rate)
        assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == 6
    _assert_matches_torch_convs_and_trains(aspp, seeded_randn((2, 8, 7, 9)))


def test_aspp_trains_at_batch_size_one_where_torchvision_raises():
    torch.manual_seed(0)
    theirs = TorchvisionASPP(8, [2], out_channels=4).train()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        theirs(torch.randn(1, 8, 5, 5))

    ours = _randomize_batchnorm(ASPP(8, [2], out_channels=4).double()).train()
    pooling = ours.convs[-1]
    pool_bn = pooling[2]
    assert isinstance(pool_bn, SingleValueBatchNorm2d)
    mean_before, var_before = pool_bn.running_mean.clone(), pool_bn.running_var.clone()
    x = seeded_randn((1, 8, 5, 5)).requires_grad_()
    ours(x).sum().backward()
    # One value per channel: normalized with the running statistics, which stay as they were.
    assert torch.equal(pool_bn.running_mean, mean_before) and torch.equal(pool_bn.running_var, var_before)
    assert pooling[1].weight.grad.abs().sum() > 0 and pool_bn.weight.grad.abs().sum() > 0
    with torch.no_grad():
        train_branch = pooling(x)
        eval_branch = copy.deepcopy(pooling).eval()(x)
    assert_matches(train_branch, eval_branch, what="image-pooling branch at N=1 against eval mode")
    # With two images it is ordinary BatchNorm: batch statistics, running statistics updated.
    ours(seeded_randn((2, 8, 5, 5), seed=3))
    assert not torch.equal(pool_bn.running_mean, mean_before)


def test_aspp_rejects_bad_arguments():
    with pytest.raises(ValueError, match="atrous_rates"):
        ASPP(8, [0, 2])
    with pytest.raises(ValueError, match="dropout"):
        ASPP(8, [2], dropout=1.0)


# ---------------------------------------------------------------- backbone --


def _torchvision_features(model):
    return IntermediateLayerGetter(model, {"layer1": "low_level", "layer4": "out"})


@pytest.mark.parametrize("output_stride,replace", [(32, [False, False, False]), (16, [False, False, True]),
                                                   (8, [False, True, True])])
def test_bottleneck_backbone_matches_torchvision_replace_stride_with_dilation(output_stride, replace):
    torch.manual_seed(0)
    # ResNet-50's widths with fewer blocks (2 per dilated stage, so the
    # "first block keeps the previous dilation" rule is exercised).
    theirs = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [1, 1, 2, 2],
                                              replace_stride_with_dilation=replace)
    theirs = _randomize_batchnorm(theirs.double()).eval()
    ours = DilatedResNet("bottleneck", (1, 1, 2, 2), output_stride=output_stride).double().eval()
    ours.load_torchvision_state_dict(theirs.state_dict())
    x = seeded_randn((1, 3, 17, 20))
    with torch.no_grad():
        mine, ref = ours(x), _torchvision_features(theirs)(x)
    for key in ("low_level", "out"):
        assert_matches(mine[key], ref[key], what=key)
    # Every stride-2 layer maps H to ceil(H / 2), so the output is ceil(H / output_stride).
    assert mine["out"].shape[-2:] == (-(-17 // output_stride), -(-20 // output_stride))
    _assert_every_conv_is_atrous(ours)


def test_resnet50_and_resnet18_state_dicts_load_into_the_dilated_backbones():
    for ours, theirs in ((dilated_resnet50(output_stride=8), torchvision.models.resnet50()),
                         (dilated_resnet18(output_stride=8), torchvision.models.resnet18())):
        result = ours.load_torchvision_state_dict(theirs.state_dict())
        assert not result.missing_keys and not result.unexpected_keys


def test_resnet18_backbone_matches_torchvision_at_output_stride_32():
    torch.manual_seed(0)
    theirs = _randomize_batchnorm(torchvision.models.resnet18().double()).eval()
    ours = dilated_resnet18(output_stride=32).double().eval()
    ours.load_torchvision_state_dict(theirs.state_dict())
    x = seeded_randn((1, 3, 32, 32))
    with torch.no_grad():
        assert_matches(ours(x)["out"], _torchvision_features(theirs)(x)["out"], what="layer4")


@pytest.mark.parametrize("output_stride,expected", [
    (32, [(1, 1), (1, 1), (1, 1), (1, 1)]),
    (16, [(1, 1), (1, 1), (1, 1), (1, 2)]),
    (8, [(1, 1), (1, 1), (1, 2), (2, 4)]),
])
def test_basic_block_backbone_dilates_where_torchvision_refuses(output_stride, expected):
    with pytest.raises(NotImplementedError, match="Dilation > 1 not supported in BasicBlock"):
        torchvision.models.resnet18(replace_stride_with_dilation=[False, True, True])
    ours = dilated_resnet18(output_stride=output_stride, width=4)
    assert ours.stage_dilations == expected
    for stage, dilations in zip((ours.layer1, ours.layer2, ours.layer3, ours.layer4), expected):
        for block, d in zip(stage, dilations):
            assert block.conv1.dilation == (d, d) and block.conv2.dilation == (d, d)
            assert block.conv1.padding == (d, d) and block.conv2.padding == (d, d)
    x = seeded_randn((2, 3, 64, 48), dtype=torch.float32)
    out = ours(x)
    assert out["low_level"].shape == (2, 4, 16, 12)
    assert out["out"].shape == (2, 32, -(-64 // output_stride), -(-48 // output_stride))


@pytest.mark.parametrize("output_stride,rates", [(32, (1, 2, 4)), (16, (2, 4, 8)), (8, (4, 8, 16))])
def test_multi_grid_scales_the_last_stage_rates(output_stride, rates):
    ours = DilatedResNet("bottleneck", (1, 1, 1, 3), output_stride=output_stride, multi_grid=(1, 2, 4), width=4)
    assert ours.stage_dilations[3] == rates
    assert [b.conv2.dilation[0] for b in ours.layer4] == list(rates)


def test_backbone_rejects_bad_arguments():
    with pytest.raises(ValueError, match="output_stride 8, 16 or 32, got 4"):
        dilated_resnet18(output_stride=4)
    with pytest.raises(ValueError, match="block 'basic' or 'bottleneck'"):
        DilatedResNet("wide", (1, 1, 1, 1))
    with pytest.raises(ValueError, match="multi_grid"):
        dilated_resnet18(multi_grid=(0, 1))
    with pytest.raises(ValueError, match="expected backbone to be one of"):
        DeepLabV3(3, backbone="vgg16")


# ----------------------------------------------------------------- DeepLab --


def test_deeplabv3_loads_torchvision_deeplabv3_resnet50_and_gives_its_output():
    torch.manual_seed(0)
    theirs = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                num_classes=5, aux_loss=False)
    theirs = _randomize_batchnorm(theirs.double()).eval()
    ours = DeepLabV3(5, backbone="resnet50", output_stride=8).double().eval()
    ours.load_state_dict(theirs.state_dict())  # strict: same keys, backbone and classifier
    x = seeded_randn((1, 3, 16, 15))
    with torch.no_grad():
        assert_matches(ours(x), theirs(x)["out"], what="DeepLabV3 output against torchvision")


def test_deeplabv3_head_has_torchvision_deeplabhead_structure():
    torch.manual_seed(0)
    theirs = _randomize_batchnorm(TorchvisionDeepLabHead(16, 3, atrous_rates=(1, 2, 3)).double()).eval()
    ours = DeepLabV3(3, backbone="resnet18", width=2, atrous_rates=(1, 2, 3)).double().eval()
    assert ours.backbone.out_channels == 16
    ours.classifier.load_state_dict(theirs.state_dict())
    x = seeded_randn((2, 16, 5, 6))
    with torch.no_grad():
        assert_matches(ours.classifier(x), theirs(x), what="head output against torchvision")


@pytest.mark.parametrize("output_stride,rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_deeplabv3_default_rates_follow_output_stride(output_stride, rates):
    model = DeepLabV3(3, backbone="resnet18", output_stride=output_stride, width=2, aspp_channels=4)
    assert model.classifier[0].atrous_rates == rates


@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3_shapes_gradients_and_torch_reference(output_stride):
    model = DeepLabV3(4, backbone="resnet18", output_stride=output_stride, width=4, aspp_channels=8,
                      atrous_rates=(1, 2, 3))
    _assert_every_conv_is_atrous(model)
    x = seeded_randn((2, 3, 30, 34))
    assert model.double()(x).shape == (2, 4, 30, 34)
    _assert_matches_torch_convs_and_trains(model, x)


def test_deeplabv3plus_decoder_structure_shapes_and_torch_reference():
    model = DeepLabV3Plus(4, backbone="resnet50", output_stride=16, width=4, aspp_channels=8,
                          decoder_channels=8, atrous_rates=(1, 2))
    _assert_every_conv_is_atrous(model)
    assert model.low_level_project[0].out_channels == 48 and model.low_level_project[0].kernel_size == (1, 1)
    refine_convs = [m for m in model.refine if isinstance(m, nn.Conv2d)]
    assert refine_convs[0].in_channels == 8 + 48 and all(c.kernel_size == (3, 3) for c in refine_convs)
    assert model.aspp.convs[1][0][0].groups == model.backbone.out_channels  # separable by default
    sizes = {}
    model.classifier.register_forward_hook(lambda m, i, o: sizes.update(logits=o.shape[-2:]))
    model.aspp.register_forward_hook(lambda m, i, o: sizes.update(aspp=o.shape[-2:]))
    x = seeded_randn((2, 3, 64, 48))
    assert model.double()(x).shape == (2, 4, 64, 48)
    # ASPP at stride 16, decoder at stride 4, then 4x upsampling.
    assert tuple(sizes["aspp"]) == (4, 3) and tuple(sizes["logits"]) == (16, 12)
    _assert_matches_torch_convs_and_trains(model, x)


# --------------------------------------------------------------------- FCN --


def test_atrous_fcn_structure_shapes_and_torch_reference():
    model = AtrousFCN(3, in_channels=2, widths=(4, 6, 8), rates=(2, 4))
    _assert_every_conv_is_atrous(model)
    assert [block[0].dilation for block in model.context] == [(2, 2), (4, 4)]
    assert all(isinstance(block["up"], AtrousConvTranspose2d) and block["up"].stride == (2, 2)
               for block in model.decoder)
    assert model.classifier.kernel_size == (1, 1)
    for size in ((32, 40), (33, 29)):
        x = seeded_randn((2, 2, *size))
        assert model.double()(x).shape == (2, 3, *size)
    _assert_matches_torch_convs_and_trains(model, seeded_randn((2, 2, 33, 29)))


# ----------------------------------------------------------------- LinkNet --


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_linknet_shapes_and_torch_reference(output_stride):
    model = LinkNet(3, layers=(1, 1, 1, 1), width=8, output_stride=output_stride)
    _assert_every_conv_is_atrous(model)
    upsampling = [block.upsample for block in model.decoder]
    assert upsampling == [False, True, output_stride >= 16, output_stride >= 32]
    for size in ((64, 64), (45, 38)):
        assert model.double()(seeded_randn((1, 3, *size))).shape == (1, 3, *size)
    _assert_matches_torch_convs_and_trains(model, seeded_randn((2, 3, 45, 38)))


def test_linknet_decoder_block_is_1x1_transposed_4x4_stride_2_then_1x1():
    block = LinkNet(2, width=8).decoder[2]
    assert block.reduce[0].kernel_size == (1, 1) and block.reduce[0].out_channels == 32 // 4
    assert isinstance(block.up, AtrousConvTranspose2d)
    assert block.up.kernel_size == (4, 4) and block.up.stride == (2, 2) and block.up.padding == (1, 1)
    assert block.expand[0].kernel_size == (1, 1) and block.expand[0].out_channels == 16


def test_linknet_encoder_loads_torchvision_resnet18():
    model = LinkNet(2)
    result = model.encoder.load_torchvision_state_dict(torchvision.models.resnet18().state_dict())
    assert not result.missing_keys and not result.unexpected_keys


# ----------------------------------------------------------------- TorchScript --

def _tiny_scriptable_models():
    """name -> (model factory, example inputs), small enough to script and run in well under a second."""
    from atrous_cuda.models import FCISScoring, InstanceFCN
    g = torch.Generator().manual_seed(0)

    def randn(*size):
        return torch.randn(*size, generator=g, dtype=torch.float64)

    return {
        "aspp": (lambda: ASPP(4, [1, 2], out_channels=8), (randn(2, 4, 9, 9),)),
        "aspp_separable": (lambda: ASPP(4, [1, 2], out_channels=8, separable=True), (randn(2, 4, 9, 9),)),
        "dilated_resnet18": (lambda: dilated_resnet18(output_stride=8), (randn(1, 3, 32, 32),)),
        "dilated_resnet_bottleneck": (lambda: DilatedResNet("bottleneck", [1, 1, 1, 1], output_stride=16),
                                      (randn(1, 3, 32, 32),)),
        "deeplabv3": (lambda: DeepLabV3(3, backbone="resnet18", output_stride=16), (randn(1, 3, 32, 32),)),
        "deeplabv3plus": (lambda: DeepLabV3Plus(3, backbone="resnet18", output_stride=16), (randn(1, 3, 32, 32),)),
        "instance_fcn": (lambda: InstanceFCN(k=2, m=4, window_stride=(2, 1), trunk_widths=(4, 8),
                                             trunk_dilations=(2,), branch_channels=8), (randn(1, 3, 16, 16),)),
        "instance_fcn_centers": (lambda: InstanceFCN(k=2, m=4, window_stride=2, trunk_widths=(4, 8),
                                                     trunk_dilations=(2,), branch_channels=8),
                                 (randn(2, 3, 16, 16), torch.tensor([[0, 1, 0], [1, 0, 1], [0, 1, 0]]))),
        "fcis_scoring": (lambda: FCISScoring(4, 3, group_size=2, output_size=4, spatial_scale=0.5),
                         (randn(2, 4, 8, 8), torch.tensor([[0, 1.0, 1.0, 10.0, 12.0], [1, 0.0, 3.0, 7.0, 9.5]],
                                                          dtype=torch.float64))),
        "wavenet": (lambda: WaveNet(2, 3, residual_channels=4, gate_channels=4, skip_channels=4,
                                    dilations=(1, 2, 4), stacks=2, kernel_size=3), (randn(2, 2, 20),)),
        "atrous_fcn": (lambda: AtrousFCN(3, widths=(4, 8), rates=(2,), convs_per_stage=1), (randn(1, 3, 16, 16),)),
        "linknet": (lambda: LinkNet(3, layers=(1, 1, 1, 1), width=4, output_stride=16), (randn(1, 3, 32, 32),)),
    }


def _flatten_outputs(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for key in sorted(out) for t in _flatten_outputs(out[key])]
    return [t for item in out for t in _flatten_outputs(item)]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", sorted(_tiny_scriptable_models()))
def test_models_script_and_the_scripted_model_equals_eager_in_float64(name):
    factory, inputs = _tiny_scriptable_models()[name]
    torch.manual_seed(0)
    model = _randomize_batchnorm(factory().double().eval())
    scripted = torch.jit.script(model)
    eager_out = _flatten_outputs(model(*inputs))
    scripted_out = _flatten_outputs(scripted(*inputs))
    assert len(eager_out) == len(scripted_out) > 0
    for e, s in zip(eager_out, scripted_out):
        assert e.dtype == s.dtype and e.shape == s.shape
        torch.testing.assert_close(s, e, rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_scripted_aspp_trains_at_batch_size_one_like_eager():
    # The image-pooling BN (SingleValueBatchNorm2d) takes its running-statistics path when scripted too.
    torch.manual_seed(0)
    model = _randomize_batchnorm(ASPP(4, [1, 2], out_channels=8, dropout=0.0).double().train())
    scripted = torch.jit.script(copy.deepcopy(model))
    x = seeded_randn((1, 4, 7, 7), dtype=torch.float64)
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
    for (name, a), (_, b) in zip(model.named_buffers(), scripted.named_buffers()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("training", [True, False])
def test_single_value_batchnorm_is_batchnorm2d_when_a_channel_has_several_values(momentum, training):
    # forward is written with F.batch_norm (for TorchScript); it must stay nn.BatchNorm2d exactly,
    # running statistics and num_batches_tracked included (momentum None: cumulative average).
    ours = _randomize_batchnorm(SingleValueBatchNorm2d(3, momentum=momentum).double())
    theirs = copy.deepcopy(ours)
    theirs.__class__ = nn.BatchNorm2d
    ours.train(training), theirs.train(training)
    for step in range(3):
        x = seeded_randn((2, 3, 2, 2), dtype=torch.float64, seed=step)
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    for (name, a), (_, b) in zip(ours.named_buffers(), theirs.named_buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_single_value_batchnorm_keeps_running_statistics_on_a_one_value_batch():
    bn = _randomize_batchnorm(SingleValueBatchNorm2d(3).double()).train()
    before = {name: b.clone() for name, b in bn.named_buffers()}
    x = seeded_randn((1, 3, 1, 1), dtype=torch.float64)
    expected = (x - bn.running_mean.view(1, 3, 1, 1)) / torch.sqrt(bn.running_var.view(1, 3, 1, 1) + bn.eps) \
        * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(bn(x), expected)
    for name, b in bn.named_buffers():
        torch.testing.assert_close(b, before[name], rtol=0, atol=0, msg=name)


# ------------------------------------------------------ constructor validation --

def _invalid_constructor_calls():
    from atrous_cuda.models import FCISScoring, InstanceAssembler, InstanceFCN
    return {
        "fcis_group_size_0": (lambda: FCISScoring(4, 3, group_size=0), r"FCISScoring: expected group_size to be an int >= 1, got 0"),
        "fcis_output_below_group": (lambda: FCISScoring(4, 3, group_size=3, output_size=2),
                                    r"FCISScoring: expected output_size to be an int >= group_size = 3, got 2"),
        "fcis_scale_0": (lambda: FCISScoring(4, 3, spatial_scale=0.0), r"spatial_scale to be a float > 0, got 0.0"),
        "fcis_in_channels_bool": (lambda: FCISScoring(True, 3), r"in_channels to be an int >= 1, got True"),
        "wavenet_dilation_0": (lambda: WaveNet(1, 1, dilations=(0, 1)),
                               r"WaveNet: expected dilations to be a sequence of ints >= 1 \(at least one\), got \(0, 1\)"),
        "wavenet_dilation_negative": (lambda: WaveNet(1, 1, dilations=(1, -2)), r"dilations .* got \(1, -2\)"),
        "wavenet_no_dilation": (lambda: WaveNet(1, 1, dilations=()), r"dilations .*\(at least one\), got \(\)"),
        "wavenet_stacks_0": (lambda: WaveNet(1, 1, stacks=0), r"WaveNet: expected stacks to be an int >= 1, got 0"),
        "wavenet_kernel_0": (lambda: WaveNet(1, 1, kernel_size=0), r"expected kernel_size to be an int >= 1, got 0"),
        "wavenet_channels_0": (lambda: WaveNet(1, 1, gate_channels=0), r"expected gate_channels to be an int >= 1, got 0"),
        "assembler_stride_0": (lambda: InstanceAssembler(2, 4, window_stride=0),
                               r"InstanceAssembler: expected window_stride to be ints >= 1, got 0"),
        "assembler_stride_pair_0": (lambda: InstanceAssembler(2, 4, window_stride=(1, 0)),
                                    r"window_stride to be ints >= 1, got \(1, 0\)"),
        "instance_fcn_stride_0": (lambda: InstanceFCN(window_stride=0), r"window_stride to be ints >= 1, got 0"),
        "instance_fcn_trunk_dilation_0": (lambda: InstanceFCN(trunk_dilations=(0,)),
                                          r"InstanceFCN: expected trunk_dilations .* got \(0,\)"),
        "instance_fcn_branch_0": (lambda: InstanceFCN(branch_channels=0), r"branch_channels to be an int >= 1, got 0"),
        "linknet_width_1": (lambda: LinkNet(2, width=1),
                            r"LinkNet: expected width \(the final decoder stage has width // 2 channels\) to be an int >= 2, got 1"),
        "linknet_classes_0": (lambda: LinkNet(0, width=4), r"LinkNet: expected num_classes to be an int >= 1, got 0"),
        "resnet_layers_bool": (lambda: DilatedResNet("basic", [True, 1, 1, 1]),
                               r"DilatedResNet: expected layers to be 4 ints >= 1, got \[True, 1, 1, 1\]"),
        "resnet_layers_0": (lambda: DilatedResNet("basic", [2, 0, 2, 2]), r"layers to be 4 ints >= 1, got \[2, 0, 2, 2\]"),
        "resnet_layers_negative": (lambda: DilatedResNet("basic", (2, 2, -1, 2)), r"layers .* got \(2, 2, -1, 2\)"),
        "resnet_layers_three": (lambda: DilatedResNet("basic", (2, 2, 2)), r"layers to be 4 ints >= 1, got \(2, 2, 2\)"),
        "resnet_width_0": (lambda: DilatedResNet("basic", (1, 1, 1, 1), width=0), r"width to be an int >= 1, got 0"),
        "resnet_multi_grid_bool": (lambda: DilatedResNet("basic", (1, 1, 1, 1), multi_grid=(1, False)),
                                   r"multi_grid \(or None\) .* got \(1, False\)"),
        "fcn_width_0": (lambda: AtrousFCN(2, widths=(4, 0)), r"AtrousFCN: expected widths .* got \(4, 0\)"),
        "fcn_rate_0": (lambda: AtrousFCN(2, widths=(4,), rates=(0,)), r"AtrousFCN: expected rates .* got \(0,\)"),
        "fcn_classes_0": (lambda: AtrousFCN(0), r"AtrousFCN: expected num_classes to be an int >= 1, got 0"),
        "deeplab_classes_0": (lambda: DeepLabV3(0, backbone="resnet18", width=4),
                              r"DeepLabV3: expected num_classes to be an int >= 1, got 0"),
        "deeplabplus_decoder_0": (lambda: DeepLabV3Plus(2, backbone="resnet18", width=4, decoder_channels=0),
                                  r"DeepLabV3Plus: expected decoder_channels to be an int >= 1, got 0"),
        "aspp_out_channels_0": (lambda: ASPP(4, (1,), out_channels=0), r"ASPP: expected out_channels to be an int >= 1, got 0"),
    }


@pytest.mark.parametrize("case", sorted(_invalid_constructor_calls()))
def test_model_constructors_reject_invalid_arguments_naming_them(case):
    build, message = _invalid_constructor_calls()[case]
    with pytest.raises(ValueError, match=message):
        build()
