#!/usr/bin/env bash
# Checks the CMake build: configures and builds the CPU-only extension in a
# temporary folder, then imports that build (not the in-tree one) and compares
# a few convolutions and their gradients with torch.nn.functional.conv2d.
#
#   bench/cmake_check.sh [extra cmake -D args...]
#
# Environment: PYTHON (default .venv/bin/python, else python3), JOBS (default
# 2), BUILD_DIR (default a fresh temporary folder), KEEP=1 keeps a temporary
# BUILD_DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
# The script changes folders: make a relative interpreter path absolute.
if [[ "$PYTHON" == */* && "$PYTHON" != /* ]]; then PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"; fi
JOBS="${JOBS:-2}"
if [[ -n "${BUILD_DIR:-}" ]]; then
  OWN_DIR=0
else
  BUILD_DIR="$(mktemp -d "${TMPDIR:-/tmp}/atrous-cmake-check.XXXXXX")"
  OWN_DIR=1
fi
cleanup() {
  if [[ "$OWN_DIR" == 1 && "${KEEP:-0}" != 1 ]]; then rm -rf "$BUILD_DIR"; fi
}
trap cleanup EXIT

GENERATOR=()
if command -v ninja >/dev/null 2>&1 || [[ -x "$(dirname "$PYTHON")/ninja" ]]; then
  GENERATOR=(-G Ninja)
  PATH="$(dirname "$PYTHON"):$PATH"  # the venv's ninja, if that is the one
fi
TORCH_CMAKE="$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')"

echo "== cmake $(cmake --version | head -n1 | awk '{print $3}'), python $PYTHON, build dir $BUILD_DIR"
t0=$SECONDS
cmake -S "$ROOT" -B "$BUILD_DIR" "${GENERATOR[@]}" \
  -DCMAKE_PREFIX_PATH="$TORCH_CMAKE" -DPython_EXECUTABLE="$PYTHON" -DATROUS_WITH_CUDA=OFF "$@"
t1=$SECONDS
cmake --build "$BUILD_DIR" -j "$JOBS"
t2=$SECONDS

# Run from the build dir so the source tree's atrous_cuda/ is not on sys.path.
cd "$BUILD_DIR"
PYTHONPATH="$BUILD_DIR/python" ATROUS_EXPECT_DIR="$BUILD_DIR/python/atrous_cuda" "$PYTHON" - <<'EOF'
import os

import torch
import torch.nn.functional as F

import atrous_cuda
from atrous_cuda import _C

expect = os.path.realpath(os.environ["ATROUS_EXPECT_DIR"])
for mod in (atrous_cuda, _C):
    assert os.path.realpath(mod.__file__).startswith(expect + os.sep), f"imported {mod.__file__}, not the CMake build"
info = _C.build_info()
assert info["with_cuda"] is False, info
print(f"imported {_C.__file__}\n  cpu_isa={info['cpu_isa']} threads={info['cpu_threads']}")

torch.manual_seed(0)
cases = [  # (N, C_in, H, W, C_out, k, stride, padding, dilation, groups, dtype)
    (2, 8, 17, 19, 6, 3, 1, 2, 2, 1, torch.float64),
    (1, 6, 23, 21, 4, 3, 2, 6, 6, 2, torch.float64),
    (2, 16, 33, 33, 8, 3, 1, 12, 12, 1, torch.float32),
]
for n, cin, h, w, cout, k, stride, padding, dilation, groups, dtype in cases:
    x = torch.randn(n, cin, h, w, dtype=dtype, requires_grad=True)
    wt = torch.randn(cout, cin // groups, k, k, dtype=dtype, requires_grad=True)
    b = torch.randn(cout, dtype=dtype, requires_grad=True)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = atrous_cuda.atrous_conv2d(x, wt, b, **kw)
    ref = F.conv2d(x, wt, b, **kw)
    gy = torch.randn_like(ref)
    grads = torch.autograd.grad(y, (x, wt, b), gy)
    ref_grads = torch.autograd.grad(ref, (x, wt, b), gy)
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    errs = [(y - ref).abs().max().item()] + [(g - r).abs().max().item() for g, r in zip(grads, ref_grads)]
    print(f"  {tuple(x.shape)} k={k} s={stride} p={padding} d={dilation} g={groups} {dtype}: "
          f"max err y/dx/dw/db = " + " ".join(f"{e:.1e}" for e in errs))
    assert y.shape == ref.shape and max(errs) < tol * max(1.0, ref.abs().max().item()), errs
print("OK: the CMake-built atrous_cuda._C matches F.conv2d")
EOF
t3=$SECONDS
echo "== configure $((t1 - t0)) s, build $((t2 - t1)) s, check $((t3 - t2)) s"
