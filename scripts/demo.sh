#!/usr/bin/env bash
# The main job from a fresh clone: setup.sh (venv, torch, dependencies, build), then LightGCN trained on the
# embedded synthetic dataset with validation every 5 epochs, the best model's test metrics and the time per epoch;
# the run record and checkpoints go to runs/lightgcn. Extra arguments go to `mmrec-fast train`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
# shellcheck disable=SC1091
source "${VENV:-$ROOT/.venv}/bin/activate"
cd "$ROOT"
echo; echo "== the main job: mmrec-fast train --model lightgcn --epochs 20 --lr 5e-3 --eval-every 5 --out runs/lightgcn $*"
mmrec-fast train --model lightgcn --epochs 20 --lr 5e-3 --eval-every 5 --out runs/lightgcn "$@"
