"""`python -m sweep.fit.bench`: time approach 3 (full start grid + bootstrap) on a ~250-run table.

Prints the timing and how close the fit lands to the law the table was drawn from.
"""

from __future__ import annotations

import math
import os
import platform

import numpy as np

from sweep.errors import OneLineParser
from sweep.fit.analysis import FitOptions
from sweep.fit.approach3 import fit_approach3, start_grid
from sweep.fit.synthetic import EPOCH_LAW, NOISE, isoflop_table

BUDGETS = 10
MIN_SIZES = 3  # per budget: the fewest that put a parabola through each IsoFLOP curve
# Single sources: the fitter's bootstrap count and the synthetic tables' noise.
_BOOTSTRAP = FitOptions().bootstrap


def main(argv: list[str] | None = None) -> None:
    """Entry point; bad flags exit 2 with one `error:` line before any fitting."""
    p = OneLineParser(prog="python -m sweep.fit.bench", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=250,
                   help=f"table size: {BUDGETS} budgets x runs/{BUDGETS} sizes, at least "
                        f"{BUDGETS * MIN_SIZES} (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=_BOOTSTRAP,
                   help="bootstrap refits (default: %(default)s; 0 times the grid only)")
    p.add_argument("--noise", type=float, default=NOISE,
                   help="multiplicative loss noise, a standard deviation in log loss "
                        "(default: %(default)s)")
    args = p.parse_args(argv)
    if args.runs < BUDGETS * MIN_SIZES:
        p.error(f"--runs {args.runs} is below the smallest table ({BUDGETS} budgets x "
                f"{MIN_SIZES} sizes): give --runs {BUDGETS * MIN_SIZES} or more")
    if args.bootstrap < 0:
        p.error(f"--bootstrap {args.bootstrap} is negative: give 0 (no refits) or more "
                f"(the fitter uses {_BOOTSTRAP})")
    if not 0 <= args.noise < math.inf:
        p.error(f"--noise {args.noise:g} must be a finite number >= 0: give e.g. "
                f"--noise {NOISE:g}")
    table = isoflop_table(EPOCH_LAW, budgets=tuple(np.geomspace(1e16, 1e19, BUDGETS)),
                          sizes_per_budget=args.runs // BUDGETS, noise=args.noise)
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"{len(table)} runs, {len(start_grid())} starts, {args.bootstrap} bootstrap refits")
    fit = fit_approach3(table.N, table.D, table.loss, bootstrap=args.bootstrap, seed=0,
                        compute=[1e20])
    grid_s, refits_s = fit.timings_s["grid"], fit.timings_s["bootstrap"]
    # Each stage timed on its own: a difference of two separate runs could come out negative
    print(f"full start grid: {grid_s:.1f} s; grid + {len(fit.samples)} refits: "
          f"{grid_s + refits_s:.1f} s ({1000 * refits_s / max(1, len(fit.samples)):.1f} ms per "
          "refit)")
    # How the optimiser fared, which a change to it should not worsen
    print(f"converged: {fit.n_converged} of {fit.n_starts} starts ({fit.n_stalled} dropped as "
          f"stalled), {fit.bootstrap_converged} of {len(fit.samples)} refits")
    ci = fit.ci95()
    for name, truth in EPOCH_LAW.values().items():
        value = fit.law.values()[name]
        lo, hi = ci.get(name, [float("nan")] * 2)
        print(f"  {name:>5} = {value:10.4g}  95% CI [{lo:.4g}, {hi:.4g}]  truth {truth:.4g}")


if __name__ == "__main__":
    main()
