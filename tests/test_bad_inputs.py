"""Bad inputs to every CLI (config, data, faults, collect, fitter), each run for real in a temp dir.

Each must exit non-zero with one `error:` line naming the value and the fix, and leave no file.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from sweep.fit.synthetic import isoflop_table
from tests.conftest import FIXED_HPARAMS, PYTHON
from tests.test_sweep_collect import make_run

REPO = Path(__file__).resolve().parent.parent
FAULTS = str(REPO / "tests" / "faults.py")
# One BLAS/OpenMP thread per process: the rows' processes run side by side on a small machine.
ENV = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
       "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# One more process than usable cores: each start also waits on disk.
WORKERS = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else os.cpu_count() or 2) + 1
# The dataset's caches: whole files (written atomically) whenever a run verifies the shards or
# records the window floor, not outputs of the failed command.
VERIFIED_CACHE = "data_cache/synthetic/.verified.json"
FLOOR_CACHE = "data_cache/synthetic/.window_floor.json"
TRAIN_SHARD = "data_cache/synthetic/train_00000.bin"
# A one-layer model, 12 steps of 1024 tokens, a checkpoint at every check (as test_sweep_train).
TINY = ("model=base", "model.n_layer=1", "model.d_model=64", "model.n_head=2",
        "budget.tokens=12288", "eval.tokens=4096", "eval.points=3", "logging.interval=2",
        "checkpoint.interval_s=0")


# --- what each row sets up ---------------------------------------------------------------------


def copy_dataset(root: Path, synthetic_root: Path) -> None:
    """A private copy of the prepared synthetic dataset, so a row may damage it or verify it."""
    shutil.copytree(synthetic_root / "data_cache" / "synthetic", root / "data_cache" / "synthetic")
    (root / VERIFIED_CACHE).unlink(missing_ok=True)


def truncated_shard(root: Path, synthetic_root: Path) -> None:
    copy_dataset(root, synthetic_root)
    os.truncate(root / TRAIN_SHARD, 1000)


def flipped_shard(root: Path, synthetic_root: Path) -> None:
    copy_dataset(root, synthetic_root)
    with (root / TRAIN_SHARD).open("r+b") as handle:
        handle.seek(1000)
        byte = handle.read(1)
        handle.seek(1000)
        handle.write(bytes([byte[0] ^ 0xFF]))  # same size, other bytes: only the sha256 tells


def torn_manifest(root: Path, synthetic_root: Path) -> None:
    copy_dataset(root, synthetic_root)
    (root / "data_cache/synthetic/manifest.json").write_text('{"format": "scaling-sweep-sh')


def nothing(root: Path, synthetic_root: Path) -> None:
    """No data, no runs: the command must fail on its arguments alone."""


def own_experiment(root: Path, synthetic_root: Path) -> None:
    """A researcher's config folder outside the repo, for --config-dir: experiment/mine.yaml."""
    copy_dataset(root, synthetic_root)
    (root / "my_configs" / "experiment").mkdir(parents=True)
    (root / "my_configs" / "experiment" / "mine.yaml").write_text(
        "# @package _global_\nexperiment_name: mine\n")


def good_runs(root: Path, synthetic_root: Path) -> None:
    """Three finished runs in sweep.train's record format under root/runs/exp/."""
    for n in (1000, 2000, 4000):
        make_run(root / "runs", n, 20 * n, 4.0 - n / 4000)


def runs_with_torn_summary(root: Path, synthetic_root: Path) -> None:
    good_runs(root, synthetic_root)
    (root / "runs/exp/n2000-d40000/summary.json").write_text('{"status": "finished", "run_')


def runs_with_torn_metrics(root: Path, synthetic_root: Path) -> None:
    good_runs(root, synthetic_root)
    with (root / "runs/exp/n4000-d80000/metrics.jsonl").open("a") as handle:
        handle.write('{"step": 9, "tokens": 8\n')


def table_with(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path, Path], None]:
    """Setup writing root/table.csv: 15 good synthetic runs, as `change` returns them."""

    def setup(root: Path, synthetic_root: Path) -> None:
        table = isoflop_table(budgets=(1e17, 1e18, 1e19), sizes_per_budget=5, seed=3)
        change(table).to_csv(root / "table.csv", index=False)

    return setup


def nan_losses(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(loss=table["loss"].where(~table.index.isin([3, 7]), np.nan))


# --- checks after the command ------------------------------------------------------------------


def failed_run_with_loadable_checkpoints(root: Path) -> None:
    """The ENOSPC run: recorded as failed, and any checkpoint on disk is whole."""
    (run_dir,) = (root / "runs" / "default").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed", summary
    assert "No space left on device" in summary["error"]
    checkpoints = sorted(run_dir.glob("checkpoint-*.pt"))
    if checkpoints:
        import torch  # only here: the other rows' checks need no torch in the test process

        for path in checkpoints:
            torch.load(path, map_location="cpu", weights_only=False)


# --- the table ---------------------------------------------------------------------------------


def train(*overrides: str) -> tuple[str, ...]:
    """`python -m sweep.train` as test_sweep_train's train_cli runs it, rooted at {root}."""
    return ("-m", "sweep.train", "paths.root_dir={root}", "logging.wandb.mode=disabled",
            "logging.progress=false", *FIXED_HPARAMS, *overrides)


def faulty(fault: str, *overrides: str) -> tuple[str, ...]:
    """The same run under tests/faults.py with one injected FAULT."""
    return (FAULTS, fault, "--", *train(*overrides)[1:])


@dataclass(frozen=True)
class Row:
    """One bad input: the command (after `python`; {root} is the row's temp root), its exit code,
    substrings of its one error line (the bad value, then the fix) and what it may leave."""

    id: str
    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    setup: Callable[[Path, Path], None] = copy_dataset
    created: tuple[str, ...] = ()  # fnmatch patterns of the paths the command may create
    check: Callable[[Path], None] | None = None
    marks: tuple[Any, ...] = ()


ROWS = (
    # config
    Row("width-not-divisible-by-heads", train("model=gpt_3m", "model.n_head=3",
                                              "budget.tokens=2e5"), 2,
        ("n_head=3 does not divide d_model=256", "pick n_head from 1, 2, 4")),
    Row("budget-below-one-step", train("budget.tokens=100"), 2,
        ("budget.tokens=100 gives 100 tokens", "raise the budget or lower train.batch_tokens")),
    Row("seq-len-above-context", train("train.seq_len=4096", "budget.tokens=2e5"), 2,
        ("train.seq_len=4096 exceeds", "lower train.seq_len or raise model.max_seq_len")),
    Row("loss-chunk-not-positive", train("train.loss_chunk_tokens=0", "budget.tokens=2e5"), 2,
        ("train.loss_chunk_tokens=0 must be a positive integer", "or null (the plain head")),
    Row("unknown-compile-mode", train("train.compile_mode=fastest", "budget.tokens=2e5"), 2,
        ("train.compile_mode='fastest' is unknown", "use null or one of default")),
    Row("unknown-model-preset", train("model=gpt_9m", "budget.tokens=2e5"), 2,
        ("model=gpt_9m", "choose one of base, gpt_11m")),
    Row("unknown-dataset", train("data=wikitext", "budget.tokens=2e5"), 2,
        ("data=wikitext", "choose one of fineweb_edu")),
    Row("unknown-experiment", train("experiment=smok"), 2,
        ("experiment=smok", "choose one of floor_cpu, horizons, horizons_wsd, isoflop, kaplan")),
    Row("unknown-experiment-under-config-dir",
        ("-m", "sweep.train", "--config-dir", "{root}/my_configs", *train("experiment=mien")[2:]),
        2, ("experiment=mien",
            "choose one of floor_cpu, horizons, horizons_wsd, isoflop, kaplan, ladder_300m, "
            "lr_batch, mine, smoke",
            "(configs/experiment/, {root}/my_configs/experiment/)"), setup=own_experiment),
    Row("config-dir-not-a-folder",
        ("-m", "sweep.train", "-cd", "{root}/my_confgs", *train("experiment=mine")[2:]), 2,
        ("--config-dir {root}/my_confgs: no such directory", "give a folder holding"),
        setup=own_experiment),
    Row("config-group-added-with-plus", train("+experiment=smoke"), 2,
        ("+experiment=smoke adds experiment to python -m sweep.train's defaults list",
         "write experiment=smoke, without the +")),
    Row("config-group-set-to-null", train("experiment=null"), 2,
        ("experiment=null: a config group cannot be set to null", "leave experiment=... out")),
    Row("prepare-not-a-config-group", ("-m", "data.prepare", "paths.root_dir={root}",
                                       "data=synthetic", "experiment=smoke"), 2,
        ("experiment is not a config group of python -m data.prepare",), setup=nothing),
    Row("negative-budget", train("budget.tokens=-5"), 2,
        ("budget.tokens=-5", "must be a positive, finite number")),
    Row("two-budget-keys", train("budget.tokens=2e5", "budget.tokens_per_param=20"), 2,
        ("got budget.tokens, budget.tokens_per_param", "e.g. budget.tokens=2e5, and the others "
                                                       "null")),
    Row("unknown-schedule-kind", train("budget.tokens=2e5", "schedule.kind=linear"), 2,
        ("schedule.kind='linear'", "use one of cosine, constant, wsd")),
    Row("rerun-failed-not-a-bool", train("budget.tokens=2e5", "launch.rerun_failed=maybe"), 2,
        ("launch.rerun_failed='maybe'", "must be true or false")),
    Row("misspelt-config-key", train("budget.tokens=2e5", "train.lrr=1e-3"), 2,
        ("unknown config key train.lrr", "add a new key with +train.lrr=")),
    Row("unparsable-override", train("budget.tokens=[1"), 2,
        ("cannot parse the override 'budget.tokens=[1'", "write key=value")),
    Row("several-values-without-multirun", train("budget.tokens=1e5,2e5"), 2,
        ("budget.tokens=1e5,2e5 lists several values", "add --multirun")),
    # data
    Row("dataset-not-prepared", train("data=tinystories", "budget.tokens=2e5"), 2,
        ("dataset 'tinystories' is not prepared", "run python -m data.prepare data=tinystories")),
    Row("vocab-size-mismatch", train("model.vocab_size=1000", "budget.tokens=2e5"), 2,
        ("model.vocab_size=1000 does not match the dataset's vocab_size=512",
         "leave model.vocab_size=null")),
    Row("truncated-shard", train("budget.tokens=2e5"), 2,
        ("train_00000.bin is truncated", "1000 bytes on disk",
         "python -m data.prepare data=synthetic force=true"), setup=truncated_shard),
    Row("shard-checksum-mismatch", train("budget.tokens=2e5"), 2,
        ("train_00000.bin is corrupted (sha256 mismatch)",
         "python -m data.prepare data=synthetic force=true"), setup=flipped_shard),
    Row("manifest-not-json", train("budget.tokens=2e5"), 2,
        ("manifest.json is unreadable", "python -m data.prepare data=synthetic force=true"),
        setup=torn_manifest),
    Row("prepare-bad-number", ("-m", "data.prepare", "paths.root_dir={root}", "data=synthetic",
                               "data.zipf_exponent=abc"), 2,
        ("data.zipf_exponent='abc'", "must be a finite number >= 0.0"), setup=nothing),
    Row("prepare-misspelt-key", ("-m", "data.prepare", "paths.root_dir={root}", "data=synthetic",
                                 "data.zipf=1.1"), 2,
        ("unknown config key data.zipf", "python -m data.prepare --cfg job"), setup=nothing),
    Row("prepare-unknown-source", ("-m", "data.prepare", "paths.root_dir={root}",
                                   "data=synthetic", "data.source=bogus"), 2,
        ("data.source='bogus'", "known: synthetic, hub, local, stdlib"), setup=nothing),
    # injected faults
    Row("read-only-runs-dir", faulty("erofs={root}/runs", "budget.tokens=2e5"), 2,
        ("cannot write", "Read-only file system", "paths.runs_dir={root}/runs")),
    Row("disk-full-on-checkpoint", faulty("enospc@checkpoint=1", *TINY), 1,
        ("No space left on device", "launch.rerun_failed=true"),
        created=("runs", "runs/default", "runs/default/custom-*",
                 *(f"runs/default/custom-*/{name}" for name in (
                     ".lock", "config.yaml", "metrics.jsonl", "summary.json", "checkpoint-*.pt"))),
        check=failed_run_with_loadable_checkpoints),
    # collect
    Row("collect-corrupt-summary", ("-m", "sweep.collect", "{root}/runs", "--out",
                                    "{root}/table.csv"), 2,
        ("{root}/runs/exp/n2000-d40000/summary.json is unreadable (not valid JSON",
         "delete that run directory to retrain it, or pass --skip-unreadable"),
        setup=runs_with_torn_summary),
    Row("collect-curves-corrupt-metrics", ("-m", "sweep.collect", "{root}/runs", "--out",
                                           "{root}/curves.csv", "--curves"), 2,
        ("{root}/runs/exp/n4000-d80000/metrics.jsonl is unreadable (line 6 is not a metrics row)",
         "pass --skip-unreadable to collect its readable lines only"),
        setup=runs_with_torn_metrics),
    Row("collect-out-bad-suffix", ("-m", "sweep.collect", "runs", "--out", "table.xlsx"), 2,
        ("--out table.xlsx", "must end in .csv or .parquet"), setup=good_runs),
    # fitter
    Row("fit-runs-dir-corrupt-summary", ("-m", "sweep.fit", "{root}/runs", "--out",
                                         "{root}/report"), 2,
        ("{root}/runs/exp/n2000-d40000/summary.json is unreadable (not valid JSON",
         "pass --skip-unreadable to collect without it"), setup=runs_with_torn_summary),
    Row("fit-table-nan-losses", ("-m", "sweep.fit", "table.csv", "--out", "report"), 2,
        ("column 'loss' has 2 missing", "rows 3, 7", "drop or fix those rows"),
        setup=table_with(nan_losses)),
    Row("fit-table-missing-column", ("-m", "sweep.fit", "table.csv", "--out", "report"), 2,
        ("column 'loss' (for loss) is not in", "name the right one with --loss-col"),
        setup=table_with(lambda table: table.drop(columns=["loss"]))),
    Row("fit-where-unknown-column", ("-m", "sweep.fit", "table.csv", "--out", "report",
                                     "--where", "sise > 3e6"), 2,
        ("--where 'sise > 3e6' cannot be evaluated on the runs in table.csv (name 'sise' is not "
         "defined)", "write a pandas query over their columns"),
        setup=table_with(lambda table: table)),
)


# --- running the table -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one row's command did: its exit code and output, and its root's paths around it."""

    root: Path
    returncode: int
    stdout: str
    stderr: str
    before: frozenset[str]
    after: frozenset[str]


def matches(path: str, pattern: str) -> bool:
    """fnmatch per path component: a `*` never reaches into a subfolder."""
    parts, wanted = path.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(
        fnmatch.fnmatchcase(part, want) for part, want in zip(parts, wanted, strict=True))


def paths_under(root: Path) -> frozenset[str]:
    """Every file and folder under root (links not followed), relative, but the dataset's
    caches."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            found.add((Path(dirpath) / name).relative_to(root).as_posix())
    return frozenset(found - {VERIFIED_CACHE, FLOOR_CACHE})


def run_row(row: Row, root: Path, synthetic_root: Path) -> Outcome:
    row.setup(root, synthetic_root)
    before = paths_under(root)
    argv = [arg.format(root=root) for arg in row.argv]
    done = subprocess.run([PYTHON, *argv], cwd=root, env=ENV, capture_output=True,
                          text=True, timeout=300)
    return Outcome(root, done.returncode, done.stdout, done.stderr, before, paths_under(root))


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, synthetic_root: Path,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Run every selected row's command at once (WORKERS at a time): the module stays fast."""
    module = sys.modules[__name__]
    selected = [item.callspec.params["row"] for item in request.session.items
                if getattr(item, "module", None) is module and hasattr(item, "callspec")]
    # The fault rows open the dataset and train (seconds more): started first, they end with the
    # rest rather than after it.
    selected.sort(key=lambda row: row.argv[0] != FAULTS)
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {row.id: pool.submit(run_row, row, tmp_path_factory.mktemp(row.id),
                                       synthetic_root) for row in selected}
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("row", [pytest.param(row, id=row.id, marks=row.marks) for row in ROWS])
def test_bad_input_is_one_error_line_and_leaves_nothing(row: Row,
                                                       outcomes: dict[str, Outcome]) -> None:
    got = outcomes[row.id]
    assert got.returncode == row.code, got.stderr
    lines = got.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), got.stderr
    for needle in row.says:
        assert needle.format(root=got.root) in lines[0], (needle, lines[0])
    # Nothing half-written anywhere, nothing but the patterns the row allows, nothing removed.
    assert not [p for p in got.after if ".tmp-" in p], sorted(got.after)
    new = got.after - got.before
    assert [p for p in sorted(new)
            if not any(matches(p, pattern) for pattern in row.created)] == []
    assert got.before - got.after == frozenset()
    if row.check is not None:
        row.check(got.root)


def test_every_row_has_a_unique_id_and_the_table_is_large() -> None:
    assert len({row.id for row in ROWS}) == len(ROWS) >= 16
