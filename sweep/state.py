"""Where one run stands, read from its directory alone: finished, diverged, failed, running,
interrupted (resumable) or new. The sweep's relaunch decisions and `sweep.status` share it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.checkpoint import checkpoint_step, latest_checkpoint
from sweep.lock import is_locked
from sweep.records import RunRecord

# Ordered as `sweep.status` lists them: what needs attention first, then work in flight.
STATES = ("failed", "diverged", "interrupted", "running", "new", "finished")


@dataclass(frozen=True)
class RunState:
    """A run directory's state and what it holds for a status table."""

    state: str
    summary: dict[str, Any] | None  # summary.json when the run ended (any status)
    checkpoint_step: int | None  # the newest checkpoint's optimizer step
    last_eval: dict[str, Any] | None  # the last whole metrics.jsonl row


def _last_eval(path: Path) -> dict[str, Any] | None:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed run
        if isinstance(row, dict):
            return row
    return None


def read_run_state(run_dir: Path) -> RunState:
    """The state of `run_dir` (which need not exist: then it is `new`)."""
    summary = RunRecord(run_dir).read_summary()
    newest = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    step = checkpoint_step(newest) if newest is not None else None
    last = _last_eval(run_dir / "metrics.jsonl")
    # The lock comes first: a failed run being retrained still has its old summary.
    if run_dir.is_dir() and is_locked(run_dir):
        state = "running"
    elif summary is not None and summary.get("status") in ("finished", "diverged", "failed"):
        state = summary["status"]
    elif step is not None or last is not None:
        state = "interrupted"
    else:
        state = "new"
    return RunState(state=state, summary=summary, checkpoint_step=step, last_eval=last)
