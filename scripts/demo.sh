#!/usr/bin/env bash
# The demo: build the synthetic corpus (seconds) and train the smallest rung on it on the CPU.
# Extra arguments are Hydra overrides for the training run, e.g. `bash scripts/demo.sh seed=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m data.prepare data=synthetic
.venv/bin/python -m sweep.train model=gpt_1m data=synthetic budget.tokens=2e5 "$@"
