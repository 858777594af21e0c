"""Tables of runs drawn from a known law (ground truth for the fitter's tests and benchmark).

IsoFLOP grids like a real sweep: per compute budget, model sizes spread around the optimum.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sweep.fit.approach3 import ChinchillaLaw

# Epoch AI's replication of Chinchilla (Besiroglu et al. 2024): a realistic, non-trivial truth.
EPOCH_LAW = ChinchillaLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)
# Multiplicative loss noise (a standard deviation in log loss): ~1 %, as run-to-run seed noise.
NOISE = 0.01


def isoflop_table(
    law: ChinchillaLaw = EPOCH_LAW,
    budgets: tuple[float, ...] = (1e16, 3e16, 1e17, 3e17, 1e18, 3e18, 1e19),
    sizes_per_budget: int = 9,
    span: float = 10.0,
    noise: float = NOISE,
    seed: int = 0,
    curve_points: int = 0,
) -> pd.DataFrame:
    """Runs on an IsoFLOP grid: N log-spaced over [N_opt/span, N_opt*span], D = C / (6 N).

    Loss is the law times exp(noise * standard normal) (multiplicative noise). With
    curve_points > 0 each run also gets that many earlier eval points (a curves table).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt, _ = law.optimal(c)
        for i, n in enumerate(np.geomspace(n_opt / span, n_opt * span, sizes_per_budget)):
            n = float(np.round(n))
            d_final = c / (6.0 * n)
            fractions = np.geomspace(0.05, 1.0, curve_points) if curve_points else np.ones(1)
            run_id = f"c{c:.0e}-n{i}"
            for d in d_final * fractions:
                loss = float(law.loss(n, d)) * float(np.exp(noise * rng.standard_normal()))
                rows.append({"run_id": run_id, "N": n, "D": d, "C": 6.0 * n * d,
                             "loss": loss, "budget": c})
    return pd.DataFrame(rows)
