#!/usr/bin/env bash
# Set up mmrec_fast from a fresh clone: a virtual environment ($VENV, default .venv in the repository), torch
# pinned first (a bare `torch` requirement can pull a multi-GB CUDA build; $TORCH_SPEC overrides the pin, e.g. a
# CUDA build), the Python dependencies, then the C++ extension built against that torch, with the compiler's
# progress shown. Idempotent: a second run reuses the environment. Used by demo.sh, test.sh and .ci/run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

step() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

if [ ! -x "$VENV/bin/python" ]; then
  step "creating the virtual environment $VENV"
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
step "installing $TORCH_SPEC and the dependencies"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "$TORCH_SPEC"
python -m pip install --quiet triton numpy scipy tqdm ninja pytest pytest-benchmark hypothesis matplotlib optuna
step "building the C++ extension mmrec_fast._C (a few minutes on 2 cores; each compiled file is listed)"
# --no-build-isolation: build against the torch installed above, not a second one in an isolated environment;
# -v shows ninja's [k/n] lines (printed here), the whole log goes to $VENV/build.log
if ! python -m pip install -v --no-build-isolation -e "$ROOT" 2>&1 | tee "$VENV/build.log" \
    | sed -nu -E 's|^ *(\[[0-9]+/[0-9]+\]) .* -c ([^ ]+\.(cpp\|cu)) .*|  \1 compiling \2|p; /^Successfully installed/p' \
    | grep --line-buffered .; then
  echo "setup.sh: the build failed; the last lines of $VENV/build.log:" >&2
  tail -n 30 "$VENV/build.log" >&2
  exit 1
fi
python -c "import mmrec_fast; n = mmrec_fast.info()['native']; print('mmrec_fast', mmrec_fast.__version__, '- native extension:', n['how'] if n['available'] else 'NOT available: ' + str(n['error']))"
