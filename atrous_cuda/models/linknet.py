"""LinkNet (Chaurasia and Culurciello 2017) on the atrous kernels.

    encoder   a ResNet-18 style DilatedResNet (torchvision names, so a torchvision
              resnet18 state_dict loads through `encoder.load_torchvision_state_dict`);
              output_stride 16 or 8 dilates its last stages instead of striding
    decoder   per encoder stage, from the deepest: 1x1 conv (m -> m/4) -> BN -> ReLU ->
              4x4 transposed conv, stride 2 (a 3x3 conv where the encoder stage was
              dilated instead of strided) -> BN -> ReLU -> 1x1 conv (m/4 -> n) -> BN ->
              ReLU; its output is added to the next shallower encoder stage's output
              (layer1 keeps the stem's stride, so its decoder block does not upsample)
    head      3x3 transposed conv stride 2 -> BN -> ReLU -> 3x3 conv -> BN -> ReLU ->
              2x2 transposed conv stride 2 to the classes (the stem's two strides)
"""
from typing import List, Optional, Sequence, Tuple

import torch

from torch import nn

from ..modules import AtrousConv2d, AtrousConvTranspose2d
from ._validate import check_int, check_ints
from .backbone import DilatedResNet

__all__ = ["LinkNet", "LinkNetDecoderBlock"]


def _reach(x: torch.Tensor, want: List[int], stride: Tuple[int, int], padding: Tuple[int, int],
           dilation: Tuple[int, int], kernel: Tuple[int, int]) -> List[int]:
    """The output_size to ask of a transposed conv so that its output covers
    `want`. From h it reaches (h-1)*s - 2p + d(k-1) + 1 + [0, s), which for
    4x4/stride 2/padding 1 is 2h or 2h + 1: an odd size 2h - 1 is the 2h result
    with its last row cropped (the row that lies past the encoder's input).
    Takes the module's geometry rather than the module, so TorchScript compiles it."""
    out: List[int] = []
    for i in range(2):
        smallest = (x.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (kernel[i] - 1) + 1
        out.append(max(smallest, want[i]))
    return out


class LinkNetDecoderBlock(nn.Module):
    """1x1 -> (transposed 4x4 stride 2 | 3x3) -> 1x1, each followed by BN -> ReLU."""

    # A constant, so TorchScript compiles only the branch of `if self.upsample` that runs
    # (self.up is a transposed conv in one and a conv in the other).
    __constants__ = ["upsample"]

    def __init__(self, in_channels: int, out_channels: int, upsample: bool = True):
        super().__init__()
        mid = max(in_channels // 4, 1)
        self.reduce = nn.Sequential(AtrousConv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid),
                                    nn.ReLU(inplace=True))
        self.upsample = upsample
        if upsample:
            self.up = AtrousConvTranspose2d(mid, mid, 4, stride=2, padding=1, bias=False)
        else:
            self.up = AtrousConv2d(mid, mid, 3, padding=1, bias=False)
        self.up_bn = nn.BatchNorm2d(mid)
        self.expand = nn.Sequential(AtrousConv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                                    nn.ReLU(inplace=True))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, output_size: Optional[List[int]] = None):
        """output_size: the transposed conv's exact output size (ignored without upsampling)."""
        x = self.reduce(x)
        if self.upsample:
            if output_size is None:
                x = self.up(x)
            else:
                reach = _reach(x, output_size, self.up.stride, self.up.padding, self.up.dilation, self.up.kernel_size)
                x = self.up(x, output_size=reach)[..., : output_size[0], : output_size[1]]
        else:
            x = self.up(x)
        return self.expand(self.relu(self.up_bn(x)))


class LinkNet(nn.Module):
    """LinkNet(num_classes, in_channels=3, layers=(2, 2, 2, 2), width=64, output_stride=32).

    width=64 and layers=(2, 2, 2, 2) is the paper's ResNet-18 encoder.

    TorchScript compiles it (tested: the scripted model equals eager in float64).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, layers: Sequence[int] = (2, 2, 2, 2), width: int = 64,
                 output_stride: int = 32):
        super().__init__()
        check_int("LinkNet", "num_classes", num_classes)
        # The last decoder stage has width // 2 channels.
        check_int("LinkNet", "width (the final decoder stage has width // 2 channels)", width, minimum=2)
        self.encoder = DilatedResNet("basic", layers, output_stride=output_stride, in_channels=in_channels,
                                     width=width)
        widths = [width, width * 2, width * 4, width * 8]
        # layer1 keeps the stem's stride 4; layer2..4 halve the size unless their
        # stride was traded for dilation. Decoder i undoes encoder stage i.
        strided = [False, True, output_stride >= 16, output_stride >= 32]
        self.decoder = nn.ModuleList(
            [LinkNetDecoderBlock(widths[i], widths[i - 1] if i > 0 else width, strided[i]) for i in range(4)]
        )
        self.final_up = AtrousConvTranspose2d(width, width // 2, 3, stride=2, padding=1, bias=False)
        self.final_bn = nn.BatchNorm2d(width // 2)
        self.final_conv = nn.Sequential(AtrousConv2d(width // 2, width // 2, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(width // 2), nn.ReLU(inplace=True))
        self.classifier = AtrousConvTranspose2d(width // 2, num_classes, 2, stride=2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        # Unrolled with literal indices so that TorchScript compiles it.
        enc = self.encoder
        stem = enc.relu(enc.bn1(enc.conv1(x)))
        e1 = enc.layer1(enc.maxpool(stem))
        e2 = enc.layer2(e1)
        e3 = enc.layer3(e2)
        e4 = enc.layer4(e3)
        d = self.decoder[3](e4, output_size=[e3.shape[2], e3.shape[3]]) + e3
        d = self.decoder[2](d, output_size=[e2.shape[2], e2.shape[3]]) + e2
        d = self.decoder[1](d, output_size=[e1.shape[2], e1.shape[3]]) + e1
        d = self.decoder[0](d)
        want = [stem.shape[2], stem.shape[3]]
        up = self.final_up
        d = up(d, output_size=_reach(d, want, up.stride, up.padding, up.dilation, up.kernel_size))
        d = self.relu(self.final_bn(d[..., : want[0], : want[1]]))
        d = self.final_conv(d)
        want = [x.shape[2], x.shape[3]]
        cls = self.classifier
        out = cls(d, output_size=_reach(d, want, cls.stride, cls.padding, cls.dilation, cls.kernel_size))
        return out[..., : want[0], : want[1]]
