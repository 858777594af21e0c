"""The report on disk: report.json, a Markdown summary and the plots, written as one directory.

Everything goes into a temporary sibling first and is renamed into place, so a failed fit never
leaves a half-written report (and an existing one survives until the new one is complete).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from sweep.fit.floor import describe_floor
from sweep.fit.plots import write_plots
from sweep.fit.table import TableError
from sweep.records import json_safe

# What a report directory may hold besides PNGs (sweep.fit's report; sweep.fit.hparams' also
# writes hparams.yaml): one of them replaces the other, nothing else is ever replaced
REPORT_FILES = ("report.json", "report.md", "hparams.yaml")
T = TypeVar("T")


def _g(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float | int) else str(value)


def _ci(section: dict[str, Any], key: str) -> str:
    lo_hi = section.get("ci95", {}).get(key)
    return f"[{_g(lo_hi[0])}, {_g(lo_hi[1])}]" if lo_hi else "–"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _stalled(s: dict[str, Any]) -> str:
    stalled = s["starts_stalled"]
    return f", {stalled} left early, stalled far above the best optimum" if stalled else ""


def _approach3(s: dict[str, Any]) -> list[str]:
    lines = ["## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta", "",
             f"{s['n_points']} runs; Huber (delta {s['huber_delta']:g}) on log loss, summed; "
             f"L-BFGS from {s['starts']} grid starts ({s['starts_converged']} converged"
             f"{_stalled(s)}); best "
             f"objective {s['objective']:.6g} (rms log residual {_g(s['rms_log_residual'], 3)}); "
             f"{s['bootstrap']} bootstrap refits ({s['bootstrap_converged']} converged).", ""]
    if "warning" in s:
        lines += [f"**Warning: {s['warning']}.**", ""]
    lines += _table(["parameter", "value", "95% CI"],
                    [[k, _g(s[k]), _ci(s, k)] for k in ("E", "A", "B", "alpha", "beta", "a", "b")])
    lines += ["Compute-optimal allocation (C = 6 N D):", ""]
    rows = [[_g(r["C"], 3), f"{_g(r['N_opt'])} {_ci(r, 'N_opt')}",
             f"{_g(r['D_opt'])} {_ci(r, 'D_opt')}", f"{_g(r['tokens_per_param'], 3)} "
             f"{_ci(r, 'tokens_per_param')}", f"{_g(r['L_opt'])} {_ci(r, 'L_opt')}"]
            for r in s["allocation"]]
    lines += _table(["C (FLOPs)", "N_opt", "D_opt", "tokens/param", "loss"], rows)
    lines += _exact(s.get("allocation_exact"))
    if "predictions" not in s:
        return lines
    lines += ["Predicted loss at the requested runs (`--predict`; the interval is the fitted "
              "law's, not one run's noise; N and D are also given as multiples of the largest "
              "fitted run's):", ""]
    rows = [[_g(p["N"]), _g(p["D"]), _g(p["C"], 3), _g(p["tokens_per_param"], 3),
             f"{_g(p['loss'])} {_ci(p, 'loss')}",
             f"{_g(p['N_over_largest'], 3)}x, {_g(p['D_over_largest'], 3)}x"]
            for p in s["predictions"]]
    return lines + _table(["N", "D", "C (FLOPs)", "tokens/param", "loss", "N, D vs largest run"],
                          rows)


def _exact(x: dict[str, Any] | None) -> list[str]:
    if x is None:
        return []
    lines = [f"With C in exact FLOPs (the runs' forward+backward FLOPs per token x D, as "
             f"budget.flops counts it; over {x['over']}, C from {_g(x['C_range'][0], 3)} to "
             f"{_g(x['C_range'][1], 3)}): N_opt ~ C^a with a = {_g(x['a'])} {_ci(x, 'a')}, "
             f"D_opt ~ C^b with b = {_g(x['b'])} {_ci(x, 'b')}. FLOPs per token are not "
             "proportional to N at this scale (the output head, attention), so a + b is not 1; "
             "these, not the 6ND ones, compare with approach 2 on budget.flops budgets.", ""]
    rows = [[_g(r["C"], 3), _g(r["N_opt"]), _g(r["D_opt"]), _g(r["tokens_per_param"], 3)]
            for r in x["optima"]]
    return lines + _table(["C (exact FLOPs)", "N_opt", "D_opt", "tokens/param"], rows)


def _approach2(s: dict[str, Any]) -> list[str]:
    lines = ["## Approach 2: IsoFLOP parabolas", "",
             f"N_opt ~ C^a with a = {_g(s['a'])} {_ci(s, 'a')}; D_opt ~ C^b with "
             f"b = {_g(s['b'])} {_ci(s, 'b')} ({s['bootstrap']} bootstrap draws). Budgets from "
             f"{s['budgets_from']}; parabola of loss in ln N within {s['window_decades']:g} "
             "decades of each minimum; edge budgets "
             f"{'included' if s['include_edge'] else 'left out'}.", ""]
    if "warning" in s:
        lines += [f"**Warning: {s['warning']}.**", ""]
    rows = [[_g(b["C"], 3), _g(b["N_opt"]), _g(b["D_opt"]), _g(b["tokens_per_param"], 3),
             _g(b["L_min"]), f"{b['window_points']}/{b['points']}",
             "yes" if b["edge"] else "", "yes" if b["used"] else "no"] for b in s["budgets"]]
    lines += _table(["C (FLOPs)", "N_opt", "D_opt", "tokens/param", "L_min", "window/points",
                     "edge", "used"], rows)
    for c, why in s.get("budgets_skipped", {}).items():
        lines.append(f"- budget {c}: skipped, {why}")
    return lines + [""] if s.get("budgets_skipped") else lines


def _curves_of(s: dict[str, Any]) -> str:
    """What approach 1's curves are: runs, points whose seed replicates were merged, or WSD
    trajectories' finished runs."""
    merged = "seed replicates merged into their mean curve"
    if s.get("wsd_trajectories"):
        return ("curves (runs, and WSD trajectories of finished runs"
                + (f"; {merged})" if s.get("seed_replicates_merged") else ")"))
    return f"points ({merged})" if s.get("seed_replicates_merged") else "runs"


def _approach1(s: dict[str, Any]) -> list[str]:
    return ["## Approach 1: lower envelope of the learning curves", "",
            f"N_opt ~ C^a with a = {_g(s['a'])} {_ci(s, 'a')}; D_opt ~ C^b with b = {_g(s['b'])} "
            f"{_ci(s, 'b')}; {s['runs']} {_curves_of(s)}, {s['grid_points']} C values where "
            "two or more runs compete and a size inside the grid wins "
            f"({s['edge_points']} more, won by the "
            "smallest or largest size, only bound N_opt and are left out), "
            f"{s['bootstrap']} bootstrap draws over these curves"
            + (f" ({s['no_ci']})" if s.get("no_ci") else "") + ". "
            + (f"The WSD runs' curves are their {s['wsd_trajectories']} trajectories' finished "
               "runs (the runs sharing a stable phase, else of one experiment, size, seed, "
               "window order and code version), since a point before a cooldown is far from a "
               "finished run of that length. "
               if s.get("wsd_trajectories") else "")
            + ("" if s.get("wsd_trajectories") == s["runs"] else
               "Note: a point inside a cosine schedule is not a finished run of that length, "
               "which biases this method."),
            ""]


def _kaplan(s: dict[str, Any]) -> list[str]:
    lines = ["## Kaplan power laws: L(x) = E + (x_c / x)^alpha_x", ""]
    rows = []
    for law, x in (("L_N", "N"), ("L_D", "D"), ("L_C", "C")):
        if law not in s:
            continue
        for key in ("with_offset", "without_offset"):
            fit = s[law].get(key, {})
            if "skipped" in fit:
                rows.append([f"L({x}), {key.replace('_', ' ')}", "–", "–", "–", fit["skipped"]])
                continue
            rows.append([f"L({x}), {key.replace('_', ' ')}",
                         f"{_g(fit.get('E'))} {_ci(fit, 'E')}" if "E" in fit else "0",
                         f"{_g(fit[f'{x}_c'])} {_ci(fit, f'{x}_c')}",
                         f"{_g(fit[f'alpha_{x}'])} {_ci(fit, f'alpha_{x}')}",
                         f"rms log residual {_g(fit['rms_log_residual'], 3)}; {s[law]['note']}"
                         + (f"; {fit['no_ci']}" if "no_ci" in fit else "")
                         + _unconverged(fit)
                         + ("; **poor fit**" if "warning" in fit else "")])
    return lines + _table(["law", "E", "x_c", "alpha", "notes"], rows)


def _unconverged(fit: dict[str, Any]) -> str:
    """A note when the fit, or some of its bootstrap refits, stopped short of an optimum (those
    refits' laws still count)."""
    note = ("" if fit.get("converged", True) else
            "; no start converged: the lowest point reached, not an optimum")
    short = fit["bootstrap"] - fit.get("bootstrap_converged", fit["bootstrap"])
    return note + (f"; {short} of {fit['bootstrap']} bootstrap refits did not converge"
                   if short else "")


def _against_approach3(s: dict[str, Any]) -> str:
    rms = s.get("approach3_rms_log_residual")
    return "" if rms is None else f" (approach 3's on the same runs: {_g(rms, 3)})"


def _kaplan_nd(s: dict[str, Any]) -> list[str]:
    lines = ["## Kaplan L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D", "",
             f"{s['n_points']} runs; Kaplan et al.'s eq. 1.5, which has no irreducible loss "
             "(approach 3's E); fitted as approach 3 is (Huber, delta "
             f"{s['huber_delta']:g}, on log loss, L-BFGS from {s['starts']} grid starts), "
             f"{s['bootstrap']} bootstrap refits ({s['bootstrap_converged']} converged); rms "
             f"log residual {_g(s['rms_log_residual'], 3)}{_against_approach3(s)}. Kaplan "
             "fitted it to early-stopped runs on D tokens of data; here D is the tokens each run "
             "trained on.", ""]
    if "warning" in s:
        lines += [f"**Warning: {s['warning']}.**", ""]
    lines += _table(["parameter", "value", "95% CI"],
                    [[k, _g(s[k]), _ci(s, k)] for k in ("N_c", "D_c", "alpha_N", "alpha_D",
                                                         "a", "b")])
    return lines + [
        "a and b are the exponents of N_opt and D_opt in C that this law implies under "
        "C = 6 N D (not Kaplan's own N_opt ~ C^0.73, which comes from their L(N, S_min) fits to "
        f"learning curves). Tokens for a loss within {100 * s['penalty']:g} % of L(N) (Kaplan's "
        "eq. 4.4, their fit "
        f"D = 5e3 N^0.74): D = {_g(s['data_coefficient'], 3)} {_ci(s, 'data_coefficient')} "
        f"x N^{_g(s['data_exponent'], 3)} {_ci(s, 'data_exponent')}.", "",
        *_kaplan_predictions(s.get("predictions", []))]


def _kaplan_predictions(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["Predicted loss at the requested runs (`--predict`) under this form, beside approach "
             "3's: where they part, the functional form, not the bootstrap interval, is the "
             "larger uncertainty.", ""]
    return lines + _table(["N", "D", "loss (Kaplan L(N, D))", "loss (approach 3)"],
                          [[_g(r["N"]), _g(r["D"]), f"{_g(r['loss'])} {_ci(r, 'loss')}",
                            _g(r.get("approach3_loss"))] for r in rows])


def _extrapolation(s: dict[str, Any]) -> list[str]:
    lines = ["## Extrapolation check", "",
             f"Approach 3 fitted on the {s['n_fit']} runs whose C (their IsoFLOP budget's "
             f"when all have one) is at most {_g(s['threshold_C'], 3)} "
             f"(max C / {s['holdout_factor']:g}); on the {s['n_held_out']} held-out runs the "
             f"mean |relative error| is {100 * s['mean_abs_rel_error']:.2f} % (max "
             f"{100 * s['max_abs_rel_error']:.2f} %, mean signed {100 * s['mean_rel_error']:+.2f}"
             f" %); in-sample {100 * s['fit_mean_abs_rel_error']:.2f} %.", ""]
    rows = [[str(r["run"]), _g(r["N"]), _g(r["D"]), _g(r["C"], 3), _g(r["loss"]),
             _g(r["predicted"]), f"{100 * r['rel_error']:+.2f} %"]
            for r in s["runs"] if r["held_out"]]
    return lines + _table(["run", "N", "D", "C", "loss", "predicted", "error"], rows)


def _loss_floor(s: dict[str, Any]) -> list[str]:
    if s["window_floor"] is None:
        why = ("no model's loss can go below it, and a model reading windows pays slightly "
               "more, so a well-placed E lies at or a little above it")
    else:
        why = ("a model reading windows of the runs' seq_len cannot know where a window starts "
               "within the data's structure, so this, not the entropy rate, is the loss an "
               "unbounded model trained on unbounded data reaches, and where E belongs "
               "(data.synthetic_floor computes it)")
    floor = describe_floor(s)
    lines = ["## The fitted floors against the data's loss floor", "",
             f"{floor[0].upper()}{floor[1:]}: {why}.", ""]
    rows = [[law["law"], _g(law["E"]), f"[{_g(law['ci95'][0])}, {_g(law['ci95'][1])}]"
             if "ci95" in law else "", f"{100 * law['relative']:+.1f} %",
             ("yes" if law["covers"] else "no") if "covers" in law else ""]
            for law in s["laws"]]
    return lines + _table(["law", "E", "95% CI", "E / floor - 1", "CI holds the floor"], rows)


def render_markdown(report: dict[str, Any], plots: list[str]) -> str:
    """The human-readable report: every fitted method, what was skipped and why, the plots."""
    cols = report["columns"]
    lines = ["# Scaling-law fit", "",
             f"Source: `{report['source']}`: {report['n_runs']} runs, "
             f"{report['n_curve_points']} eval points. Columns: "
             + ", ".join(f"{k} = `{v}`" for k, v in cols.items() if v is not None) + ".", ""]
    lines += [f"- {note}" for note in report["notes"]] + ([""] if report["notes"] else [])
    for warning in report.get("warnings", []):
        lines += [f"**Warning: {warning}.**", ""]
    for name, render in (("approach3", _approach3), ("approach2", _approach2),
                         ("approach1", _approach1), ("kaplan", _kaplan),
                         ("kaplan_nd", _kaplan_nd),
                         ("extrapolation", _extrapolation), ("loss_floor", _loss_floor)):
        if name in report:
            lines += render(report[name])
    if report["skipped"]:
        lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in report["skipped"].items()] + [""]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in report["timings_s"].items())
    return "\n".join(lines + [f"Fit times: {timing}.", ""])


def _plain(value: Any) -> Any:
    # numpy scalars and arrays that slipped into a section.
    return value.tolist() if hasattr(value, "tolist") else str(value)


def check_out_dir(out: Path) -> None:
    """Refuse an --out that holds anything but an earlier report: the report replaces the
    directory whole, and must not take a user's other files with it."""
    if not out.exists():
        return
    if not out.is_dir():
        raise TableError(f"--out {out} is not a report directory but a file; choose a new or empty "
                         "directory")
    entries = {p.name: p for p in out.iterdir()}
    # An earlier report's files; its plots may be another version's (a stale one is dropped)
    other = sorted(name for name, p in entries.items()
                   if name not in REPORT_FILES and not (name.endswith(".png") and p.is_file()))
    if entries and ("report.json" not in entries or other):
        what = f" (it holds {', '.join(other[:3])}{', ...' if len(other) > 3 else ''})" if (
            other) else ""
        raise TableError(f"--out {out} exists and is not a report directory{what}; choose a new "
                         "or empty directory (one holding only an earlier report is replaced)")


def refused(exc: TableError | OSError, out: Path) -> int:
    """Print a fitter CLI's one `error:` line for input it cannot use (a TableError) or a report
    it cannot write (--out on a read-only or missing file system, say); the exit code, 2."""
    if isinstance(exc, TableError):
        line = str(exc)
    else:
        line = (f"cannot write the report to {out} ({exc.strerror or exc}"
                + (f": {exc.filename}" if exc.filename else "") + "): choose a writable --out")
    print(f"error: {line}", file=sys.stderr)
    return 2


def dump_json(report: dict[str, Any]) -> str:
    """report.json's text: strict JSON (NaN and inf as null), numpy values as plain ones."""
    return json.dumps(json_safe(report), indent=2, allow_nan=False, default=_plain) + "\n"


def replace_dir(out: Path, fill: Callable[[Path], T]) -> T:
    """Run fill(tmp) on an empty temporary sibling of `out`, then swap it in for `out` whole:
    a failure leaves `out` as it was. Returns what fill returns."""
    out = Path(out).resolve()  # "." has no name to build the temporary sibling from
    check_out_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        result = fill(tmp)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return result


def write_report(out: Path, report: dict[str, Any], runs: pd.DataFrame,
                 curves: pd.DataFrame | None) -> list[str]:
    """Write report.json, report.md and the plots into `out` as a whole; returns the plots."""

    def fill(tmp: Path) -> list[str]:
        plots = write_plots(report, runs, curves, tmp)
        (tmp / "report.json").write_text(dump_json(report))
        (tmp / "report.md").write_text(render_markdown(report, plots))
        return plots

    return replace_dir(out, fill)
