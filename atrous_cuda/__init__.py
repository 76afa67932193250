"""atrous_cuda: hand-written CPU and CUDA kernels for dilated (atrous) convolution.

    import atrous_cuda
    y = atrous_cuda.atrous_conv2d(x, w, b, padding=12, dilation=12)   # == F.conv2d
    conv = atrous_cuda.AtrousConv2d(256, 256, 3, padding=6, dilation=6)  # an nn.Conv2d
    model = atrous_cuda.convert_model(model)   # swaps every dilated conv
"""
# _ops loads the compiled module first, through _extension, which explains a load failure.
from . import _ops  # noqa: F401  (registers fake kernels and autograd)
from . import _assemble_ops  # noqa: F401  (registers the assembling ops' fake kernels and autograd)
from ._assemble_ops import fcis_assemble, instance_assemble
from ._C import build_info
from .convert import convert_model, revert_model
from .functional import atrous_conv1d, atrous_conv2d, atrous_conv_transpose2d
from .modules import AtrousConv1d, AtrousConv2d, AtrousConvTranspose2d

__version__ = "0.1.0"

__all__ = [
    "AtrousConv1d",
    "AtrousConv2d",
    "AtrousConvTranspose2d",
    "atrous_conv1d",
    "atrous_conv2d",
    "atrous_conv_transpose2d",
    "build_info",
    "convert_model",
    "fcis_assemble",
    "instance_assemble",
    "revert_model",
]
