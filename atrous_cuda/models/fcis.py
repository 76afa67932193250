"""FCIS-style joint scoring on given RoIs (Li, Qi, Dai, Ji and Wei, "Fully
Convolutional Instance-aware Semantic Segmentation", CVPR 2017).

Position-sensitive inside/outside score maps, 2*k*k*(C+1) channels, are
assembled over each RoI into a P x P grid of inside and outside maps per class
(atrous::fcis_assemble, see csrc/assemble_index.h for the sampling and the
channel order), then
  * detection score: the per-pixel max of inside and outside, averaged over
    the RoI, then a softmax over classes;
  * mask: a per-pixel softmax of inside against outside, i.e. the
    probability sigmoid(inside - outside) that the pixel is in the instance.
The RoIs are given: there is no region proposal network here.
"""
from typing import NamedTuple, Tuple

import torch
from torch import nn

from .._assemble_ops import fcis_assemble
from ..modules import AtrousConv2d

__all__ = ["FCISScores", "FCISScoring", "fcis_assemble", "fcis_scores"]


class FCISScores(NamedTuple):
    class_logits: torch.Tensor  # (R, C+1): per-pixel max(inside, outside), averaged over the RoI
    class_probs: torch.Tensor   # (R, C+1): softmax of class_logits over classes
    mask_probs: torch.Tensor    # (R, C+1, P, P): softmax of (inside, outside) per pixel, the inside part


def fcis_scores(inside: torch.Tensor, outside: torch.Tensor) -> FCISScores:
    """Detection scores and masks from assembled (R, C+1, P, P) inside/outside maps."""
    if inside.shape != outside.shape or inside.dim() != 4:
        raise ValueError("fcis_scores: expected inside and outside of the same shape (R, C+1, P, P), got "
                         + str(list(inside.shape)) + " and " + str(list(outside.shape)))
    class_logits = torch.maximum(inside, outside).mean(dim=(2, 3))
    # softmax over the pair (inside, outside): e^in / (e^in + e^out) = sigmoid(in - out), stable for any scale.
    return FCISScores(class_logits, torch.softmax(class_logits, dim=1), torch.sigmoid(inside - outside))


class FCISScoring(nn.Module):
    """Score maps from features (one 1x1 AtrousConv2d), assembled on given RoIs.

    Args:
        in_channels: feature channels.
        num_classes: C+1, background included (torchvision's convention).
        group_size: k (FCIS: 7).
        output_size: P (FCIS: 21).
        spatial_scale: image coordinates -> feature pixels (1/16 at stride 16).

    forward(features, rois) with rois (R, 5) = (batch index, x1, y1, x2, y2)
    in image coordinates returns (inside, outside, FCISScores).
    """

    def __init__(self, in_channels: int, num_classes: int, group_size: int = 7, output_size: int = 21,
                 spatial_scale: float = 1.0 / 16):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"FCISScoring: expected num_classes (background included) to be an int >= 1, "
                             f"got {num_classes!r}")
        for name, value in (("in_channels", in_channels), ("group_size", group_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FCISScoring: expected {name} to be an int >= 1, got {value!r}")
        if isinstance(output_size, bool) or not isinstance(output_size, int) or output_size < group_size:
            raise ValueError(f"FCISScoring: expected output_size to be an int >= group_size = {group_size}, "
                             f"got {output_size!r}")
        if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)) or not spatial_scale > 0:
            raise ValueError(f"FCISScoring: expected spatial_scale to be a float > 0, got {spatial_scale!r}")
        self.num_classes, self.group_size = num_classes, group_size
        self.output_size, self.spatial_scale = output_size, float(spatial_scale)
        self.score_maps = AtrousConv2d(in_channels, 2 * group_size * group_size * num_classes, 1)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, FCISScores]:
        maps = self.score_maps(features)
        # The op itself (arguments validated in __init__), so that forward is TorchScript.
        inside, outside = torch.ops.atrous.fcis_assemble(maps, rois, self.group_size, self.output_size,
                                                         self.spatial_scale)
        return inside, outside, fcis_scores(inside, outside)

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, group_size={self.group_size}, "
                f"output_size={self.output_size}, spatial_scale={self.spatial_scale}")
