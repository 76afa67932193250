"""atrous_cuda.models: InstanceFCN with its instance assembler, and FCIS-style
joint scoring on given RoIs. Shapes, gradients, every convolution on the
project's ops, and the scoring math against a direct computation."""
import math

import pytest
import torch
from torch import nn

from atrous_cuda import AtrousConv2d, instance_assemble
from atrous_cuda.models import FCISScoring, InstanceAssembler, InstanceFCN, fcis_assemble, fcis_scores


def _convs(model):
    return [mod for mod in model.modules() if isinstance(mod, nn.modules.conv._ConvNd)]


def test_instance_assembler_is_parameter_free_and_equals_the_op():
    asm = InstanceAssembler(3, 7, window_stride=2)
    assert list(asm.parameters()) == [] and list(asm.buffers()) == []
    s = torch.randn(2, 9, 10, 11)
    assert torch.equal(asm(s), instance_assemble(s, 3, 7, window_stride=2))
    centers = torch.tensor([[1, 4, 5], [0, 0, 0]])
    assert torch.equal(asm(s, centers), instance_assemble(s, 3, 7, window_stride=2, centers=centers))
    assert "k=3, m=7, window_stride=(2, 2)" in repr(asm)  # stored validated, as (sh, sw)


@pytest.mark.parametrize("k, m, pattern", [(0, 3, "k to be an int >= 1"), (3, 2, "m to be an int >= k = 3"),
                                           (2.0, 3, "k to be an int >= 1")])
def test_instance_assembler_rejects_bad_sizes(k, m, pattern):
    with pytest.raises(ValueError, match=pattern):
        InstanceAssembler(k, m)


def test_instance_fcn_shapes_and_gradients():
    torch.manual_seed(0)
    model = InstanceFCN(k=3, m=9, trunk_widths=(8, 16), trunk_dilations=(2, 3), branch_channels=16)
    images = torch.randn(2, 3, 37, 30)
    out = model(images)
    h, w = 10, 8  # two stride-2 convs with padding 1: 37 -> 19 -> 10, 30 -> 15 -> 8
    assert out.score_maps.shape == (2, 9, h, w)
    assert out.objectness.shape == (2, h, w)
    assert ((out.objectness > 0) & (out.objectness < 1)).all()
    assert out.masks.shape == (2, h, w, 9, 9)
    assert torch.equal(out.masks, instance_assemble(out.score_maps, 3, 9))
    (out.masks.square().mean() + out.objectness.mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_instance_fcn_every_convolution_is_atrous_and_the_trunk_is_dilated():
    model = InstanceFCN(k=3, m=9, trunk_widths=(8, 16), trunk_dilations=(2, 4), branch_channels=16)
    convs = _convs(model)
    assert convs and all(isinstance(conv, AtrousConv2d) for conv in convs)
    assert sorted({conv.dilation[0] for conv in model.backbone.modules() if isinstance(conv, AtrousConv2d)}) == [1, 2, 4]
    # the score branch: 1x1 to branch_channels, then 3x3 to k*k maps; objectness: 3x3 then 1x1 to one map
    score = [c for c in model.score_branch if isinstance(c, AtrousConv2d)]
    assert [(c.kernel_size, c.out_channels) for c in score] == [((1, 1), 16), ((3, 3), 9)]
    obj = [c for c in model.objectness_branch if isinstance(c, AtrousConv2d)]
    assert [(c.kernel_size, c.out_channels) for c in obj] == [((3, 3), 16), ((1, 1), 1)]


def test_instance_fcn_window_stride_and_selected_centres():
    torch.manual_seed(0)
    model = InstanceFCN(k=2, m=6, window_stride=(2, 3), trunk_widths=(8,), trunk_dilations=(2,), branch_channels=8)
    model.eval()
    images = torch.randn(2, 3, 17, 20)
    dense = model(images)
    assert dense.score_maps.shape == (2, 4, 9, 10)
    assert dense.masks.shape == (2, 5, 4, 6, 6) and dense.objectness.shape == (2, 5, 4)
    centers = torch.tensor([[1, 4, 3], [0, 0, 0], [1, 4, 3]])
    picked = model(images, centers)
    assert picked.masks.shape == (3, 6, 6) and picked.objectness.shape == (3,)
    assert torch.equal(picked.masks, dense.masks[centers[:, 0], centers[:, 1], centers[:, 2]])
    assert torch.equal(picked.objectness, dense.objectness[centers[:, 0], centers[:, 1], centers[:, 2]])


def test_instance_fcn_with_a_user_backbone():
    backbone = nn.Sequential(AtrousConv2d(3, 12, 3, padding=2, dilation=2), nn.ReLU())
    model = InstanceFCN(k=2, m=4, backbone=backbone, backbone_channels=12, branch_channels=8)
    out = model(torch.randn(1, 3, 6, 7))
    assert out.score_maps.shape == (1, 4, 6, 7) and out.masks.shape == (1, 6, 7, 4, 4)
    with pytest.raises(ValueError, match="a backbone needs backbone_channels"):
        InstanceFCN(backbone=backbone)
    with pytest.raises(ValueError, match="backbone_channels is only meaningful with a backbone"):
        InstanceFCN(backbone_channels=12)


# ------------------------------------------------------------------- FCIS --


def test_fcis_scores_match_a_direct_computation():
    """score_c = softmax_c( mean_{py,px} max(in, out) ); mask = e^in / (e^in + e^out)."""
    gen = torch.Generator().manual_seed(0)
    inside = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64) * 3
    outside = torch.randn(3, 4, 5, 5, generator=gen, dtype=torch.float64) * 3
    scores = fcis_scores(inside, outside)
    for r in range(3):
        logits = [sum(max(inside[r, c, y, x].item(), outside[r, c, y, x].item()) for y in range(5) for x in range(5)) / 25
                  for c in range(4)]
        total = sum(math.exp(v) for v in logits)
        for c in range(4):
            assert scores.class_logits[r, c].item() == pytest.approx(logits[c], rel=1e-12)
            assert scores.class_probs[r, c].item() == pytest.approx(math.exp(logits[c]) / total, rel=1e-12)
            for y, x in ((0, 0), (2, 3), (4, 4)):
                a, b = inside[r, c, y, x].item(), outside[r, c, y, x].item()
                assert scores.mask_probs[r, c, y, x].item() == pytest.approx(math.exp(a) / (math.exp(a) + math.exp(b)), rel=1e-12)
    assert torch.allclose(scores.class_probs.sum(1), torch.ones(3, dtype=torch.float64))
    # stable where exp overflows: inside 1000 above outside is certainly inside
    big = fcis_scores(torch.full((1, 1, 1, 1), 1000.0), torch.zeros(1, 1, 1, 1))
    assert big.mask_probs.item() == 1.0


def test_fcis_scores_rejects_mismatched_maps():
    with pytest.raises(ValueError, match=r"same shape \(R, C\+1, P, P\)"):
        fcis_scores(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5))


def test_fcis_scoring_shapes_gradients_and_parts():
    torch.manual_seed(0)
    head = FCISScoring(16, num_classes=3, group_size=3, output_size=7, spatial_scale=0.25)
    assert all(isinstance(c, AtrousConv2d) for c in _convs(head))
    assert head.score_maps.out_channels == 2 * 3 * 3 * 3
    features = torch.randn(2, 16, 9, 10)
    rois = torch.tensor([[0.0, 1, 2, 30, 33], [1, 0, 0, 39, 35], [1, 8, 8, 20, 12]])
    inside, outside, scores = head(features, rois)
    assert inside.shape == outside.shape == (3, 3, 7, 7)
    assert scores.class_probs.shape == (3, 3) and scores.mask_probs.shape == (3, 3, 7, 7)
    maps = head.score_maps(features)
    ref_in, ref_out = fcis_assemble(maps, rois, 3, 7, 0.25)
    assert torch.equal(inside, ref_in) and torch.equal(outside, ref_out)
    (scores.class_probs[:, 1].sum() + scores.mask_probs.mean()).backward()
    assert head.score_maps.weight.grad.abs().sum() > 0 and head.score_maps.bias.grad.abs().sum() > 0


def test_fcis_scoring_rejects_bad_class_count():
    with pytest.raises(ValueError, match="num_classes .* int >= 1, got 0"):
        FCISScoring(8, 0)
