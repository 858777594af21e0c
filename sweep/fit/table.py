"""The fitter's input: a runs directory (via sweep.collect) or any CSV/Parquet table of runs.

Maps the user's columns onto N, D, C, loss, derives the missing one of D and C, and refuses a
table that cannot be fitted with one line naming the column, the rows and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sweep import where as where_module
from sweep.collect import CollectError, UnreadableRun, collect_runs, dataset_label
from sweep.errors import first_line
from sweep.fit.floor import entropy_rate, several_window_floors, window_floor
from sweep.fit.points import describing, drop_repeated_rows, several_runs, wsd_trajectories

# Approach 3 has five parameters: fewer runs than that cannot determine it.
MIN_RUNS = 5
# C / (6 N D) is ~1 for 6ND FLOPs and up to ~10 for exact FLOPs of tiny models with big vocabs;
# a spread or a level far beyond that means the rows mix units.
MAX_RATIO_SPREAD = 100.0
RATIO_RANGE = (1e-2, 1e2)


class TableError(ValueError):
    """A table the fitter cannot use as given (printed as one line, exit code 2)."""


@dataclass(frozen=True)
class Columns:
    """Which source column holds each quantity (the CLI's --n-col, --d-col, ...)."""

    N: str = "N"
    D: str = "D"
    C: str = "C"
    loss: str = "loss"
    budget: str | None = None
    run: str | None = None  # None: use a `run_id` column if the table has one

    @property
    def run_column(self) -> str:
        return self.run or "run_id"


@dataclass
class FitData:
    """One row per run (`runs`) and, when the source has them, eval-point curves (`curves`).

    Both have float columns N, D, C, loss and a string column run; runs also has budget
    (the --budget-col value, NaN without one) and replicate (the number of the seed-replicated
    (N, D) point a run belongs to, -1 for none).
    """

    runs: pd.DataFrame
    curves: pd.DataFrame | None
    source: str
    columns: Columns
    notes: list[str] = field(default_factory=list)
    budget_source: str | None = None  # what the runs' budget column holds (None: no budgets)
    warnings: list[str] = field(default_factory=list)  # problems the fit goes on despite
    # Seed replicates at one (N, D): {points, runs, sd_log_loss}; None when there are none
    seed_noise: dict[str, Any] | None = None
    # The data's entropy rate (nats/token) where the table gives it (the synthetic corpus), and
    # the higher floor of a model reading the runs' seq_len-token windows
    entropy_rate: float | None = None
    window_floor: float | None = None


def _flag(quantity: str) -> str:
    return {"N": "--n-col", "D": "--d-col", "C": "--c-col", "loss": "--loss-col",
            "budget": "--budget-col", "run": "--run-col"}[quantity]


def read_table(source: Path) -> pd.DataFrame:
    suffix = source.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(source)
        if suffix == ".parquet":
            return pd.read_parquet(source)
    except ImportError as exc:
        raise TableError(f"reading {source} needs pyarrow ({exc}); pip install pyarrow, "
                         "or save the table as .csv") from None
    except (ValueError, OSError) as exc:
        raise TableError(f"cannot read {source}: {first_line(exc)}") from None
    raise TableError(f"SOURCE {source} is neither a runs directory nor a .csv/.parquet table")


def _rows(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(i) for i in idx[:5])
    return shown + (f" and {len(idx) - 5} more" if len(idx) > 5 else "")


def numeric_column(table: pd.DataFrame, name: str, quantity: str, where: str,
                   flag: str | None = None) -> np.ndarray:
    """A column's values as positive finite floats; `flag` is the CLI flag that names it
    (default: sweep.fit's for the quantity)."""
    if name not in table.columns:
        have = ", ".join(map(str, table.columns[:12]))
        raise TableError(f"column '{name}' (for {quantity}) is not in {where} (it has: {have}); "
                         f"name the right one with {flag or _flag(quantity)}")
    values = pd.to_numeric(table[name], errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        raise TableError(f"column '{name}' has {bad.sum()} missing, infinite or non-numeric "
                         f"values (rows {_rows(bad)}) in {where}; drop or fix those rows")
    low = values <= 0
    if low.any():
        raise TableError(f"column '{name}' has {low.sum()} non-positive values (rows "
                         f"{_rows(low)}, e.g. {values[low][0]:g}) in {where}; {quantity} must be "
                         "> 0 for a log-scale fit")
    return values


def _canonical(table: pd.DataFrame, cols: Columns, where: str, notes: list[str]) -> pd.DataFrame:
    n = numeric_column(table, cols.N, "N", where)
    loss = numeric_column(table, cols.loss, "loss", where)
    has_d, has_c = cols.D in table.columns, cols.C in table.columns
    for quantity, has in (("D", has_d), ("C", has_c)):
        # A column named on the command line must exist: deriving it instead would hide a typo
        if not has and getattr(cols, quantity) != getattr(Columns(), quantity):
            raise TableError(
                f"{_flag(quantity)} '{getattr(cols, quantity)}' is not a column of {where} (it "
                f"has: {', '.join(map(str, table.columns[:12]))}); leave {_flag(quantity)} out "
                f"to derive {quantity} from the others")
    if not has_d and not has_c:
        raise TableError(f"{where} has neither a D column '{cols.D}' nor a C column '{cols.C}'; "
                         "name one with --d-col or --c-col")
    d = numeric_column(table, cols.D, "D", where) if has_d else None
    c = numeric_column(table, cols.C, "C", where) if has_c else None
    if d is None:
        d = c / (6.0 * n)
        if d.size and d.min() < 1.0:
            raise TableError(f"D = C / (6 N) comes out at {d.min():.3g} tokens in {where}: give "
                             f"'{cols.C}' in FLOPs (not PF-days: 1 PF-day = 8.64e19 FLOPs) and "
                             f"'{cols.N}' in parameters")
        _note(notes, f"D derived as C / (6 N) (no column '{cols.D}')")
    elif c is None:
        c = 6.0 * n * d
        _note(notes, f"C derived as 6 N D (no column '{cols.C}')")
    else:
        _check_units(n, d, c, cols, where)
    out = pd.DataFrame({"N": n, "D": d, "C": c, "loss": loss})
    ids = _run_ids(table, cols)
    out["run"] = ids.to_numpy() if ids is not None else [f"row{i}" for i in range(len(table))]
    if cols.budget is not None:
        if cols.budget not in table.columns:
            raise TableError(f"column '{cols.budget}' (for budget) is not in {where}; name the "
                             "right one with --budget-col, or leave it out to bin C")
        out["budget"] = numeric_column(table, cols.budget, "budget", where)
    elif {"budget_kind", "budget_value"} <= set(table.columns):
        # sweep.collect's columns: a budget.flops run's IsoFLOP budget is its own. Binning C
        # instead splits such budgets (C = 6ND spreads 0.2 decades along one exact-FLOP profile).
        flops = (table["budget_kind"] == "flops").to_numpy()
        value = pd.to_numeric(table["budget_value"], errors="coerce").to_numpy(dtype=float)
        out["budget"] = np.where(flops, value, np.nan)
    else:
        out["budget"] = np.nan
    if "flops_exact" in table.columns:
        # Exact FLOPs per token of each run's shape: approach 3's optimum under exact compute.
        out["flops_per_token"] = (
            pd.to_numeric(table["flops_exact"], errors="coerce").to_numpy(dtype=float) / d)
    return out


def _run_ids(table: pd.DataFrame, cols: Columns) -> pd.Series | None:
    """Each row's run, or None without a run column. sweep.collect's tables key a run by
    experiment and run id (one run id can be in two experiments): so does this, unless
    --run-col names the column."""
    if cols.run_column not in table.columns:
        return None
    ids = table[cols.run_column].astype(str)
    if cols.run is None and "experiment" in table.columns:
        ids = table["experiment"].astype(str) + "/" + ids
    return ids


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


def _check_units(n: np.ndarray, d: np.ndarray, c: np.ndarray, cols: Columns, where: str) -> None:
    ratio = c / (6.0 * n * d)
    if ratio.size == 0:
        return  # an empty table: _check_fittable refuses it ("0 runs")
    lo, hi = float(ratio.min()), float(ratio.max())
    if hi / lo > MAX_RATIO_SPREAD:
        raise TableError(
            f"C / (6 N D) ranges from {lo:.3g} to {hi:.3g} across the rows of {where}: the "
            f"columns '{cols.N}', '{cols.D}', '{cols.C}' mix units; give N in parameters, D in "
            "tokens and C in FLOPs in every row")
    median = float(np.median(ratio))
    if not RATIO_RANGE[0] <= median <= RATIO_RANGE[1]:
        raise TableError(
            f"C / (6 N D) is about {median:.3g} in {where}: give N in parameters, D in tokens and "
            f"C in FLOPs (not PF-days: 1 PF-day = 8.64e19 FLOPs), or drop '{cols.C}' to use 6ND")


def select_runs(where: str, rows: pd.DataFrame, place: str) -> np.ndarray:
    """sweep.where.select_runs, its error a TableError."""
    try:
        return where_module.select_runs(where, rows, place)
    except where_module.WhereError as exc:
        raise TableError(str(exc)) from None


def load(source: str | Path, cols: Columns, skip_unreadable: bool = False,
         where: str | None = None) -> FitData:
    """Read and check a source; every problem is a TableError naming the fix.

    For a runs directory, an unreadable run is a TableError unless skip_unreadable, which leaves
    it out with a note (see sweep.collect.collect_runs). `where` (a pandas query over the
    source's columns) keeps only the runs whose row (final row, in a curves table) matches.
    """
    path = Path(source)
    notes: list[str] = []
    if not path.exists():
        raise TableError(f"SOURCE {source} does not exist; give a runs directory or a "
                         ".csv/.parquet table")
    if path.is_dir():
        try:
            collected = collect_runs(path, skip_unreadable=skip_unreadable)
        except CollectError as exc:
            raise TableError(str(exc)) from None
        if cols.run is not None and cols.run not in collected.table.columns:
            raise TableError(f"--run-col '{cols.run}' is not a column of the runs under {path}; "
                             "leave --run-col out to key runs by experiment and run id")
        notes.append(f"runs directory: {collected.describe()}")
        for unreadable in collected.unreadable:
            _note(notes, f"skipped unreadable {unreadable}")
        runs = _canonical(collected.table, cols, f"runs under {path}", notes)
        described = describing(collected.table, cols.run_column)
        source_rows, place, runs_dir = collected.table, f"under {path}", str(path)
        try:
            curve_collected = collect_runs(path, curves=True, skip_unreadable=skip_unreadable)
            curves = _canonical(curve_collected.table, cols, f"curves under {path}", notes)
            for unreadable in curve_collected.unreadable:
                _note(notes, f"skipped unreadable {unreadable}")
        except UnreadableRun as exc:
            # A damaged metrics.jsonl is refused like a damaged summary, not silently dropped.
            raise TableError(str(exc)) from None
        except (CollectError, TableError) as exc:
            # The per-run table is sound; only the curve methods lose their input.
            notes.append(f"curves left out: {exc}")
            curves = None
    else:
        # Positions, not a stored index (a parquet file keeps the one it was written with):
        # rows are matched to runs by position below
        table = read_table(path).reset_index(drop=True)
        if cols.run is not None and cols.run not in table.columns:
            raise TableError(f"--run-col '{cols.run}' is not a column of {path}; name the run id "
                             "column, or leave --run-col out for a table with a row per run")
        ids = _run_ids(table, cols)
        if ids is not None and ids.duplicated().any():
            # Several rows per run: a curves table; each run's last point is the run itself.
            curves = _canonical(table, cols, str(path), notes)
            sizes = curves.groupby("run")["N"].nunique()
            if (sizes > 1).any():
                raise TableError(f"run id '{sizes[sizes > 1].index[0]}' in column "
                                 f"'{cols.run_column}' has rows with different N; --run-col "
                                 "must name a column that is unique per run")
            runs = curves.sort_values("C", kind="stable").groupby("run", sort=False).tail(1)
            runs = runs.sort_values(["N", "D"], kind="stable")
            # each run's final row of the source table, for what describes the run
            source_rows = table.loc[runs.index].reset_index(drop=True)
            described = describing(source_rows, cols.run_column)
            runs = runs.reset_index(drop=True)
            notes.append(f"{len(runs)} runs with {len(curves)} eval points; each run's point "
                         "at its largest C is its final loss")
        else:
            runs, curves = _canonical(table, cols, str(path), notes), None
            described = describing(table, cols.run_column)
            source_rows = table.reset_index(drop=True)
        place, runs_dir = f"in {path}", "<runs folder>"
    if where is not None:
        kept = select_runs(where, source_rows, place)
        _note(notes, f"--where {where!r} kept {int(kept.sum())} of {len(kept)} runs")
        runs, described, source_rows = runs[kept], described[kept], source_rows[kept]
        if curves is not None:
            curves = curves[curves["run"].isin(set(runs["run"]))].reset_index(drop=True)
    # sweep.collect's tables (runs or curves) carry the dataset: a mix is refused (after
    # --where, which may pick one dataset's runs)
    check_one_dataset(source_rows, f"the runs {place}", runs_dir, where)
    warnings: list[str] = []
    runs, curves = drop_repeated_rows(runs, curves, described, cols.run_column, notes)
    warning, note, seed_noise, replicate = several_runs(runs, described.loc[runs.index])
    warnings += [warning] if warning is not None else []
    notes += [note] if note is not None else []
    warning = several_window_floors(source_rows)
    warnings += [warning] if warning is not None else []
    runs = runs.assign(replicate=replicate,
                       trajectory=wsd_trajectories(described.loc[runs.index], runs["N"]))
    runs = runs.reset_index(drop=True)
    if where is not None and len(runs) < MIN_RUNS:
        raise TableError(f"--where {where!r} keeps {len(runs)} runs {place}; a fit needs at "
                         f"least {MIN_RUNS} (approach 3 has 5 parameters): loosen it")
    _check_fittable(runs, str(path))
    return FitData(runs=runs, curves=curves, source=str(path), columns=cols, notes=notes,
                   budget_source=_budget_source(runs, cols), warnings=warnings,
                   seed_noise=seed_noise, entropy_rate=entropy_rate(source_rows),
                   window_floor=window_floor(source_rows))


def _budget_source(runs: pd.DataFrame, cols: Columns) -> str | None:
    if cols.budget is not None:
        return f"column '{cols.budget}' (--budget-col)"
    if runs["budget"].notna().any():
        return ("each run's budget.flops (exact FLOPs: forward+backward FLOPs per token x D, "
                "not C = 6ND)")
    return None


def check_one_dataset(table: pd.DataFrame, where: str, runs_dir: str,
                       selected: str | None = None) -> None:
    """TableError when the runs in a table trained on different datasets: losses on other data
    (or another tokenizer) follow other laws, and one fit across them means nothing. The fix
    names sweep.collect's --dataset filter, which works even where one folder holds both."""
    if "dataset_config_hash" not in table.columns:
        return
    # A table from elsewhere may leave the hash empty in some rows: not a dataset of its own
    built = table.dropna(subset=["dataset_config_hash"]).drop_duplicates("dataset_config_hash")
    if len(built) < 2:
        return
    hashes = built["dataset_config_hash"].astype(str)
    names = (built["dataset_name"].astype(str) if "dataset_name" in built.columns else hashes)
    # A name shared by two builds (another tokenizer) cannot select one: the hash prefix can
    pick = names.iloc[0] if names.is_unique else hashes.iloc[0][:8]
    condition = (f'dataset_name == "{names.iloc[0]}"' if names.is_unique
                 else f'dataset_config_hash == "{hashes.iloc[0]}"')
    labels = ", ".join(dataset_label(n, h) for n, h in zip(names, hashes, strict=True))
    raise TableError(
        f"{where}{f' kept by --where {selected!r}' if selected else ''} trained on {len(built)} "
        f"datasets ({labels}); a law fits runs on one: pass --where '{condition}', or collect "
        f"one dataset's runs with python -m sweep.collect {runs_dir} --dataset {pick} --out "
        f"{pick}.csv and fit that table")


def _check_fittable(runs: pd.DataFrame, where: str) -> None:
    if len(runs) < MIN_RUNS:
        raise TableError(f"{where} has {len(runs)} runs; approach 3 has 5 parameters, so a fit "
                         f"needs at least {MIN_RUNS} runs (20 or more for useful intervals)")
    if runs["loss"].nunique() == 1:
        raise TableError(f"every run in {where} has loss = {runs['loss'].iloc[0]:g}; nothing to "
                         "fit: name the loss column with --loss-col")
    sizes = runs["N"].nunique()
    if sizes < 2:
        raise TableError(f"every run in {where} has N = {runs['N'].iloc[0]:g}; a scaling law "
                         "needs runs at two or more model sizes (four or more for a useful fit)")
