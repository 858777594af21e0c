#!/usr/bin/env bash
# The project's test command (README and CI): lint, then the CPU test suite. Slow end-to-end runs
# are marked `slow` and skipped here; CUDA tests skip themselves without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export WANDB_MODE=disabled  # tests never touch the network
.venv/bin/ruff check .
.venv/bin/python -m pytest -m "not slow" -n auto --dist loadfile "$@"
