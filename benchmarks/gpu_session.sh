#!/usr/bin/env bash
# One lent-GPU session in one command: build the extension with its CUDA kernels, run the GPU half of the parity
# suite (every test whose id names cuda: native CUDA and Triton), then the GPU benchmarks. Each step has its own
# time limit and the script goes on after a failure, so one call brings back everything it got to.
#
#   bash benchmarks/gpu_session.sh [steps]     steps: any of build tests profile tune bench-propagate
#                                              bench-info_nce bench-knn bench-topk_scores (default: all but profile and tune)
#   TESTS_K=<pytest -k expression>             which tests (default: cuda, every GPU test)
#   BENCH_K=<pytest -k expression>             which benchmarks (default: all)
#   TUNE_OPS=<ops>                             which sweeps of tune_gpu.py (default: all)
#
# Logs, junit XML and pytest-benchmark JSON go to $OUT (the device tool's return folder; ./gpu-out elsewhere),
# packed at the end into $OUT/gpu-session.tar.gz beside summary.txt and machine.txt.
# Data: MMREC_FAST_DATA if set, else ./.gpudata when present (a git-ignored copy of ../shared/data carried to the
# device machine, which does not have ../shared), else the benchmarks that need Baby skip.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
STEPS="${*:-build tests bench-propagate bench-info_nce bench-knn bench-topk_scores}"
if [ -z "${MMREC_FAST_DATA:-}" ] && [ -d .gpudata ]; then export MMREC_FAST_DATA="$PWD/.gpudata"; fi
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
SUMMARY="$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the exit status
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$SUMMARY"
  return $rc
}

{
  echo "== machine"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  "$PY" -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name())"
  nproc
} >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

for s in $STEPS; do
  case $s in
    build)
      # Ahead-of-time build against the machine's torch (a CUDA build): compiles csrc/cuda/*.cu too.
      MAX_JOBS=$(nproc) step build 420 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . \
        && "$PY" -c "import mmrec_fast, json; from mmrec_fast import _native; print(json.dumps(_native.status())); print(mmrec_fast.available())" \
          | tee -a "$SUMMARY"
      ;;
    tests)
      step tests 360 "$PY" -m pytest tests -q -k "${TESTS_K:-cuda}" -n 8 -p no:cacheprovider --junitxml="$OUT/tests.xml"
      tail -n 30 "$OUT/tests.log"
      ;;
    profile)
      step profile 120 "$PY" benchmarks/profile_gpu.py ${PROFILE_GRAPHS:-}
      cat "$OUT/profile.log"
      ;;
    tune)
      step tune 420 "$PY" benchmarks/tune_gpu.py ${TUNE_OPS:-}
      cat "$OUT/tune.log"
      ;;
    bench-*)
      op=${s#bench-}
      step "$s" 300 "$PY" -m pytest "benchmarks/bench_$op.py" -q -p no:cacheprovider ${BENCH_K:+-k "$BENCH_K"} \
        --benchmark-json="$OUT/$s.json" --benchmark-columns=median,iqr,rounds
      sed -n '/mmrec_fast ratios/,$p' "$OUT/$s.log"
      ;;
  esac
done
echo "== summary"
cat "$SUMMARY"
# The device tool brings back at most 8 files: everything else travels in one archive.
(cd "$OUT" && tar czf gpu-session.tar.gz --exclude=gpu-session.tar.gz --exclude=summary.txt --exclude=machine.txt . \
  && find . -type f ! -name gpu-session.tar.gz ! -name summary.txt ! -name machine.txt -delete)
