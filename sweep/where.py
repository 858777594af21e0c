"""--where, shared by sweep.collect and the fitters: which runs a pandas query over a table keeps.

One expression language everywhere: what selects runs for a fit selects them for a table too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from sweep.errors import first_line


class WhereError(ValueError):
    """A --where expression that cannot select runs (one line naming the fix)."""


def select_runs(where: str, rows: pd.DataFrame, place: str) -> np.ndarray:
    """Which runs `where` keeps (a pandas query over the source's columns), given each run's
    row of the source (its final row in a curves table); `place` says where the runs are
    ("under DIR", "in FILE"). A bad expression is a WhereError."""
    try:
        kept = rows.eval(where, engine="python")
    except (SyntaxError, NameError, KeyError, ValueError, TypeError, AttributeError,
            NotImplementedError) as exc:
        reason = first_line(exc) or type(exc).__name__
        raise WhereError(f"--where {where!r} cannot be evaluated on the runs {place} ({reason}): "
                         "write a pandas query over their columns "
                         f"({', '.join(map(str, rows.columns[:8]))}, ...), e.g. "
                         "--where 'N >= 3e6 and experiment == \"isoflop\"'") from None
    if isinstance(kept, pd.DataFrame):  # `a = b` assigns a column in pandas' eval
        raise WhereError(f"--where {where!r} assigns (a single =): compare with ==, e.g. "
                         "--where 'seed == 0'")
    if isinstance(kept, pd.Series) and kept.dtype == "boolean":  # nullable: missing is false
        kept = kept.fillna(False).astype(bool)
    if not isinstance(kept, pd.Series) or kept.dtype != bool:
        raise WhereError(f"--where {where!r} is not a condition (it gives "
                         f"{getattr(kept, 'dtype', type(kept).__name__)}, not true/false per run): "
                         "compare columns, e.g. --where 'N >= 3e6'")
    if not kept.any():
        raise WhereError(f"--where {where!r} keeps none of the {len(rows)} runs {place}: "
                         "loosen it")
    return kept.to_numpy()
