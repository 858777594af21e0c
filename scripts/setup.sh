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
echo "ready: source .venv/bin/activate"
