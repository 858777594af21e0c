#!/usr/bin/env bash
# The demo: the `smoke` sweep end to end on the CPU. Tokenize the Python standard library (no
# download), train 3 rungs x 3 token budgets, then collect and fit them into a report with plots.
# Relaunching it trains nothing: finished runs are skipped. Extra arguments are Hydra overrides
# for the sweep, e.g. `bash scripts/demo.sh seed=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m data.prepare data=stdlib
.venv/bin/python -m sweep.train experiment=smoke "$@"
ROOT="${SCALING_ROOT:-.}"  # where paths.root_dir puts runs/ (configs/paths/default.yaml)
.venv/bin/python -m sweep.status "$ROOT/runs/smoke"
.venv/bin/python -m sweep.fit "$ROOT/runs/smoke" --out "$ROOT/reports/smoke"
