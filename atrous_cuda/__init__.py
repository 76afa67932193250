"""atrous_cuda: hand-written CPU and CUDA kernels for dilated (atrous) convolution.

    import atrous_cuda
    y = atrous_cuda.atrous_conv2d(x, w, b, padding=12, dilation=12)   # == F.conv2d
    conv = atrous_cuda.AtrousConv2d(256, 256, 3, padding=6, dilation=6)  # an nn.Conv2d
    model = atrous_cuda.convert_model(model)   # swaps every dilated conv
"""
import sys as _sys

__version__ = "0.1.0"


def _running_info_command():
    # `python -m atrous_cuda info` must work when the compiled module does not load: that is when
    # it is needed. Python imports this package before it runs __main__, and during that import
    # sys.argv[0] is "-m" (documented for `python -m`) and sys.argv[1] the command.
    return len(_sys.argv) > 1 and _sys.argv[0] == "-m" and _sys.argv[1] == "info"


# _ops loads the compiled module first, through _extension, which explains a load failure.
try:
    from . import _ops  # noqa: F401  (registers fake kernels and autograd)
except ImportError as _error:
    if not _running_info_command():
        raise
    load_error = _error  # reported by `info`; nothing else of the package is usable
else:
    load_error = None
    from . import _assemble_ops  # noqa: F401  (registers the assembling ops' fake kernels and autograd)
    from . import _wavenet_ops  # noqa: F401  (registers the WaveNet ops' fake kernels and autograd)
    from ._assemble_ops import fcis_assemble, instance_assemble
    from ._C import (
        build_info,
        clear_cpu_weight_cache,
        cpu_weight_cache_info,
        empty_cpu_workspace_cache,
        set_cpu_weight_cache_limit,
        set_cpu_workspace_cache_limit,
    )
    from .convert import convert_model, revert_model
    from .functional import atrous_conv1d, atrous_conv2d, atrous_conv_transpose2d
    from .modules import AtrousConv1d, AtrousConv2d, AtrousConvTranspose2d

__all__ = [
    "AtrousConv1d",
    "AtrousConv2d",
    "AtrousConvTranspose2d",
    "atrous_conv1d",
    "atrous_conv2d",
    "atrous_conv_transpose2d",
    "build_info",
    "clear_cpu_weight_cache",
    "convert_model",
    "cpu_weight_cache_info",
    "empty_cpu_workspace_cache",
    "fcis_assemble",
    "instance_assemble",
    "revert_model",
    "set_cpu_weight_cache_limit",
    "set_cpu_workspace_cache_limit",
]
