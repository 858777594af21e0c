"""Fitted irreducible losses against what the runs and the data say of the loss floor.

A fitted E above a loss some run reaches is impossible; one below the data's floor (for the
synthetic corpus: its exact entropy rate, and the higher floor of models reading seq_len-token
windows) is a floor no model could reach.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

# A fitted E above the lowest loss by more than this fraction is warned about: a run that ends
# near the floor may sit a little below a well-fitted E by noise alone (~1 % in loss).
FLOOR_MARGIN = 0.01
# sweep.collect's columns for summary.json's dataset.entropy_rate_nats and .window_floor_nats
ENTROPY_RATE_COLUMN = "dataset_entropy_rate_nats"
WINDOW_FLOOR_COLUMN = "dataset_window_floor_nats"
SEQ_LEN_COLUMN = "shape_seq_len"


def fitted_floors(report: dict[str, Any]) -> list[tuple[str, float, list[float] | None]]:
    """(law, E, its 95 % interval or None) for every law in the report that fitted an E."""
    fitted: list[tuple[str, float, list[float] | None]] = []
    if "approach3" in report:
        section = report["approach3"]
        fitted.append(("approach 3", section["E"], section.get("ci95", {}).get("E")))
    for law, x in (("L_N", "N"), ("L_D", "D"), ("L_C", "C")):
        offset = report.get("kaplan", {}).get(law, {}).get("with_offset", {})
        if "E" in offset:
            fitted.append((f"Kaplan L({x})", offset["E"], offset.get("ci95", {}).get("E")))
    return fitted


def floor_warning(report: dict[str, Any], runs: pd.DataFrame) -> str | None:
    """One line when a fitted irreducible loss E is above a loss the runs themselves reach.

    Such a law cannot describe that run (it never goes below E): the runs are too far from the
    floor to locate it, and every prediction beyond the data inherits the error.
    """
    lowest = int(runs["loss"].to_numpy(dtype=float).argmin())
    floor = float(runs["loss"].iloc[lowest])
    above = [(name, e) for name, e, _ in fitted_floors(report) if e > floor * (1 + FLOOR_MARGIN)]
    if not above:
        return None
    which = "; ".join(f"{name} E = {e:.4g}" for name, e in above)
    return (f"fitted irreducible loss above the lowest loss in the table ({which}; run "
            f"{runs['run'].iloc[lowest]} reached {floor:.4g}): the law cannot go below E, so "
            "these runs are too far from the loss floor to pin it and its predictions beyond the "
            "data are unreliable; train longer or larger runs to reach closer to the floor")


def _distinct(rows: pd.DataFrame, column: str) -> list[float]:
    """The column's distinct numeric values, ascending (none without the column)."""
    if column not in rows.columns:
        return []
    return sorted(pd.to_numeric(rows[column], errors="coerce").dropna().unique())


def _one_value(rows: pd.DataFrame, column: str) -> float | None:
    """The column's single finite positive value, or None (no column, no value, or several)."""
    values = _distinct(rows, column)
    if len(values) != 1 or not math.isfinite(values[0]) or values[0] <= 0:
        return None
    return float(values[0])


def entropy_rate(rows: pd.DataFrame) -> float | None:
    """The data's entropy rate in nats per token, from sweep.collect's column (one dataset per
    fit, so one value), or None when the table does not give one (text corpora, other tables)."""
    return _one_value(rows, ENTROPY_RATE_COLUMN)


def window_floor(rows: pd.DataFrame) -> float | None:
    """The lowest mean loss a model reading the runs' windows can reach (data.synthetic_floor),
    or None when the table does not give one, or gives several (runs at several seq_lens)."""
    return _one_value(rows, WINDOW_FLOOR_COLUMN)


def several_window_floors(rows: pd.DataFrame) -> str | None:
    """One line when the runs give several window floors (trained at several seq_lens): one
    law's E cannot sit at each, so the fit checks its floors against the entropy rate."""
    floors = _distinct(rows, WINDOW_FLOOR_COLUMN)
    if len(floors) < 2:
        return None
    lens = _distinct(rows, SEQ_LEN_COLUMN)
    trained = (f"at seq_lens {', '.join(f'{n:g}' for n in lens)}" if len(lens) > 1
               else "at several seq_lens")
    # Without the column, a --where over it would fail: name no column the table lacks
    how = (f"e.g. --where '{SEQ_LEN_COLUMN} == {lens[0]:g}'" if lens
           else "with --where on the table's seq_len column")
    return (f"the runs were trained {trained}, whose window floors differ "
            f"({', '.join(f'{f:.4g}' for f in floors)} nats/token): one law's irreducible loss "
            "cannot sit at each, so the fitted floors are checked against the entropy rate; fit "
            f"each seq_len alone, {how}")


def floor_check(report: dict[str, Any], rate: float | None, window: float | None
                ) -> dict[str, Any] | None:
    """Each fitted E beside the data's floor: E / floor - 1, and whether E's interval holds it.
    None when no law fitted an E or the table gives no floor.

    The floor is the window floor where the table gives it: a model reading seq_len-token
    windows cannot reach the entropy rate (it does not know where a window starts within the
    data's structure), and E is the loss of an unbounded model trained on unbounded data at
    that seq_len. Without it, the entropy rate, which a well-placed E sits at or a little above.
    """
    fitted = fitted_floors(report)
    floor = window if window is not None else rate
    if not fitted or floor is None:
        return None
    laws = []
    for name, e, ci in fitted:
        usable = ci is not None and len(ci) == 2 and all(math.isfinite(v) for v in ci)
        laws.append({"law": name, "E": e, "relative": e / floor - 1,
                     **({"ci95": ci, "covers": bool(ci[0] <= floor <= ci[1])} if usable else {})})
    return {"entropy_rate": rate, "window_floor": window, "floor": floor,
            "floor_kind": "window floor" if window is not None else "entropy rate", "laws": laws}


def describe_floor(check: dict[str, Any]) -> str:
    """'the lowest loss a model reading the runs' windows can reach is 0.6213 nats/token (the
    entropy rate is 0.5909)', or the entropy rate alone (console and report)."""
    rate = check["entropy_rate"]
    if check["window_floor"] is None:
        return f"the data's entropy rate is {rate:.4g} nats/token"
    return (f"the lowest loss a model reading the runs' windows can reach is "
            f"{check['window_floor']:.4g} nats/token"
            + ("" if rate is None else f" (the entropy rate is {rate:.4g})"))


def below_floor_warning(check: dict[str, Any]) -> str | None:
    """One line when a fitted E lies below the data's floor, interval and all: that law's
    floor is one no model can reach, and it extrapolates too low."""
    floor = check["floor"]
    below = [law for law in check["laws"]
             if (law["ci95"][1] if "ci95" in law else law["E"]) < floor]
    if not below:
        return None
    which = "; ".join(_e_with_interval(law) for law in below)
    return (f"fitted irreducible loss below the data's {check['floor_kind']} {floor:.4g} "
            f"nats/token ({which}): no model can reach that floor, so the law predicts too low "
            "a loss beyond the data; the runs are too far from the floor to place it")


def describe_law(law: dict[str, Any]) -> str:
    """'approach 3 E = 0.62 [0.60, 0.65], +5.0 %, interval excludes it' (console and report)."""
    verdict = ("" if "covers" not in law else
               ", interval holds it" if law["covers"] else ", interval excludes it")
    return f"{_e_with_interval(law)}, {100 * law['relative']:+.1f} %{verdict}"


def _e_with_interval(law: dict[str, Any]) -> str:
    """'approach 3 E = 0.62 [0.6, 0.65]', the interval where the law has one."""
    interval = (f" [{law['ci95'][0]:.4g}, {law['ci95'][1]:.4g}]" if "ci95" in law else "")
    return f"{law['law']} E = {law['E']:.4g}{interval}"
