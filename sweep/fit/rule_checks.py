"""What training with fitted LR and batch rules would do that the sweep's runs did not: the base's
batch.min_steps halving the law's batch inside the fitted range, or another warmup.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sweep.fit.base_rules import BaseRules
from sweep.fit.optimum import SAME_C_DECADES
from sweep.rules import halved_for_steps, nearest_power_of_two, warmup_length

# sweep.collect's columns of what each run trained with
STEPS, WARMUP = "steps", "hparams_warmup_steps"
BUDGET = ("budget_kind", "budget_value")
EXACT_FLOPS_PER_TOKEN = "flops_per_token_exact"


def target_tokens(source: pd.DataFrame, n: pd.Series) -> pd.Series | None:
    """Each run's budget as the tokens sweep.hparams' min_steps sees (before whole steps), from
    sweep.collect's budget columns; None where the source lacks them."""
    if not set(BUDGET) <= set(source.columns):
        return None
    value = pd.to_numeric(source["budget_value"], errors="coerce")
    per_token = (pd.to_numeric(source[EXACT_FLOPS_PER_TOKEN], errors="coerce")
                 if EXACT_FLOPS_PER_TOKEN in source.columns else np.nan)
    kind = source["budget_kind"]
    tokens = np.where(kind == "tokens", value,
                      np.where(kind == "tokens_per_param", value * n,
                               np.where(kind == "flops", value / per_token, np.nan)))
    return pd.Series(tokens, index=source.index, dtype=float)


def _budget_runs(table: pd.DataFrame, row: dict[str, Any]) -> np.ndarray:
    """The runs of one report budget: its N, and C within SAME_C_DECADES (as fit_optimum groups)."""
    n, c = table["N"].to_numpy(dtype=float), table["C"].to_numpy(dtype=float)
    return (n == row["N"]) & (np.abs(np.log10(c / row["C"])) <= SAME_C_DECADES)


def min_steps_line(report: dict[str, Any], table: pd.DataFrame, source: pd.DataFrame,
                   base: BaseRules | None, seq_len: int | None, notes: list[str]) -> list[str]:
    """A `batch.min_steps` line where the base's would halve the batch law's batch at a budget it
    was fitted on (the sweep found that batch best there, in fewer steps); none where it would
    not. Checked at the runs' seq_len, the law's batch rounded as sweep.hparams rounds it."""
    law = report["laws"].get("batch")
    if law is None or base is None or seq_len is None or "min_steps" not in base.batch:
        return []
    tokens = target_tokens(source, table["N"])
    horizon = base.horizon.get("tokens_per_param")
    if tokens is None and horizon is None:
        notes.append(f"batch.min_steps of {base.name}.yaml not checked against the batch law: "
                     f"the source has no {' and '.join(BUDGET)} columns (sweep.collect's)")
        return []
    min_steps = int(base.batch["min_steps"])
    used = [r for r in report["budgets"] if r.get("used", {}).get("batch")]
    sequences = [max(1, int(nearest_power_of_two(law["coefficient"] * r["C"] ** law["exponent"]
                                                 / seq_len))) for r in used]
    # the clamps as hparams.yaml leaves them: widened to the law's batch over the fitted range
    floor = min(int(base.batch.get("min_sequences", 1)), *sequences)
    steps, halved = [], []
    for row, seqs in zip(used, sequences, strict=True):
        # with hparams.horizon the rules count the steps of k x N tokens, else the run's budget
        d = horizon * row["N"] if horizon else float(tokens[_budget_runs(table, row)].max())
        if not math.isfinite(d):
            continue
        if seqs > floor:  # at the floor no min_steps halves it
            steps.append(int(d // (seqs * seq_len)))
        if halved_for_steps(seqs, floor, seq_len, d, min_steps) < seqs:
            halved.append(row["C"])
    if not halved:
        return []
    value = max(1, min(steps))
    where = (f"the fitted budget C = {halved[0]:.3g}" if len(halved) == 1 else
             f"{len(halved)} fitted budgets, C = {min(halved):.3g} to {max(halved):.3g}")
    return [f"  min_steps: {value}  # base's {min_steps} would halve the law's batch at {where}"]


def _common_fraction(warmup: np.ndarray, steps: np.ndarray) -> float | None:
    """The schedule.warmup_fraction f every run's warmup fits (max(1, round(f x steps))), as few
    significant figures as will do; None where no one fraction fits them all."""
    lo = np.where(warmup <= 1, 0.0, (warmup - 0.5) / steps).max()
    hi = ((warmup + 0.5) / steps).min()
    if lo > hi:
        return None
    for digits in range(1, 5):
        value = float(f"{(lo + hi) / 2:.{digits}g}")
        if lo <= value <= hi:
            return value
    return float((lo + hi) / 2)


def check_warmup(table: pd.DataFrame, source: pd.DataFrame, base: BaseRules | None,
                 notes: list[str]) -> dict[str, Any] | None:
    """Compare each run's warmup with what <base>'s warmup rule (which hparams.yaml inherits)
    gives it: the fitted LR is the optimum at the sweep's warmup. None where not checkable (a
    note says why); else {runs, off_rule, example, fraction, warning}."""
    rule = base.warmup if base is not None else {}
    if not {"tokens_per_param", "max_fraction"} <= set(rule):
        if base is not None:
            notes.append(f"warmup not checked: {base.name}.yaml sets no numeric warmup rule")
        return None
    missing = [c for c in (STEPS, WARMUP) if c not in source.columns]
    if missing:
        notes.append(f"warmup not checked against {base.name}'s rule: the source has no "
                     f"{' or '.join(missing)} column (sweep.collect's)")
        return None
    warmup = pd.to_numeric(source[WARMUP], errors="coerce").to_numpy(dtype=float)
    steps = pd.to_numeric(source[STEPS], errors="coerce").to_numpy(dtype=float)
    n, batch = table["N"].to_numpy(dtype=float), table["batch"].to_numpy(dtype=float)
    known = np.isfinite(warmup) & np.isfinite(steps) & (steps >= 1)
    if not known.any():
        notes.append(f"warmup not checked against {base.name}'s rule: no run records its "
                     "warmup steps")
        return None
    horizon = base.horizon.get("tokens_per_param")
    expected = np.array([
        warmup_length(rule["tokens_per_param"], rule["max_fraction"], n[i], batch[i],
                      int(horizon * n[i] // batch[i]) if horizon else int(steps[i]))
        for i in np.flatnonzero(known)])
    off = warmup[known] != expected
    result: dict[str, Any] = {"runs": int(known.sum()), "off_rule": int(off.sum())}
    rule_text = (f"{base.name}'s warmup rule (warmup.tokens_per_param="
                 f"{rule['tokens_per_param']:g}, max_fraction={rule['max_fraction']:g})")
    if not off.any():
        notes.append(f"warmup: all {result['runs']} runs warmed up as {rule_text} gives, which "
                     "training with these rules follows")
        return result
    first = int(np.flatnonzero(off)[0])
    ids = source["run_id"].to_numpy()[known] if "run_id" in source.columns else None
    name = f"run {ids[first]}" if ids is not None else "e.g. one run"
    result["example"] = {"warmup_steps": int(warmup[known][first]),
                         "rule": int(expected[first])}
    fraction = _common_fraction(warmup[known], steps[known])
    result["fraction"] = fraction
    how = (f"they fit schedule.warmup_fraction={fraction:g}: train with these rules and "
           f"schedule.warmup_fraction={fraction:g}, or refit on a sweep with the rule's warmup"
           if fraction is not None else
           "train with the sweep's warmup, or refit on a sweep with the rule's")
    result["warning"] = (
        f"{result['off_rule']} of {result['runs']} runs warmed up otherwise than {rule_text}, "
        f"which training with these rules follows ({name}: {result['example']['warmup_steps']} "
        f"steps, the rule {result['example']['rule']}); the LR optimum depends on the warmup: "
        f"{how}")
    return result
