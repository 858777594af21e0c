"""Plan a whole sweep before any of it trains: each grid point's run, and whether to train,
resume or skip it (finished, diverged, failed, running elsewhere, or outside the D/N range).

The Hydra sweeper (hydra_plugins/scaling_sweeper) composes the points; this module decides.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data import DataError
from data.shards import atomic_write_bytes
from sweep.checkpoint import checkpoint_path, checkpoint_step, list_checkpoints
from sweep.checks import check_epochs
from sweep.errors import ConfigError, RunHeld, first_line
from sweep.lock import lock_holder
from sweep.plan import RunPlan, plan_run
from sweep.stable import find_stable_state, stable_dir
from sweep.state import RunState, read_run_state

MANIFEST = "sweep.json"  # in the sweep directory: the grid as last planned, for sweep.status
ACTIONS = ("train", "resume", "skip")


class GridError(ConfigError):
    """A grid point that cannot be planned, reported before any point trains."""


@dataclass(frozen=True)
class GridPoint:
    """One point of the grid: its run, its coordinates (N, D, C) and what the sweep does."""

    index: int
    overrides: tuple[str, ...]
    run_id: str
    run_dir: str
    model: str
    N: int  # non-embedding parameters
    D: int  # tokens
    C: float  # 6 N D
    lr: float
    batch_tokens: int
    action: str  # train | resume | skip
    reason: str
    # schedule.share_stable: the trajectory's hash, the tokens before the run's cooldown, and
    # the tokens of the trajectory's states saved already (by earlier sweeps)
    stable_hash: str | None = None
    stable_tokens: int | None = None
    stable_saved: tuple[int, ...] = ()
    # The state file the run saves where its cooldown begins (a single process's: the
    # workstation pool runs each point in one), which releases the run that continues it
    stable_state: str | None = None
    horizon: float | None = None  # hparams.horizon.tokens_per_param: the D/N the rules see
    # The state of the point's run directory that made it a skip (finished, diverged, running,
    # failed); None for a point skipped by the plan itself (D/N range, a duplicate) or not skipped
    run_state: str | None = None


    @property
    def tokens_per_param(self) -> float:
        return self.D / self.N


def check_launch_flags(launch: Mapping[str, Any]) -> None:
    """Validate launch.rerun_failed and launch.dry_run, which a single run reads too."""
    for key in ("rerun_failed", "dry_run"):
        if not isinstance(launch[key], bool):
            raise GridError(f"launch.{key}={launch[key]!r} must be true or false")


def check_launch(launch: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """Validate the `launch` section; returns the (min, max) tokens-per-parameter bounds."""
    check_launch_flags(launch)
    bounds = launch["tokens_per_param"]
    lo, hi = bounds["min"], bounds["max"]
    for key, value in (("min", lo), ("max", hi)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not value > 0
        ):
            raise GridError(
                f"launch.tokens_per_param.{key}={value!r} must be a positive number or null"
            )
    if lo is not None and hi is not None and lo > hi:
        raise GridError(
            f"launch.tokens_per_param.min={lo} exceeds launch.tokens_per_param.max={hi}: "
            "swap them"
        )
    return lo, hi


def _range_reason(tokens_per_param: float, lo: float | None, hi: float | None) -> str | None:
    if lo is not None and tokens_per_param < lo:
        return f"D/N={tokens_per_param:.3g} is below launch.tokens_per_param.min={lo:g}"
    if hi is not None and tokens_per_param > hi:
        return f"D/N={tokens_per_param:.3g} is above launch.tokens_per_param.max={hi:g}"
    return None


# The reason of a point skipped because another process holds its run's lock
RUNNING_ELSEWHERE = "running in another process"


def held_points(points: Sequence[GridPoint]) -> list[tuple[Sequence[str], RunHeld]]:
    """The points skipped because another process was training their run, each with the RunHeld
    a launch would have met: a sweep that leaves runs to another process has not finished them
    (its exit code must say so, or `sweep && fit` fits before they end)."""
    return [(p.overrides, RunHeld(f"run {p.run_dir} is being trained by "
                                  f"{lock_holder(Path(p.run_dir))}"))
            for p in points if p.action == "skip" and p.reason == RUNNING_ELSEWHERE]


def decide(run_dir: Path, rerun_failed: bool, state: RunState | None = None
           ) -> tuple[str, str]:
    """What relaunching a sweep does with the run in `run_dir` (its state, if read already),
    and why."""
    state = read_run_state(run_dir) if state is None else state
    step = state.checkpoint_step
    if state.state == "finished":
        loss = (state.summary or {}).get("val_loss")
        return "skip", "finished" + (f", val_loss {loss:.4f}" if isinstance(loss, float) else "")
    if state.state == "diverged":
        return "skip", "diverged: kept (a rerun repeats it; delete its directory to retrain)"
    if state.state == "running":
        return "skip", RUNNING_ELSEWHERE
    if state.state == "failed":
        error = (state.summary or {}).get("error") or "unknown error"
        if not rerun_failed:
            return "skip", f"failed ({error}): launch.rerun_failed=true retrains it"
        if step is not None:
            return "resume", f"rerun of a failed run, from step {step}"
        return "train", "rerun of a failed run"
    if state.state == "interrupted":
        if step is not None:
            return "resume", f"interrupted: resumes from step {step}"
        return "train", "interrupted before its first checkpoint: starts again"
    return "train", ""


def decide_run(plan: RunPlan, rerun_failed: bool, state: RunState | None = None
               ) -> tuple[str, str]:
    """decide() for a planned run, which also knows its shared stable phase: a run with no
    checkpoint of its own continues the newest stable state it may take, not step 0."""
    action, reason = decide(plan.run_dir, rerun_failed, state)
    shared = find_stable_state(plan) if action == "train" else None
    if shared is not None:
        step = checkpoint_step(shared)
        reason = (reason.replace("starts again", f"continues the stable state of step {step}")
                  if reason.endswith("starts again")
                  else "; ".join(filter(None, [reason, f"from the stable state of step {step}"])))
    return action, reason


def plan_grid(
    jobs: Sequence[Sequence[str]], configs: Sequence[DictConfig], task_overrides: Sequence[str]
) -> list[GridPoint]:
    """Plan every grid point (jobs[i] overrides composed into configs[i]); raise GridError with
    the first bad point, naming it, before anything is written or trained."""
    if not configs:
        raise GridError("the sweep has no grid points: set hydra.sweeper.params")
    launch = OmegaConf.to_container(configs[0].launch)
    lo, hi = check_launch(launch)
    plans: list[RunPlan] = []
    errors: list[str] = []
    for i, (overrides, cfg) in enumerate(zip(jobs, configs, strict=True)):
        try:
            plan = plan_run(cfg, [*task_overrides, *overrides], epochs_checked=False)
            # A point the D/N range skips never reads its data: only the others must fit in it.
            if not _range_reason(plan.budget.tokens / plan.params.non_embedding, lo, hi):
                check_epochs(plan.run_id, plan.budget.tokens, plan.dataset, plan.max_epochs)
            plans.append(plan)
        except (ConfigError, DataError) as err:
            errors.append(f"grid point #{i} ({' '.join(overrides)}): {err}")
    if errors:
        more = f" (and {len(errors) - 1} more bad points)" if len(errors) > 1 else ""
        raise GridError(errors[0] + more)

    points: list[GridPoint] = []
    # By config hash, not run id: model.target_params values that round to one shape are one run
    # under two names (target2e05-<h>, target6e05-<h>), which would train it twice.
    first_of: dict[str, int] = {}
    for i, (overrides, plan) in enumerate(zip(jobs, plans, strict=True)):
        out_of_range = _range_reason(plan.budget.tokens / plan.params.non_embedding, lo, hi)
        run_state = None  # set where the run's own state makes the point a skip
        if out_of_range:
            action, reason = "skip", out_of_range
        elif plan.config_hash in first_of:
            action, reason = "skip", f"same run as grid point #{first_of[plan.config_hash]}"
        else:
            first_of[plan.config_hash] = i
            state = read_run_state(plan.run_dir)
            action, reason = decide_run(plan, launch["rerun_failed"], state)
            if action == "skip":
                run_state = state.state
        points.append(grid_point(i, overrides, plan, action, reason, run_state))
    return points


def runs_outside(points: Sequence[GridPoint]) -> str | None:
    """A note when the sweep's folder holds finished runs that are not points of this grid (an
    earlier grid, another config or code version, a probe launched alone): collect and fit take
    every run of the folder, and those at a point's (N, D) would be fitted beside it unnoticed."""
    if not points:
        return None
    sweep_dir = Path(points[0].run_dir).parent
    planned = {p.run_id for p in points}
    at_point = {(p.N, p.D): p for p in points}
    outside, beside = [], []
    for run_dir in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else []:
        if run_dir.name in planned or not run_dir.is_dir():
            continue
        state = read_run_state(run_dir)
        if state.state != "finished" or not isinstance(state.summary, dict):
            continue
        outside.append(run_dir.name)
        try:
            point = at_point.get((state.summary["params"]["non_embedding"],
                                  state.summary["tokens"]))
        except (KeyError, TypeError):
            point = None
        if point is not None:
            beside.append(f"{run_dir.name} beside #{point.index} {point.run_id}")
    if not outside:
        return None
    where = (f", {len(beside)} of them at the N and D of a point (e.g. {beside[0]})" if beside
             else f" (e.g. {outside[0]})")
    return (f"note: {sweep_dir} holds {len(outside)} finished run(s) that are not points of "
            f"this grid{where}: sweep.collect and sweep.fit take every run there; set "
            "experiment_name to keep this grid apart, or move those runs out")


def grid_point(
    index: int, overrides: Sequence[str], plan: RunPlan, action: str, reason: str,
    run_state: str | None = None,
) -> GridPoint:
    """The GridPoint of a planned run (`run_state`: see GridPoint)."""
    n, d = plan.params.non_embedding, plan.budget.tokens
    folder = stable_dir(plan)
    return GridPoint(
        index=index,
        overrides=tuple(overrides),
        run_id=plan.run_id,
        run_dir=str(plan.run_dir),
        model=plan.model_name,
        N=n,
        D=d,
        C=plan.flops.flops_6nd * d,
        lr=plan.lr,
        batch_tokens=plan.batch_tokens,
        action=action,
        reason=reason,
        run_state=run_state,
        stable_hash=plan.stable_hash,
        stable_tokens=(
            plan.schedule.cooldown_start * plan.batch_tokens if plan.stable_hash else None
        ),
        stable_saved=tuple(checkpoint_step(p) * plan.batch_tokens
                           for p in (list_checkpoints(folder) if folder else [])),
        stable_state=(str(checkpoint_path(folder, plan.schedule.cooldown_start)) if folder
                      else None),
        horizon=((plan.config.get("hparams") or {}).get("horizon") or {}).get("tokens_per_param"),
    )


def horizon_note(points: Sequence[GridPoint]) -> str | None:
    """A note when hparams.horizon.tokens_per_param is below the D/N of points that will train:
    the rules then give them the LR, batch and warmup of a shorter run than they are."""
    beyond = [p for p in points if p.action != "skip" and p.horizon
              and p.tokens_per_param > 1.01 * p.horizon]
    if not beyond:
        return None
    horizons = ", ".join(f"{k:g}" for k in sorted({p.horizon for p in beyond if p.horizon}))
    largest = max(p.tokens_per_param for p in beyond)
    return (f"note: hparams.horizon.tokens_per_param={horizons} is below the D/N of "
            f"{len(beyond)} point{'s' if len(beyond) > 1 else ''} (up to {largest:.3g}, e.g. "
            f"#{beyond[0].index} {beyond[0].run_id}): the rules give them the LR, batch and "
            f"warmup of a shorter run than they train; set it to the grid's largest D/N "
            f"({largest:.3g}) so that the longest run trains as it would alone")


def _si(value: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def format_plan(experiment: str, points: Sequence[GridPoint]) -> str:
    """The table printed before a sweep trains: every point, its numbers and its action."""
    header = ("#", "run", "N", "D", "C", "D/N", "lr", "batch", "action")
    rows = [
        (
            str(p.index),
            p.run_id,
            _si(p.N),
            _si(p.D),
            f"{p.C:.2e}",
            f"{p.tokens_per_param:.3g}",
            f"{p.lr:.2e}",
            str(p.batch_tokens),
            p.action + (f" ({p.reason})" if p.reason else ""),
        )
        for p in points
    ]
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in [header, *rows]
    ]
    counts = {a: sum(p.action == a for p in points) for a in ACTIONS}
    lines.append(
        f"sweep {experiment}: {len(points)} grid points: {counts['train']} to train, "
        f"{counts['resume']} to resume, {counts['skip']} skipped"
    )
    return "\n".join(lines)


def write_manifest(sweep_dir: Path, experiment: str, points: Sequence[GridPoint]) -> Path:
    """Record the planned grid (atomically) so `sweep.status` can list points not yet started."""
    body = {
        "experiment": experiment,
        "planned_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "points": [{**asdict(p), "overrides": list(p.overrides)} for p in points],
    }
    path = sweep_dir / MANIFEST
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(body, indent=1) + "\n").encode())
    return path


def read_manifest(sweep_dir: Path) -> list[dict[str, Any]]:
    """The grid points of the last planned sweep in `sweep_dir` ([] when there is none)."""
    try:
        body = json.loads((sweep_dir / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    points = body.get("points") if isinstance(body, dict) else None
    return [p for p in points if isinstance(p, dict)] if isinstance(points, list) else []


def describe_failures(failures: Sequence[tuple[Sequence[str], BaseException]]) -> str:
    """One line for the runs of a sweep that did not finish, naming the first and its reason;
    runs another process was training (RunHeld) are told apart from runs that failed."""
    held = [f for f in failures if isinstance(f[1], RunHeld)]
    failed = [f for f in failures if not isinstance(f[1], RunHeld)]
    if failed:
        line = f"{len(failed)} run(s) did not finish: {_first(failed)}"
        if held:
            line += f"; {len(held)} more were left to another process training them"
        return line
    return (f"{len(held)} run(s) were left to another process training them: this sweep did not "
            f"wait for them: {_first(held)}")


def _first(failures: Sequence[tuple[Sequence[str], BaseException]]) -> str:
    overrides, error = failures[0]
    more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
    return f"{' '.join(overrides)}: {first_line(error)}{more}"
