"""Sweeps: experiment configs, grid expansion and planning through the real Hydra sweeper, relaunch
decisions (skip finished, resume interrupted, rerun failed on request) and the D/N range filter.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data import prepare
from data.hydra_guard import available
from models import count_params, flops_per_token
from sweep.checks import model_config
from sweep.errors import RunFailed, RunHeld
from sweep.grid import (
    GridError,
    GridPoint,
    check_launch,
    decide,
    describe_failures,
    held_points,
)
from sweep.hparams import resolve_hparams
from sweep.lock import RunLock
from tests.conftest import CONFIGS, FIXED_HPARAMS, PYTHON

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = available("experiment")
SMALL = ("logging.wandb.mode=disabled", "logging.progress=false", "eval.tokens=4096",
         "eval.points=2", *FIXED_HPARAMS)


def sweep_cli(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [PYTHON, "-m", "sweep.train", "--multirun", f"paths.root_dir={root}", *SMALL,
         *overrides],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )


def hydra_node(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_every_experiment_is_a_stable_multirun_grid():
    assert {"smoke", "isoflop", "horizons", "kaplan", "ladder_300m"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        text = (CONFIGS / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        cfg = hydra_node(f"experiment={name}", "paths.root_dir=/r")
        assert cfg.experiment_name == name
        assert cfg.hydra.mode.name == "MULTIRUN"
        # The sweep folder is the experiment's runs folder: no timestamp, so a relaunch finds it.
        assert cfg.hydra.sweep.dir == f"/r/runs/{name}"
        assert cfg.hydra.sweeper._target_.endswith("ScalingSweeper")
        assert cfg.hydra.sweeper.params, name


def test_floor_cpu_plans_one_shared_trajectory_per_width(synthetic_root, tmp_path):
    # Its horizon must cover its largest D/N, or the budgets of a width would share nothing
    # (the plan would then say so in a note instead); max_epochs: the test dataset is tiny
    result = subprocess.run(
        [PYTHON, "-m", "sweep.train", "experiment=floor_cpu", "launch.dry_run=true",
         f"paths.root_dir={synthetic_root}", f"paths.runs_dir={tmp_path}",
         "budget.max_epochs=1000"],
        cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True,
        text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "sweep floor_cpu: 16 grid points: 16 to train" in result.stdout
    assert "shared stable phases: 16 runs in 4 trajectories train" in result.stdout
    assert "note:" not in result.stdout


def test_smoke_grid_is_small_rungs_on_stdlib():
    cfg = hydra_node("experiment=smoke")
    assert cfg.data.name == "stdlib"
    models = cfg.hydra.sweeper.params.model.split(",")
    budgets = str(cfg.hydra.sweeper.params["budget.tokens"]).split(",")
    assert models == ["gpt_1m", "gpt_3m", "gpt_6m"] and len(budgets) == 3


def test_fineweb_edu_holds_every_shipped_experiment_in_one_epoch():
    # Each experiment's grid as its sweep plans it (points outside its D/N range never train)
    largest = (0, "")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for name in EXPERIMENTS:
            grid = compose("train", [f"experiment={name}"], return_hydra_config=True)
            if grid.data.name != "fineweb_edu":
                continue  # the CPU grids (smoke, floor_cpu) train on local data
            params = {k: str(v).split(",") for k, v in grid.hydra.sweeper.params.items()}
            for model in params.pop("model"):
                cfg = compose("train", [f"experiment={name}", f"model={model}"])
                shape = model_config(cfg.model, cfg.data.vocab_size, [])
                n = count_params(shape).non_embedding
                exact = flops_per_token(shape, cfg.train.seq_len).flops_exact
                bounds = cfg.launch.tokens_per_param
                for values in itertools.product(*params.values()):
                    for key, value in zip(params, values, strict=True):
                        # as Hydra reads a sweep value: 16384 an int (a batch), 2e9 a float
                        OmegaConf.update(cfg, key, int(value) if value.isdigit() else float(value))
                    d = resolve_hparams(cfg, non_embedding_params=n,
                                        flops_per_token=exact).budget.tokens
                    if (bounds.min or 0) <= d / n <= (bounds.max or math.inf):
                        largest = max(largest, (d, f"{name} {model}"))
    # 80 tokens per parameter (horizons_wsd sorts after horizons, which has the same grid)
    assert largest == (6_796_083_200, "horizons_wsd gpt_85m")
    data = yaml.safe_load((CONFIGS / "data" / "fineweb_edu.yaml").read_text())
    # At least ~1000 tokens a document: sample-10BT is ~10B GPT-2 tokens in ~9.7M documents, and
    # the 8192-token vocabulary packs fewer bytes into a token than GPT-2's 50257
    train_tokens = data["max_documents"] * 1000 * (1 - data["val_fraction"])
    assert 1.05 * largest[0] <= train_tokens <= 10e9


@pytest.mark.parametrize(
    ("launch", "message"),
    [
        ({"rerun_failed": "yes", "dry_run": False}, "launch.rerun_failed='yes' must be true"),
        ({"tokens_per_param": {"min": 0, "max": None}}, "launch.tokens_per_param.min=0"),
        ({"tokens_per_param": {"min": 50, "max": 5}}, "min=50 exceeds"),
    ],
)
def test_launch_section_is_checked(launch, message):
    base = {"rerun_failed": False, "dry_run": False, "tokens_per_param": {"min": None, "max": None}}
    with pytest.raises(GridError, match=message):
        check_launch({**base, **launch})


@pytest.fixture(scope="module")
def iso_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root whose synthetic dataset holds 4M train tokens: the grid below trains a point of
    D = 3.2M, ten times the shared tiny dataset (and budget.max_epochs is 1)."""
    root = tmp_path_factory.mktemp("iso")
    data_cfg = yaml.safe_load((CONFIGS / "data" / "synthetic.yaml").read_text())
    prepare({**data_cfg, "train_tokens": 4_000_000, "val_tokens": 40_000}, root / "data_cache")
    return root


def test_dry_run_expands_the_grid_and_skips_out_of_range_points_first(iso_root):
    # An IsoFLOP grid: 3 sizes x 2 budgets, D/N bounded to [5, 200].
    result = sweep_cli(
        iso_root, "experiment_name=iso", "model=base,gpt_1m,gpt_3m",
        "budget.flops=1e12,1e13", "launch.tokens_per_param.min=5",
        "launch.tokens_per_param.max=200", "launch.dry_run=true",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "run", "N"]
    rows = lines[1:7]
    assert [r.split()[0] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert sum("skip (D/N=" in r for r in rows) >= 1
    assert "sweep iso: 6 grid points:" in result.stdout and "dry run: nothing launched" in (
        result.stdout)
    for row in rows:  # columns: # run N D C D/N lr batch action
        ratio = float(row.split()[5])
        assert row.split()[8] == ("skip" if not 5 <= ratio <= 200 else "train"), row
    # Nothing trained, nothing written: a preview leaves the plan of a launched sweep alone.
    assert not (iso_root / "runs" / "iso").exists()


def test_a_point_beyond_its_data_stops_the_sweep_unless_the_range_skips_it(synthetic_root):
    # The tiny dataset holds 299,925 train tokens; gpt_1m (N = 1,328,448) at 1e6 tokens would
    # read it 3.3 times over, at 2e5 tokens once.
    args = ("experiment_name=epochs", "model=gpt_1m", "budget.tokens=2e5,1e6")
    result = sweep_cli(synthetic_root, *args, "launch.dry_run=true")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: grid point #1 (") and "budget.tokens=1000000.0" in line
    assert line.endswith(
        "reads D=999,424 tokens, 3.33 epochs of the 299,925 train tokens of dataset 'synthetic' "
        "(budget.max_epochs=1), so it would repeat data: prepare more data (python -m "
        "data.prepare data=synthetic force=true data.train_tokens=999492), or raise "
        "budget.max_epochs to 3.34 to repeat it on purpose")
    assert not (synthetic_root / "runs" / "epochs").exists()
    # A point outside launch.tokens_per_param never trains, so it need not fit (D/N = 0.75)
    result = sweep_cli(synthetic_root, *args, "launch.tokens_per_param.max=0.5",
                       "launch.dry_run=true")
    assert result.returncode == 0, result.stderr
    assert "skip (D/N=0.752 is above launch.tokens_per_param.max=0.5)" in result.stdout
    assert "1 to train, 0 to resume, 1 skipped" in result.stdout
    ids = [row.split()[1] for row in result.stdout.splitlines()[1:3]]
    # Raising budget.max_epochs lets the point train, as the same run: not part of its identity
    again = sweep_cli(synthetic_root, *args, "budget.max_epochs=4", "launch.dry_run=true")
    assert again.returncode == 0, again.stderr
    assert "2 to train, 0 to resume, 0 skipped" in again.stdout
    assert [row.split()[1] for row in again.stdout.splitlines()[1:3]] == ids


def test_target_params_that_round_to_one_shape_plan_one_run(synthetic_root):
    result = sweep_cli(synthetic_root, "experiment_name=dedupe", "model.target_params=2e5,6e5",
                       "budget.tokens=2e4", "launch.dry_run=true")
    assert result.returncode == 0, result.stderr
    rows = result.stdout.splitlines()[1:3]
    assert rows[0].split()[1].startswith("target2e05-") and rows[0].endswith("train")
    assert rows[1].split()[1].startswith("target6e05-")
    assert rows[0].split()[1][-10:] == rows[1].split()[1][-10:]  # one config hash
    assert rows[1].endswith("skip (same run as grid point #0)")
    assert "1 to train, 0 to resume, 1 skipped" in result.stdout


def test_a_sweep_under_torchrun_is_refused(synthetic_root, monkeypatch):
    # Every rank ran the whole sweep, re-joining a process group per run: it hung
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = sweep_cli(synthetic_root, "experiment_name=ranks", "budget.tokens=8192,16384")
    assert result.returncode == 2
    assert result.stderr.startswith("error: a sweep (-m) under torchrun (WORLD_SIZE=2) is not "
                                    "supported: run one grid point per torchrun")
    assert result.stderr.count("\n") == 1
    assert not (synthetic_root / "runs" / "ranks").exists()


def test_a_bad_grid_point_stops_the_sweep_before_anything_trains(synthetic_root):
    result = sweep_cli(synthetic_root, "experiment_name=bad", "model=base",
                       "budget.tokens=8192,10")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: grid point #1 (") and "budget.tokens=10" in line
    assert not (synthetic_root / "runs" / "bad").exists()


def test_sweep_trains_then_relaunch_skips_everything(synthetic_root):
    args = ("experiment_name=twice", "model=base", "budget.tokens=8192,12288")
    first = sweep_cli(synthetic_root, *args)
    assert first.returncode == 0, first.stderr
    assert "2 to train" in first.stdout
    summaries = sorted((synthetic_root / "runs/twice").glob("*/summary.json"))
    assert [json.loads(p.read_text())["status"] for p in summaries] == ["finished"] * 2
    again = sweep_cli(synthetic_root, *args)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("skip (finished, val_loss") == 2
    assert "0 to train, 0 to resume, 2 skipped" in again.stdout
    assert "nothing to train" in again.stdout and "note:" not in again.stdout
    # The same points at another LR (a probe, an edited config) are other runs: the plan says
    # the folder's finished runs sit at its points, since collect and fit would take them all.
    other = sweep_cli(synthetic_root, *args, "train.lr=1e-3", "launch.dry_run=true")
    assert other.returncode == 0, other.stderr
    assert "2 to train" in other.stdout
    first_id, second_id = (p.parent.name for p in summaries)
    (note,) = [line for line in other.stdout.splitlines() if line.startswith("note:")]
    assert note.startswith(f"note: {synthetic_root / 'runs/twice'} holds 2 finished run(s) that "
                           "are not points of this grid, 2 of them at the N and D of a point "
                           f"(e.g. {first_id} beside #")
    assert note.endswith(": sweep.collect and sweep.fit take every run there; set "
                         "experiment_name to keep this grid apart, or move those runs out")
    status = subprocess.run([PYTHON, "-m", "sweep.status", "runs/twice"],
                            cwd=synthetic_root, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[-1] == "runs/twice: 2 runs: 2 finished"
    # The plan records why each point was skipped; a run deleted since is to train again
    points = json.loads((synthetic_root / "runs/twice/sweep.json").read_text())["points"]
    assert [p["run_state"] for p in points] == ["finished", "finished"]
    shutil.rmtree(summaries[0].parent)
    status = subprocess.run([PYTHON, "-m", "sweep.status", "runs/twice"],
                            cwd=synthetic_root, capture_output=True, text=True, timeout=120)
    assert status.stdout.splitlines()[-1] == "runs/twice: 2 runs: 1 new, 1 finished"


def _write_summary(run_dir: Path, status: str, error: str | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(
        {"status": status, "val_loss": 3.25, "error": error}))


def test_decide_by_run_state(tmp_path):
    assert decide(tmp_path / "new", rerun_failed=False) == ("train", "")
    _write_summary(tmp_path / "done", "finished")
    assert decide(tmp_path / "done", False) == ("skip", "finished, val_loss 3.2500")
    _write_summary(tmp_path / "nan", "diverged", "non-finite training loss by step 7")
    assert decide(tmp_path / "nan", True)[0] == "skip"
    _write_summary(tmp_path / "bad", "failed", "RuntimeError: boom")
    action, reason = decide(tmp_path / "bad", rerun_failed=False)
    assert action == "skip" and "RuntimeError: boom" in reason and "rerun_failed=true" in reason
    assert decide(tmp_path / "bad", rerun_failed=True) == ("train", "rerun of a failed run")
    (tmp_path / "bad" / "checkpoint-00000040.pt").write_bytes(b"x")
    assert decide(tmp_path / "bad", True) == ("resume", "rerun of a failed run, from step 40")
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1')  # torn: killed mid-line
    assert decide(killed, False) == (
        "train", "interrupted before its first checkpoint: starts again")
    (killed / "checkpoint-00000012.pt").write_bytes(b"x")
    assert decide(killed, False) == ("resume", "interrupted: resumes from step 12")


def test_failures_tell_runs_left_to_another_process_from_runs_that_failed():
    held = RunHeld("run runs/x/a is being trained by pid 7 on node1: wait for it to end or "
                   "stop it (it resumes from its last checkpoint), then rerun")
    failed = RunFailed("run b failed: disk full")
    assert describe_failures([(["budget.tokens=1e4"], held), (["budget.tokens=2e4"], held)]) == (
        "2 run(s) were left to another process training them: this sweep did not wait for "
        f"them: budget.tokens=1e4: {held} (and 1 more)")
    assert describe_failures([(["budget.tokens=1e4"], held), (["budget.tokens=3e4"], failed)]) == (
        "1 run(s) did not finish: budget.tokens=3e4: run b failed: disk full; 1 more were left "
        "to another process training them")


def test_a_run_locked_when_planned_is_held_not_silently_skipped(tmp_path):
    # Planned while another process trains it: skipped, but the sweep must not exit 0 as if
    # it had finished (`sweep && fit` would fit before the run ends)
    run_dir = tmp_path / "runs" / "x" / "a-123"

    def point(action: str, reason: str) -> GridPoint:
        return GridPoint(index=0, overrides=("budget.tokens=1e4",), run_id="a-123",
                         run_dir=str(run_dir), model="m", N=1, D=1, C=6.0, lr=1e-3,
                         batch_tokens=1, action=action, reason=reason)

    with RunLock(run_dir):
        action, reason = decide(run_dir, rerun_failed=False)
        assert (action, reason) == ("skip", "running in another process")
        [(overrides, held)] = held_points([point(action, reason), point("train", "")])
        assert overrides == ("budget.tokens=1e4",) and isinstance(held, RunHeld)
        assert str(held) == (f"run {run_dir} is being trained by pid {os.getpid()} on "
                             f"{socket.gethostname()}")
    assert held_points([point("skip", "finished, val_loss 3.2500")]) == []
