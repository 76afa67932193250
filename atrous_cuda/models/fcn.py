"""AtrousFCN: the guide's FCN with atrous layers.

    encoder   VGG-style stages: (3x3 conv -> BN -> ReLU) x convs_per_stage -> 2x2 max pool
    context   3x3 convs at dilation 2 then 4 (padding = dilation): the field of view
              grows without further downsampling
    decoder   one transposed conv (4x4, stride 2, padding 1) -> BN -> ReLU per pooling
              stage, back to the input resolution
    head      1x1 classifier

Every conv, the transposed ones included, runs on the atrous kernels. The
transposed convs are given the pre-pooling sizes, so odd input sizes come back
exactly.
"""
from typing import Sequence, List

from torch import nn

from ..modules import AtrousConv2d, AtrousConvTranspose2d
from ._validate import check_int, check_ints

__all__ = ["AtrousFCN"]


def _conv_bn_relu(in_channels, out_channels, dilation=1):
    return nn.Sequential(
        AtrousConv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AtrousFCN(nn.Module):
    """AtrousFCN(num_classes, in_channels=3, widths=(64, 128, 256), rates=(2, 4), convs_per_stage=2).

    Output stride 2**len(widths) in the encoder; logits (N, num_classes, H, W).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, widths: Sequence[int] = (64, 128, 256),
                 rates: Sequence[int] = (2, 4), convs_per_stage: int = 2):
        super().__init__()
        check_int("AtrousFCN", "num_classes", num_classes)
        check_int("AtrousFCN", "in_channels", in_channels)
        widths = check_ints("AtrousFCN", "widths", widths)
        rates = check_ints("AtrousFCN", "rates", rates, allow_empty=True)
        check_int("AtrousFCN", "convs_per_stage", convs_per_stage)
        stages, channels = [], in_channels
        for width in widths:
            convs = [_conv_bn_relu(channels if i == 0 else width, width) for i in range(convs_per_stage)]
            stages.append(nn.Sequential(*convs))
            channels = width
        self.encoder = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2, 2)
        self.context = nn.Sequential(*[_conv_bn_relu(channels, channels, r) for r in rates])
        ups = []
        for width in reversed(widths):
            ups.append(nn.ModuleDict({
                "up": AtrousConvTranspose2d(channels, width, 4, stride=2, padding=1, bias=False),
                "bn": nn.BatchNorm2d(width),
            }))
            channels = width
        self.decoder = nn.ModuleList(ups)
        self.relu = nn.ReLU(inplace=True)
        self.classifier = AtrousConv2d(channels, num_classes, 1)

    def forward(self, x):
        # Written so that TorchScript compiles it: typed list, ModuleList walked by enumerate.
        sizes: List[List[int]] = []
        for stage in self.encoder:
            x = stage(x)
            sizes.append([x.shape[-2], x.shape[-1]])
            x = self.pool(x)
        x = self.context(x)
        for i, block in enumerate(self.decoder):
            size = sizes[len(sizes) - 1 - i]  # decoder i undoes the i-th encoder stage from the end
            x = self.relu(block["bn"](block["up"](x, output_size=size)))
        return self.classifier(x)
