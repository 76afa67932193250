"""Builds the one extension, atrous_cuda._C, with ninja.

CPU sources are always built. CUDA sources are built when a CUDA toolkit is
found (or FORCE_CUDA=1, which fails loudly without one), never because a GPU
is or is not visible. ATROUS_CPU_ONLY=1 skips them for a fast edit-test loop.

Environment:
  CUDA_HOME / CUDA_PATH   toolkit root, if the search below gets it wrong
  FORCE_CUDA=1            build the CUDA sources; error out without a toolkit
  ATROUS_CPU_ONLY=1       never build the CUDA sources
  TORCH_CUDA_ARCH_LIST    default "8.0;9.0+PTX"; entries below 8.0 are dropped
  ATROUS_PTXAS_VERBOSE=1  pass -Xptxas -v (register and spill report)
  MAX_JOBS                ninja parallelism
"""
import glob
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def _is_toolkit_root(path):
    if not path:
        return False
    root = Path(path)
    headers = [root / "include" / "cuda_runtime.h"]
    headers += [Path(p) / "include" / "cuda_runtime.h" for p in glob.glob(str(root / "targets" / "*"))]
    return (root / "bin" / "nvcc").is_file() and any(h.is_file() for h in headers)


def _real_nvcc(path):
    """Follows symlinks and the `exec /real/nvcc "$@"` line of wrapper scripts."""
    seen = set()
    path = Path(path).resolve()
    while path not in seen:
        seen.add(path)
        try:
            head = path.read_bytes()[:4096]
        except OSError:
            return path
        if not head.startswith(b"#!"):
            return path
        match = re.search(rb"^\s*exec\s+[\"']?([^\s\"']+/nvcc)\b", head, re.MULTILINE)
        if not match:
            return path
        path = Path(match.group(1).decode()).resolve()
    return path


def find_cuda_home():
    """The CUDA toolkit root, or None. torch's own guess takes the folder of
    `nvcc` on PATH, which is wrong when that nvcc is a wrapper script."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit_root(os.environ.get(var)):
            return str(Path(os.environ[var]).resolve())
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(_real_nvcc(nvcc).parent.parent)
    candidates.append(Path("/usr/local/cuda"))
    candidates += sorted((Path(p) for p in glob.glob("/usr/local/cuda-*")), reverse=True)
    for candidate in candidates:
        if _is_toolkit_root(candidate):
            return str(Path(candidate).resolve())
    return None


def _truthy(name):
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


cuda_home = None if _truthy("ATROUS_CPU_ONLY") else find_cuda_home()
if _truthy("FORCE_CUDA") and _truthy("ATROUS_CPU_ONLY"):
    sys.exit("setup.py: FORCE_CUDA=1 and ATROUS_CPU_ONLY=1 contradict each other; set one.")
if _truthy("FORCE_CUDA") and cuda_home is None:
    sys.exit(
        "setup.py: FORCE_CUDA=1 but no CUDA toolkit was found: looked at CUDA_HOME, CUDA_PATH, "
        "the nvcc on PATH (following wrapper scripts), /usr/local/cuda and /usr/local/cuda-*. "
        "Set CUDA_HOME to the toolkit root (the folder holding bin/nvcc and include/)."
    )
with_cuda = cuda_home is not None
if with_cuda:
    # torch.utils.cpp_extension reads CUDA_HOME once, at import.
    os.environ["CUDA_HOME"] = cuda_home
    # sm_80 and sm_90 machine code, plus sm_90 PTX for newer GPUs to JIT.
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
    # The tensor-core kernels use bfloat16 WMMA, which needs sm_80; many CUDA
    # images export a list that starts lower, so drop those entries loudly.
    def _at_least_sm80(arch):
        try:
            return float(arch.split("+")[0].rstrip("af")) >= 8.0
        except ValueError:  # a named architecture such as "Hopper"
            return arch not in ("Kepler", "Maxwell", "Pascal", "Volta", "Turing")

    requested = re.split(r"[;\s]+", os.environ["TORCH_CUDA_ARCH_LIST"].strip())
    kept = [a for a in requested if a and _at_least_sm80(a)]
    if kept != [a for a in requested if a]:
        print(f"setup.py: atrous_cuda needs compute capability >= 8.0; dropping "
              f"{sorted(set(requested) - set(kept))} from TORCH_CUDA_ARCH_LIST")
    if not kept:
        sys.exit(f"setup.py: TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']!r} has no architecture "
                 f">= 8.0; expected e.g. '8.0;9.0'")
    os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(kept)
    print(f"setup.py: building CUDA kernels with the toolkit at {cuda_home} "
          f"for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
else:
    print("setup.py: no CUDA toolkit found (or ATROUS_CPU_ONLY=1): building the CPU kernels only")

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _nvcc_release(root):
    """'12.8' from `nvcc --version`, or None."""
    import subprocess

    try:
        out = subprocess.run([str(Path(root) / "bin" / "nvcc"), "--version"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    match = re.search(r"release (\d+\.\d+)", out)
    return match.group(1) if match else None


def write_build_config(path, cuda_archs, cuda_toolkit):
    """atrous_cuda/_build_config.py: what the extension was built against, readable
    even when atrous_cuda._C itself fails to load (atrous_cuda/_extension.py uses it
    to explain a load failure; `python -m atrous_cuda info` prints it)."""
    values = {
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "with_cuda": with_cuda,
        "cuda_toolkit_version": cuda_toolkit,
        "cuda_archs": cuda_archs,
        "python_version": ".".join(map(str, sys.version_info[:3])),
    }
    lines = ['"""Written by setup.py when the extension is built; not tracked by git."""']
    lines += [f"{key} = {value!r}" for key, value in values.items()]
    Path(path).write_text("\n".join(lines) + "\n")

cpp_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.cpp"))
cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").rglob("*.cu"))

warnings = ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-psabi"]
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=fast", *warnings]
if _truthy("ATROUS_WERROR"):
    cxx_flags.append("-Werror")
# The torch version this build is for, also compiled in (build_info() reports it).
define_macros = [("ATROUS_TORCH_VERSION", f'"{torch.__version__}"')]
extra_link_args = ["-fopenmp"]

if with_cuda:
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    define_macros += [("ATROUS_WITH_CUDA", None), ("ATROUS_CUDA_ARCHS", f'"{archs}"')]
    nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
                  "-Xcompiler", "-Wall", "-Xcompiler", "-Wno-unused-parameter"]
    if _truthy("ATROUS_WERROR"):
        nvcc_flags += ["-Werror", "all-warnings"]
    if _truthy("ATROUS_PTXAS_VERBOSE"):
        nvcc_flags += ["-Xptxas", "-v"]
    ext = CUDAExtension(
        "atrous_cuda._C",
        cpp_sources + cuda_sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=extra_link_args,
    )
else:
    ext = CppExtension(
        "atrous_cuda._C",
        cpp_sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=extra_link_args,
    )

write_build_config(ROOT / "atrous_cuda" / "_build_config.py",
                   os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else "",
                   _nvcc_release(cuda_home) if with_cuda else None)

setup(
    packages=find_packages(include=["atrous_cuda", "atrous_cuda.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
