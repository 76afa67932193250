"""Loads the compiled extension atrous_cuda._C, explaining a failure.

A C++ extension only loads into the torch it was compiled against: another
torch version typically fails with "undefined symbol: _ZN3c10...". The build
records what it was for in atrous_cuda/_build_config.py (written by setup.py
or CMake), which is plain Python and so stays readable when _C does not load;
the ImportError raised here says which torch the build was for, which torch
is running, and how to rebuild.
"""
import importlib
import sys

import torch

REBUILD_HINT = (
    "Rebuild atrous_cuda against the torch you run, from its source tree, with that torch's python:\n"
    "    pip install --no-build-isolation --force-reinstall --no-deps .     # an installed package\n"
    "    python setup.py build_ext --inplace                                # a checkout used in place "
    "(make build-cpu: CPU only)"
)


def build_config():
    """The values of atrous_cuda/_build_config.py as a dict, or {} when the
    extension was built without one (an older build, or none at all)."""
    try:
        module = importlib.import_module(f"{__package__}._build_config")
    except ImportError:
        return {}
    return {k: v for k, v in vars(module).items() if not k.startswith("_")}


def _base_version(version):
    """'2.14.1+cu130' -> '2.14.1': the local part names a variant of the same ABI
    family only when the CUDA versions agree, which is compared separately."""
    return None if version is None else str(version).split("+")[0]


def explain_load_failure(error, config, torch_version=None, torch_cuda=None):
    """The message of the ImportError raised when atrous_cuda._C fails to load."""
    torch_version = torch.__version__ if torch_version is None else torch_version
    torch_cuda = torch.version.cuda if torch_cuda is None else torch_cuda
    if isinstance(error, ModuleNotFoundError) and error.name == f"{__package__}._C":
        return (f"atrous_cuda: the compiled extension atrous_cuda._C is missing: the package was never built "
                f"here (or the build failed).\n{REBUILD_HINT}")
    built_for = config.get("torch_version")
    lines = [f"atrous_cuda: the compiled extension atrous_cuda._C failed to load: {error}"]
    if built_for is None:
        lines.append(f"This build does not record which torch it was built against (no atrous_cuda/_build_config.py); "
                     f"this process runs torch {torch_version} (CUDA {torch_cuda}).")
    else:
        built_cuda = config.get("torch_cuda_version")
        if _base_version(built_for) != _base_version(torch_version) or built_cuda != torch_cuda:
            lines.append(f"It was built against torch {built_for} (CUDA {built_cuda}), but this process runs torch "
                         f"{torch_version} (CUDA {torch_cuda}); a compiled extension only loads into the torch "
                         f"it was built against.")
        else:
            lines.append(f"It was built against this very torch ({built_for}, CUDA {built_cuda}), so the cause is "
                         f"something else (a missing shared library, another Python: built for "
                         f"{config.get('python_version')}, running {sys.version.split()[0]}).")
    lines.append(REBUILD_HINT)
    return "\n".join(lines)


def load_extension():
    """Imports atrous_cuda._C (which registers the ops) and returns it."""
    try:
        return importlib.import_module(f"{__package__}._C")
    except ImportError as error:  # OSError from the loader arrives as ImportError too
        raise ImportError(explain_load_failure(error, build_config()), name=f"{__package__}._C") from error
