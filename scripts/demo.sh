#!/usr/bin/env bash
# The demo: tokenize the Python standard library (real text, no download; ~20 s) and train the
# smallest rung on it on the CPU. Extra arguments are Hydra overrides for the training run, e.g.
# `bash scripts/demo.sh seed=1`. `data=synthetic` instead trains on a corpus of known entropy.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m data.prepare data=stdlib
.venv/bin/python -m sweep.train model=gpt_1m data=stdlib budget.tokens=2e5 "$@"
