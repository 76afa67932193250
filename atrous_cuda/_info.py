"""What `python -m atrous_cuda info` reports: versions, how the extension was
built, and what it runs with here."""
import platform
import sys

import torch


def collect():
    """A JSON-serializable dict."""
    from . import __version__, build_info
    from ._extension import build_config

    native = build_info()
    config = build_config()
    built_for = native.get("torch_version", config.get("torch_version", "unknown"))
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append({"index": i, "name": torch.cuda.get_device_name(i), "capability": f"{major}.{minor}"})
    return {
        "atrous_cuda": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "torch_built_against": built_for,
        "torch_matches_build": built_for.split("+")[0] == torch.__version__.split("+")[0],
        "torch_cuda": torch.version.cuda,
        "cuda_kernels": native["with_cuda"],
        "cuda_toolkit_built_with": config.get("cuda_toolkit_version"),
        "cuda_archs": native["cuda_archs"],
        "cpu_isa": native["cpu_isa"],
        "cpu_isas_available": native["cpu_isas_available"],
        "cpu_threads": native["cpu_threads"],
        "gpu_visible": bool(gpus),
        "gpus": gpus,
    }


def format_text(info):
    """The human-readable report."""
    def yes_no(flag):
        return "yes" if flag else "no"

    torch_line = info["torch"]
    if not info["torch_matches_build"]:
        torch_line += f"  (WARNING: built against {info['torch_built_against']}; rebuild)"
    else:
        torch_line += f"  (built against {info['torch_built_against']})"
    cuda = "not compiled (CPU-only build)"
    if info["cuda_kernels"]:
        cuda = (f"compiled with CUDA toolkit {info['cuda_toolkit_built_with'] or 'unknown'} for "
                f"TORCH_CUDA_ARCH_LIST={info['cuda_archs']}")
    if info["gpus"]:
        gpu = "; ".join(f"{g['index']}: {g['name']} (compute capability {g['capability']})" for g in info["gpus"])
    else:
        gpu = "none visible (torch.cuda.is_available() is False)"
    rows = [
        ("atrous_cuda", info["atrous_cuda"]),
        ("python", info["python"]),
        ("torch", torch_line),
        ("torch CUDA", info["torch_cuda"] or "none (CPU build of torch)"),
        ("CUDA kernels", cuda),
        ("CPU ISA", f"{info['cpu_isa']} (available here: {info['cpu_isas_available']}), "
                    f"{info['cpu_threads']} threads"),
        ("GPU visible", f"{yes_no(info['gpu_visible'])}: {gpu}" if info["gpus"] else gpu),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
