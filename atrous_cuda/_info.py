"""What `python -m atrous_cuda info` reports: versions, how the extension was
built, and what it runs with here."""
import platform
import sys

import torch


def collect():
    """A JSON-serializable dict. When the compiled module failed to load, the
    fields it would give are None and `load_error` says why."""
    from . import __version__, load_error
    from ._extension import build_config

    config = build_config()
    if load_error is not None:
        native = {"with_cuda": config.get("with_cuda"), "cuda_archs": config.get("cuda_archs"),
                  "cpu_isa": None, "cpu_isas_available": None, "cpu_threads": None}
    else:
        from . import build_info
        native = build_info()
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
        "load_error": None if load_error is None else str(load_error),
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
    if info.get("load_error"):
        rows[4] = ("CUDA kernels", cuda + " (from the build record)")
        rows[5] = ("CPU ISA", "unknown: the compiled module did not load")
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    if info.get("load_error"):
        text += "\n\nThe compiled module atrous_cuda._C FAILED TO LOAD:\n" + info["load_error"]
    return text
