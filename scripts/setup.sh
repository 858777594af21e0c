#!/usr/bin/env bash
# Make .venv and install the project: torch first from the pinned constraints (so pip never pulls
# an unpinned multi-GB build), then the package in editable mode with the dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -c constraints.txt torch
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
# Triton: a CUDA build of torch brings its own; a CPU build none, and the fused loss's kernel is
# then tested by Triton's CPU interpreter: this release (not in constraints.txt, where it would
# clash with the triton a CUDA torch requires).
if ! .venv/bin/python -c "import triton" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "triton==3.6.0"
fi
echo "ready: source .venv/bin/activate"
