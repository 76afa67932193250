"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018) on a dilated ResNet.

DeepLabV3.classifier has torchvision's `DeepLabHead` structure and names
(0: ASPP, 1: 3x3 conv, 2: BN, 3: ReLU, 4: 1x1 classifier), so a torchvision
DeepLabHead state_dict loads into it. Both models return the logits
(N, num_classes, H, W) at the input's size, as segmentation_models_pytorch
does (torchvision wraps them in {"out": ...}).
"""
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import AtrousConv2d
from ._validate import check_int, check_ints
from .aspp import ASPP
from .backbone import (DilatedResNet, dilated_resnet18, dilated_resnet34, dilated_resnet50,
                       dilated_resnet101)

__all__ = ["DeepLabHead", "DeepLabV3", "DeepLabV3Plus", "make_backbone"]

_BACKBONES = {"resnet18": dilated_resnet18, "resnet34": dilated_resnet34, "resnet50": dilated_resnet50,
              "resnet101": dilated_resnet101}


def make_backbone(backbone: Union[str, DilatedResNet], output_stride: int, multi_grid=None,
                  in_channels: int = 3, width: int = 64) -> DilatedResNet:
    if isinstance(backbone, DilatedResNet):
        return backbone
    if backbone not in _BACKBONES:
        raise ValueError(
            f"expected backbone to be one of {sorted(_BACKBONES)} or a DilatedResNet, got {backbone!r}"
        )
    return _BACKBONES[backbone](output_stride=output_stride, multi_grid=multi_grid, in_channels=in_channels,
                                width=width)


def _default_rates(output_stride):
    # DeepLabV3 sec. 4: rates (6, 12, 18) at output stride 16, doubled at 8.
    return (12, 24, 36) if output_stride == 8 else (6, 12, 18)


class DeepLabHead(nn.Sequential):
    """ASPP -> 3x3 conv -> BN -> ReLU -> 1x1 classifier (torchvision's layout)."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int] = (12, 24, 36),
                 channels: int = 256, separable: bool = False, dropout: float = 0.5):
        super().__init__(
            ASPP(in_channels, atrous_rates, channels, separable=separable, dropout=dropout),
            AtrousConv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            AtrousConv2d(channels, num_classes, 1),
        )


class DeepLabV3(nn.Module):
    """DeepLabV3(num_classes, backbone="resnet50", output_stride=16, atrous_rates=None,
    multi_grid=None, aspp_channels=256, separable=False, in_channels=3, width=64).

    `backbone` is a name (resnet18/34/50/101, built dilated to output_stride;
    width scales it) or a DilatedResNet. atrous_rates default to (6, 12, 18) at
    output stride 16 and 32, (12, 24, 36) at 8.
    """

    def __init__(self, num_classes: int, backbone: Union[str, DilatedResNet] = "resnet50", output_stride: int = 16,
                 atrous_rates: Optional[Sequence[int]] = None, multi_grid: Optional[Sequence[int]] = None,
                 aspp_channels: int = 256, separable: bool = False, in_channels: int = 3, width: int = 64,
                 dropout: float = 0.5):
        super().__init__()
        check_int("DeepLabV3", "num_classes", num_classes)
        self.backbone = make_backbone(backbone, output_stride, multi_grid, in_channels, width)
        rates = _default_rates(self.backbone.output_stride) if atrous_rates is None else atrous_rates
        self.classifier = DeepLabHead(self.backbone.out_channels, num_classes, rates, aspp_channels, separable,
                                      dropout)

    def forward(self, x):
        logits = self.classifier(self.backbone(x)["out"])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3Plus(num_classes, backbone="resnet50", output_stride=16, ...): DeepLabV3's
    ASPP (separable by default, as in the paper) plus a decoder:

      low-level features (layer1, stride 4) -> 1x1 conv to 48 channels -> BN -> ReLU
      ASPP output upsampled (bilinear) to the low-level size, concatenated
      -> two 3x3 conv -> BN -> ReLU refinements -> 1x1 classifier
      -> 4x bilinear upsampling to the input size.
    """

    def __init__(self, num_classes: int, backbone: Union[str, DilatedResNet] = "resnet50", output_stride: int = 16,
                 atrous_rates: Optional[Sequence[int]] = None, multi_grid: Optional[Sequence[int]] = None,
                 aspp_channels: int = 256, separable: bool = True, in_channels: int = 3, width: int = 64,
                 low_level_channels: int = 48, decoder_channels: int = 256, dropout: float = 0.5):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("aspp_channels", aspp_channels),
                            ("low_level_channels", low_level_channels), ("decoder_channels", decoder_channels)):
            check_int("DeepLabV3Plus", name, value)
        self.backbone = make_backbone(backbone, output_stride, multi_grid, in_channels, width)
        rates = _default_rates(self.backbone.output_stride) if atrous_rates is None else atrous_rates
        self.aspp = ASPP(self.backbone.out_channels, rates, aspp_channels, separable=separable, dropout=dropout)
        self.low_level_project = nn.Sequential(
            AtrousConv2d(self.backbone.low_level_channels, low_level_channels, 1, bias=False),
            nn.BatchNorm2d(low_level_channels),
            nn.ReLU(),
        )
        self.refine = nn.Sequential(
            AtrousConv2d(aspp_channels + low_level_channels, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(),
            AtrousConv2d(decoder_channels, decoder_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(),
        )
        self.classifier = AtrousConv2d(decoder_channels, num_classes, 1)

    def forward(self, x):
        features = self.backbone(x)
        low_level = self.low_level_project(features["low_level"])
        context = F.interpolate(self.aspp(features["out"]), size=low_level.shape[-2:], mode="bilinear",
                                align_corners=False)
        logits = self.classifier(self.refine(torch.cat([context, low_level], dim=1)))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
