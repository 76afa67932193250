"""InstanceFCN (Dai, He, Li, Sun and Sun, "Instance-sensitive Fully
Convolutional Networks", ECCV 2016) on the project's kernels.

A fully convolutional trunk with atrous convolutions keeps a fine output
stride; two branches read its features:
  * instance-sensitive score maps: 1x1 conv to 512-d, then 3x3 conv to k*k
    maps, map i*k + j scoring "this pixel is in cell (i, j) of an instance";
  * objectness: 3x3 conv, then 1x1 conv and a sigmoid, one score per sliding
    window (per pixel of the feature map).
The instance assembler then builds an m x m mask for every window (or every
selected one) by copying, for each cell of the window's k x k grid, the
cell's own score map (atrous::instance_assemble, see csrc/assemble_index.h).
Every convolution is an atrous_cuda.AtrousConv2d.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from .._assemble_ops import _pair, instance_assemble
from ..modules import AtrousConv2d
from ._validate import check_int, check_ints

__all__ = ["InstanceAssembler", "InstanceFCN", "InstanceFCNOutput", "instance_assemble"]


class InstanceAssembler(nn.Module):
    """Parameter-free instance assembling module: scores (N, k*k, H, W) ->
    (N, Hc, Wc, m, m) candidate masks, Hc = ceil(H / sh), or (P, m, m) for
    `centers`, an integer (P, 3) tensor of (n, yc, xc) window-grid points.
    See atrous_cuda.instance_assemble."""

    def __init__(self, k: int, m: int, window_stride=1):
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"InstanceAssembler: expected k to be an int >= 1, got {k!r}")
        if isinstance(m, bool) or not isinstance(m, int) or m < k:
            raise ValueError(f"InstanceAssembler: expected m to be an int >= k = {k}, got {m!r}")
        # Validated here, once, so that forward is plain TorchScript.
        stride = _pair("window_stride", window_stride)
        if stride[0] < 1 or stride[1] < 1:
            raise ValueError(f"InstanceAssembler: expected window_stride to be ints >= 1, got {window_stride!r}")
        self.k, self.m = k, m
        self.window_stride: Tuple[int, int] = (stride[0], stride[1])

    def forward(self, scores: torch.Tensor, centers: Optional[torch.Tensor] = None) -> torch.Tensor:
        if centers is not None:
            if centers.is_floating_point() or centers.is_complex() or centers.dtype == torch.bool:
                raise TypeError("InstanceAssembler: expected centers of an integer dtype, got " + str(centers.dtype))
            centers = centers.to(torch.int64)
        return torch.ops.atrous.instance_assemble(scores, self.k, self.m, list(self.window_stride), centers)

    def extra_repr(self):
        return f"k={self.k}, m={self.m}, window_stride={self.window_stride}"


class InstanceFCNOutput(NamedTuple):
    score_maps: torch.Tensor  # (N, k*k, H', W') instance-sensitive score maps (logits)
    objectness: torch.Tensor  # (N, Hc, Wc) sigmoid objectness of every window, or (P,) of the selected ones
    masks: torch.Tensor       # (N, Hc, Wc, m, m) assembled mask logits, or (P, m, m)


def _conv_bn_relu(in_channels, out_channels, kernel_size, stride=1, dilation=1):
    return nn.Sequential(
        AtrousConv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=dilation * (kernel_size // 2), dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def atrous_trunk(in_channels=3, widths: Sequence[int] = (32, 64, 128), dilations: Sequence[int] = (2, 4)):
    """A small default trunk: one stride-2 3x3 conv per width (output stride
    2^len(widths)), then 3x3 atrous convs at the given rates, which widen the
    receptive field without lowering the resolution further."""
    layers, channels = [], in_channels
    for width in widths:
        layers.append(_conv_bn_relu(channels, width, 3, stride=2))
        channels = width
    for rate in dilations:
        layers.append(_conv_bn_relu(channels, channels, 3, dilation=rate))
    return nn.Sequential(*layers), channels


class InstanceFCN(nn.Module):
    """InstanceFCN: trunk -> (score maps, objectness) -> assembled masks.

    Args:
        k: cells per window side (the paper: 5).
        m: window size in feature-map pixels (the paper: 21).
        window_stride: int or (sh, sw), the stride of the window grid.
        in_channels: image channels for the default trunk.
        backbone: optional module mapping images to features (replaces the
            default trunk); its output channel count is `backbone_channels`.
        trunk_widths / trunk_dilations: the default trunk (see atrous_trunk).
        branch_channels: width of both branches' hidden layer (the paper: 512).

    forward(images, centers=None) returns InstanceFCNOutput. With `centers`
    (integer (P, 3) rows of window-grid points (n, yc, xc)), only those
    windows' masks and objectness are returned, so a model that scores a few
    hundred windows never builds every window's mask.
    """

    def __init__(self, k: int = 5, m: int = 21, window_stride=1, in_channels: int = 3,
                 backbone: Optional[nn.Module] = None, backbone_channels: Optional[int] = None,
                 trunk_widths: Sequence[int] = (32, 64, 128), trunk_dilations: Sequence[int] = (2, 4),
                 branch_channels: int = 512):
        super().__init__()
        check_int("InstanceFCN", "in_channels", in_channels)
        check_int("InstanceFCN", "branch_channels", branch_channels)
        if backbone is None:
            trunk_widths = check_ints("InstanceFCN", "trunk_widths", trunk_widths)
            trunk_dilations = check_ints("InstanceFCN", "trunk_dilations", trunk_dilations, allow_empty=True)
            if backbone_channels is not None:
                raise ValueError("InstanceFCN: backbone_channels is only meaningful with a backbone")
            self.backbone, channels = atrous_trunk(in_channels, trunk_widths, trunk_dilations)
        else:
            if isinstance(backbone_channels, bool) or not isinstance(backbone_channels, int) or backbone_channels < 1:
                raise ValueError(f"InstanceFCN: a backbone needs backbone_channels, its output channel "
                                 f"count (an int >= 1), got {backbone_channels!r}")
            self.backbone, channels = backbone, backbone_channels
        self.score_branch = nn.Sequential(
            AtrousConv2d(channels, branch_channels, 1),
            nn.ReLU(inplace=True),
            AtrousConv2d(branch_channels, k * k, 3, padding=1),
        )
        self.objectness_branch = nn.Sequential(
            AtrousConv2d(channels, branch_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            AtrousConv2d(branch_channels, 1, 1),
        )
        self.assembler = InstanceAssembler(k, m, window_stride)

    def forward(self, images: torch.Tensor, centers: Optional[torch.Tensor] = None) -> InstanceFCNOutput:
        features = self.backbone(images)
        scores = self.score_branch(features)
        objectness = torch.sigmoid(self.objectness_branch(features))[:, 0]
        masks = self.assembler(scores, centers)
        sh, sw = self.assembler.window_stride
        objectness = objectness[:, ::sh, ::sw]  # window (yc, xc) is centred on pixel (yc*sh, xc*sw)
        if centers is not None:
            centers = centers.long()
            objectness = objectness[centers[:, 0], centers[:, 1], centers[:, 2]]
        return InstanceFCNOutput(scores, objectness, masks)
