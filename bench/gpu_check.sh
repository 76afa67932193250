#!/usr/bin/env bash
# shellcheck disable=SC2329  # the step functions run as `timeout LIMIT bash -c step_<name>`, on_signal by trap
# The GPU check (`make gpu-check`), sized for a borrowed machine: 15 minutes of device time in
# all (its 1-2 minute start included), at most 10 minutes per command, and only what a command
# writes under $OUT comes back, also when the command is cut off at its limit. Nothing is
# downloaded; it needs torch, nvcc, ninja and pytest (compute-sanitizer and ncu where present).
#
# The whole check is two commands, run one right after the other on the same (warm) machine,
# 390 + 360 s of budget, at most 13 minutes with their limits:
#
#   bash bench/gpu_check.sh --part 1     # device timeout_s=400: probe, build, parity, CUDA tests, quick bench
#   bash bench/gpu_check.sh --part 2     # device timeout_s=370: probe, build if needed, memcheck,
#                                        #   racecheck, full bench if time remains, one ncu capture
#
# (`make gpu-check GPU_CHECK_ARGS="--part 1"` is the same.) Without --part every step runs in one
# command with a 570 s budget (for a 600 s limit); the steps that do not fit are skipped.
#
# Steps, ordered by what they tell per second (name: estimated cost on a 16-core H100 machine):
#   probe        GPU name/arch, torch/CUDA/cudnn, ninja, Python headers, nvcc, compute-sanitizer,
#                ncu (15 s); always first, and the report's header is written right after it
#   build        FORCE_CUDA=1 ATROUS_PTXAS_VERBOSE=1 setup.py build_ext --inplace for the device's
#                own arch only (TORCH_CUDA_ARCH_LIST from torch.cuda.get_device_capability),
#                MAX_JOBS = all cores (180 s; 10 s when this machine already built these sources for
#                this arch, e.g. part 1 before part 2: build/gpu-check-build.stamp)
#   parity       every CUDA kernel in every dtype against the CPU kernels (bench/sanitizer_cases.py
#                without a sanitizer) and the CPU-vs-CUDA tests (45 s)
#   cuda-tests   pytest -m cuda: tests/test_cuda.py and the other GPU tests, not the CPU suite (90 s)
#   quick-bench  python -m atrous_cuda bench --device cuda --quick, bfloat16 and float32 (60 s)
#   memcheck     compute-sanitizer memcheck on bench/sanitizer_cases.py (120 s)
#   racecheck    compute-sanitizer racecheck on bench/sanitizer_cases.py (150 s)
#   full-bench   python -m atrous_cuda bench --device cuda, the whole GPU suite (240 s)
#   ncu          one Nsight Compute capture of the hottest kernel (implicit_gemm, bf16 ASPP-like
#                conv): ncu --launch-count 1 -k regex:implicit_gemm (60 s)
#
# Budget: --budget SECONDS or GPU_CHECK_BUDGET_S, counted from the script's start (defaults: 390
# for part 1, 360 for part 2, 570 without --part). A step whose estimate exceeds what is left is
# skipped ("skipped: would not fit (needs ~N s, M s left)"); a step that runs gets a `timeout` of
# its own limit, never past the budget (only the probe always runs, for at most 30 s past it). GPU_CHECK_COST_<STEP>=N overrides an estimate (STEP in
# capitals, '-' as '_', e.g. GPU_CHECK_COST_FULL_BENCH=120); the report lists the measured times.
#
# Results survive a cut-off: every step writes its log straight into $OUT/logs/<step>.log as it
# runs (or into GPU_CHECK_LOGS / a temporary folder when $OUT is unset), and appends its row to
# the report $OUT/gpu-check-<device>-<time>[-part<N>].md when it ends; the header (the probe) is
# written before the first long step. On SIGTERM/INT/HUP the running step is stopped and its row
# says "CUT OFF"; a SIGKILL still leaves every finished step's log and row. At the end the report
# gets the details (ptxas registers and spills, test and sanitizer summaries, bench tables) and is
# copied to bench/results/.
#
# Other settings:
#   GPU_CHECK_STEPS="..."     run these steps, in this order, instead of the part's (probe always
#                             runs first); the old names still work: tests = cuda-tests,
#                             sanitizer = memcheck racecheck, bench = full-bench
#   GPU_CHECK_BENCH_ARGS      extra arguments for the full bench
#   GPU_CHECK_ALLOW_NO_GPU=1  go through the steps without a GPU, to test this script: the GPU
#                             steps then fail or are reported NOT POSSIBLE, the report is written
#   GPU_CHECK_ARCH            build for this arch instead of the device's (e.g. without a GPU)
#   GPU_CHECK_REBUILD=1       build even when the stamp says this machine already built it
#   GPU_CHECK_MAX_JOBS        build parallelism (default: all cores; MAX_JOBS from make is ignored)
#   GPU_CHECK_TEST_SLEEP=N    test-only: the hidden step `test-sleep` (selectable only through
#                             GPU_CHECK_STEPS) sleeps N s (default 30), to check a cut-off's report
# Exit status: 0 only if every step that ran passed (skipped steps do not count; a step NOT
# POSSIBLE, e.g. compute-sanitizer missing, counts as failed); 2 when torch sees no GPU and
# GPU_CHECK_ALLOW_NO_GPU is not 1; 128+n when stopped by signal n.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
export ROOT=$PWD

part=all
budget=${GPU_CHECK_BUDGET_S:-}
while [ $# -gt 0 ]; do
  case $1 in
    --part) part=${2:-}; shift 2 || exit 2 ;;
    --part=*) part=${1#--part=}; shift ;;
    --budget) budget=${2:-}; shift 2 || exit 2 ;;
    --budget=*) budget=${1#--budget=}; shift ;;
    -h|--help) sed -n '3,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1' (expected --part 1|2|all, --budget SECONDS, --help)" >&2; exit 2 ;;
  esac
done
case $part in
  1) default_steps="build parity cuda-tests quick-bench"; default_budget=390 ;;
  2) default_steps="build memcheck racecheck full-bench ncu"; default_budget=360 ;;
  all) default_steps="build parity cuda-tests quick-bench memcheck racecheck full-bench ncu"; default_budget=570 ;;
  *) echo "gpu_check: --part must be 1, 2 or all, not '$part'" >&2; exit 2 ;;
esac
budget=${budget:-$default_budget}
if ! [[ $budget =~ ^[0-9]+$ ]]; then echo "gpu_check: the budget must be whole seconds, not '$budget'" >&2; exit 2; fi

steps=()
for s in ${GPU_CHECK_STEPS:-$default_steps}; do
  case $s in
    probe) ;;                                   # always runs, first
    tests) steps+=(cuda-tests) ;;
    sanitizer) steps+=(memcheck racecheck) ;;
    bench) steps+=(full-bench) ;;
    build|parity|cuda-tests|quick-bench|memcheck|racecheck|full-bench|ncu|test-sleep) steps+=("$s") ;;
    *) echo "gpu_check: unknown step '$s' in GPU_CHECK_STEPS" >&2; exit 2 ;;
  esac
done

export PY=${PYTHON:-python3}
export MAX_JOBS=${GPU_CHECK_MAX_JOBS:-$(nproc)}
export PYTHONUNBUFFERED=1      # logs fill as the steps go
# The in-place build is not installed: `python bench/sanitizer_cases.py` puts bench/ on sys.path,
# not the repository, and would not find atrous_cuda without this.
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export TQDM_DISABLE=1          # the bench's per-row lines still print; no progress bar in the logs
stamp=$(date -u +%Y%m%dT%H%M%SZ)
if [ -n "${OUT:-}" ]; then dest=$OUT; else dest=${GPU_CHECK_LOGS:-$(mktemp -d /tmp/gpu-check.XXXXXX)}; fi
export LOGS=$dest/logs
mkdir -p "$LOGS" || exit 2

# ------------------------------------------------------------------ steps --
# Each runs as `timeout LIMIT bash -c step_<name>`, its output going straight to its log.
# Exit code 97 means NOT POSSIBLE here (the reason is the log's last line).

step_probe() {
  "$PY" - <<'EOF'
import os, platform, sys, sysconfig
print(f"- python {platform.python_version()} ({sys.executable})")
import torch
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cudnn {cudnn}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    major, minor = torch.cuda.get_device_capability(0)
    print(f"- GPU: {p.name}, capability {major}.{minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2**30:.1f} GiB ({torch.cuda.device_count()} visible)")
    print(f"@gpu_name={p.name}")
    print(f"@gpu_arch={major}.{minor}")
else:
    print("- GPU: none visible to torch (torch.cuda.is_available() is False)")
from torch.utils import cpp_extension
print(f"@cuda_home={cpp_extension.CUDA_HOME or ''}")
print(f"- CUDA_HOME (torch's guess): {cpp_extension.CUDA_HOME}")
print(f"- ninja: {'yes' if cpp_extension.is_ninja_available() else 'NOT FOUND'}")
header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
print(f"- Python headers: {header if os.path.isfile(header) else 'NOT FOUND (' + header + ')'}")
try:
    from atrous_cuda import _info
    i = _info.collect()
    print(f"- atrous_cuda before this run's build: cuda_kernels={i['cuda_kernels']}, archs={i['cuda_archs']!r}, "
          f"built against torch {i['torch_built_against']}, load_error={i['load_error']}")
except Exception as e:  # noqa: BLE001 - the probe reports, never stops
    print(f"- atrous_cuda: import failed: {type(e).__name__}: {e}")
EOF
  local rc=$?
  echo "- nvcc: $(nvcc --version 2>/dev/null | tail -1 || true)${NVCC_NOTE:-}"
  echo "- compute-sanitizer: ${SANITIZER:-NOT FOUND}${SANITIZER:+ ($("$SANITIZER" --version 2>/dev/null | tail -1))}"
  echo "- ncu: ${NCU:-NOT FOUND}${NCU:+ ($("$NCU" --version 2>/dev/null | tail -1))}"
  echo "- driver: $(nvidia-smi --query-gpu=driver_version,name --format=csv,noheader 2>/dev/null | head -1 | grep . ||
    echo 'nvidia-smi not found or failed')"
  echo "- host: $(nproc) cores, MAX_JOBS=$MAX_JOBS; git $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
       "$(git --no-optional-locks status --porcelain 2>/dev/null | wc -l | tr -d ' ') uncommitted paths"
  return "$rc"
}

sources_stamp() {  # what a build depends on, for build/gpu-check-build.stamp
  { echo "arch=$ARCH python=$("$PY" -c 'import sys, torch; print(sys.version.split()[0], torch.__version__)')"
    find csrc setup.py -type f | LC_ALL=C sort | xargs cat; } | sha256sum | cut -d' ' -f1
}

build_is_current() {
  [ "${GPU_CHECK_REBUILD:-0}" != 1 ] && [ -n "$ARCH" ] && [ -f build/gpu-check-build.stamp ] &&
    [ "$(cat build/gpu-check-build.stamp)" = "$(sources_stamp)" ] &&
    "$PY" -c "import atrous_cuda, sys; sys.exit(not atrous_cuda.build_info()['with_cuda'])" 2>/dev/null
}

step_build() {
  if [ -z "$ARCH" ]; then
    echo "no GPU to take the arch from (GPU_CHECK_ARCH=9.0, say, builds anyway)"; return 97
  fi
  if build_is_current; then
    echo "already built on this machine for TORCH_CUDA_ARCH_LIST=$ARCH from these sources" \
         "(build/gpu-check-build.stamp; GPU_CHECK_REBUILD=1 rebuilds); see part 1's report for ptxas"
    return 0
  fi
  rm -f build/gpu-check-build.stamp
  echo "+ TORCH_CUDA_ARCH_LIST=$ARCH MAX_JOBS=$MAX_JOBS FORCE_CUDA=1 ATROUS_PTXAS_VERBOSE=1 $PY setup.py build_ext --inplace"
  TORCH_CUDA_ARCH_LIST=$ARCH FORCE_CUDA=1 ATROUS_PTXAS_VERBOSE=1 "$PY" setup.py build_ext --inplace || return
  "$PY" -c "import atrous_cuda, sys; b = atrous_cuda.build_info(); print('build_info:', {k: b[k] for k in ('with_cuda', 'cuda_archs', 'torch_version')}); sys.exit(not b['with_cuda'])" || return
  mkdir -p build && sources_stamp >build/gpu-check-build.stamp
  echo "built for TORCH_CUDA_ARCH_LIST=$ARCH"
}

step_parity() {
  local rc=0
  echo "+ $PY bench/sanitizer_cases.py   # every kernel, every dtype, against the CPU kernels"
  "$PY" bench/sanitizer_cases.py || rc=1
  echo "+ pytest: the CPU-vs-CUDA tests"
  "$PY" -m pytest -q -p no:cacheprovider -rfEs tests/test_cuda.py tests/test_assemble.py \
    -k "cpu_and_cuda_agree or test_cuda_matches_cpu" || rc=1
  return "$rc"
}

step_cuda_tests() {
  echo "+ $PY -m pytest -v -p no:cacheprovider -rfEs --durations=10 -m cuda tests"
  "$PY" -m pytest -v -p no:cacheprovider -rfEs --durations=10 -m cuda tests
}

step_quick_bench() {
  echo "+ $PY -m atrous_cuda bench --device cuda --quick --dtype bfloat16 --dtype float32 ..."
  "$PY" -m atrous_cuda bench --device cuda --quick --dtype bfloat16 --dtype float32 \
    --results-dir "$LOGS/quick-bench" --report "$LOGS/quick-bench.md"
}

sanitize() {  # tool
  if [ -z "$SANITIZER" ]; then
    echo "compute-sanitizer not found (PATH, CUDA_HOME/bin, /usr/local/cuda*/bin)"; return 97
  fi
  echo "+ $SANITIZER --tool $1 --error-exitcode 1 $PY bench/sanitizer_cases.py"
  "$SANITIZER" --tool "$1" --error-exitcode 1 "$PY" bench/sanitizer_cases.py
}
step_memcheck() { sanitize memcheck; }
step_racecheck() { sanitize racecheck; }

step_full_bench() {
  echo "+ $PY -m atrous_cuda bench --device cuda ${GPU_CHECK_BENCH_ARGS:-}"
  # shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS is a list of arguments
  "$PY" -m atrous_cuda bench --device cuda --results-dir "$LOGS/full-bench" --report "$LOGS/full-bench.md" \
    ${GPU_CHECK_BENCH_ARGS:-}
}

step_ncu() {
  if [ -z "$NCU" ]; then echo "ncu not found (PATH, CUDA_HOME/bin, /usr/local/cuda*/bin, /opt/nvidia)"; return 97; fi
  local case='import torch, atrous_cuda
x = torch.randn(2, 512, 65, 65, device="cuda", dtype=torch.bfloat16)
w = torch.randn(256, 512, 3, 3, device="cuda", dtype=torch.bfloat16)
atrous_cuda.atrous_conv2d(x, w, None, padding=12, dilation=12)
torch.cuda.synchronize()
print("ran one bf16 ASPP-like forward (2x512x65x65 -> 256, d=12)")'
  echo "+ $NCU --launch-count 1 -k regex:implicit_gemm -o $LOGS/ncu-implicit-gemm -f $PY -c <bf16 ASPP-like forward>"
  "$NCU" --launch-count 1 -k regex:implicit_gemm -o "$LOGS/ncu-implicit-gemm" -f "$PY" -c "$case" || return
  [ -f "$LOGS/ncu-implicit-gemm.ncu-rep" ] || { echo "ncu wrote no report (no kernel matched implicit_gemm?)"; return 1; }
  "$NCU" --import "$LOGS/ncu-implicit-gemm.ncu-rep" --page details
}

step_test_sleep() {
  echo "test-only step: sleeping ${GPU_CHECK_TEST_SLEEP:-30} s"
  sleep "${GPU_CHECK_TEST_SLEEP:-30}" && echo "slept ${GPU_CHECK_TEST_SLEEP:-30} s"
}

export -f step_probe sources_stamp build_is_current step_build step_parity step_cuda_tests step_quick_bench \
  sanitize step_memcheck step_racecheck step_full_bench step_ncu step_test_sleep

# estimated cost and own limit, seconds
declare -A cost=([probe]=15 [build]=180 [parity]=45 [cuda-tests]=90 [quick-bench]=60 [memcheck]=120
                 [racecheck]=150 [full-bench]=240 [ncu]=60 [test-sleep]=1)
declare -A limit=([probe]=90 [build]=540 [parity]=180 [cuda-tests]=300 [quick-bench]=180 [memcheck]=300
                  [racecheck]=300 [full-bench]=540 [ncu]=150 [test-sleep]=600)
for s in "${!cost[@]}"; do
  var=GPU_CHECK_COST_$(echo "${s//-/_}" | tr '[:lower:]' '[:upper:]')
  [[ ${!var:-} =~ ^[0-9]+$ ]] && cost[$s]=${!var}
done

# ----------------------------------------------------------------- report --
status=0
report=""          # set once the probe has named the device
current=""         # the step running now
step_pid=""
declare -a pending_rows=()

row() {  # step, result, took, summary: one table row, appended to the report at once
  local line log="logs/$1.log"
  [ -f "$LOGS/$1.log" ] || log="-"
  line="| $1 | $2 | $3 | ~${cost[$1]} s | ${4//|/\\|} | $log |"
  echo "   $2${4:+: $4}"
  if [ -n "$report" ]; then echo "$line" >>"$report"; else pending_rows+=("$line"); fi
}

summary() {  # step: one line from its log (the step's own pick, else its last line)
  local log=$LOGS/$1.log line
  [ -f "$log" ] || return 0
  line=$(summary_pick "$1" "$log" | tr -d '\r' | sed -E 's/^=+ //; s/ =+$//; s/^ +//; s/ +$//')
  [ -n "${line//[; ]/}" ] || line=$(grep -v '^\s*$' "$log" | tail -1 | tr -d '\r')
  echo "${line:0:200}"
}

PYTEST_TOTALS='[0-9]+ (passed|failed|skipped|errors?|deselected)|no tests ran'
summary_pick() {  # step, log
  local log=$2
  case $1 in
    probe) grep -m1 '^- GPU' "$log" | cut -c3- ;;
    build) if grep -q 'Used [0-9]* registers' "$log"; then
             echo "$(grep -c 'Used [0-9]* registers' "$log") ptxas entries, max $(grep -o 'Used [0-9]* registers' "$log" | awk '{print $2}' | sort -n | tail -1) registers, $(grep -E 'spill (stores|loads)' "$log" | grep -cvE ' 0 bytes spill stores, 0 bytes spill loads') with spills"
           else grep -v '^\s*$' "$log" | tail -1; fi ;;
    parity) echo "$(grep -E 'sanitizer cases|case\(s\) FAILED|no CUDA device' "$log" | tail -1); pytest: $(grep -E "$PYTEST_TOTALS" "$log" | tail -1)" ;;
    cuda-tests) grep -E "$PYTEST_TOTALS" "$log" | tail -1 ;;
    memcheck|racecheck) echo "$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1) $(grep -E 'sanitizer cases|case\(s\) FAILED|no CUDA device' "$log" | tail -1)" ;;
    ncu) if grep -q '==ERROR==' "$log"; then grep -m1 '==ERROR==' "$log"
         else echo "$(grep -m1 -oE 'implicit_gemm[a-z_]*' "$log") $(grep -m1 -E '^ *Duration' "$log" | tr -s ' ')"; fi ;;
  esac
}

write_header() {
  local name=${gpu_name:-no-gpu}
  report=$dest/gpu-check-${name//[^A-Za-z0-9._-]/-}-${stamp}$([ "$part" != all ] && echo "-part$part").md
  {
    echo "# GPU check, ${gpu_name:-no GPU}, $stamp, part $part"
    echo
    echo "Budget $budget s from the script's start; steps: probe ${steps[*]}."
    echo
    grep '^- ' "$LOGS/probe.log" 2>/dev/null   # the probe's own lines; warnings stay in logs/probe.log
    echo
    echo "| step | result | took | estimate | summary | log |"
    echo "|---|---|---|---|---|---|"
    for line in "${pending_rows[@]}"; do echo "$line"; done
  } >"$report"
  pending_rows=()
}

finish() {  # the details, then the copy under bench/results
  [ -n "$report" ] || write_header
  {
    echo
    echo "Ended after $SECONDS s of the $budget s budget; exit status $1."
    if [ -f "$LOGS/build.log" ] && grep -q 'Compiling entry' "$LOGS/build.log"; then
      echo; echo "## ptxas resource usage (registers, spills)"; echo '```'
      grep -E "Compiling entry|Used [0-9]+ registers|spill" "$LOGS/build.log" | sed -E 's/ptxas info *: //' |
        awk '/Compiling entry/{n=$0; next} /spill/{s=$0; next} /Used/{print n; print "   " s " | " $0}' |
        sed -E "s/Compiling entry function '_ZN6atrous4cuda[0-9]+_GLOBAL__N__[0-9a-f]+_[0-9]+_//" | head -200
      echo '```'
    fi
    for s in build parity cuda-tests memcheck racecheck ncu test-sleep; do
      [ -f "$LOGS/$s.log" ] || continue
      [ "$s" = build ] && grep -q 'Compiling entry' "$LOGS/build.log" && continue
      echo; echo "## $s (last lines of logs/$s.log)"; echo '```'
      case $s in
        cuda-tests) { grep -E '^(FAILED|ERROR) ' "$LOGS/$s.log" | head -30; tail -25 "$LOGS/$s.log"; } ;;
        ncu) grep -E 'implicit_gemm|Duration|Throughput|Registers Per|Achieved Occupancy|==ERROR==|==PROF==' "$LOGS/$s.log" |
               head -40 | grep . || tail -5 "$LOGS/$s.log" ;;
        *) tail -20 "$LOGS/$s.log" ;;
      esac | tr -d '\r'
      echo '```'
    done
    for s in quick-bench full-bench; do
      if [ -f "$LOGS/$s.md" ]; then echo; echo "## $s"; echo; sed 's/^## /### /' "$LOGS/$s.md"
      elif [ -f "$LOGS/$s.log" ]; then echo; echo "## $s (last lines of logs/$s.log)"; echo '```'; tail -30 "$LOGS/$s.log" | tr -d '\r'; echo '```'
      fi
    done
    echo; echo "Logs: $LOGS"
  } >>"$report"
  mkdir -p bench/results && cp "$report" bench/results/ && echo "report: $report (copied to bench/results/)"
}

on_signal() {  # name, number
  trap - TERM INT HUP
  [ -n "$step_pid" ] && kill -TERM "$step_pid" 2>/dev/null   # the step's timeout stops its whole group
  if [ -n "$current" ]; then
    row "$current" "CUT OFF by SIG$1" "$((SECONDS - current_t0)) s" "$(summary "$current")"
  fi
  status=$((128 + $2))
  finish "$status"
  exit "$status"
}
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP

run_step() {  # name
  local name=$1 est=${cost[$1]} left lim t0 rc took result
  left=$((budget - SECONDS))
  if [ "$name" = probe ]; then
    (( left < 30 )) && left=30        # the probe always runs: the report's header needs it
  elif (( est > left || left < 1 )); then
    echo "== $name"; row "$name" "skipped: would not fit (needs ~${cost[$name]} s, $((left > 0 ? left : 0)) s left)" "" ""
    return
  fi
  lim=${limit[$name]}; (( lim > left )) && lim=$left
  echo "== $name (estimate ${cost[$name]} s, limit $lim s): $LOGS/$name.log"
  current=$name; current_t0=$SECONDS; t0=$SECONDS
  timeout -k 10 "$lim" bash -c "step_${name//-/_}" >"$LOGS/$name.log" 2>&1 </dev/null &
  step_pid=$!
  wait "$step_pid"; rc=$?
  step_pid=""; current=""; took="$((SECONDS - t0)) s"
  case $rc in
    0) result=passed ;;
    97) result="NOT POSSIBLE"; status=1 ;;
    124|137)
      status=1
      if (( rc == 137 && SECONDS - t0 < lim )); then result="FAILED (killed, exit 137)"   # e.g. out of memory
      else result="TIMED OUT (limit $lim s$( (( lim < limit[$name] )) && echo ", the rest of the budget"))"; fi ;;
    *) result="FAILED (exit $rc)"; status=1 ;;
  esac
  row "$name" "$result" "$took" "$(summary "$name")"
}

# ------------------------------------------------------------------- main --
# Tools first, so the probe can report them (the toolkit as torch finds it, without importing torch).
cuda_home=${CUDA_HOME:-${CUDA_PATH:-}}
if [ -z "$cuda_home" ] && command -v nvcc >/dev/null; then cuda_home=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); fi
cuda_home=${cuda_home:-/usr/local/cuda}
find_tool() {  # name: the path, or nothing
  local cand
  command -v "$1" 2>/dev/null && return
  for cand in "$cuda_home/bin/$1" /usr/local/cuda/bin/"$1" /usr/local/cuda-*/bin/"$1" /opt/nvidia/nsight-compute/*/"$1"; do
    [ -x "$cand" ] && echo "$cand" && return
  done
}
SANITIZER=$(find_tool compute-sanitizer); NCU=$(find_tool ncu)
export SANITIZER NCU ARCH=""
command -v nvcc >/dev/null || [ ! -x "$cuda_home/bin/nvcc" ] || export NVCC_NOTE=" (not on PATH; $cuda_home/bin/nvcc exists)"

echo "gpu_check: part $part, budget $budget s, steps: probe ${steps[*]}; logs in $LOGS"
run_step probe
gpu_name=$(sed -n 's/^@gpu_name=//p' "$LOGS/probe.log" 2>/dev/null | head -1)
ARCH=${GPU_CHECK_ARCH:-$(sed -n 's/^@gpu_arch=//p' "$LOGS/probe.log" 2>/dev/null | head -1)}
export ARCH
write_header
echo "report (filled as the steps end): $report"

if [ -z "$gpu_name" ] && [ "${GPU_CHECK_ALLOW_NO_GPU:-0}" != 1 ]; then
  echo "gpu_check: torch sees no CUDA device; this check is for a machine with an NVIDIA GPU" >&2
  echo "(GPU_CHECK_ALLOW_NO_GPU=1 runs it anyway, to test the script itself)" >&2
  echo "| (stopped) | torch sees no CUDA device; GPU_CHECK_ALLOW_NO_GPU=1 goes on anyway | | | | |" >>"$report"
  finish 2
  exit 2
fi

if [[ " ${steps[*]} " == *" build "* ]] && build_is_current; then cost[build]=10; fi
for s in "${steps[@]}"; do run_step "$s"; done
finish "$status"
exit "$status"
