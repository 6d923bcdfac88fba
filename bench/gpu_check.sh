#!/usr/bin/env bash
# The GPU check, sized for a lent GPU machine (one GPU, no network, no venv, starts bare,
# at most 10 minutes a command). Run from anywhere; it works in the repository it lies in.
#
#   bash bench/gpu_check.sh A     build with the CUDA kernels, build_info, the whole Python test
#                                 suite on CUDA, every CUDA kernel under compute-sanitizer (≈ 5 min)
#   bash bench/gpu_check.sh B     benchmarks with targets: operators, dse, the regularizer against a
#                                 ViT-S/16 step, the eigensolvers (≈ 4 min; builds first if needed)
#   bash bench/gpu_check.sh       both, A then B
#
# Environment: PYTHON   the interpreter with torch and the build tools (default python3; no venv
#                       is made and nothing is downloaded: pip runs with --no-index)
#              OUT      folder for the logs (one per step) and summary.txt (default ./gpu-out)
#              TORCH_CUDA_ARCH_LIST  GPU architectures to compile (default 9.0: H100/H200)
#              TEST_JOBS=N           parallel pytest processes, one test file each (default: one
#                                    per 4 CPU cores, at most 4; 1 = a single `pytest python_tests`)
#              FORCE_BUILD=1         phase B rebuilds even when a CUDA build is installed
#              LIMIT_<STEP>=seconds  another time limit for a step (LIMIT_TESTS=900, LIMIT_BUILD=600)
#              BUDGET=seconds        for the whole run (default 570, under a 10-minute command limit):
#                                    a step gets at most what is left; one that cannot get 20 s is
#                                    not run and listed as such
# Every step has its own time limit and a failing step never stops the later ones; the exit
# status is 1 when any step failed. Without a GPU (e.g. to try the script on a CPU machine) the
# CUDA tests skip, the smoke script runs on the CPU, memcheck is skipped and phase B runs every
# benchmark at tiny sizes on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
SELF=bench/gpu_check.sh
PY=${PYTHON:-python3}

# The whole Python suite (called by phase A as `gpu_check.sh _tests JOBS`). With JOBS > 1 one
# pytest per test file, JOBS at a time (slow files first), each with its own log in $OUT/tests/:
# the suite fits the phase on a many-core machine. Prints one line per file.
if [ "${1:-}" = _tests ]; then
  jobs=$2
  if [ "$jobs" -le 1 ]; then
    exec "$PY" -P -m pytest -q -ra -p no:cacheprovider --durations=15 python_tests
  fi
  mkdir -p "$OUT/tests"
  TESTS_TMP=$(mktemp -d)
  export PY OUT TESTS_TMP OMP_NUM_THREADS=$(( $(nproc) / jobs ))
  slow="op_table examples demo autograd scoring demo_data distributed"
  files=$( (for n in $slow; do [ -f "python_tests/test_$n.py" ] && echo "python_tests/test_$n.py"; done
            ls python_tests/test_*.py) | awk '!seen[$0]++')
  echo "$files" | xargs -P "$jobs" -n 1 bash -c '
    name=$(basename "$1" .py)
    "$PY" -P -m pytest -q -ra -p no:cacheprovider --basetemp "$TESTS_TMP/$name" "$1" > "$OUT/tests/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc: $(tail -n 1 "$OUT/tests/$name.log")"
    [ $rc -eq 0 ]' _
  rc=$?
  rm -rf "$TESTS_TMP"
  exit $(( rc == 0 ? 0 : 1 ))
fi

OUT=${OUT:-gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || { echo "gpu_check: cannot create OUT=$OUT" >&2; exit 2; }
export OUT PYTHON=$PY
SUMMARY=$OUT/summary.txt
PHASES=${1:-AB}
# Parallel pytest processes for the suite: one per 4 cores, at most 4.
TEST_JOBS=${TEST_JOBS:-$(( $(nproc) / 4 > 4 ? 4 : $(nproc) / 4 ))}
case "$PHASES" in A|B|AB) ;; *) echo "usage: bash bench/gpu_check.sh [A|B]   (no argument: both)" >&2; exit 2;; esac
export DSE_CUDA=ON TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
failed=()
not_run=()
DEADLINE=$((SECONDS + ${BUDGET:-570}))

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit (LIMIT_<NAME>=seconds overrides it,
# e.g. LIMIT_TESTS=900 on a slow machine), output to $OUT/NAME.log, one summary line.
step() {
  local name=$1 limit=$2; shift 2
  local override="LIMIT_${name^^}"
  limit=${!override:-$limit}
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt 20 ]; then
    say "$name: NOT RUN, out of the time budget (BUDGET=${BUDGET:-570} s)"
    not_run+=("$name")
    return 125
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    say "$name: ok ($((SECONDS - t0)) s)"
  else
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
      say "$name: TIMED OUT after $limit s (log: $name.log), last lines:"
    else
      say "$name: FAILED with exit status $rc after $((SECONDS - t0)) s (log: $name.log), last lines:"
    fi
    tail -n 12 "$OUT/$name.log" | sed 's/^/    /' | tee -a "$SUMMARY"
    failed+=("$name")
  fi
  return $rc
}

# python -P: the source tree is not on sys.path, so `import dse_ext` is the installed package.
PYP=("$PY" -P)

build() {
  step build 240 "$PY" -m pip install -v --no-build-isolation --no-deps . && return 0
  if grep -qs "externally-managed-environment" "$OUT/build.log"; then
    say "build: this Python is marked externally managed; retrying with --break-system-packages"
    unset 'failed[${#failed[@]}-1]'
    step build 240 "$PY" -m pip install -v --no-build-isolation --no-deps --break-system-packages . && return 0
  fi
  return 1
}

# Where the sanitizer is: PATH, else next to the nvcc in use, else the usual toolkit folders.
find_sanitizer() {
  command -v compute-sanitizer && return 0
  local top
  top=$(nvcc -v --dryrun x.cu 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
  for c in "$top/bin/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
           /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

: > "$SUMMARY"
say "# dse_ext GPU check, phases $PHASES — $(date -u '+%Y-%m-%d %H:%M UTC'); logs in $OUT"
{
  date -u; uname -a
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  nvcc --version 2>&1 || echo "nvcc: not on PATH"
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'CUDA', torch.version.cuda)" 2>&1
} > "$OUT/machine.txt"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  say "gpu_check: $PY cannot import torch; set PYTHON to an interpreter that has torch and the build tools"
  exit 2
fi
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>/dev/null)
if [ -n "$GPU" ]; then
  say "machine: $GPU; $("$PY" -c "import torch; print('torch', torch.__version__)" 2>&1); nvcc $(nvcc --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
else
  say "machine: NO GPU visible to torch: CUDA tests skip, the benchmarks run as CPU smoke checks"
fi

phase_a() {
  say "## phase A: build, tests, sanitizer"
  build
  step build_info 60 "${PYP[@]}" -c "
import json, os, shutil, subprocess, torch, dse_ext
from dse_ext import _C
source = os.path.realpath(os.path.join(os.getcwd(), 'dse_ext'))
where = os.path.realpath(dse_ext.__file__)
print('dse_ext from', where)
print('build_info', json.dumps(dse_ext.build_info()))
print('torch', torch.__version__, 'CUDA', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')
if shutil.which('readelf'):
    dyn = subprocess.run(['readelf', '-d', _C.__file__], capture_output=True, text=True).stdout
    print('\n'.join(l.strip() for l in dyn.splitlines() if 'PATH' in l or 'NEEDED' in l))
else:
    print('readelf not found: RPATH not shown')
assert os.path.dirname(where) != source, 'imported the source tree, not the installed package'
assert dse_ext.cuda_built(), 'the installed module has no CUDA kernels'
"
  grep -sE "^(build_info|dse_ext from|torch )|R(UN)?PATH" "$OUT/build_info.log" | sed 's/^ *0x[0-9a-f]* *//; s/^/    /' | tee -a "$SUMMARY"

  [ "$TEST_JOBS" -gt 1 ] && rm -rf "$OUT/tests"
  step tests 180 env DSE_EXPECT_CUDA=1 bash "$SELF" _tests "$TEST_JOBS"
  [ $? -eq 125 ] && return
  local logs=("$OUT/tests.log")
  [ -d "$OUT/tests" ] && logs=("$OUT"/tests/*.log)
  { grep -hE "^(FAILED|ERROR) " "${logs[@]}" | sed 's/^/    /'
    # pytest's last line of each log, summed: "N passed, M skipped, ..."
    for f in "${logs[@]}"; do grep -E "[0-9]+ (passed|failed|skipped|errors?|deselected)" "$f" | tail -n 1; done \
      | grep -oE "[0-9]+ (passed|failed|skipped|errors?|xfailed|xpassed)" \
      | awk -v logs="${#logs[@]}" '{n[$2] += $1}
          END {s = ""; for (k in n) s = s (s ? ", " : "") n[k] " " k
               print "    pytest: " (s ? s : "no result line") " (" logs " log(s))"}'
  } | tee -a "$SUMMARY"

  if [ -z "$GPU" ]; then
    step cuda_smoke 120 "${PYP[@]}" bench/cuda_smoke.py --device cpu
    say "memcheck: skipped (no GPU)"
    return
  fi
  step cuda_smoke 90 "${PYP[@]}" bench/cuda_smoke.py
  grep -sE "^# (cuda_smoke|FAILED)" "$OUT/cuda_smoke.log" | sed 's/^/    /' | tee -a "$SUMMARY"
  local san
  if ! san=$(find_sanitizer); then
    say "memcheck: SKIPPED, compute-sanitizer not found (PATH, the toolkit of nvcc, /usr/local/cuda*)"
    return
  fi
  # Without the caching allocator every tensor is its own cudaMalloc, so memcheck sees
  # out-of-bounds accesses that would otherwise land inside a cached block.
  step memcheck 130 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$san" --tool memcheck --error-exitcode 3 \
    --report-api-errors no --print-limit 50 "$PY" -P bench/cuda_smoke.py
  local rc=$?
  [ $rc -eq 125 ] && return
  local errs
  errs=$(grep -s -m 1 -E "ERROR SUMMARY: [0-9]+ error" "$OUT/memcheck.log")
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    say "    memcheck: no verdict, cuda_smoke did not finish under the sanitizer in time (${errs:-see memcheck.log})"
  elif [ $rc -eq 0 ]; then
    say "    memcheck: clean — ${errs:-no error summary printed}"
  elif [ $rc -eq 3 ] || [[ "$errs" =~ [1-9][0-9]*\ error ]]; then
    say "    memcheck: MEMORY ERRORS in the CUDA kernels — $errs; first reports:"
    grep -m 8 -E "^========= (Invalid|Out-of-range|Misaligned|Address|Uninitialized|Program hit)" "$OUT/memcheck.log" \
      | sed 's/^/      /' | tee -a "$SUMMARY"
  elif [ -n "$errs" ]; then
    say "    memcheck: no memory errors ($errs), but cuda_smoke failed under the sanitizer (see memcheck.log)"
  else
    say "    memcheck: compute-sanitizer ($san) refused or could not run here, going on:"
    grep -m 3 -iE "error|not supported|unable" "$OUT/memcheck.log" | sed 's/^/      /' | tee -a "$SUMMARY"
  fi
}

phase_b() {
  say "## phase B: benchmarks"
  if [ "${FORCE_BUILD:-0}" = 1 ] || ! "${PYP[@]}" -c "import dse_ext, sys; sys.exit(0 if dse_ext.cuda_built() else 1)" >/dev/null 2>&1; then
    build || { say "phase B: no CUDA build, benchmarks skipped"; return; }
  fi
  if [ -n "$GPU" ]; then
    local sizes="64x196x384 256x196x384 1024x196x384"
    step bench_ops 75 "${PYP[@]}" bench/bench_ops.py --devices cuda --sizes $sizes --repeats 5
    step bench_dse 90 "${PYP[@]}" bench/bench_dse.py --devices cuda --no-reference --sizes $sizes --repeats 5
    step bench_regularizer 90 "${PYP[@]}" bench/bench_regularizer.py --device cuda --sizes 256x196x384 --no-reference \
      --repeats 10
    step bench_eigen 60 "${PYP[@]}" bench/bench_eigen_cuda.py
  else
    say "(no GPU: CPU smoke runs of the benchmark scripts at tiny sizes)"
    step bench_ops 120 "${PYP[@]}" bench/bench_ops.py --devices cpu --sizes 8x16x32 --repeats 1
    step bench_dse 180 "${PYP[@]}" bench/bench_dse.py --devices cpu --no-reference --sizes 8x16x32 --repeats 1
    step bench_regularizer 240 "${PYP[@]}" bench/bench_regularizer.py --device cpu --sizes 4x16x32 --no-reference --repeats 1
    step bench_eigen 60 "${PYP[@]}" bench/bench_eigen_cuda.py --device cpu --batch 64 --sizes 8 40 --repeats 1
  fi
  for name in bench_ops bench_dse bench_regularizer bench_eigen; do
    [ -f "$OUT/$name.log" ] || continue
    say "### $name"
    grep -E "^\||^# " "$OUT/$name.log" | tee -a "$SUMMARY"
  done
}

case "$PHASES" in
  A) phase_a ;;
  B) phase_b ;;
  AB) phase_a; phase_b ;;
esac
if [ ${#failed[@]} -eq 0 ] && [ ${#not_run[@]} -eq 0 ]; then
  say "gpu_check $PHASES: every step ok ($SECONDS s)"
  exit 0
fi
say "gpu_check $PHASES: FAILED steps: ${failed[*]:-none}; not run (time budget): ${not_run[*]:-none} ($SECONDS s; logs in $OUT)"
exit 1
