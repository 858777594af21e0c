"""Runs that share an (N, D) point: one D despite step rounding, the same run collected twice,
seed replicates (a note with their measured noise) and stray runs such as LR probes (a warning).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

# Runs whose D agree to 1 % are at one D: step rounding makes one token budget's D differ slightly.
SAME_D_DECADES = 0.005
# Runs whose (log N, log D) lie within this fraction as wide as long of one line (a fixed D/N, one
# IsoFLOP budget) cannot separate an N term from a D term: a ladder at 20 tokens per parameter
# gives 2e-6, one IsoFLOP budget 0, two budgets 3x apart 0.17, the horizons grid 0.39.
MIN_SPREAD = 0.05
# Two rows of one run id and config hash are one run when their losses agree to this (a retrain
# of one config by the same code lands within ~1e-8; another training differs far more).
SAME_LOSS_RTOL = 1e-4
# Columns of a sweep.collect table (or any table) that say how two runs at one (N, D) were made;
# the warning names those that differ, since the run ids alone (config hashes) do not say why.
# (hparams_*: summary.json's hparams, flattened by sweep.collect.)
DESCRIBING = ("experiment", "seed", "hparams_lr", "hparams_warmup_steps", "hparams_schedule",
              "hparams_windows", "lr", "learning_rate", "batch_tokens", "config_hash",
              "code_version", "budget_kind", "budget_value", "precision", "residual_dtype",
              "device", "world_size", "torch_version")
# What runs of one WSD trajectory share, where no stable_hash says so: all but the budget and
# what rules derive from it (the LR and warmup of sweep.hparams), so a size's runs of a WSD
# horizons sweep trained apart still make one curve of finished runs. An LR probe across budgets
# joins that curve too; at one (N, D) the several-runs warning names it.
TRAJECTORY_COLUMNS = ("experiment", "seed", "hparams_windows", "code_version")
# What seed replicates of one sweep point may differ in: the seed, and so the config hash; and,
# as sweep.train's run identity leaves them out, the experiment folder and the machine.
REPLICATES_MAY_DIFFER = frozenset({"seed", "config_hash", "experiment", "device", "world_size",
                                   "torch_version"})


def _spread(count: float, total: np.ndarray, scatter: np.ndarray) -> float:
    """How wide a cloud of (log N, log D) points is across its best line, against along it,
    from its count, sum and sum of outer products."""
    mean = total / count
    cov = scatter / count - np.outer(mean, mean)
    across, along = np.sqrt(np.clip(np.linalg.eigvalsh(cov), 0.0, None))
    return float(across / along) if along > 0 else 0.0


def joint_law_gap(n: np.ndarray, d: np.ndarray, terms: str) -> str | None:
    """Why a law with separate N and D terms (`terms`, named for the message) cannot be fitted
    to runs at these N and D, or None when it can."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    # D values within step rounding of each other are one D (one token budget)
    sizes, lengths = len(np.unique(n)), len(np.unique(log_clusters(d, SAME_D_DECADES)))
    if min(sizes, lengths) < 3:
        return (f"{sizes} distinct N and {lengths} distinct D; each term {terms} needs 3 or more "
                "values to be identified")
    points = np.column_stack([np.log(n), np.log(d)])
    total, scatter = points.sum(axis=0), points.T @ points
    if _spread(len(points), total, scatter) < MIN_SPREAD:
        return (f"the runs' N and D move together (log D is nearly a line in log N, "
                f"{_spread(len(points), total, scatter):.3f} as wide as long: one "
                f"tokens-per-parameter ratio, or one compute budget), so {terms} cannot be told "
                "apart; add runs off that line, at other tokens per parameter or other budgets")
    # Nor may the split rest on a single (N, D) point off that line, however many seeds it has
    ids = point_ids(n, d)
    for point in np.unique(ids):
        rows = ids == point
        rest = points[~rows]
        if len(rest) and _spread(len(rest), total - points[rows].sum(axis=0),
                                 scatter - points[rows].T @ points[rows]) < MIN_SPREAD:
            first = int(np.flatnonzero(rows)[0])
            return (f"all the runs but those at one point (N={n[first]:.3g}, D={d[first]:.3g}) "
                    "lie on one line in (log N, log D) (one tokens-per-parameter ratio, or one "
                    f"compute budget), so {terms} would be told apart by that point alone; add "
                    "more runs off that line")
    return None


def log_clusters(values: np.ndarray, gap_decades: float) -> np.ndarray:
    """Group ids for values within gap_decades (in log10) of the smallest value of their group.

    Anchored at each group's first value, so a run of close values never chains into one group
    wider than the gap (D spread evenly over decades would otherwise be "one D").
    """
    order = np.argsort(values)
    logs = np.log10(np.asarray(values, dtype=float)[order])
    ids = np.empty(len(logs), dtype=int)
    group, anchor = -1, -np.inf
    for i, value in enumerate(logs):
        if value - anchor > gap_decades:
            group, anchor = group + 1, value
        ids[order[i]] = group
    return ids


def point_ids(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The (N, D) point of each run: its N, and its D up to step rounding (clustered within its
    N, so another size's D cannot shift the boundary between two runs of one point)."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    ids = np.empty(len(n), dtype=int)
    first = 0
    for size in np.unique(n):
        rows = np.flatnonzero(n == size)
        clusters = log_clusters(d[rows], SAME_D_DECADES)
        ids[rows] = first + clusters
        first += int(clusters.max()) + 1
    return ids


def describing(table: pd.DataFrame, run_column: str) -> pd.DataFrame:
    """The columns that identify and describe each row's run (run id, config hash, seed, ...),
    aligned with the canonical rows (a RangeIndex); absent columns are left out."""
    keep = [c for c in dict.fromkeys([run_column, *DESCRIBING, "replicate_hash", "stable_hash"])
            if c in table.columns]
    return table[keep].reset_index(drop=True)


def wsd_trajectories(described: pd.DataFrame, n: pd.Series) -> pd.Series:
    """Each WSD run's trajectory (None for other runs): the runs that share its stable phase,
    by `stable_hash` (schedule.share_stable), else the runs alike in all but their budget as far
    as the table says (N, experiment, seed, window order, code). Approach 1 takes a
    trajectory's finished runs as one curve (envelope.finished_curves)."""
    index = n.index
    if "hparams_schedule" not in described.columns:
        return pd.Series(None, index=index, dtype=object)
    described = described.set_axis(index)
    parts = [n.map(str)] + [described[name].map(str) for name in TRAJECTORY_COLUMNS
                            if name in described.columns]
    fallback = "wsd:" + pd.concat(parts, axis=1).agg(":".join, axis=1)
    stable = described["stable_hash"] if "stable_hash" in described.columns else None
    key = fallback if stable is None else ("stable:" + stable.map(str)).where(
        stable.notna(), fallback)
    key = key.astype(object)
    key[(described["hparams_schedule"] != "wsd").to_numpy()] = None
    return key


def drop_repeated_rows(runs: pd.DataFrame, curves: pd.DataFrame | None,
                       described: pd.DataFrame, run_col: str, notes: list[str]
                       ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Keep one row of each run that the table holds several times (the same run id and config
    hash, collected from several experiments): as separate points it would weigh 2x, 3x, ..."""
    if run_col not in described.columns:
        return runs, curves  # no run id column: nothing says two rows are one run
    # A run id hashes the resolved config, so with its config hash it names one run, even when
    # a second experiment retrained it: such copies end at the same loss but for float noise
    # (~1e-8). A copy whose loss differs more is another training (code the hash does not cover)
    # and stays, for the several-runs warning.
    key = [described[run_col].astype(str)] + (
        [described["config_hash"].astype(str)] if "config_hash" in described.columns else [])
    frame = pd.concat([*key, runs["N"], runs["D"]], axis=1, ignore_index=True)
    first_loss = runs["loss"].groupby([frame[c] for c in frame.columns]).transform("first")
    same_loss = (runs["loss"] / first_loss - 1.0).abs() <= SAME_LOSS_RTOL
    repeated = (frame.duplicated() & same_loss).to_numpy()
    if not repeated.any():
        return runs, curves
    first = int(np.flatnonzero(repeated)[0])
    copies = (frame.eq(frame.iloc[first]).all(axis=1) & same_loss).to_numpy()
    where = (" in " + ", ".join(dict.fromkeys(described.loc[copies, "experiment"].astype(str)))
             if "experiment" in described.columns else f" ({int(copies.sum())} rows)")
    same = f"{run_col}, config_hash" if "config_hash" in described.columns else run_col
    notes.append(
        f"dropped {int(repeated.sum())} repeated rows: the same run (same {same}, N, D and "
        f"loss to {SAME_LOSS_RTOL:.0e}) collected more than once, e.g. "
        f"{described[run_col].iloc[first]}{where}; each run is fitted once (its first row), not "
        "weighted by how many experiments hold it")
    kept = runs[~repeated]
    if curves is not None:
        curves = curves[curves["run"].isin(set(kept["run"]))].reset_index(drop=True)
    return kept, curves


def _differ(info: pd.DataFrame) -> list[str]:
    """The describing columns in which these runs' rows differ."""
    return [c for c in DESCRIBING if c in info.columns and info[c].nunique(dropna=False) > 1]


def _is_seed_replicate(info: pd.DataFrame) -> bool:
    """Whether these runs at one (N, D) are one config at distinct seeds: by the replicate hash
    (sweep.train's identity without the seed) where the rows have it, and in any case by the
    describing columns (the code version among them) differing in nothing but the seed, the
    experiment folder and the machine (REPLICATES_MAY_DIFFER)."""
    if "seed" not in info.columns or info["seed"].isna().any():
        return False
    if info["seed"].nunique() < len(info):
        return False  # the same seed twice is a retrain, not a replicate
    hashes = info["replicate_hash"] if "replicate_hash" in info.columns else None
    if hashes is not None and hashes.notna().any() and (
            hashes.isna().any() or hashes.nunique() > 1):
        return False  # a run without the hash beside one with it cannot be shown the same
    return set(_differ(info)) <= REPLICATES_MAY_DIFFER


def _seed_note(groups: list[pd.DataFrame], by_hash: bool) -> tuple[str, dict[str, Any]]:
    """The seed-replicates note and its measured noise, the pooled within-point standard
    deviation of log loss."""
    log_loss = [np.log(g["loss"].to_numpy(dtype=float)) for g in groups]
    squares = sum(float(((x - x.mean()) ** 2).sum()) for x in log_loss)
    sd = math.sqrt(squares / sum(len(x) - 1 for x in log_loss))
    count = sum(len(g) for g in groups)
    same = ("one config each, by sweep.train's replicate hash" if by_hash else
            "no describing column but the seed differs")
    note = (f"seed replicates: {len(groups)} (N, D) points have runs at several seeds ({count} "
            f"runs, {same}): each run is a fit point, and the methods that take a best run "
            "(Kaplan's L(N), L(D), L(C), approach 1's envelope) take the best point's seed mean "
            "instead; seed-to-seed spread of the loss "
            f"{100 * sd:.2f} % (pooled sd of log loss), the floor for a fit's rms log residual")
    return note, {"points": len(groups), "runs": count, "sd_log_loss": sd}


def several_runs(runs: pd.DataFrame, described: pd.DataFrame
                 ) -> tuple[str | None, str | None, dict[str, Any] | None, pd.Series]:
    """(warning, note, seed noise, replicate) for (N, D) points with several runs, judged point
    by point. Seed replicates are a note with their measured noise, and `replicate` numbers
    each run's replicated point (-1: none); any other point (an LR probe, an older config) is
    one warning line: the fit takes each run as a sweep point, so a bad-LR probe drags the law
    silently."""
    point = pd.Series(point_ids(runs["N"], runs["D"]), index=runs.index)
    replicate = pd.Series(-1, index=runs.index)
    seeds: list[pd.DataFrame] = []
    stray: list[pd.DataFrame] = []
    for _, group in runs.groupby(point, sort=True):
        if len(group) > 1:
            (seeds if _is_seed_replicate(described.loc[group.index]) else stray).append(group)
    note = noise = None
    if seeds:
        for number, group in enumerate(seeds):
            replicate[group.index] = number
        by_hash = "replicate_hash" in described.columns and bool(
            described.loc[pd.concat(seeds).index, "replicate_hash"].notna().all())
        note, noise = _seed_note(seeds, by_hash)
    if not stray:
        return None, note, noise, replicate
    # The example: the stray point with the most runs (the smallest N, D among equals)
    members = max(stray, key=len)
    n = members["N"].iloc[0]
    listed = [f"{r} (loss {loss:.4g})" for r, loss in zip(members["run"], members["loss"],
                                                          strict=True)]
    shown = ", ".join(listed[:4]) + (f" and {len(listed) - 4} more" if len(listed) > 4 else "")
    differ = _differ(described.loc[members.index])
    how = (f"they differ in {', '.join(differ)}" if differ else
           "the table has no column (seed, config_hash, ...) that says how they differ")
    return (f"{len(stray)} (N, D) points have more than one run, and the fit takes each run as "
            f"a sweep point (e.g. N={n:,.0f}, D={members['D'].iloc[0]:,.0f}: {shown}; {how}); "
            "an LR probe, another seed or a run of older code then weighs in like the sweep's "
            "own: keep one run per (N, D) with --where or by filtering the table's rows, or "
            "train side runs into their own experiment folder and fit runs/<experiment>"), \
        note, noise, replicate
