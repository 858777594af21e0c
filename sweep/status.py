"""`python -m sweep.status DIR`: every run of a sweep by state, with its N, D, C and loss.

DIR is an experiment's folder, the runs folder holding them (every experiment, one table each) or
one run's folder. Reads run directories and the sweep's plan (sweep.json) only; no torch, no GPU.
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

from models.counting import non_embedding_params
from sweep.checkpoint import checkpoint_step
from sweep.errors import OneLineParser, finite_or_none
from sweep.grid import MANIFEST, read_manifest
from sweep.stable import state_for
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


def _resolved(run_dir: Path) -> dict[str, Any]:
    """config.yaml's `resolved` section ({} when it is missing or unreadable)."""
    try:
        resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["resolved"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return {}
    return resolved if isinstance(resolved, dict) else {}


def _planned_steps(resolved: dict[str, Any]) -> int | None:
    try:
        return int(resolved["budget"]["steps"])
    except (KeyError, TypeError, ValueError):
        return None


def _configured_ndc(resolved: dict[str, Any]) -> dict[str, Any]:
    """N, D and C = 6ND of a run from its config.yaml: a run that has no summary yet (running,
    interrupted, or one launched alone with no sweep.json) still has its numbers there."""
    try:
        model, tokens = resolved["model"], int(resolved["budget"]["tokens"])
        n = non_embedding_params(int(model["n_layer"]), int(model["d_model"]),
                                 int(model["mlp_ratio"]), bool(model["bias"]))
    except (KeyError, TypeError, ValueError):
        return {}
    return {"N": n, "D": tokens, "C": 6 * n * tokens}  # an int, as summary.json's flops_6nd


def _row(run_dir: Path, planned: dict[str, Any]) -> StatusRow:
    st = read_run_state(run_dir)
    resolved = _resolved(run_dir)
    summary = st.summary or {}
    last = st.last_eval or {}
    finished = st.state in ("finished", "diverged", "failed") and summary
    steps_done = [s for s in (last.get("step"), st.checkpoint_step) if isinstance(s, int)]
    if finished:
        n, d, c = summary.get("params", {}).get("non_embedding"), summary.get("tokens"), (
            summary.get("flops_6nd"))
        loss, step = finite_or_none(summary.get("val_loss")), summary.get("steps")
    else:
        # The run's own config first; the sweep's plan for what config.yaml cannot say.
        numbers = {**planned, **_configured_ndc(resolved)}
        n, d, c = numbers.get("N"), numbers.get("D"), numbers.get("C")
        loss, step = finite_or_none(last.get("val_loss")), max(steps_done, default=None)
    note = ""
    if st.state in ("failed", "diverged"):
        note = str(summary.get("error") or "")
    elif st.state == "interrupted":
        shared = state_for(run_dir, resolved) if st.checkpoint_step is None else None
        note = (f"resumes from step {st.checkpoint_step}" if st.checkpoint_step is not None
                else f"no checkpoint: continues the stable state of step {checkpoint_step(shared)}"
                if shared is not None else "no checkpoint: restarts")
    if not finished and loss is not None and last.get("step") != step:
        # Evals are few (eval.points): the latest can be far behind the progress shown
        note = "; ".join(filter(None, [note, f"loss of the eval at step {last.get('step')}"]))
    return StatusRow(
        state=st.state,
        run_id=run_dir.name,
        N=n,
        D=d,
        C=c,
        loss=loss,
        step=step,
        steps=_planned_steps(resolved) or (summary.get("steps") if finished else None),
        note=note,
    )


def _planned(sweep_dir: Path) -> dict[object, dict[str, Any]]:
    """The sweep's planned points by run id."""
    # Two grid points can be one run (the second is marked skip): the one that trains it wins
    planned: dict[object, dict[str, Any]] = {}
    for point in read_manifest(sweep_dir):
        run_id = point.get("run_id")
        if run_id not in planned or planned[run_id].get("action") == "skip":
            planned[run_id] = point
    return planned


def _holds_sweep(path: Path) -> bool:
    """An experiment's folder: a planned sweep (sweep.json) or run directories in it."""
    return (path / MANIFEST).is_file() or any(_is_run_dir(child) for child in path.iterdir())


def experiment_dirs(runs_dir: Path) -> list[Path]:
    """The experiment folders (run directories or a sweep.json inside) directly under runs_dir."""
    # Hidden folders (.submitit logs and the like) are never experiments.
    return [child for child in sorted(runs_dir.iterdir())
            if child.is_dir() and not child.name.startswith(".") and _holds_sweep(child)]


def run_status(run_dir: Path) -> StatusRow:
    """The row of one run directory, with its sweep's plan (the parent's sweep.json) if any."""
    return _row(run_dir, _planned(run_dir.parent).get(run_dir.name, {}))


def sweep_status(sweep_dir: Path) -> list[StatusRow]:
    """Rows for every run directory in `sweep_dir` and every planned point not started yet."""
    planned = _planned(sweep_dir)
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
        note = str(point.get("reason") or "") if skipped else "not started"
        if skipped and point.get("run_state"):
            # Skipped for a run that has since been deleted: the next launch trains it afresh
            skipped = False
            note = f"not started: its {point['run_state']} run's directory is gone"
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
                note=note,
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
    lines.append(f"{sweep_dir}: {len(rows)} runs: {_tally(rows)}")
    return "\n".join(line.rstrip() for line in lines)


def _tally(rows: Sequence[StatusRow]) -> str:
    counts = Counter(r.state for r in rows)
    return ", ".join(f"{counts[s]} {s}" for s in ORDER if counts[s]) or "none"


def _sweeps(target: Path) -> list[Path] | str:
    """The sweep folders `target` stands for, or why it stands for none (the error line)."""
    if not target.exists():
        return (f"{target} does not exist: pass an experiment's folder "
                "(<paths.runs_dir>/<experiment_name>, e.g. runs/smoke) or the runs folder")
    if not target.is_dir():
        return f"{target} is a file, not a directory: pass an experiment's folder, e.g. runs/smoke"
    if _holds_sweep(target):
        return [target]
    found = experiment_dirs(target)
    if not found and (target / "runs").is_dir() and experiment_dirs(target / "runs"):
        # The repository root (or $SCALING_ROOT): the runs folder is one level down.
        return f"{target} holds no runs itself: pass its runs folder, {target / 'runs'}"
    if not found:
        return (f"{target} holds no runs, no sweep plan ({MANIFEST}) and no experiment folders: "
                "pass an experiment's folder, e.g. runs/smoke, or the runs folder holding them")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the status table (or JSON rows with --json); exit 2 on a bad directory."""
    parser = OneLineParser(prog="python -m sweep.status", description=__doc__.split("\n")[0])
    parser.add_argument("dir", type=Path, help="an experiment's folder (runs/smoke), the runs "
                        "folder holding experiments (runs), or one run's folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object per run")
    args = parser.parse_args(argv)
    target: Path = args.dir
    if target.is_dir() and _is_run_dir(target):
        # One run: its row, and where the rest of its sweep is. `.` has no name or parent to go by
        target = target.resolve() if target.name in ("", "..") else target
        row = run_status(target)
        if args.json:
            print(json.dumps({"experiment": target.resolve().parent.name, **asdict(row)}))
        else:
            print(format_status(target, [row]))
            print(f"a run of {target.parent}: python -m sweep.status {target.parent} "
                  "lists the whole sweep")
        return 0
    sweeps = _sweeps(target)
    if isinstance(sweeps, str):
        print(f"error: {sweeps}", file=sys.stderr)
        return 2
    blocks, every = [], []
    for sweep_dir in sweeps:
        rows = sweep_status(sweep_dir)
        every += rows
        if args.json:
            # The experiment names each row's sweep when a runs folder lists several.
            name = sweep_dir.resolve().name  # `.` inside runs/smoke is experiment smoke
            blocks += [json.dumps({"experiment": name, **asdict(r)}) for r in rows]
        else:
            blocks.append(format_status(sweep_dir, rows))
    if args.json:
        print("\n".join(blocks), end="\n" if blocks else "")
    elif len(sweeps) == 1:
        print(blocks[0])
    else:
        print("\n\n".join(blocks))
        print(f"\n{target}: {len(sweeps)} experiments, {len(every)} runs: {_tally(every)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
