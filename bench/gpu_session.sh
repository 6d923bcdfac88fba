#!/usr/bin/env bash
# Everything to do on a lent GPU machine, in one batch (its time is short):
# build with the CUDA kernels, run the CUDA tests and the whole suite, time the
# operators on both devices and the metric. Logs go to $OUT (default ./gpu-out).
# Run from the repository root in an environment that has a CUDA torch, nvcc and
# the build tools (the device machines do: Python 3.12); no network is needed. `-P` keeps
# the source tree off sys.path, so the tests import the installed package.
set -uo pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export DSE_CUDA=ON TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
PY=${PYTHON:-python}
status=0
step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, report the exit status
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || { tail -n 40 "$OUT/$name.log"; status=1; }
  return $rc
}
{ date -u; nvidia-smi; } > "$OUT/machine.txt" 2>&1
step build "$PY" -m pip install --no-build-isolation --no-deps . || exit 1
step build_info "$PY" -P -c "import dse_ext, torch; print(dse_ext.build_info(), torch.__version__, torch.cuda.get_device_name())"
step test_cuda "$PY" -P -m pytest -q -ra python_tests/test_cuda.py
step test_all env DSE_EXPECT_CUDA=1 "$PY" -P -m pytest -q -ra python_tests
step bench_eigen "$PY" bench/bench_eigen_cuda.py
step bench_ops "$PY" bench/bench_ops.py --size 64x196x384
step bench_ops_1024 "$PY" bench/bench_ops.py --devices cuda --size 1024x196x384
# The whole metric on CUDA once every operator has a CUDA kernel (until then dse() uses the reference there).
if "$PY" -P -c "import torch, dse_ext._ops as o; raise SystemExit(0 if o.has_kernel(torch.device('cuda')) else 1)"; then
  step bench_dse "$PY" bench/bench_dse.py --devices cuda --no-reference --sizes 64x196x384 256x196x384 1024x196x384
  step bench_regularizer "$PY" bench/bench_regularizer.py --device cuda --sizes 64x196x384 256x196x384 --repeats 10
else
  echo "bench_dse: skipped (not every operator has a CUDA kernel yet)"
fi
cat "$OUT/bench_eigen.log" "$OUT"/bench_ops*.log "$OUT/bench_dse.log" "$OUT/bench_regularizer.log" 2>/dev/null | grep -E "^\||^#" || true
exit $status
