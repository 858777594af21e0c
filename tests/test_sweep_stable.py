"""Tests for sweep.stable: WSD runs of several budgets share their stable phase, and a run that
continues another's ends exactly as it would have alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

import sweep.start as start_module
from sweep.checkpoint import checkpoint_step, list_checkpoints
from sweep.collect import collect_runs
from sweep.errors import ConfigError
from sweep.grid import GridPoint, horizon_note
from sweep.plan import plan_run
from sweep.stable import (
    ABANDONED_TEMP_S,
    find_stable_state,
    remove_abandoned_temps,
    stable_dir,
)
from sweep.status import run_status
from sweep.waves import launch_waves, predecessors, sharing_note
from tests.conftest import FIXED_HPARAMS, PYTHON, RULE_HPARAMS, compose_train
from tests.test_sweep_checkpoint import raise_at_loader_step

# A one-layer model at 1024 tokens a step, WSD with a 25% cooldown: 8 steps cool down from step 6,
# 16 from step 12, 24 from step 18. Dropout draws from the RNG every step, so its state must carry.
TINY = ("model=base", "model.n_layer=1", "model.d_model=64", "model.n_head=2",
        "model.dropout=0.1", "eval.tokens=4096", "eval.points=3", "logging.interval=2",
        "checkpoint.interval_s=inf", "schedule.kind=wsd", "schedule.cooldown_fraction=0.25",
        "schedule.warmup_fraction=null", "hparams.warmup.tokens_per_param=0",
        "schedule.min_lr_ratio=0.0")
SHARED = ("schedule.share_stable=true",)
TIMING = ("tokens_per_s", "mfu")


@pytest.fixture
def plan(synthetic_root: Path, tmp_path: Path):
    """plan(experiment, tokens, *overrides): a tiny run in tmp_path/experiment, so each test has
    a runs folder, and a stable store, of its own."""

    def make(experiment: str, tokens: int, *overrides: str):
        return plan_run(compose_train(synthetic_root, *TINY, f"paths.runs_dir={tmp_path}",
                                      f"experiment_name={experiment}", f"budget.tokens={tokens}",
                                      *overrides))

    return make


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def test_runs_of_several_budgets_share_one_stable_hash_and_no_run_id(plan, tmp_path):
    short, long = plan("a", 8192, *SHARED), plan("a", 24576, *SHARED)
    assert short.stable_hash == long.stable_hash is not None
    assert short.run_id != long.run_id
    assert (short.schedule.cooldown_start, long.schedule.cooldown_start) == (6, 18)
    # Not part of the run id: a shared run is the run it would be alone
    alone = plan("a", 8192)
    assert alone.run_id == short.run_id and alone.stable_hash is None
    # Sharded (FSDP) states key the optimizer by name, replicated ones by index: kept apart
    assert stable_dir(short) == tmp_path / ".stable" / short.stable_hash[:16] / "replicated"
    assert stable_dir(short, sharded=True) == stable_dir(short).parent / "sharded"
    # What changes the stable phase changes the hash: the LR, the seed, the warmup
    for other in ("train.lr=1e-3", "seed=1", "schedule.warmup_fraction=0.25"):
        assert plan("a", 8192, *SHARED, other).stable_hash != short.stable_hash
    # What only the cooldown sees does not
    assert plan("a", 8192, *SHARED, "schedule.min_lr_ratio=0.1",
                "schedule.cooldown_fraction=0.5").stable_hash == short.stable_hash


def test_a_run_continuing_another_stable_phase_ends_bit_for_bit_as_alone(plan, tmp_path, capsys):
    first = start_module.run(plan("shared", 8192, *SHARED))
    folder = stable_dir(plan("shared", 8192, *SHARED))
    assert [checkpoint_step(p) for p in list_checkpoints(folder)] == [6]
    assert first["branched_from"] is None

    second_plan = plan("shared", 24576, *SHARED)
    assert find_stable_state(second_plan) == list_checkpoints(folder)[0]
    second = start_module.run(second_plan)
    assert f"{second_plan.run_id}: continuing the stable phase of {first['run_id']} after step 6 " \
           "of 24 (6,144 tokens not retrained)" in capsys.readouterr().out
    assert second["branched_from"] == {"run_id": first["run_id"], "step": 6, "tokens": 6144,
                                       "code_version": first["code_version"]}
    # It saved its own cooldown start for longer budgets; the first run's state stays
    assert [checkpoint_step(p) for p in list_checkpoints(folder)] == [6, 18]

    alone = start_module.run(plan("alone", 24576))
    assert alone["run_id"] == second["run_id"]
    for key in ("steps", "tokens", "val_loss", "val_bpb", "flops_exact", "config_hash"):
        assert second[key] == alone[key], key
    shared_rows = rows(second_plan.run_dir)
    alone_rows = rows(tmp_path / "alone" / alone["run_id"])
    # Rows up to the branch are the first run's evals (at steps 0, 1, 3 of its own schedule, not
    # the lone run's 0, 1, 5); after it, the run's own, equal to the lone run's but for the train
    # loss of the first one (its average began at the first run's last eval, not the lone run's)
    assert [r["step"] for r in shared_rows] == [0, 1, 3, 24]
    assert [r["step"] for r in alone_rows] == [0, 1, 5, 24]
    assert shared_rows[-1] == {**alone_rows[-1], "train_loss": shared_rows[-1]["train_loss"]}
    assert shared_rows[:3] == rows(tmp_path / "shared" / first["run_id"])[:3]


def test_a_state_saved_by_other_code_is_continued_with_a_note(plan, monkeypatch, capsys):
    first = start_module.run(plan("code", 8192, *SHARED))
    monkeypatch.setattr(start_module, "code_version", lambda: "v2-edited")
    second_plan = plan("code", 16384, *SHARED)
    second = start_module.run(second_plan)
    assert second["branched_from"]["code_version"] == first["code_version"] != "v2-edited"
    assert (f"{second_plan.run_id}: note: its shared steps were trained by code "
            f"{first['code_version']}, this is v2-edited; delete {stable_dir(second_plan)} to "
            "retrain them with this code") in capsys.readouterr().out


def test_a_stable_state_past_the_run_cooldown_or_of_another_trajectory_is_not_taken(
    plan, tmp_path
):
    start_module.run(plan("past", 24576, *SHARED))  # saves step 18
    short = plan("past", 8192, *SHARED)  # cooldown from step 6
    assert find_stable_state(short) is None
    assert start_module.run(short)["branched_from"] is None
    other = plan("past", 24576, *SHARED, "seed=3")
    assert find_stable_state(other) is None


def test_share_stable_needs_a_wsd_schedule_and_a_boolean(plan, tmp_path):
    with pytest.raises(ConfigError, match=r"schedule.share_stable=true needs schedule.kind=wsd, "
                                          r"not cosine"):
        plan("bad", 8192, *SHARED, "schedule.kind=cosine")
    with pytest.raises(ConfigError, match=r"schedule.share_stable='yes' must be true or false"):
        plan("bad", 8192, "schedule.share_stable=yes")


def test_the_horizon_gives_every_budget_of_a_size_the_rules_of_one_d(plan, tmp_path):
    rules = (*RULE_HPARAMS, "hparams.lr.max=1", "hparams.batch.min_steps=4")
    own = [plan("h", t, *SHARED, *rules) for t in (4096, 65536)]
    # The run's own D: C, and so the LR, differ by budget
    assert own[0].lr != own[1].lr and own[0].stable_hash != own[1].stable_hash
    fixed = [plan("h", t, *SHARED, *rules, "hparams.horizon.tokens_per_param=2")
             for t in (4096, 65536)]
    assert fixed[0].lr == fixed[1].lr and fixed[0].batch_tokens == fixed[1].batch_tokens
    assert fixed[0].stable_hash == fixed[1].stable_hash
    n = fixed[0].params.non_embedding
    assert fixed[0].config["resolved"]["hparams"]["compute"] == 6.0 * n * 2 * n
    with pytest.raises(ConfigError, match=r"hparams.horizon.tokens_per_param=-1 must be"):
        plan("h", 4096, *rules, "hparams.horizon.tokens_per_param=-1")
    # The horizon's long run warms up over more steps than a short budget holds: the message
    # names the rule, not the schedule.warmup_fraction that is null here
    with pytest.raises(ConfigError, match=r"plus cooldown \(\d+\) steps exceed the run's \d+ "
                                          r"steps: lower hparams.warmup.tokens_per_param"):
        plan("h", 4096, *rules, "hparams.horizon.tokens_per_param=40",
             "hparams.warmup.tokens_per_param=1")


def point(index: int, d: int, stable: str | None, stable_tokens: int | None = None,
          action: str = "train", n: int = 100, saved: tuple[int, ...] = (),
          horizon: float | None = None) -> GridPoint:
    return GridPoint(index=index, overrides=(f"budget.tokens={d}",), run_id=f"r{index}",
                     run_dir=f"/runs/x/r{index}", model="m", N=n, D=d, C=600.0 * d, lr=1e-3,
                     batch_tokens=10, action=action, reason="", stable_hash=stable,
                     stable_tokens=stable_tokens, stable_saved=saved, horizon=horizon)


def test_a_horizon_below_a_points_d_over_n_is_noted():
    # horizon 20 x N = 2000 tokens: the 4000- and 8000-token runs train longer than the rules
    # assume; the skipped one and those within 1 % (step rounding) are not named
    points = [point(0, 8000, "a", 6400, horizon=20), point(1, 2000, "a", 1600, horizon=20),
              point(2, 4000, "a", 3200, horizon=20), point(3, 2010, "a", 1600, horizon=20),
              point(4, 9000, "a", 7200, horizon=20, action="skip")]
    assert horizon_note(points) == (
        "note: hparams.horizon.tokens_per_param=20 is below the D/N of 2 points (up to 80, e.g. "
        "#0 r0): the rules give them the LR, batch and warmup of a shorter run than they train; "
        "set it to the grid's largest D/N (80) so that the longest run trains as it would alone")
    assert horizon_note([point(0, 8000, "a", 6400, horizon=80), point(1, 500, None)]) is None


def test_shared_runs_launch_smallest_budget_first_and_the_note_counts_what_they_train():
    points = [point(0, 8000, "a", 6400), point(1, 500, None), point(2, 2000, "a", 1600),
              point(3, 4000, "b", 3200), point(4, 1000, "a", 800), point(5, 900, "a", 720,
                                                                         action="skip")]
    # A wave per budget of a trajectory, smallest first (wave 0 also holds what shares nothing);
    # skipped points never launch
    assert [[p.index for p in wave] for wave in launch_waves(points)] == [[1, 3, 4], [2], [0]]
    # in that order, which run each continues (its trajectory's one before it), for gpu_pool
    assert predecessors([p for wave in launch_waves(points) for p in wave]) == [
        None, None, None, 2, 3]
    # a: 1000 from 720 (the finished point 5 saved it), 2000 from 800, 8000 from 1600; b: 4000
    # from 0
    trained = (1000 - 720) + (2000 - 800) + (8000 - 1600) + 4000
    assert sharing_note(points) == (
        f"shared stable phases: 4 runs in 2 trajectories train {trained:,} of their 15,000 "
        f"tokens ({trained / 15000:.0%}), each from the state the one before it saved where its "
        "cooldown began: launched in 3 waves, one budget of each trajectory a wave")
    assert sharing_note(points, chained=True).endswith(
        f"cooldown began: {CHAINED}")
    assert sharing_note([point(0, 8000, None), point(1, 500, None)]) is None
    # A state on disk from an earlier sweep counts; one run alone is "run"
    assert sharing_note([point(0, 8000, "a", 6400, saved=(1600,))]).startswith(
        "shared stable phases: 1 run in 1 trajectory train 6,400 of their 8,000 tokens (80%)")
    # Every run of a size on a trajectory of its own: the rules saw each run's D
    assert sharing_note([point(0, 8000, "a", 6400), point(1, 500, "b", 400)]).startswith(
        "note: schedule.share_stable=true, but no two points of one size in this grid share a "
        "stable phase: their LR, batch or warmup differ with the budget; set "
        "hparams.horizon.tokens_per_param to the grid's largest D/N (the rules then see one D "
        "per size) with schedule.warmup_fraction=null (pinning train.lr and train.batch_tokens is "
        "not enough: the warmup is a fraction of each run's own steps)")
    # One budget per size: nothing to share, nothing to say
    assert sharing_note([point(0, 8000, "a", 6400), point(1, 500, "b", 400, n=200)]) is None


def test_a_sweep_of_budgets_continues_each_run_from_the_one_before(synthetic_root, tmp_path):
    # Listed largest first: the sweep still trains the smallest first
    env = {**os.environ, "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [PYTHON, "-m", "sweep.train", "--multirun", f"paths.root_dir={synthetic_root}",
         f"paths.runs_dir={tmp_path}", "experiment_name=wsd", *TINY, *SHARED,
         "logging.wandb.mode=disabled", "logging.progress=false", *FIXED_HPARAMS,
         "schedule.warmup_fraction=null", "budget.tokens=24576,8192,16384"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # 8 steps from 0, 16 from step 6 (8's cooldown), 24 from step 12 (16's)
    trained = 8192 + (16384 - 6144) + (24576 - 12288)
    assert f"train {trained:,} of their 49,152 tokens (62%)" in result.stdout
    continued = [line for line in result.stdout.splitlines() if "continuing" in line]
    assert [line.split("after step ")[1].split(" of")[0] for line in continued] == ["6", "12"]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "wsd").glob("*/summary.json")]
    assert sorted((s["tokens"], (s["branched_from"] or {}).get("tokens")) for s in summaries) \
        == [(8192, None), (16384, 6144), (24576, 12288)]
    # The table: one trajectory; where a run started, in columns of their own (no empty
    # branched_from column beside them); the .stable folder is no run
    table = collect_runs(tmp_path).table
    assert len(table) == 3 and table["stable_hash"].nunique() == 1
    assert table.sort_values("D")["branched_from_tokens"].fillna(0).tolist() == [0, 6144, 12288]
    assert "branched_from" not in table.columns


def test_a_continued_run_stopped_before_its_checkpoint_resumes_from_its_own_stable_state(
    plan, tmp_path, monkeypatch, capsys
):
    first = start_module.run(plan("own", 8192, *SHARED))
    second = plan("own", 24576, *SHARED)
    with monkeypatch.context() as m:
        raise_at_loader_step(m, 20, KeyboardInterrupt())  # after its state at step 18
        with pytest.raises(KeyboardInterrupt):
            start_module.run(second)
    assert list_checkpoints(second.run_dir) == []  # checkpoint.interval_s=inf: none of its own
    assert run_status(second.run_dir).note.startswith(
        "no checkpoint: continues the stable state of step 18")
    capsys.readouterr()
    again = start_module.run(second)
    assert f"{second.run_id}: resuming from its stable-phase state at step 18 (resume 1)" \
        in capsys.readouterr().out
    # Still the run that continued the first one's stable phase, resumed once
    assert again["branched_from"]["run_id"] == first["run_id"]
    assert again["branched_from"]["step"] == 6 and again["resumes"] == 1
    alone = start_module.run(plan("alone", 24576))
    assert again["val_loss"] == alone["val_loss"]


def test_a_branch_at_one_of_the_run_own_eval_steps_evaluates_there(plan, tmp_path):
    # 16 steps at 4 points evaluate at 0, 1, 3, 6, 16: step 6 is where the 8-step run (evals at
    # 0, 1, 2, 4, 8) cooled down
    start_module.run(plan("evals", 8192, *SHARED, "eval.points=4"))
    second = start_module.run(plan("evals", 16384, *SHARED, "eval.points=4"))
    alone = start_module.run(plan("alone", 16384, "eval.points=4"))
    shared_rows = rows(tmp_path / "evals" / second["run_id"])
    alone_rows = rows(tmp_path / "alone" / alone["run_id"])
    assert [r["step"] for r in alone_rows] == [0, 1, 3, 6, 16]
    assert [r["step"] for r in shared_rows] == [0, 1, 2, 4, 6, 16]
    # The same model at step 6 (its train loss averages since the 8-step run's last eval, 4)
    for mine, lone in ((shared_rows[4], alone_rows[3]), (shared_rows[5], alone_rows[4])):
        assert mine == {**lone, "train_loss": mine["train_loss"]}


def test_a_stable_state_that_cannot_be_saved_leaves_the_run_going(plan, monkeypatch, capsys):
    import sweep.loop as loop_module

    original = loop_module.save_training_state

    def full_disk(folder, keep, **kwargs):
        if keep is None:  # the stable state's save
            raise OSError(28, "No space left on device")
        return original(folder, keep, **kwargs)

    monkeypatch.setattr(loop_module, "save_training_state", full_disk)
    summary = start_module.run(plan("full", 8192, *SHARED))
    assert summary["status"] == "finished"
    assert f"{summary['run_id']}: warning: could not save its stable state at step 6 ([Errno 28] " \
           "No space left on device); the run goes on" in capsys.readouterr().out


def test_an_unreadable_stable_state_is_one_line_saying_what_to_delete(plan):
    start_module.run(plan("bad", 8192, *SHARED))
    longer = plan("bad", 16384, *SHARED)
    state = find_stable_state(longer)
    state.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"^stable state .*checkpoint-00000006.pt is unreadable: "
                                          r"delete it \(runs then continue an older one\)$"):
        start_module.run(longer)


def test_abandoned_temp_files_in_a_stable_folder_are_removed_and_young_ones_kept(tmp_path):
    old, young = tmp_path / ".checkpoint-00000006.pt.tmp-11", tmp_path / ".checkpoint-9.pt.tmp-12"
    for path in (old, young):
        path.write_bytes(b"x")
    os.utime(old, (1000.0, 1000.0))
    os.utime(young, (1000.0 + ABANDONED_TEMP_S, 1000.0 + ABANDONED_TEMP_S))
    assert remove_abandoned_temps(tmp_path, now=1001.0 + ABANDONED_TEMP_S) == [old]
    assert young.exists() and not old.exists()


def test_a_continued_run_killed_anywhere_ends_as_the_lone_run(plan, synthetic_root, tmp_path):
    """SIGKILL (tests/faults.py) between the stable state's temp file and its rename, then
    mid-step after the branch: each relaunch continues the first run's state again, and the
    run ends with the lone run's losses."""

    def train(*faults: str, tokens: int, dry_run: bool = False) -> subprocess.CompletedProcess:
        prefix = [str(Path(__file__).parent / "faults.py"), *faults, "--"] if faults else ["-m"]
        return subprocess.run(
            [PYTHON, *prefix, "sweep.train", f"paths.root_dir={synthetic_root}",
             f"paths.runs_dir={tmp_path}", "experiment_name=kill", *TINY, *SHARED,
             *FIXED_HPARAMS, "schedule.warmup_fraction=null", f"budget.tokens={tokens}",
             f"launch.dry_run={str(dry_run).lower()}"],
            cwd=tmp_path, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True,
            text=True, timeout=300)

    assert train(tokens=8192).returncode == 0
    longer = plan("kill", 24576, *SHARED)
    folder = stable_dir(longer)
    # Its stable state at step 18 exists only as a temp file; its own checkpoint never came
    assert train("kill@checkpoint=1", tokens=24576).returncode == -signal.SIGKILL
    assert [checkpoint_step(p) for p in list_checkpoints(folder)] == [6]
    assert [p.name.split(".tmp-")[0] for p in folder.glob(".*")] == [".checkpoint-00000018.pt"]
    assert train("kill@step=4", tokens=24576).returncode == -signal.SIGKILL  # step 10
    dry = train(tokens=24576, dry_run=True)
    assert "train (interrupted before its first checkpoint: continues the stable state of step " \
        "6)" in dry.stdout, dry.stdout
    done = train(tokens=24576)
    assert done.returncode == 0, done.stderr
    assert "continuing the stable phase of" in done.stdout
    summary = json.loads((longer.run_dir / "summary.json").read_text())
    assert summary["branched_from"]["step"] == 6 and summary["resumes"] == 0
    alone = start_module.run(plan("alone", 24576))
    assert summary["val_loss"] == alone["val_loss"]
    assert rows(longer.run_dir)[-1] == {**rows(tmp_path / "alone" / alone["run_id"])[-1],
                                        "train_loss": rows(longer.run_dir)[-1]["train_loss"]}


# The plan's note on the workstation pool: it chains each trajectory's runs
CHAINED = ("each launched once the run before it on its trajectory has saved that state (while it "
           "cools down) or has ended")


def pool_sweep(root: Path, runs_dir: Path, *overrides: str, timeout: int
               ) -> subprocess.CompletedProcess:
    """Two sizes x two budgets sharing stable phases, swept on the workstation pool."""
    return subprocess.run(
        [PYTHON, "-m", "sweep.train", "--multirun", f"paths.root_dir={root}",
         f"paths.runs_dir={runs_dir}", "experiment_name=pool", *TINY, *SHARED, *FIXED_HPARAMS,
         "schedule.warmup_fraction=null", "model.n_layer=1,2", "budget.tokens=16384,8192",
         "hydra/launcher=workstation", *overrides],
        cwd=runs_dir, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True,
        text=True, timeout=timeout)


def test_the_pool_launcher_trains_trajectories_side_by_side_each_run_after_its_donor(
    synthetic_root, tmp_path
):
    result = pool_sweep(synthetic_root, tmp_path, "hydra.launcher.cpu_slots=2",
                        "hydra.launcher.cpus_per_task=1", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert CHAINED in result.stdout
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "pool").glob("*/summary.json")]
    # Both sizes' longer runs continued their own size's shorter run, saved in the wave before
    donors = {s["run_id"]: s["params"]["non_embedding"] for s in summaries if s["tokens"] == 8192}
    continued = [s for s in summaries if s["tokens"] == 16384]
    assert len(donors) == len(continued) == 2
    for s in continued:
        assert s["branched_from"]["step"] == 6
        assert donors[s["branched_from"]["run_id"]] == s["params"]["non_embedding"]
        # launched once its donor had saved the state it continues (launch_after), not merely
        # after it in the order; its donor may still be cooling down (started_at has seconds)
        state = (tmp_path / ".stable" / s["stable_hash"][:16] / "replicated"
                 / "checkpoint-00000006.pt")
        started = datetime.fromisoformat(s["started_at"]).timestamp()
        assert started >= int(state.stat().st_mtime)


@pytest.mark.parametrize(("batch", "launch"), [
    ([], CHAINED),
    # A capped batch is the sweeper's own waves, which it cannot chain: it says so
    (["hydra.sweeper.max_batch_size=1"],
     "launched in 2 waves, one budget of each trajectory a wave"),
])
def test_the_pool_launchers_plan_says_whether_it_chains_or_goes_in_waves(
    synthetic_root, tmp_path, batch, launch
):
    result = pool_sweep(synthetic_root, tmp_path, "launch.dry_run=true", *batch, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    # Each 16,384-token run continues the 8,192-token run's state at its 6,144th token
    assert ("shared stable phases: 4 runs in 2 trajectories train 36,864 of their 49,152 "
            "tokens (75%), each from the state the one before it saved where its cooldown "
            f"began: {launch}") in result.stdout
    assert "dry run: nothing launched" in result.stdout
    assert not (tmp_path / "pool").exists()
