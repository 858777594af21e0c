"""`python -m sweep.status SWEEP_DIR`: every run of a sweep by state, with its N, D, C and loss.

Reads run directories and the sweep's plan (sweep.json) only; it needs no torch and no GPU.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from sweep.errors import OneLineParser
from sweep.grid import finite_or_none, read_manifest
from sweep.state import STATES, read_run_state

ORDER = (*STATES, "skipped")  # `skipped`: a grid point the sweep left out (e.g. D/N range)


@dataclass(frozen=True)
class StatusRow:
    """One run (or skipped grid point) of a sweep."""

    state: str
    run_id: str
    N: int | None
    D: int | None
    C: float | None
    loss: float | None  # final val_loss, or the latest eval's for an unfinished run
    step: int | None  # optimizer steps done (latest eval, or the checkpoint if newer)
    steps: int | None  # the run's planned steps
    note: str


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and any(
        (path / name).exists() for name in ("config.yaml", "summary.json", "metrics.jsonl")
    )


def _planned_steps(run_dir: Path) -> int | None:
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        return int(config["resolved"]["budget"]["steps"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def _row(run_dir: Path, planned: dict[str, Any]) -> StatusRow:
    st = read_run_state(run_dir)
    summary = st.summary or {}
    last = st.last_eval or {}
    finished = st.state in ("finished", "diverged", "failed") and summary
    steps_done = [s for s in (last.get("step"), st.checkpoint_step) if isinstance(s, int)]
    if finished:
        n, d, c = summary.get("params", {}).get("non_embedding"), summary.get("tokens"), (
            summary.get("flops_6nd"))
        loss, step = finite_or_none(summary.get("val_loss")), summary.get("steps")
    else:
        n, d, c = planned.get("N"), planned.get("D"), planned.get("C")
        loss, step = finite_or_none(last.get("val_loss")), max(steps_done, default=None)
    note = ""
    if st.state in ("failed", "diverged"):
        note = str(summary.get("error") or "")
    elif st.state == "interrupted":
        note = (f"resumes from step {st.checkpoint_step}" if st.checkpoint_step is not None
                else "no checkpoint: restarts")
    return StatusRow(
        state=st.state,
        run_id=run_dir.name,
        N=n,
        D=d,
        C=c,
        loss=loss,
        step=step,
        steps=_planned_steps(run_dir) or (summary.get("steps") if finished else None),
        note=note,
    )


def sweep_status(sweep_dir: Path) -> list[StatusRow]:
    """Rows for every run directory in `sweep_dir` and every planned point not started yet."""
    # Two grid points can be one run (the second is marked skip): the one that trains it wins
    planned: dict[object, dict] = {}
    for point in read_manifest(sweep_dir):
        run_id = point.get("run_id")
        if run_id not in planned or planned[run_id].get("action") == "skip":
            planned[run_id] = point
    rows = [
        _row(path, planned.get(path.name, {}))
        for path in sorted(sweep_dir.iterdir())
        if _is_run_dir(path)
    ]
    seen = {row.run_id for row in rows}
    for run_id, point in planned.items():
        if run_id in seen or not isinstance(run_id, str):
            continue
        seen.add(run_id)
        skipped = point.get("action") == "skip"
        rows.append(
            StatusRow(
                state="skipped" if skipped else "new",
                run_id=run_id,
                N=point.get("N"),
                D=point.get("D"),
                C=point.get("C"),
                loss=None,
                step=None,
                steps=None,
                note=str(point.get("reason") or "") if skipped else "not started",
            )
        )
    rank = {state: i for i, state in enumerate(ORDER)}
    return sorted(rows, key=lambda r: (rank.get(r.state, len(ORDER)), r.N or 0, r.D or 0))


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_status(sweep_dir: Path, rows: Sequence[StatusRow]) -> str:
    """The table: state, run, N, D, C, loss, progress and a note, then the counts by state."""
    header = ("state", "run", "N", "D", "C", "loss", "steps", "note")
    cells = [
        (
            r.state,
            r.run_id,
            _num(r.N, ",d"),
            _num(r.D, ",d"),
            _num(r.C, ".3e"),
            _num(r.loss, ".4f"),
            f"{_num(r.step, 'd')}/{_num(r.steps, 'd')}",
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(row[c]) for row in [header, *cells]) for c in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [header, *cells]
    ]
    counts = Counter(r.state for r in rows)
    tally = ", ".join(f"{counts[s]} {s}" for s in ORDER if counts[s])
    lines.append(f"{sweep_dir}: {len(rows)} runs: {tally or 'none'}")
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the status table (or JSON rows with --json); exit 2 on a bad directory."""
    parser = OneLineParser(prog="python -m sweep.status", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep's folder, e.g. runs/smoke")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(
            f"error: sweep directory {args.sweep_dir} does not exist: pass "
            "<paths.runs_dir>/<experiment_name>, e.g. runs/smoke",
            file=sys.stderr,
        )
        return 2
    rows = sweep_status(args.sweep_dir)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
    else:
        print(format_status(args.sweep_dir, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
