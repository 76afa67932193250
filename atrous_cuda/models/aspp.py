"""Atrous Spatial Pyramid Pooling (DeepLabV3, Chen et al. 2017), on the atrous kernels.

The module tree and parameter names are torchvision's
(`torchvision.models.segmentation.deeplabv3.ASPP`), so its state_dict loads
as it is:

    from torchvision.models.segmentation.deeplabv3 import ASPP as TorchvisionASPP
    theirs = TorchvisionASPP(2048, [12, 24, 36])
    ours = ASPP(2048, [12, 24, 36])
    ours.load_state_dict(theirs.state_dict())   # same keys, same output

    convs.0          1x1 conv -> BN -> ReLU
    convs.1..R       3x3 conv (padding = dilation = rate) -> BN -> ReLU, one per rate
    convs.R+1        image pooling: global average -> 1x1 conv -> BN -> ReLU -> bilinear upsample
    project          1x1 conv over the concatenation -> BN -> ReLU -> Dropout

With separable=True each atrous branch is DeepLabV3+'s depthwise-separable
conv (a depthwise dilated 3x3 then a pointwise 1x1, as
segmentation_models_pytorch's `SeparableConv2d`: keys convs.i.0.0 and
convs.i.0.1), followed by the same BN -> ReLU.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..modules import AtrousConv2d
from ._validate import check_int, check_ints

__all__ = ["ASPP", "ASPPConv", "ASPPPooling", "ASPPSeparableConv", "SingleValueBatchNorm2d"]


class SingleValueBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalizes with its running statistics when a training
    batch holds a single value per channel (N * H * W == 1).

    Why: the image-pooling branch sees a 1x1 map, so at batch size 1 each
    channel has one value. Its batch variance is 0 and the normalized value is
    0 whatever the input (torch raises "Expected more than 1 value per
    channel", torchvision issue 1491). Nothing can be estimated from one value,
    so the only defined normalization is the one eval mode uses: the running
    statistics, which are left unchanged by such a batch (a one-sample
    variance estimate would be a division by zero). Gradients still flow to the
    input and to the affine weight and bias. Any batch with more than one value
    per channel is ordinary BatchNorm2d. Same parameters and buffers as
    BatchNorm2d, so state_dicts are interchangeable.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # Written with F.batch_norm in both branches (no super().forward) so that
        # torch.jit.script compiles it.
        if input.dim() != 4:
            raise ValueError(f"SingleValueBatchNorm2d: expected 4-D input, got {input.dim()}-D")
        running_mean, running_var = self.running_mean, self.running_var
        if self.training and input.numel() == input.shape[1]:
            if not self.track_running_stats or running_mean is None or running_var is None:
                raise ValueError(
                    "SingleValueBatchNorm2d: a training batch with one value per channel needs running "
                    "statistics (track_running_stats=True), got input of size " + str(input.shape)
                )
            # Normalize as in eval mode; momentum is irrelevant as the statistics are not updated.
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, False, 0.0, self.eps)
        # Ordinary BatchNorm2d (nn.BatchNorm2d.forward, written out): in training
        # with running statistics, count the batch and take the momentum
        # (None means a cumulative moving average, 1 / batches seen).
        exponential_average_factor = 0.0 if self.momentum is None else self.momentum
        num_batches_tracked = self.num_batches_tracked
        if self.training and self.track_running_stats and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
            if self.momentum is None:
                exponential_average_factor = 1.0 / float(num_batches_tracked)
            else:
                exponential_average_factor = self.momentum
        # Batch statistics in training, and in eval mode when no running statistics are kept.
        use_batch_stats = self.training or (running_mean is None and running_var is None)
        return F.batch_norm(
            input,
            running_mean if not self.training or self.track_running_stats else None,
            running_var if not self.training or self.track_running_stats else None,
            self.weight, self.bias, use_batch_stats, exponential_average_factor, self.eps,
        )


class ASPPConv(nn.Sequential):
    """3x3 atrous conv -> BN -> ReLU, padding = dilation = rate (size-preserving)."""

    def __init__(self, in_channels: int, out_channels: int, rate: int):
        super().__init__(
            AtrousConv2d(in_channels, out_channels, 3, padding=rate, dilation=rate, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


class _SeparableConv2d(nn.Sequential):
    def __init__(self, in_channels, out_channels, rate):
        super().__init__(
            AtrousConv2d(in_channels, in_channels, 3, padding=rate, dilation=rate, groups=in_channels, bias=False),
            AtrousConv2d(in_channels, out_channels, 1, bias=False),
        )


class ASPPSeparableConv(nn.Sequential):
    """Depthwise dilated 3x3 -> pointwise 1x1 -> BN -> ReLU (DeepLabV3+)."""

    def __init__(self, in_channels: int, out_channels: int, rate: int):
        super().__init__(_SeparableConv2d(in_channels, out_channels, rate), nn.BatchNorm2d(out_channels), nn.ReLU())


class ASPPPooling(nn.Sequential):
    """Image-level features: global average -> 1x1 conv -> BN -> ReLU, upsampled
    back to the input size. Its BN is SingleValueBatchNorm2d, so it trains at
    batch size 1."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            AtrousConv2d(in_channels, out_channels, 1, bias=False),
            SingleValueBatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x):
        size = x.shape[-2:]
        pooled = x
        for module in self:  # nn.Sequential.forward, written out: TorchScript has no super()
            pooled = module(pooled)
        # A 1x1 map upsampled bilinearly is a broadcast; interpolate keeps torchvision's graph.
        return F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """ASPP(in_channels, atrous_rates, out_channels=256, separable=False, dropout=0.5).

    Input (N, in_channels, H, W) -> output (N, out_channels, H, W). See the
    module docstring for the structure and for loading torchvision weights.
    """

    def __init__(self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256,
                 separable: bool = False, dropout: float = 0.5):
        super().__init__()
        check_int("ASPP", "in_channels", in_channels)
        check_int("ASPP", "out_channels", out_channels)
        rates = check_ints("ASPP", "atrous_rates", atrous_rates, allow_empty=True)
        if not (0.0 <= dropout < 1.0):
            raise ValueError(f"ASPP: expected 0 <= dropout < 1, got {dropout}")
        branch = ASPPSeparableConv if separable else ASPPConv
        self.atrous_rates = rates
        self.convs = nn.ModuleList(
            [nn.Sequential(AtrousConv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                           nn.ReLU())]
            + [branch(in_channels, out_channels, r) for r in rates]
            + [ASPPPooling(in_channels, out_channels)]
        )
        self.project = nn.Sequential(
            AtrousConv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x):
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))
