"""Packaging and information: `python -m atrous_cuda info`, explained load
failures, and a wheel that installs into a fresh venv that already has torch.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

import atrous_cuda
from atrous_cuda._extension import REBUILD_HINT, explain_load_failure

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(atrous_cuda.__file__).resolve().parent


def _run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=kwargs.pop("timeout", 120), **kwargs)


# -------------------------------------------------------------------- info --


def test_info_json_reports_versions_build_cpu_and_gpu():
    result = _run([sys.executable, "-m", "atrous_cuda", "info", "--json"], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    native = atrous_cuda.build_info()
    assert info["atrous_cuda"] == atrous_cuda.__version__
    assert info["python"].startswith(sysconfig.get_python_version())
    assert info["torch"] == torch.__version__ and info["torch_cuda"] == torch.version.cuda
    assert info["torch_built_against"] == native["torch_version"] == torch.__version__
    assert info["torch_matches_build"] is True
    assert info["cuda_kernels"] == native["with_cuda"] and info["cuda_archs"] == native["cuda_archs"]
    assert info["cpu_isa"] == native["cpu_isa"] and info["cpu_isa"] in ("avx512_bf16", "avx512", "avx2", "baseline")
    assert info["gpu_visible"] == torch.cuda.is_available() == bool(info["gpus"])
    if torch.cuda.is_available():
        assert info["gpus"][0]["name"] == torch.cuda.get_device_name(0)


def test_info_text_is_human_readable():
    result = _run([sys.executable, "-m", "atrous_cuda", "info"], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(None, 1) if not line.startswith(("torch CUDA", "CUDA kernels", "CPU ISA", "GPU visible"))
                 else (line[:12].strip(), line[12:].strip()) for line in result.stdout.splitlines())
    assert lines["atrous_cuda"] == atrous_cuda.__version__
    assert lines["torch"].startswith(torch.__version__) and "built against" in lines["torch"]
    assert lines["CPU ISA"].startswith(atrous_cuda.build_info()["cpu_isa"])
    assert lines["GPU visible"].startswith("yes" if torch.cuda.is_available() else "none visible")
    assert lines["CUDA kernels"].startswith("compiled" if atrous_cuda.build_info()["with_cuda"] else "not compiled")


def test_info_rejects_unknown_arguments():
    result = _run([sys.executable, "-m", "atrous_cuda", "info", "--yaml"], cwd=ROOT)
    assert result.returncode == 2 and "expected nothing or --json" in result.stderr


# -------------------------------------------------------- loading failures --


def test_load_failure_message_names_both_torch_versions_and_the_fix():
    error = ImportError("/x/_C.so: undefined symbol: _ZN3c1010TensorImpl")
    config = {"torch_version": "2.3.0+cu121", "torch_cuda_version": "12.1", "python_version": "3.11.7"}
    message = explain_load_failure(error, config, torch_version="2.14.1+cu130", torch_cuda="13.0")
    assert "undefined symbol: _ZN3c1010TensorImpl" in message
    assert "built against torch 2.3.0+cu121 (CUDA 12.1), but this process runs torch 2.14.1+cu130 (CUDA 13.0)" in message
    assert REBUILD_HINT in message and "pip install --no-build-isolation --force-reinstall --no-deps ." in message


def test_load_failure_with_the_same_torch_says_the_cause_is_elsewhere():
    config = {"torch_version": torch.__version__, "torch_cuda_version": torch.version.cuda, "python_version": "3.11.7"}
    message = explain_load_failure(ImportError("libcudart.so.13: cannot open shared object file"), config)
    assert "built against this very torch" in message and "libcudart.so.13" in message


def test_load_failure_without_build_record():
    message = explain_load_failure(ImportError("boom"), {})
    assert "does not record which torch" in message and torch.__version__ in message


def _package_copy(tmp_path, build_config):
    """The Python files of atrous_cuda in a fresh folder, with the given
    _build_config.py and no compiled module."""
    target = tmp_path / "atrous_cuda"
    target.mkdir()
    for source in PACKAGE.glob("*.py"):
        if source.name != "_build_config.py":
            shutil.copy(source, target / source.name)
    if build_config is not None:
        (target / "_build_config.py").write_text(build_config)
    return target


def _import_in_subprocess(path):
    script = "import atrous_cuda"
    env = dict(os.environ, PYTHONPATH=str(path))
    return _run([sys.executable, "-c", script], env=env, cwd=str(path))


def _package_with_broken_extension(tmp_path):
    """A stand-in _C that references a libtorch symbol this torch lacks (what an
    extension built against another torch does), recorded as built for torch 2.3.0."""
    package = _package_copy(tmp_path, "torch_version = '2.3.0+cu121'\ntorch_cuda_version = '12.1'\n"
                                      "python_version = '3.11.7'\n")
    source = tmp_path / "stand_in.c"
    source.write_text("extern void _ZN3c1019AtrousMissingSymbolEv(void);\n"
                      "void *PyInit__C(void) { _ZN3c1019AtrousMissingSymbolEv(); return 0; }\n")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    compiled = _run(["cc", "-shared", "-fPIC", "-o", str(package / f"_C{suffix}"), str(source)])
    assert compiled.returncode == 0, compiled.stderr
    return package


needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build the stand-in extension")


@needs_cc
def test_info_still_reports_when_the_extension_does_not_load(tmp_path):
    _package_with_broken_extension(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    result = _run([sys.executable, "-m", "atrous_cuda", "info"], env=env, cwd=str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert f"torch         {torch.__version__}  (WARNING: built against 2.3.0+cu121; rebuild)" in result.stdout
    assert "The compiled module atrous_cuda._C FAILED TO LOAD" in result.stdout
    assert "undefined symbol: _ZN3c1019AtrousMissingSymbolEv" in result.stdout
    as_json = _run([sys.executable, "-m", "atrous_cuda", "info", "--json"], env=env, cwd=str(tmp_path))
    assert as_json.returncode == 1 and "AtrousMissingSymbol" in json.loads(as_json.stdout)["load_error"]
    # Everything else still refuses to import a broken package.
    assert _import_in_subprocess(tmp_path).returncode != 0


@needs_cc
def test_extension_built_for_another_torch_explains_itself(tmp_path):
    """A real dlopen failure, as an extension built against another torch gives."""
    _package_with_broken_extension(tmp_path)
    result = _import_in_subprocess(tmp_path)
    assert result.returncode != 0
    assert "ImportError: atrous_cuda: the compiled extension atrous_cuda._C failed to load" in result.stderr
    assert "undefined symbol: _ZN3c1019AtrousMissingSymbolEv" in result.stderr
    assert f"built against torch 2.3.0+cu121 (CUDA 12.1), but this process runs torch {torch.__version__}" in result.stderr
    assert "pip install --no-build-isolation --force-reinstall --no-deps ." in result.stderr


def test_missing_extension_says_it_was_never_built(tmp_path):
    _package_copy(tmp_path, None)
    result = _import_in_subprocess(tmp_path)
    assert result.returncode != 0
    assert "the compiled extension atrous_cuda._C is missing" in result.stderr
    assert "python setup.py build_ext --inplace" in result.stderr


# ------------------------------------------------------------------- wheel --

_SOURCES = ["setup.py", "pyproject.toml", "README.md", "csrc", "atrous_cuda"]


@pytest.mark.skipif(os.environ.get("ATROUS_PACKAGING_TESTS") != "1",
                    reason="compiles the extension from scratch (~100 s on 2 cores); opt in with ATROUS_PACKAGING_TESTS=1")
def test_wheel_installs_into_fresh_venv_with_torch(tmp_path):
    """pip wheel --no-build-isolation (CPU only, for speed) from a clean copy of
    the sources, then a fresh venv that sees this torch through a .pth file,
    pip install of the wheel alone, and a conv checked against torch there."""
    source = tmp_path / "src"
    source.mkdir()
    for name in _SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("*.so", "__pycache__", "_build_config.py"))
        else:
            shutil.copy(path, source / name)
    env = dict(os.environ, ATROUS_CPU_ONLY="1", MAX_JOBS=os.environ.get("MAX_JOBS", "2"))
    env.pop("FORCE_CUDA", None)  # CI sets it for the main build; this wheel is CPU-only on purpose
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(tmp_path / "dist"),
                  str(source)], env=env, timeout=900)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("atrous_cuda-*.whl")

    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    torch_site = Path(torch.__file__).resolve().parents[1]
    (site / "torch_from_host.pth").write_text(f"{torch_site}\n")
    installed = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], timeout=300)
    assert installed.returncode == 0, installed.stderr

    check = textwrap.dedent("""
        import json, torch, torch.nn.functional as F, atrous_cuda
        import atrous_cuda.models, atrous_cuda.receptive_field  # subpackages and modules ship too
        x, w = torch.randn(2, 3, 9, 9, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
        torch.testing.assert_close(atrous_cuda.atrous_conv2d(x, w, padding=2, dilation=2),
                                   F.conv2d(x, w, padding=2, dilation=2))
        from atrous_cuda._extension import build_config
        print(json.dumps({"file": atrous_cuda.__file__, "info": atrous_cuda.build_info()["torch_version"],
                          "config": build_config().get("torch_version")}))
    """)
    ran = _run([str(python), "-c", check], cwd=str(tmp_path))
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["file"].startswith(str(site)) and result["info"] == torch.__version__
    assert result["config"] == torch.__version__  # the wheel ships the generated _build_config.py
    info = _run([str(python), "-m", "atrous_cuda", "info", "--json"], cwd=str(tmp_path))
    assert info.returncode == 0 and json.loads(info.stdout)["torch_matches_build"] is True, info.stderr
