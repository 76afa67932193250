"""Architectures built on the project's kernels; every convolution runs
through atrous_cuda's ops."""
from .fcis import FCISScores, FCISScoring, fcis_assemble, fcis_scores
from .instance_fcn import InstanceAssembler, InstanceFCN, InstanceFCNOutput, instance_assemble

__all__ = [
    "FCISScores",
    "FCISScoring",
    "InstanceAssembler",
    "InstanceFCN",
    "InstanceFCNOutput",
    "fcis_assemble",
    "fcis_scores",
    "instance_assemble",
]
