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
              "code_version", "budget_kind", "budget_value", "precision", "device", "world_size",
              "torch_version")
# What seed replicates of one sweep point may differ in: the seed, and so the config hash.
SEED_ONLY = frozenset({"seed", "config_hash"})


def joint_law_gap(n: np.ndarray, d: np.ndarray, terms: str) -> str | None:
    """Why a law with separate N and D terms (`terms`, named for the message) cannot be fitted
    to runs at these N and D, or None when it can."""
    n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    sizes, lengths = len(np.unique(n)), len(np.unique(d))
    if min(sizes, lengths) < 3:
        return (f"{sizes} distinct N and {lengths} distinct D; each term {terms} needs 3 or more "
                "values to be identified")
    # The spread of the runs across the best line through (log N, log D) against along it
    points = np.column_stack([np.log(n), np.log(d)])
    across, along = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)[::-1]
    if across < MIN_SPREAD * along:
        return (f"the runs' N and D move together (log D is nearly a line in log N, "
                f"{across / along:.3f} as wide as long: one tokens-per-parameter ratio, or one "
                "compute budget), so "
                f"{terms} cannot be told apart; add runs off that line, at other tokens per "
                "parameter or other budgets")
    return None


def log_clusters(values: np.ndarray, gap_decades: float) -> np.ndarray:
    """Group ids for values that sit within gap_decades (in log10) of their sorted neighbour."""
    order = np.argsort(values)
    logs = np.log10(values[order])
    starts = np.concatenate([[True], np.diff(logs) > gap_decades])
    ids = np.empty(len(values), dtype=int)
    ids[order] = np.cumsum(starts) - 1
    return ids


def describing(table: pd.DataFrame, run_column: str) -> pd.DataFrame:
    """The columns that identify and describe each row's run (run id, config hash, seed, ...),
    aligned with the canonical rows (a RangeIndex); absent columns are left out."""
    keep = [c for c in dict.fromkeys([run_column, *DESCRIBING]) if c in table.columns]
    return table[keep].reset_index(drop=True)


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


def _seed_replicates(runs: pd.DataFrame, described: pd.DataFrame, point: pd.Series
                     ) -> tuple[str, dict[str, Any]] | None:
    """(note, seed noise) when every (N, D) point with several runs holds one run per seed and
    nothing but the seed (and so the config hash) differs: a replicated sweep, not a stray run."""
    groups = [g for _, g in runs.groupby([runs["N"], point]) if len(g) > 1]
    for group in groups:
        info = described.loc[group.index]
        differ = _differ(info)
        if "seed" not in differ or not set(differ) <= SEED_ONLY or (
                info["seed"].nunique() < len(group)):
            return None
    # Pooled within-point standard deviation of log loss: the run-to-run noise at fixed (N, D)
    log_loss = [np.log(g["loss"].to_numpy(dtype=float)) for g in groups]
    squares = sum(float(((x - x.mean()) ** 2).sum()) for x in log_loss)
    sd = math.sqrt(squares / sum(len(x) - 1 for x in log_loss))
    count = sum(len(g) for g in groups)
    note = (f"seed replicates: {len(groups)} (N, D) points have runs at several seeds ({count} "
            "runs, nothing else differs): each run is a fit point, and Kaplan's L(N) and L(D) "
            "average each point's seeds before taking the best per N or D; seed-to-seed spread "
            "of the loss "
            f"{100 * sd:.2f} % (pooled sd of log loss), the floor for a fit's rms log residual")
    return note, {"points": len(groups), "runs": count, "sd_log_loss": sd}


def several_runs(runs: pd.DataFrame, described: pd.DataFrame
                 ) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """(warning, note, seed noise) for (N, D) points with several runs. Seed replicates are a
    note with their measured noise; anything else (an LR probe, an older config) is one warning
    line: the fit takes each run as a sweep point, so a bad-LR probe drags the law silently."""
    point = pd.Series(log_clusters(runs["D"].to_numpy(dtype=float), SAME_D_DECADES),
                      index=runs.index)
    sizes = runs.groupby([runs["N"], point]).size()
    shared = sizes[sizes > 1]
    if shared.empty:
        return None, None, None
    replicates = _seed_replicates(runs, described, point)
    if replicates is not None:
        return None, *replicates
    # The example: the point with the most runs (the smallest N, D among equals)
    n, cluster = shared.sort_values(ascending=False, kind="stable").index[0]
    members = runs[(runs["N"] == n) & (point == cluster)]
    listed = [f"{r} (loss {loss:.4g})" for r, loss in zip(members["run"], members["loss"],
                                                          strict=True)]
    shown = ", ".join(listed[:4]) + (f" and {len(listed) - 4} more" if len(listed) > 4 else "")
    differ = _differ(described.loc[members.index])
    how = (f"they differ in {', '.join(differ)}" if differ else
           "the table has no column (seed, config_hash, ...) that says how they differ")
    return (f"{len(shared)} (N, D) points have more than one run, and the fit takes each run as "
            f"a sweep point (e.g. N={n:,.0f}, D={members['D'].iloc[0]:,.0f}: {shown}; {how}); "
            "an LR probe, another seed or a run of older code then weighs in like the sweep's "
            "own: keep one run per (N, D) by filtering the table's rows, or train side runs into "
            "their own experiment folder and fit runs/<experiment>"), None, None
