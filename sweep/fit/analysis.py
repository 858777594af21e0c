"""Run every method the data supports and gather their results into one report dict.

A method the data cannot support is left out, with the reason under `skipped`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from sweep.fit.allocation import exact_allocation, flops_per_token_curve
from sweep.fit.approach3 import Approach3, fit_approach3
from sweep.fit.envelope import (
    REPORT_POINTS,
    curve_grid,
    finished_curves,
    fit_approach1,
    frontier_runs,
    lower_envelope,
    merge_replicates,
)
from sweep.fit.extrapolate import extrapolation_check
from sweep.fit.floor import below_floor_warning, floor_check, floor_warning
from sweep.fit.isoflop import assign_budgets, fit_approach2
from sweep.fit.kaplan import power_law_report
from sweep.fit.kaplan_joint import fit_kaplan_joint
from sweep.fit.optimize import bootstrap_weights
from sweep.fit.points import SAME_D_DECADES, joint_law_gap, log_clusters
from sweep.fit.table import FitData

# C values spanning the runs' exact FLOPs for approach 3's allocation under them.
EXACT_POINTS = 9
# ... when they span at least this many decades (slopes over less would be rounding noise)
EXACT_MIN_DECADES = 0.3
# Every method fit_report runs, in its order (the report's section names, the CLI's --methods)
METHODS = ("approach3", "approach2", "approach1", "kaplan", "kaplan_nd", "extrapolation")


@dataclass(frozen=True)
class FitOptions:
    """The fitter's knobs (the CLI's flags; defaults live here only)."""

    bootstrap: int = 1000
    seed: int = 0
    holdout_factor: float = 10.0
    isoflop_window: float = 0.75  # decades each side of the minimum; see isoflop.fit_budget
    include_edge: bool = False
    compute: tuple[float, ...] = ()  # C values for the allocation table; () = around the data
    predict: tuple[tuple[float, float], ...] = ()  # (N, D) points to predict the loss at
    where: str | None = None  # the runs fitted: a pandas query over the source (see table.load)
    methods: tuple[str, ...] = METHODS  # the methods run; the others are skipped, saying so

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"methods {list(self.methods)}: choose one or more of "
                             f"{', '.join(METHODS)}")
        if self.predict and not {"approach3", "kaplan_nd"} & set(self.methods):
            raise ValueError(f"--predict needs approach3 or kaplan_nd, which --methods "
                             f"{' '.join(self.methods)} leaves out: add one of them")


def default_compute(c_max: float) -> tuple[float, ...]:
    """Powers of ten from 100x below to 1000x above the largest run's compute."""
    top = int(np.round(np.log10(c_max)))
    return tuple(float(10.0**k) for k in range(top - 2, top + 4))


def fit_report(data: FitData, options: FitOptions) -> dict[str, Any]:
    """Every method's section, timings and notes; `data.runs` gains each run's budget."""
    runs = data.runs
    seeds = np.random.SeedSequence(options.seed).spawn(5)
    report: dict[str, Any] = {
        "source": data.source, "columns": asdict(data.columns), "n_runs": len(runs),
        "n_curve_points": 0 if data.curves is None else len(data.curves),
        "notes": list(data.notes), "warnings": list(data.warnings), "options": asdict(options),
        "timings_s": {}, "skipped": {},
        **({"seed_noise": data.seed_noise} if data.seed_noise is not None else {}),
    }

    def record(name: str, section: dict[str, Any] | None, reason: str | None, t0: float) -> None:
        report["timings_s"][name] = round(time.perf_counter() - t0, 3)
        if section is None:
            report["skipped"][name] = reason
        else:
            report[name] = section

    def left_out(name: str) -> bool:
        # A method the user did not ask for is skipped with that reason (and no timing)
        if name in options.methods:
            return False
        report["skipped"][name] = f"not asked for (--methods {' '.join(options.methods)})"
        return True

    t0 = time.perf_counter()
    fit = None
    gap = joint_law_gap(runs["N"], runs["D"], "A/N^alpha and B/D^beta")
    if left_out("approach3"):
        if options.predict:
            report["skipped"]["predictions"] = ("--predict: approach 3's predictions were not "
                                                "asked for (--methods)")
    elif gap is not None:
        record("approach3", None, gap, t0)
        if options.predict:
            report["skipped"]["predictions"] = ("--predict needs approach 3, which these runs "
                                                "cannot support (see approach3)")
    else:
        fit = fit_approach3(runs["N"], runs["D"], runs["loss"], bootstrap=options.bootstrap,
                            seed=int(seeds[0].generate_state(1)[0]),
                            compute=list(options.compute or default_compute(runs["C"].max())),
                            predict=options.predict)
        record("approach3", fit.to_json(), None, t0)

    t0 = time.perf_counter()
    section = None
    if left_out("approach2"):
        # The budgets still group the runs for the extrapolation check
        runs["budget"] = assign_budgets(runs, data.budget_source)[0]
    else:
        section, reason, budget = fit_approach2(
            runs, window_decades=options.isoflop_window, include_edge=options.include_edge,
            bootstrap=options.bootstrap, rng=np.random.default_rng(seeds[1]),
            budget_source=data.budget_source)
        runs["budget"] = budget
        record("approach2", section, reason, t0)
    if fit is not None:
        # approach 2's budgets are exact FLOPs when they are the runs' own budget.flops
        own = data.columns.budget is None and data.budget_source is not None
        exact = _exact_allocation(fit, runs, section if own else None)
        if exact is not None:
            report["approach3"]["allocation_exact"] = exact

    # A WSD run's own curve is unfinished until its cooldown: its trajectory's finished runs
    # stand in for it in approach 1, and Kaplan's L(C) takes the frontier of final points
    finished = None
    grid = None
    merged = False
    if data.curves is not None:
        finished = finished_curves(data.curves, runs)
        grid = curve_grid(finished.curves)
        replicate = dict(zip(runs["run"], runs["replicate"], strict=True))
        merged = finished.seeds_merged or any(replicate.get(r, -1) >= 0 for r in grid.runs)
        # Seed replicates: their mean curve, not the luckiest seed's, competes for the envelope
        grid = merge_replicates(grid, replicate)
    trajectories = finished.trajectories if finished is not None else 0
    t0 = time.perf_counter()
    if left_out("approach1"):
        pass
    elif grid is None:
        record("approach1", None, "needs per-eval-point curves: give a runs directory or a "
               "table with several rows per run (sweep.collect --curves)", t0)
    else:
        section, reason = fit_approach1(grid, bootstrap=options.bootstrap,
                                        rng=np.random.default_rng(seeds[2]))
        if section is not None and merged:
            section["seed_replicates_merged"] = True  # its "runs" count points, not runs
        if section is not None and trajectories:
            section["wsd_trajectories"] = trajectories  # curves of finished runs, not of runs
        if reason is not None and trajectories:
            reason += (f" (WSD runs enter as their {trajectories} trajectories' finished runs, "
                       f"{finished.single_run if finished else 0} of them a single run with no "
                       "curve: a WSD sweep needs several budgets per size)")
        record("approach1", section, reason, t0)

    t0 = time.perf_counter()
    if not left_out("kaplan"):
        # Final points are finished runs, WSD or not; envelope points inside a WSD run are not
        kaplan = _kaplan(runs, None if trajectories else grid, options.bootstrap,
                         np.random.default_rng(seeds[3]))
        if trajectories:
            kaplan["L_C"]["note"] = kaplan["L_C"]["note"].replace(
                "(no curves)", "(a WSD run's curve before its cooldown is no finished run)")
        record("kaplan", kaplan, None, t0)

    t0 = time.perf_counter()
    gap = joint_law_gap(runs["N"], runs["D"], "(N_c/N)^(alpha_N/alpha_D) and D_c/D")
    if left_out("kaplan_nd"):
        pass
    elif gap is not None:
        record("kaplan_nd", None, gap, t0)
    else:
        # The two forms side by side: which describes these runs better
        section = fit_kaplan_joint(runs["N"], runs["D"], runs["loss"],
                                   bootstrap=options.bootstrap, rng=np.random.default_rng(seeds[4]),
                                   predict=options.predict,
                                   approach3_rms=None if fit is None else fit.rms_log_residual)
        if fit is not None:
            for row in section.get("predictions", []):
                row["approach3_loss"] = float(fit.law.loss(row["N"], row["D"]))
        record("kaplan_nd", section, None, t0)

    t0 = time.perf_counter()
    if not left_out("extrapolation"):
        section, reason = extrapolation_check(runs, options.holdout_factor)
        record("extrapolation", section, reason, t0)
    warning = floor_warning(report, runs)
    if warning is not None:
        report["warnings"].append(warning)
    check = floor_check(report, data.entropy_rate, data.window_floor)
    if check is not None:
        report["loss_floor"] = check
        warning = below_floor_warning(check)
        if warning is not None:
            report["warnings"].append(warning)
    return report


def _exact_allocation(fit: Approach3, runs: pd.DataFrame, approach2: dict[str, Any] | None
                      ) -> dict[str, Any] | None:
    """Approach 3's N_opt ~ C^a, D_opt ~ C^b with C in exact FLOPs (the unit of budget.flops
    IsoFLOP budgets), over approach 2's budgets when it fitted them, else over the runs' exact C;
    None without exact FLOPs per token in the table."""
    if "flops_per_token" not in runs or fit.warning() is not None:
        return None  # a degenerate or non-physical law has no optimum (its 6ND one is null too)
    f = flops_per_token_curve(runs["N"], runs["flops_per_token"])
    if f is None:
        return None
    if approach2 is not None:
        compute = sorted(b["C"] for b in approach2["budgets"] if b["used"])
        over = "approach 2's budgets"
    else:
        exact_c = (runs["flops_per_token"] * runs["D"]).to_numpy(dtype=float)
        exact_c = exact_c[np.isfinite(exact_c) & (exact_c > 0)]
        # One budget's runs differ in C by step rounding only: no slope to measure there
        if not exact_c.size or np.log10(exact_c.max() / exact_c.min()) < EXACT_MIN_DECADES:
            return None
        compute = list(np.geomspace(exact_c.min(), exact_c.max(), EXACT_POINTS))
        over = "the runs' exact C"
    if len(compute) < 2:
        return None
    section = exact_allocation(np.array([fit.law.E, fit.law.A, fit.law.B, fit.law.alpha,
                                         fit.law.beta]), fit.samples, compute, f,
                               (float(runs["N"].min()), float(runs["N"].max())))
    return {**section, "over": over}


def _best_per_group(groups: np.ndarray, loss: np.ndarray) -> np.ndarray:
    # Index of the lowest-loss run in each group.
    frame = pd.DataFrame({"g": groups, "loss": loss})
    return frame.groupby("g")["loss"].idxmin().to_numpy()


def _seed_means(runs: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """N, D, C and loss of one point per seed-replicated (N, D), its seeds' geometric means
    (N taken as it is, one value, so it groups with the other runs of its size); every other
    run as it is."""
    replicate = runs["replicate"].to_numpy()
    own = np.where(replicate >= 0, replicate, -1 - np.arange(len(runs)))  # a run alone: its own
    frame = pd.DataFrame({"N": runs["N"].to_numpy(dtype=float), **{
        k: np.log(runs[k].to_numpy(dtype=float)) for k in ("D", "C", "loss")}})
    points = frame.groupby(own, sort=False).agg({"N": "first", "D": "mean", "C": "mean",
                                                 "loss": "mean"})
    return (points["N"].to_numpy(), *(np.exp(points[k].to_numpy()) for k in ("D", "C", "loss")))


def _kaplan(runs: pd.DataFrame, grid: Any, draws: int, rng: np.random.Generator
            ) -> dict[str, Any]:
    # With seed replicates the best run per N would be the luckiest seed, biased low by about
    # the seed noise: the best point per N is taken over the seeds' means instead (and the
    # frontier of final points too; a curve grid comes here with its replicates merged).
    average_seeds = bool((runs["replicate"] >= 0).any())
    n, d, c, loss = (_seed_means(runs) if average_seeds else
                     tuple(runs[k].to_numpy(dtype=float) for k in ("N", "D", "C", "loss")))
    out: dict[str, Any] = {}
    for name, x in (("N", n), ("D", d)):
        groups = x if name == "N" else log_clusters(x, SAME_D_DECADES)
        best = _best_per_group(groups, loss)
        out[f"L_{name}"] = power_law_report(
            x[best], loss[best], name=name, weights=np.ones(len(best)),
            draw_weights=bootstrap_weights(len(best), draws, rng))
    out["L_C"] = _kaplan_compute(c, loss, grid, draws, rng)
    which = "(N, D) point, its seeds averaged," if average_seeds else "run"
    out["L_N"]["note"] = f"best {which} per N"
    out["L_D"]["note"] = f"best {which} per D (D values within 1.2 % of the first are one D)"
    if average_seeds:
        out["L_C"]["note"] += ", seed replicates averaged"
    return out


def _kaplan_compute(c: np.ndarray, loss: np.ndarray, grid: Any, draws: int,
                    rng: np.random.Generator) -> dict[str, Any]:
    if grid is None:
        # Final points only: the frontier is the runs no cheaper run beats.
        mask = frontier_runs(c, loss)
        draw_w = np.zeros((draws, len(c)))
        for j in range(draws):
            picked = np.unique(rng.integers(0, len(c), len(c)))
            draw_w[j, picked[frontier_runs(c[picked], loss[picked])]] = 1.0
        section = power_law_report(c, loss, name="C", weights=mask.astype(float),
                                   draw_weights=draw_w)
        section["note"] = "frontier of final points (no curves)"
        return section
    env, _, defined = lower_envelope(grid)
    cols = np.flatnonzero(defined > 0)
    cols = cols[np.unique(np.linspace(0, len(cols) - 1, REPORT_POINTS).round().astype(int))]
    draw_loss = np.empty((draws, len(cols)))
    for j in range(draws):
        picked = np.unique(rng.integers(0, len(grid.n), len(grid.n)))
        draw_loss[j] = grid.loss[picked][:, cols].min(axis=0)
    draw_w = np.isfinite(draw_loss).astype(float)
    section = power_law_report(grid.c[cols], env[cols], name="C", weights=np.ones(len(cols)),
                               draw_weights=draw_w, draw_loss=draw_loss)
    section["note"] = "lower envelope of the learning curves"
    return section
