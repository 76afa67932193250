"""The architectures of the atrous-convolution guide, every conv on atrous_cuda's kernels."""
from .aspp import ASPP, ASPPConv, ASPPPooling, ASPPSeparableConv, SingleValueBatchNorm2d
from .backbone import (BasicBlock, Bottleneck, DilatedResNet, dilated_resnet18, dilated_resnet34,
                       dilated_resnet50, dilated_resnet101)
from .deeplab import DeepLabHead, DeepLabV3, DeepLabV3Plus
from .fcn import AtrousFCN
from .linknet import LinkNet, LinkNetDecoderBlock
from .wavenet import WaveNet

__all__ = [
    "ASPP", "ASPPConv", "ASPPPooling", "ASPPSeparableConv", "AtrousFCN", "BasicBlock", "Bottleneck",
    "DeepLabHead", "DeepLabV3", "DeepLabV3Plus", "DilatedResNet", "LinkNet", "LinkNetDecoderBlock",
    "SingleValueBatchNorm2d", "WaveNet", "dilated_resnet18", "dilated_resnet34", "dilated_resnet50",
    "dilated_resnet101",
]
