"""`python -m sweep.fit SOURCE --out REPORT_DIR`: fit every law the runs support and report it.

SOURCE is a runs directory or a CSV/Parquet table; bad input exits 2 with one line and no output.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from sweep.errors import OneLineParser
from sweep.fit.analysis import METHODS, FitOptions, fit_report
from sweep.fit.floor import describe_floor, describe_law
from sweep.fit.report import check_out_dir, refused, write_report
from sweep.fit.table import Columns, TableError, load

_DEFAULTS = FitOptions()
_COLUMNS = Columns()


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m sweep.fit", description=__doc__.split("\n")[0])
    p.add_argument("source", help="runs directory, or a .csv/.parquet table with a row per run "
                                  "(or per eval point, with a run id column)")
    p.add_argument("--out", required=True, help="report directory (replaced if it holds a report)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="runs directory: leave out runs whose summary.json or metrics.jsonl "
                        "cannot be read (noted in the report) instead of refusing")
    p.add_argument("--n-col", default=_COLUMNS.N, help="parameters column (default: %(default)s)")
    p.add_argument("--d-col", default=_COLUMNS.D, help="tokens column (default: %(default)s)")
    p.add_argument("--c-col", default=_COLUMNS.C, help="FLOPs column (default: %(default)s)")
    p.add_argument("--loss-col", default=_COLUMNS.loss, help="loss column (default: %(default)s)")
    p.add_argument("--budget-col", default=None,
                   help="IsoFLOP budget column (default: bin C in log space)")
    p.add_argument("--run-col", default=_COLUMNS.run,
                   help="run id column; repeated ids make a curves table (default: run_id, "
                        "if present)")
    p.add_argument("--where", metavar="EXPR", default=None,
                   help="fit only the runs whose row matches this pandas query over the "
                        "source's columns (a run's final row in a curves table), e.g. "
                        "'N >= 3e6', 'experiment == \"isoflop\"', 'seed == 0'")
    p.add_argument("--bootstrap", type=int, default=_DEFAULTS.bootstrap,
                   help="bootstrap refits per method (default: %(default)s; 0 for no CIs)")
    p.add_argument("--seed", type=int, default=_DEFAULTS.seed, help="bootstrap seed")
    p.add_argument("--holdout-factor", type=float, default=_DEFAULTS.holdout_factor,
                   help="extrapolation: fit on C <= max C / this (default: %(default)s)")
    p.add_argument("--isoflop-window", type=float, default=_DEFAULTS.isoflop_window,
                   help="approach 2 parabola window, decades of N each side of the minimum "
                        "(default: %(default)s)")
    p.add_argument("--include-edge", action="store_true",
                   help="approach 2: use budgets whose minimum is at the grid edge")
    p.add_argument("--compute", type=float, nargs="+", default=None,
                   help="C values (FLOPs) for the compute-optimal table (default: around the data)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(_DEFAULTS.methods),
                   metavar="METHOD",
                   help="run only these methods, the others are skipped (default: all: "
                        f"{' '.join(METHODS)})")
    p.add_argument("--predict", nargs="+", default=None, metavar="N,D",
                   help="predict the loss of runs with N parameters and D tokens (approach 3, "
                        "with a 95%% bootstrap interval), e.g. --predict 1e9,2e10")
    return p


def _point(text: str) -> tuple[float, float]:
    """One --predict value, "N,D", as two positive finite numbers."""
    try:
        n, d = (float(v) for v in text.split(","))
    except ValueError:
        raise TableError(f"--predict {text} is not N,D: give parameters and tokens, e.g. "
                         "--predict 1e9,2e10") from None
    if not (0 < n < math.inf and 0 < d < math.inf):
        raise TableError(f"--predict {text}: N and D must be positive, finite numbers")
    return n, d


def _options(args: argparse.Namespace) -> FitOptions:
    if args.seed < 0:
        raise TableError(f"--seed {args.seed} is negative; give a seed >= 0")
    if args.bootstrap < 0:
        raise TableError(f"--bootstrap {args.bootstrap} is negative; give 0 (no CIs) or more "
                         "(1000 is usual)")
    if not 1 < args.holdout_factor < math.inf:
        raise TableError(f"--holdout-factor {args.holdout_factor:g} must be > 1 (10 holds out "
                         "runs with more than a tenth of the largest compute)")
    if not 0 < args.isoflop_window < math.inf:
        raise TableError(f"--isoflop-window {args.isoflop_window:g} must be > 0 decades "
                         "(and finite)")
    for c in args.compute or ():
        if not 0 < c < math.inf:
            raise TableError(f"--compute {c:g} must be > 0 FLOPs (and finite), e.g. 1e21")
    try:  # FitOptions checks how the methods and --predict go together
        return FitOptions(bootstrap=args.bootstrap, seed=args.seed,
                          holdout_factor=args.holdout_factor,
                          isoflop_window=args.isoflop_window, include_edge=args.include_edge,
                          compute=tuple(args.compute or ()),
                          predict=tuple(_point(v) for v in args.predict or ()), where=args.where,
                          methods=tuple(dict.fromkeys(args.methods)))
    except ValueError as exc:
        raise TableError(str(exc)) from None


def _predicted(row: dict, law: str) -> str:
    """One --predict row: the loss at (N, D), its interval and which law gave it."""
    lo_hi = row.get("ci95", {}).get("loss")
    interval = f" [{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else ""
    return (f"predicted loss at N={row['N']:.3g}, D={row['D']:.3g}: {row['loss']:.4g}{interval} "
            f"({law})")


def _with_warning(law: str, section: dict, values: str) -> list[str]:
    """A law's console line, and its warning's line when it has one."""
    warning = [f"{law} warning: {section['warning']}"] if "warning" in section else []
    return [f"{law}: {values}", *warning]


def _kaplan_lines(kaplan: dict) -> list[str]:
    """Kaplan's L(N), L(D) and L(C): each law's two fits on one line, then their warnings."""
    lines = []
    for x in ("N", "D", "C"):
        section = kaplan[f"L_{x}"]
        fits, warnings = [], []
        for key, label in (("without_offset", ""), ("with_offset", "with offset ")):
            fit = section[key]
            if "skipped" in fit:
                fits.append(f"{label or 'without offset '}skipped: {fit['skipped']}")
                continue
            offset = f"E={fit['E']:.4g} " if "E" in fit else ""
            fits.append(f"{label}{offset}alpha_{x}={fit[f'alpha_{x}']:.4g} "
                        f"{x}_c={fit[f'{x}_c']:.4g}")
            if "warning" in fit:
                warnings.append(f"Kaplan L({x}) {label}warning: {fit['warning']}")
        lines += [f"Kaplan L({x}): {'; '.join(fits)}", *warnings]
    return lines


def _summary(report: dict) -> list[str]:
    lines = []
    if "approach3" in report:
        s = report["approach3"]
        lines += _with_warning("approach 3", s, f"E={s['E']:.4g} A={s['A']:.4g} B={s['B']:.4g} "
                               f"alpha={s['alpha']:.4g} beta={s['beta']:.4g} -> a={s['a']:.3f} "
                               f"b={s['b']:.3f}")
        if "allocation_exact" in s:
            x = s["allocation_exact"]
            ci = x["ci95"].get("a")
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            lines.append(f"approach 3 with C in exact FLOPs (over {x['over']}): a={x['a']:.3f}"
                         f"{interval} b={x['b']:.3f}")
        lines += [_predicted(p, f"approach 3; {p['N_over_largest']:.3g}x the largest N, "
                                f"{p['D_over_largest']:.3g}x the largest D")
                  for p in s.get("predictions", [])]
    for name in ("approach2", "approach1"):
        if name in report:
            s = report[name]
            ci = s["ci95"].get("a")
            interval = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
            exact = " (C: each run's budget.flops, exact FLOPs)" if s.get(
                "budgets_from", "").startswith("each run's budget.flops") else ""
            lines.append(f"{name.replace('approach', 'approach ')}: a={s['a']:.3f}{interval} "
                         f"b={s['b']:.3f}{exact}")
            if "warning" in s:
                lines.append(f"{name.replace('approach', 'approach ')} warning: {s['warning']}")
    if "kaplan" in report:
        lines += _kaplan_lines(report["kaplan"])
    if "kaplan_nd" in report:
        s = report["kaplan_nd"]
        lines += _with_warning("Kaplan L(N, D)", s, f"alpha_N={s['alpha_N']:.4g} "
                               f"alpha_D={s['alpha_D']:.4g} -> a={s['a']:.3f} b={s['b']:.3f}; "
                               f"within {100 * s['penalty']:g} % of L(N) at "
                               f"D = {s['data_coefficient']:.3g} N^{s['data_exponent']:.3g}")
        lines += [_predicted(p, "Kaplan L(N, D)") for p in s.get("predictions", [])]
    if "extrapolation" in report:
        s = report["extrapolation"]
        lines.append(f"extrapolation: {s['n_held_out']} held-out runs, mean |error| "
                     f"{100 * s['mean_abs_rel_error']:.2f} %")
    if "loss_floor" in report:
        s = report["loss_floor"]
        lines.append(f"loss floor: {describe_floor(s)}; "
                     + "; ".join(describe_law(law) for law in s["laws"]))
    lines += [f"skipped {k}: {v}" for k, v in report["skipped"].items()]
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    try:
        options = _options(args)
        check_out_dir(out)  # before minutes of fitting, not after
        columns = Columns(N=args.n_col, D=args.d_col, C=args.c_col, loss=args.loss_col,
                          budget=args.budget_col, run=args.run_col)
        data = load(args.source, columns, skip_unreadable=args.skip_unreadable,
                    where=options.where)
        # How many runs a runs directory gave and why the rest (diverged, ...) were left out.
        for note in data.notes:
            if note.startswith(("runs directory: ", "D derived", "C derived", "dropped ",
                                "seed replicates: ", "--where ")):
                print(note)
        report = fit_report(data, options)
        write_report(out, report, data.runs, data.curves)
    except (TableError, OSError) as exc:
        return refused(exc, out)
    for line in _summary(report):
        print(line)
    print(f"report: {out / 'report.md'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
