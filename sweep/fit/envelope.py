"""Chinchilla approach 1 and the compute frontier: the lower envelope of loss over C.

Each run's curve is interpolated onto one log-spaced C grid; the envelope at each C is the best
run there (C won by the smallest or largest size are left out of the fit). Bootstrap draws
resample whole runs and recompute the envelope.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from sweep.fit.optimize import loglog_fit, percentile_ci

GRID_POINTS = 200
# Report and plot this many envelope points; the fit uses the whole grid.
REPORT_POINTS = 40
# Runs whose C differ by less than this (about 2.3 %) compete as one budget on the final-points
# frontier: step rounding moves a run's C by under 1 %, IsoFLOP budgets sit >= 0.1 decades apart.
SAME_C_DECADES = 0.01


@dataclass(frozen=True)
class CurveGrid:
    """Every run's loss and D interpolated at the grid's C (inf / nan where a run has no data)."""

    c: np.ndarray  # (G,)
    loss: np.ndarray  # (R, G)
    d: np.ndarray  # (R, G)
    n: np.ndarray  # (R,)
    runs: tuple[str, ...] = ()  # the run of each row


def merge_replicates(grid: CurveGrid, replicate: dict[str, int]) -> CurveGrid:
    """One row per seed-replicated (N, D) point, its seeds' geometric mean loss and D at each C
    (inf where any seed has no data, so the envelope compares like with like); every other run
    as it is. `replicate` maps a run to its point's number (-1 or absent: none)."""
    keys = [replicate.get(run, -1) for run in grid.runs]
    keys = [key if key >= 0 else -1 - row for row, key in enumerate(keys)]
    order = list(dict.fromkeys(keys))
    rows = [np.flatnonzero(np.array(keys) == key) for key in order]
    seeds = Counter(key for key in replicate.values() if key >= 0)
    with np.errstate(invalid="ignore"):  # inf - inf where a seed has no data: inf below
        loss = np.array([np.exp(np.log(grid.loss[r]).mean(axis=0)) for r in rows])
        d = np.array([np.exp(np.log(grid.d[r]).mean(axis=0)) for r in rows])
    # A seed with no curve at all has data at no C: its point has no mean curve anywhere
    missing = np.array([key >= 0 and len(r) < seeds[key] for key, r in zip(order, rows,
                                                                            strict=True)])
    loss[missing] = np.inf
    loss = np.where(np.isfinite(loss), loss, np.inf)
    return CurveGrid(c=grid.c, loss=loss, d=d, n=np.array([grid.n[r[0]] for r in rows]),
                     runs=tuple("+".join(grid.runs[i] for i in r) for r in rows))


@dataclass(frozen=True)
class Finished:
    """finished_curves' result: the curves, how many WSD trajectories they hold, and whether
    seed replicates were averaged into one trajectory."""

    curves: pd.DataFrame
    trajectories: int
    seeds_merged: bool
    single_run: int = 0  # trajectories of one run: a single point, no curve


def finished_curves(curves: pd.DataFrame, runs: pd.DataFrame) -> Finished:
    """The curves with each WSD run's replaced by its trajectory's (runs' `trajectory` column,
    from sweep.fit.points.wsd_trajectories): the final points of the runs that share its stable
    phase, one curve of finished runs. Trajectories whose runs are seed replicates of the same
    points (runs' `replicate`) are one curve of their geometric mean losses, as merge_replicates
    does for runs: the luckiest seed's would set the envelope.

    A WSD run's points before its cooldown sit well above a finished run of that length (its LR
    has not decayed), so its own curve would set approach 1's envelope wherever no cooldown
    happens to fall; its trajectory's finished runs are what Hagele et al. 2024 fit instead.
    """
    if "trajectory" not in runs.columns or runs["trajectory"].isna().all():
        return Finished(curves, 0, False)
    trajectory = dict(zip(runs["run"], runs["trajectory"], strict=True))
    replicate = dict(zip(runs["run"], runs.get("replicate", pd.Series(-1, index=runs.index)),
                         strict=True))
    key = curves["run"].map(trajectory)
    wsd = key.notna().to_numpy()
    finals = curves[wsd].sort_values("C", kind="stable").groupby("run", sort=False).tail(1)
    finals = finals.assign(rep=finals["run"].map(replicate), run=key[finals.index])
    # Trajectories made of the same replicated points are seeds of one trajectory
    points = finals.groupby("run", sort=True)["rep"].agg(
        lambda reps: tuple(sorted(reps)) if (reps >= 0).all() else None)
    merged_name: dict[str, str] = {}
    for _, names in points.dropna().groupby(points.dropna()).groups.items():
        for name in names:
            merged_name[name] = "+".join(sorted(names))
    seeds_merged = any("+" in name for name in merged_name.values())
    finals["run"] = finals["run"].map(lambda name: merged_name.get(name, name))
    if seeds_merged:
        logs = finals.assign(loss=np.log(finals["loss"]), D=np.log(finals["D"]),
                             C=np.log(finals["C"]))
        group = [logs["run"], logs["rep"].where(logs["rep"] >= 0, -1 - np.arange(len(logs)))]
        mean = logs.groupby(group, sort=False)[["N", "D", "C", "loss"]].mean()
        finals = mean.reset_index(level=0).reset_index(drop=True).assign(
            D=lambda f: np.exp(f["D"]), C=lambda f: np.exp(f["C"]),
            loss=lambda f: np.exp(f["loss"]))
    finals = finals.drop(columns=["rep"], errors="ignore")
    sizes = finals.groupby("run").size()
    return Finished(pd.concat([curves[~wsd], finals], ignore_index=True), len(sizes),
                    seeds_merged, int((sizes == 1).sum()))


def curve_grid(curves: pd.DataFrame, points: int = GRID_POINTS) -> CurveGrid:
    """Interpolate each run's (log C, loss) and (log C, log D) curve onto a shared C grid."""
    grid = np.geomspace(curves["C"].min(), curves["C"].max(), points)
    log_grid = np.log(grid)
    losses, ds, ns, names = [], [], [], []
    for name, run in curves.groupby("run", sort=True):
        run = run.sort_values("C")
        lc = np.log(run["C"].to_numpy(dtype=float))
        inside = (log_grid >= lc[0]) & (log_grid <= lc[-1])
        loss = np.interp(log_grid, lc, run["loss"].to_numpy(dtype=float))
        log_d = np.interp(log_grid, lc, np.log(run["D"].to_numpy(dtype=float)))
        losses.append(np.where(inside, loss, np.inf))
        ds.append(np.where(inside, np.exp(log_d), np.nan))
        ns.append(float(run["N"].iloc[-1]))
        names.append(str(name))
    return CurveGrid(c=grid, loss=np.array(losses), d=np.array(ds), n=np.array(ns),
                     runs=tuple(names))


def lower_envelope(grid: CurveGrid, runs: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Envelope loss, the run attaining it, and how many runs are defined, at each grid C."""
    loss = grid.loss if runs is None else grid.loss[runs]
    index = np.arange(len(grid.n)) if runs is None else np.asarray(runs)
    best = np.argmin(loss, axis=0)
    return loss.min(axis=0), index[best], np.isfinite(loss).sum(axis=0)


def _allocation(grid: CurveGrid, runs: np.ndarray | None) -> tuple[np.ndarray, ...] | str:
    """Where two or more runs compete and a size inside the grid wins, the winner's N and its D
    at each C, the envelope there and how many C were left out as won at the edge; or a reason.

    A C won by the smallest size says only that N_opt is at most that size (the largest: at
    least), so it is left out, as approach 2 leaves out budgets with the minimum at the edge:
    kept, the smallest size's long run of wins flattens N_opt ~ C^a.
    """
    env, winner, defined = lower_envelope(grid, runs)
    sizes = grid.n if runs is None else grid.n[runs]
    won = grid.n[winner]
    compete = defined >= 2
    ok = compete & (won > sizes.min()) & (won < sizes.max())
    if compete.sum() < 2 or len(np.unique(won[compete])) < 2:
        return ("the loss envelope is attained by a single model size wherever two runs "
                "overlap; approach 1 needs curves from several sizes that cross")
    if ok.sum() < 2 or len(np.unique(won[ok])) < 2:
        inner = len(np.unique(sizes)) - 2
        return (f"approach 1 needs two sizes between the smallest and the largest winning the "
                f"loss envelope somewhere ({len(np.unique(won[ok]))} of the {inner} such sizes "
                "do; where the smallest or largest size wins, it only bounds N_opt): add sizes "
                "beyond the winning edge" + (", 4 or more in all" if inner < 2 else ""))
    cols = np.flatnonzero(ok)
    return grid.c[ok], won[ok], grid.d[winner[ok], cols], env[ok], int((compete & ~ok).sum())


def fit_approach1(grid: CurveGrid, *, bootstrap: int, rng: np.random.Generator
                  ) -> tuple[dict[str, Any] | None, str | None]:
    """N_opt ~ C^a and D_opt ~ C^b on the envelope; (section, None) or (None, reason)."""
    main = _allocation(grid, None)
    if isinstance(main, str):
        return None, main
    c, n_opt, d_opt, env, edge = main
    n_fit, d_fit = loglog_fit(c, n_opt), loglog_fit(c, d_opt)
    samples = []
    for _ in range(bootstrap):
        runs = np.unique(rng.integers(0, len(grid.n), len(grid.n)))
        alloc = _allocation(grid, runs)
        if not isinstance(alloc, str):
            c_draw, n_draw, d_draw = alloc[:3]
            samples.append((loglog_fit(c_draw, n_draw)["slope"],
                            loglog_fit(c_draw, d_draw)["slope"]))
    s = np.array(samples).reshape(-1, 2)
    ci = {"a": percentile_ci(s[:, 0]), "b": percentile_ci(s[:, 1])} if len(s) else {}
    # Few curves (a WSD sweep has one a size) leave most draws without a crossing envelope, or
    # every draw on the same one: no interval rather than a misleadingly narrow one
    no_ci = None
    if len(s) < max(2, bootstrap // 2):
        no_ci = (f"no CI: {len(s)} of {bootstrap} bootstrap draws over {len(grid.n)} curves place "
                 "the envelope (more sizes give an interval)")
    elif ci["a"][0] == ci["a"][1]:
        no_ci = f"no CI: every bootstrap draw over the {len(grid.n)} curves gives one allocation"
    keep = np.unique(np.linspace(0, len(c) - 1, REPORT_POINTS).round().astype(int))
    points = [{"C": float(c[i]), "N_opt": float(n_opt[i]), "D_opt": float(d_opt[i]),
               "loss": float(env[i])} for i in keep]
    return {"a": n_fit["slope"], "b": d_fit["slope"],
            "ci95": {} if no_ci else ci, **({"no_ci": no_ci} if no_ci else {}),
            "N_fit": n_fit, "D_fit": d_fit, "bootstrap": len(s), "runs": len(grid.n),
            "grid_points": int(len(c)), "edge_points": edge, "points": points}, None


def frontier_runs(c: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Mask of runs on the compute frontier: lower loss than every run with no more compute.

    "No more" up to SAME_C_DECADES: the runs of one IsoFLOP budget differ in C only by step
    rounding, so which of them sorts first must not decide which are on the frontier; only the
    budget's best can be. Equal losses go to the run listed first.
    """
    c, loss = np.asarray(c, dtype=float), np.asarray(loss, dtype=float)
    rank = np.empty(len(loss), dtype=int)
    rank[np.lexsort((np.arange(len(loss)), loss))] = np.arange(len(loss))
    # beaten[i, j]: run j, at no more than run i's compute, has the lower loss
    beaten = (c[None, :] <= c[:, None] * 10**SAME_C_DECADES) & (rank[None, :] < rank[:, None])
    return ~beaten.any(axis=1)
