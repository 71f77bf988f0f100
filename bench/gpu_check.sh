#!/usr/bin/env bash
# Capture, a training step and generation on a GPU, as ratios to plain HF (see bench/gpu_check.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
"$PY" bench/gpu_check.py "$@"
