"""`python -m sweep.fit.bench`: time approach 3 (full start grid + bootstrap) on a ~250-run table.

Prints the timing and how close the fit lands to the law the table was drawn from.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from sweep.fit.approach3 import fit_approach3, fit_law, start_grid
from sweep.fit.synthetic import EPOCH_LAW, isoflop_table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sweep.fit.bench", description=__doc__)
    p.add_argument("--runs", type=int, default=250, help="table size (10 budgets x runs/10)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--noise", type=float, default=0.01)
    args = p.parse_args(argv)
    table = isoflop_table(EPOCH_LAW, budgets=tuple(np.geomspace(1e16, 1e19, 10)),
                          sizes_per_budget=max(3, args.runs // 10), noise=args.noise)
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
          f"{len(table)} runs, {len(start_grid())} starts, {args.bootstrap} bootstrap refits")
    t0 = time.perf_counter()
    fit_law(table.N, table.D, table.loss)
    grid_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = fit_approach3(table.N, table.D, table.loss, bootstrap=args.bootstrap, seed=0,
                        compute=[1e20])
    total_s = time.perf_counter() - t0
    print(f"full start grid: {grid_s:.1f} s; grid + {len(fit.samples)} refits: {total_s:.1f} s "
          f"({1000 * (total_s - grid_s) / max(1, len(fit.samples)):.1f} ms per refit)")
    ci = fit.ci95()
    for name, truth in EPOCH_LAW.values().items():
        value = fit.law.values()[name]
        lo, hi = ci.get(name, [float("nan")] * 2)
        print(f"  {name:>5} = {value:10.4g}  95% CI [{lo:.4g}, {hi:.4g}]  truth {truth:.4g}")


if __name__ == "__main__":
    main()
