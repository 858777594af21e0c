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
# Triton: a CUDA build of torch brings its own. With a CPU build the fused loss's kernel is
# tested by Triton's CPU interpreter, from this release installed beside the environment, not in
# it: torch imports any Triton it finds, which would change every process the tests start (and
# in constraints.txt it would clash with the Triton a CUDA torch requires).
if ! .venv/bin/python -c "import triton" 2>/dev/null && [ ! -d .venv/triton-interpreter/triton ]; then
    .venv/bin/python -m pip install --quiet --target .venv/triton-interpreter "triton==3.6.0"
fi
echo "ready: source .venv/bin/activate"
