#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU (`make gpu-check`). It needs
# only what such a machine has: torch, nvcc, ninja, pytest; nothing is downloaded.
#   1. builds in place (CUDA kernels for TORCH_CUDA_ARCH_LIST, default 8.0;9.0), with the ptxas report
#   2. runs the test suite (the CUDA tests included)
#   3. runs compute-sanitizer memcheck and racecheck on bench/sanitizer_cases.py
#   4. runs the GPU benchmark suite (python -m atrous_cuda bench --device cuda)
#   5. writes bench/results/gpu-check-<device>-<time>.md with all of it (and, when $OUT is set,
#      as on the device tool's machines, copies the report and the logs there)
# GPU_CHECK_STEPS picks steps (default "build tests sanitizer bench") so the check can be split
# across commands with a time limit; GPU_CHECK_BENCH_ARGS adds arguments to the benchmark
# (e.g. "--quick"). Exit status: 0 only if every step that ran passed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
logs=${GPU_CHECK_LOGS:-$(mktemp -d)}
mkdir -p "$logs" bench/results
gpu=$($PY -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-') if torch.cuda.is_available() else 'no-gpu')")
if [ "$gpu" = no-gpu ] && [ "${GPU_CHECK_ALLOW_NO_GPU:-0}" != 1 ]; then
  echo "gpu_check: torch sees no CUDA device; this check is for a machine with an NVIDIA GPU" >&2
  echo "(GPU_CHECK_ALLOW_NO_GPU=1 runs it anyway, to test the script itself)" >&2
  exit 2
fi
report=bench/results/gpu-check-${gpu}-${stamp}.md
status=0
declare -A result

run_step() {  # name, log file, command...
  local name=$1 log=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  if "$@" >"$log" 2>&1; then result[$name]="passed ($((SECONDS - t0)) s)"; else result[$name]="FAILED ($((SECONDS - t0)) s)"; status=1; fi
  echo "   ${result[$name]}"
}

steps=" ${GPU_CHECK_STEPS:-build tests sanitizer bench} "
wants() { [[ "$steps" == *" $1 "* ]]; }

wants build && run_step build "$logs/build.log" env FORCE_CUDA=1 ATROUS_PTXAS_VERBOSE=1 $PY setup.py build_ext --inplace
wants tests && run_step tests "$logs/tests.log" $PY -m pytest -q -p no:cacheprovider -rs tests

sanitizer=$(command -v compute-sanitizer || true)
if [ -z "$sanitizer" ]; then
  cuda_home=$($PY -c "import torch.utils.cpp_extension as c; print(c.CUDA_HOME or '')" 2>/dev/null)
  for cand in "$cuda_home/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
    [ -x "$cand" ] && sanitizer=$cand && break
  done
fi
if ! wants sanitizer; then
  :
elif [ -n "$sanitizer" ]; then
  run_step memcheck "$logs/memcheck.log" "$sanitizer" --tool memcheck --error-exitcode 1 $PY bench/sanitizer_cases.py
  run_step racecheck "$logs/racecheck.log" "$sanitizer" --tool racecheck --error-exitcode 1 $PY bench/sanitizer_cases.py
else
  result[memcheck]="NOT RUN: compute-sanitizer not found"; result[racecheck]="NOT RUN: compute-sanitizer not found"; status=1
  echo "== compute-sanitizer not found: memcheck and racecheck NOT RUN"
fi
# shellcheck disable=SC2086
wants bench && run_step bench "$logs/bench.log" $PY -m atrous_cuda bench --device cuda --report "$logs/bench.md" --results-dir "$logs" ${GPU_CHECK_BENCH_ARGS:-}

{
  echo "# GPU check, $gpu, $stamp"
  echo
  echo "- $($PY -c "import torch, platform; print(f'python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}')")"
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1)"
  echo "- driver: $(nvidia-smi --query-gpu=driver_version,name --format=csv,noheader 2>/dev/null | head -1)"
  echo "- atrous_cuda: $($PY -c "import atrous_cuda, json; print(json.dumps(atrous_cuda.build_info() | {'cpu_parallel_backend': None}))" 2>&1 | tail -1)"
  echo "- git: $(git rev-parse --short HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l | tr -d ' ') uncommitted paths"
  echo
  echo "| step | result |"
  echo "|---|---|"
  for s in build tests memcheck racecheck bench; do echo "| $s | ${result[$s]:-not run} |"; done
  echo
  echo "## ptxas resource usage (registers, spills)"
  echo '```'
  [ -f "$logs/build.log" ] && grep -E "Compiling entry|Used [0-9]+ registers|spill" "$logs/build.log" | sed -E 's/ptxas info *: //' | \
    awk '/Compiling entry/{n=$0; next} /spill/{s=$0; next} /Used/{print n; print "   " s " | " $0}' | \
    sed -E "s/Compiling entry function '_ZN6atrous4cuda[0-9]+_GLOBAL__N__[0-9a-f]+_[0-9]+_//" | head -200
  echo '```'
  echo
  echo "## tests"
  echo '```'
  [ -f "$logs/tests.log" ] && tail -40 "$logs/tests.log"
  echo '```'
  for s in memcheck racecheck; do
    [ -f "$logs/$s.log" ] || continue
    echo "## compute-sanitizer $s"
    echo '```'
    tail -15 "$logs/$s.log"
    echo '```'
  done
  echo "## benchmark"
  if [ -f "$logs/bench.md" ]; then
    cat "$logs/bench.md"
  elif [ -f "$logs/bench.log" ]; then
    echo '```'; tail -40 "$logs/bench.log"; echo '```'
  else
    echo "not run"
  fi
  echo
  echo "Full logs: $logs"
} >"$report"
echo "report: $report"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$report" "$OUT/" && mkdir -p "$OUT/gpu-check-logs" && cp "$logs"/*.log "$logs"/*.md "$OUT/gpu-check-logs/" 2>/dev/null
  echo "copied the report and logs to $OUT"
fi
exit $status
