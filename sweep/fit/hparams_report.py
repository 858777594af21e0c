"""sweep.fit.hparams' outputs: report.md, hparams.yaml (a configs/hparams/ file of the fitted
rules, inheriting every other key from a base) and hparams_fit.png.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sweep.fit.base_rules import BaseRules
from sweep.fit.figures import C_LABEL, log_norm, save
from sweep.fit.optimum import SAME_C_DECADES
from sweep.rules import nearest_power_of_two

AXIS_LABELS = {"lr": "peak LR", "batch": "batch (tokens)"}
FIGURE = "hparams_fit.png"


def _g(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}"


def _interval(pair: list[float] | None, digits: int = 4) -> str:
    return f"[{_g(pair[0], digits)}, {_g(pair[1], digits)}]" if pair else "-"


def _budget_rows(report: dict[str, Any]) -> list[str]:
    base = report.get("base_rule", {}).get("name")
    extra = [f"{base}: LR, batch"] if base else []
    header = ["N", "C (FLOPs)", "runs", "best run: LR, batch, loss", "LR_opt", "batch_opt",
              "loss at optimum", *extra, "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in report["budgets"]:
        best = r["best_run"]
        cells = [_g(r["N"], 3), _g(r["C"], 3), str(r["runs"]),
                 f"{_g(best['lr'], 3)}, {_g(best['batch'], 3)}, {_g(best['loss'])}"]
        given = [", ".join(_g(r["base"][a], 3) if a in r["base"] else "-"
                           for a in ("lr", "batch"))] if base else []
        if "skipped" in r:
            lines.append("| " + " | ".join(cells + ["-", "-", "-", *given, r["skipped"]]) + " |")
            continue
        for axis in ("lr", "batch"):
            mark = " (edge)" if r["edge"].get(axis) else ""
            cells.append(_g(r[axis], 3) + mark if axis in r else "-")
        unused = [a for a, used in r["used"].items() if not used]
        notes = [f"{', '.join(unused)} left out of the law (edge)"] if unused else []
        notes += [f"no {a} optimum: {why}" for a, why in r.get("unlocated", {}).items()]
        notes += [f"{a} at {other} {_g(value, 3)} only" for a, held in
                  r.get("conditional", {}).items() for other, value in held.items()]
        note = "; ".join(notes)
        lines.append("| " + " | ".join(cells + [_g(r["loss"]), *given, note]) + " |")
    return lines


def render_markdown(report: dict[str, Any], plots: list[str]) -> str:
    """report.md: the budgets' optima, the laws with their intervals, DeepSeek's band."""
    lines = ["# LR and batch rules", "", f"Source: `{report['source']}`.", ""]
    if report.get("schedule"):
        lines += [f"The runs trained with the {report['schedule']} LR schedule: hparams.yaml "
                  "says so (fitted.schedule), and a run of another schedule.kind is refused "
                  "these rules.", ""]
    lines += [f"- {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    lines += ["## Optimum per budget", "",
              "Each budget's optimum is the vertex of a quadratic of log loss in (log LR, log "
              f"batch) over the runs within {report['options']['window_decades']:g} decades of "
              "its best run; where the other has fewer than 3 values there, or that surface has "
              "no minimum, the vertex of a parabola along each axis (at one value of the other). "
              "An optimum at or beyond the edge of its grid (edge) is only a bound and stays out "
              "of the laws unless --include-edge.", ""]
    lines += _budget_rows(report) + [""]
    lines += ["## Laws", "", "C is the compute the hparams rules see (a budget.flops run's "
              "budget, else 6 N D with N non-embedding), as in configs/hparams/power_law.yaml.",
              ""]
    for axis, law in report["laws"].items():
        ci = law.get("ci95", {})
        lines.append(f"- **{AXIS_LABELS[axis]}** = {_g(law['coefficient'])} x C^"
                     f"{_g(law['exponent'])} over {law['budgets']} budgets; exponent 95 % "
                     f"interval {_interval(ci.get('exponent'))}; at C = "
                     f"{_g(law['pivot_C'], 3)} (the budgets' middle) {_g(law['at_pivot'])} "
                     f"{_interval(ci.get('at_pivot'))}"
                     + (f" ({ci['draws']} of {report['options']['bootstrap']} redrawn sweeps "
                        "placed every budget's optimum; the rest are left out)"
                        if ci and ci["draws"] < report["options"]["bootstrap"] else "")
                     + (f", {law['over_base']:.2f}x what {report['base_rule']['name']}'s "
                        "rule gives there" if "over_base" in law else ""))
    lines += [f"- no {AXIS_LABELS[a]} law: {why}" for a, why in report["skipped"].items()]
    lines += [f"- no interval for the {AXIS_LABELS[a]} law: {why}"
              for a, why in report["no_ci"].items()]
    lines += [f"- **warning**: {w}" for w in report["warnings"]]
    band = report["near_optimal"]
    lines += ["", "## DeepSeek's near-optimal band", "",
              f"DeepSeek LLM (sec. 3.1) fitted its laws to every run within "
              f"{100 * band['tolerance']:g} % of its budget's lowest loss: {band['runs']} runs "
              "here. On a coarse grid the band's runs are grid values, so this is a cross-check "
              "of the vertices above, not an estimate of its own.", ""]
    for axis in ("lr", "batch"):
        if axis in band:
            lines.append(f"- {AXIS_LABELS[axis]} = {_g(band[axis]['coefficient'])} x C^"
                         f"{_g(band[axis]['exponent'])}")
    if report["laws"]:
        name = report["options"]["name"]
        lines += ["", "## Using the rules", "",
                  f"`hparams.yaml` holds them as a config of the hparams group: copy it to "
                  f"`configs/hparams/{name}.yaml` and train with `hparams={name}`; "
                  f"`python -m sweep.hparams hparams={name}` prints what they give each ladder "
                  "rung. The laws hold over the budgets fitted; beyond them the base config's "
                  "clamps (`lr.min`, `lr.max`, `batch.min_sequences`, ...) still apply."]
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _number(value: float) -> str:
    # PyYAML reads 3e-05 (no dot) as a string, OmegaConf as a float: with its dot, both agree
    text = f"{value:.6g}"
    if "e" in text and "." not in text.split("e")[0]:
        text = text.replace("e", ".0e", 1)
    return text


def _unclamped(law: dict[str, Any], cs: list[float], clamps: tuple[float, float] | None
               ) -> list[str]:
    """lr.min / lr.max lines where the base's clamps would cut into the law over the budgets it
    was fitted on (a CPU sweep's optimum LRs sit above power_law's 3e-3, say): there the law is
    measured, so it, not the clamp, should set the LR."""
    if clamps is None:
        return []
    ends = [law["coefficient"] * c ** law["exponent"] for c in (min(cs), max(cs))]
    # 2 significant figures, rounded outwards so the clamp never cuts into the range
    values = (_number(_round(min(ends), math.floor)), _number(_round(max(ends), math.ceil)))
    return _widened(("min", "max"), ends, clamps, values)


def _unclamped_batch(law: dict[str, Any], cs: list[float], clamps: tuple[int, int] | None,
                     seq_len: int | None) -> list[str]:
    """batch.min_sequences / max_sequences lines where the base's clamps would override the law
    over the budgets it was fitted on: sweep.hparams takes the power of two of sequences nearest
    the law's tokens / seq_len, then clamps it, so a bound is widened to that power of two."""
    if clamps is None or seq_len is None:
        return []
    ends = [nearest_power_of_two(law["coefficient"] * c ** law["exponent"] / seq_len)
            for c in (min(cs), max(cs))]
    return _widened(("min_sequences", "max_sequences"), ends, clamps,
                    (str(max(int(min(ends)), 1)), str(int(max(ends)))), f" (at seq_len {seq_len})")


def _widened(keys: tuple[str, str], ends: list[float], clamps: tuple[float, float],
             values: tuple[str, str], where: str = "") -> list[str]:
    """`key: value` lines for the bounds of `clamps` that cut into [min(ends), max(ends)]."""
    cuts = (min(ends) < clamps[0], max(ends) > clamps[1])
    return [f"  {key}: {value}  # base's {_g(bound)} would clamp the fitted range{where}"
            for key, value, bound, cut in zip(keys, values, clamps, cuts, strict=True) if cut]


def _round(value: float, direction: Callable[[float], int]) -> float:
    scale = 10.0 ** (math.floor(math.log10(value)) - 1)
    return float(f"{direction(value / scale) * scale:.2g}")


def render_yaml(report: dict[str, Any], name: str, base: str,
                clamps: tuple[float, float] | None = None,
                batch_clamps: tuple[int, int] | None = None,
                min_steps: list[str] | None = None) -> str:
    """hparams.yaml: the fitted rules as a config of the hparams group, every other key (clamps,
    warmup, horizon) taken from configs/hparams/<base>.yaml through its defaults list; the base's
    lr clamps (`clamps`) and batch clamps in sequences (`batch_clamps`, checked where the runs'
    seq_len is known; None: unknown) are widened where they cut into the fitted range, and
    `min_steps` (rule_checks.min_steps_line) lowers batch.min_steps where it would."""
    cs = [r["C"] for r in report["budgets"] if any(r.get("used", {}).values())]
    lines = [f"# LR and batch rules fitted by `python -m sweep.fit.hparams {report['source']}`",
             f"# on {date.today().isoformat()} from {len(cs)} budgets, C = {_g(min(cs), 3)} to "
             f"{_g(max(cs), 3)} FLOPs (the C the rules see).",
             f"# Copy it to configs/hparams/{name}.yaml and train with hparams={name}. Keys not "
             f"set here come from {base}.yaml,",
             f"# whose clamps apply: `python -m sweep.hparams hparams={name}` shows what each "
             "rung gets."]
    warning = report.get("warmup", {}).get("warning")
    if warning:
        lines += textwrap.wrap(f"Warning: {warning}.", 98, initial_indent="# ",
                               subsequent_indent="# ")
    lines += ["defaults:", f"  - {base}", "  - _self_", "", f"name: {name}"]
    if report.get("schedule"):
        lines += ["fitted:", f"  schedule: {report['schedule']}  # the sweep's schedule.kind: a "
                  "run of another kind is refused these rules"]
    for axis, law in report["laws"].items():
        ci = law.get("ci95", {}).get("exponent")
        note = f"  # 95 % interval {_interval(ci)}" if ci else ""
        lines += [f"{axis}:", f"  coefficient: {_number(law['coefficient'])}",
                  f"  exponent: {_number(law['exponent'])}{note}"]
        used = [r["C"] for r in report["budgets"] if r.get("used", {}).get(axis)]
        if axis == "lr":
            lines += _unclamped(law, used, clamps)
        else:
            lines += _unclamped_batch(law, used, batch_clamps, report.get("seq_len"))
            lines += min_steps or []
    return "\n".join(lines) + "\n"


def write_figure(report: dict[str, Any], table: pd.DataFrame, out_dir: Path) -> str:
    """hparams_fit.png: loss against LR per budget (at its best run's batch), then each law
    with the budgets' optima (hollow: at the grid edge) and DeepSeek's band."""
    fig = Figure(figsize=(14.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    budgets = report["budgets"]
    given = report.get("base_rule")
    base = BaseRules(given["name"], given["lr"], given["batch"]) if given else None
    norm = log_norm([r["C"] for r in budgets])
    cmap = matplotlib.colormaps["viridis"]
    ax = axes[0]
    for r in budgets:
        color = cmap(norm(r["C"])) if norm is not None else "tab:blue"
        at = table[(np.isclose(table["N"], r["N"])) & (np.isclose(table["batch"],
                                                                  r["best_run"]["batch"]))]
        at = at[np.abs(np.log10(at["C"] / r["C"])) <= SAME_C_DECADES].sort_values("lr")
        ax.plot(at["lr"], at["loss"], "o-", color=color, ms=4,
                label=f"C={_g(r['C'], 2)}, B={_g(r['best_run']['batch'], 3)}")
        if "lr" in r:
            ax.axvline(r["lr"], color=color, lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="peak LR", ylabel="loss",
           title="loss vs LR (each budget at its best run's batch)")
    ax.legend(fontsize=7)
    for ax, axis in zip(axes[1:], ("lr", "batch"), strict=True):
        found = [r for r in budgets if axis in r]
        for used in (True, False):
            pts = [(r["C"], r[axis]) for r in found if r["used"][axis] == used]
            if pts:
                c, v = zip(*pts, strict=True)
                ax.scatter(c, v, s=36, facecolors="tab:blue" if used else "none",
                           edgecolors="tab:blue", label="optimum" + ("" if used else " (edge)"),
                           zorder=3)
        cs = np.geomspace(min(r["C"] for r in budgets) / 2, max(r["C"] for r in budgets) * 2, 50)
        law = report["laws"].get(axis)
        if law:
            ax.plot(cs, law["coefficient"] * cs ** law["exponent"], color="tab:blue",
                    label=f"{_g(law['coefficient'], 3)} C^{_g(law['exponent'], 3)}")
        if base is not None:
            values = [base.lr_at(c) if axis == "lr" else base.batch_at(c) for c in cs]
            if values[0] is not None:
                ax.plot(cs, values, color="tab:orange", ls=":", label=f"{base.name} rule")
        band = report["near_optimal"].get(axis)
        if band:
            ax.plot(cs, band["coefficient"] * cs ** band["exponent"], color="tab:gray", ls="--",
                    label="near-optimal band (DeepSeek)")
        if not found:
            ax.text(0.5, 0.5, f"no {AXIS_LABELS[axis]} optimum", ha="center",
                    transform=ax.transAxes)
        ax.set(xscale="log", yscale="log", xlabel=C_LABEL, ylabel=AXIS_LABELS[axis],
               title=f"optimal {AXIS_LABELS[axis]}")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return save(fig, out_dir, FIGURE)
