"""The architectures of the atrous-convolution guide; every convolution runs
through atrous_cuda's ops."""
from .aspp import ASPP, ASPPConv, ASPPPooling, ASPPSeparableConv, SingleValueBatchNorm2d
from .backbone import (BasicBlock, Bottleneck, DilatedResNet, dilated_resnet18, dilated_resnet34,
                       dilated_resnet50, dilated_resnet101)
from .deeplab import DeepLabHead, DeepLabV3, DeepLabV3Plus
from .fcis import FCISScores, FCISScoring, fcis_assemble, fcis_scores
from .fcn import AtrousFCN
from .instance_fcn import InstanceAssembler, InstanceFCN, InstanceFCNOutput, instance_assemble
from .linknet import LinkNet, LinkNetDecoderBlock
from .wavenet import WaveNet

__all__ = [
    "ASPP", "ASPPConv", "ASPPPooling", "ASPPSeparableConv", "AtrousFCN", "BasicBlock", "Bottleneck",
    "DeepLabHead", "DeepLabV3", "DeepLabV3Plus", "DilatedResNet", "FCISScores", "FCISScoring",
    "InstanceAssembler", "InstanceFCN", "InstanceFCNOutput", "LinkNet", "LinkNetDecoderBlock",
    "SingleValueBatchNorm2d", "WaveNet", "dilated_resnet18", "dilated_resnet34", "dilated_resnet50",
    "dilated_resnet101", "fcis_assemble", "fcis_scores", "instance_assemble",
]
