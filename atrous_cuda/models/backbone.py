"""Dilated ResNet backbones (DeepLab's output-stride surgery), on the atrous kernels.

Module names are torchvision's ResNet's (conv1, bn1, layer1.0.conv1, ...,
layer4.2.downsample.0), without avgpool/fc, so a torchvision resnet state_dict
loads with `load_torchvision_state_dict` (which drops fc.*).

output_stride 32 is the plain ResNet. 16 replaces layer4's stride 2 by
dilation 2; 8 also replaces layer3's (dilations 2 and 4). As in torchvision's
`replace_stride_with_dilation`, the first block of a dilated stage keeps the
previous stage's dilation and the others take the new one, so outputs match
torchvision's for the same weights. `multi_grid=(1, 2, 4)` instead gives
layer4's blocks rates base * (1, 2, 4) (DeepLabV3 sec. 3.2; base = layer4's
dilation, 1 at output_stride 32).

BasicBlock (ResNet-18/34) takes dilation too (both 3x3 convs, padding =
dilation), which torchvision refuses.
"""
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from ._validate import check_int, check_ints
from ..modules import AtrousConv2d

__all__ = ["BasicBlock", "Bottleneck", "DilatedResNet", "dilated_resnet18", "dilated_resnet34",
           "dilated_resnet50", "dilated_resnet101"]


def _conv3x3(in_channels, out_channels, stride=1, dilation=1):
    return AtrousConv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(in_channels, out_channels, stride=1):
    return AtrousConv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride (and the dilation) sit on the 3x3 conv."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, downsample=None, dilation=1):
        super().__init__()
        self.conv1 = _conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class DilatedResNet(nn.Module):
    """DilatedResNet(block, layers, output_stride=32, multi_grid=None, in_channels=3, width=64).

    forward(x) returns {"low_level": layer1's output (stride 4), "out": layer4's
    output (stride output_stride)}, torchvision's IntermediateLayerGetter
    convention. `width` scales every stage (64 is ResNet's; tests use 4 or 8).
    Attributes: `out_channels`, `low_level_channels`, `stage_dilations`
    (the dilation of each block of each stage).
    """

    def __init__(self, block: str, layers: Sequence[int], output_stride: int = 32,
                 multi_grid: Optional[Sequence[int]] = None, in_channels: int = 3, width: int = 64):
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"DilatedResNet: expected block 'basic' or 'bottleneck', got {block!r}")
        if output_stride not in (8, 16, 32):
            raise ValueError(f"DilatedResNet: expected output_stride 8, 16 or 32, got {output_stride!r}")
        layers = check_ints("DilatedResNet", "layers", layers, length=4)
        if multi_grid is not None:
            multi_grid = check_ints("DilatedResNet", "multi_grid (or None)", multi_grid)
        check_int("DilatedResNet", "in_channels", in_channels)
        check_int("DilatedResNet", "width", width)
        block_cls = _BLOCKS[block]
        self.output_stride = output_stride
        self.conv1 = AtrousConv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # Stages 3 and 4 trade their stride 2 for dilation once the stride reaches output_stride.
        dilate = {16: (False, False, True), 8: (False, True, True), 32: (False, False, False)}[output_stride]
        self._in_channels = width
        self._dilation = 1
        self.stage_dilations = []
        self.layer1 = self._make_stage(block_cls, width, layers[0], 1, False, None)
        self.layer2 = self._make_stage(block_cls, width * 2, layers[1], 2, dilate[0], None)
        self.layer3 = self._make_stage(block_cls, width * 4, layers[2], 2, dilate[1], None)
        self.layer4 = self._make_stage(block_cls, width * 8, layers[3], 2, dilate[2], multi_grid)
        self.low_level_channels = width * block_cls.expansion
        self.out_channels = width * 8 * block_cls.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_stage(self, block_cls, planes, blocks, stride, dilate, multi_grid):
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        if multi_grid is not None:
            dilations = [self._dilation * multi_grid[i % len(multi_grid)] for i in range(blocks)]
        else:
            dilations = [previous_dilation] + [self._dilation] * (blocks - 1)
        downsample = None
        if stride != 1 or self._in_channels != planes * block_cls.expansion:
            downsample = nn.Sequential(
                _conv1x1(self._in_channels, planes * block_cls.expansion, stride),
                nn.BatchNorm2d(planes * block_cls.expansion),
            )
        stage = [block_cls(self._in_channels, planes, stride, downsample, dilations[0])]
        self._in_channels = planes * block_cls.expansion
        stage += [block_cls(self._in_channels, planes, 1, None, d) for d in dilations[1:]]
        self.stage_dilations.append(tuple(dilations))
        return nn.Sequential(*stage)

    def forward(self, x) -> Dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low_level = self.layer1(x)
        out = self.layer4(self.layer3(self.layer2(low_level)))
        return {"low_level": low_level, "out": out}

    def load_torchvision_state_dict(self, state_dict, strict: bool = True):
        """Loads a torchvision ResNet's state_dict (its fc.* entries are dropped)."""
        return self.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("fc.")}, strict=strict)


def dilated_resnet18(**kwargs):
    return DilatedResNet("basic", (2, 2, 2, 2), **kwargs)


def dilated_resnet34(**kwargs):
    return DilatedResNet("basic", (3, 4, 6, 3), **kwargs)


def dilated_resnet50(**kwargs):
    return DilatedResNet("bottleneck", (3, 4, 6, 3), **kwargs)


def dilated_resnet101(**kwargs):
    return DilatedResNet("bottleneck", (3, 4, 23, 3), **kwargs)
