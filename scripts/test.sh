#!/usr/bin/env bash
# The test suite from a fresh clone: setup.sh (venv, torch, dependencies, build), then README's test command
# (the parity suites of every backend that runs here, Triton in its interpreter, the nvcc compile checks where nvcc
# exists). .ci/run calls this. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
# shellcheck disable=SC1091
source "${VENV:-$ROOT/.venv}/bin/activate"
cd "$ROOT"
python -c "import json, mmrec_fast; print(json.dumps(mmrec_fast.info(), indent=1, default=str))"
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  echo "test.sh: nvcc not found: the CUDA compile checks will be skipped (tests/test_nvcc_compile.py)"
fi
python -m pytest tests -q "$@"
