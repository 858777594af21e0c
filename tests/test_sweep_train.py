"""End-to-end tests of `python -m sweep.train`: the real CLI in a temporary directory.

One run trains the smallest rung on the synthetic corpus and checks the whole run record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import models.attention_loss
import models.gpt
import sweep.start as start_module
import sweep.train as train_module
from data import TokenDataset
from data.loader import TrainWindows
from data.synthetic import ZipfFacts
from data.synthetic_floor import window_floor
from models import GPT, GPTConfig
from models.attention_loss import DIVERGED_HINT
from sweep.checkpoint import list_checkpoints
from sweep.distributed import Distributed
from sweep.errors import ConfigError, RunFailed
from sweep.lock import RunLocked, is_locked
from sweep.loop import eval_steps
from sweep.plan import plan_run
from sweep.records import METRIC_KEYS, RunRecord
from tests.conftest import CONFIGS, FIXED_HPARAMS, PYTHON, compose_train
from tests.helpers import needs_cpu_fp8

REPO = Path(__file__).resolve().parent.parent
# A one-layer model and 12 steps of 1024 tokens: evals at 0, 1, 3, 12; loss syncs (and, with
# interval_s=0, checkpoints) every 2 steps.
TINY = ("model=base", "model.n_layer=1", "model.d_model=64", "model.n_head=2",
        "budget.tokens=12288", "eval.tokens=4096", "eval.points=3", "logging.interval=2",
        "checkpoint.interval_s=0")


def tiny_cfg(root: Path, experiment: str, *overrides: str):
    return compose_train(root, *TINY, f"experiment_name={experiment}", *overrides)


def val_curve(run_dir: Path) -> list[float]:
    """The run's validation losses, in the order it evaluated them."""
    return [row["val_loss"] for row in RunRecord(run_dir).read_metrics()]


def on_loader_step(monkeypatch: pytest.MonkeyPatch, step: int, action) -> None:
    """Call `action()` (which raises) when the training loader is asked for batch `step`."""
    original = TrainWindows.__next__

    def next_or_act(self):
        if self.step == step:
            action()
        return original(self)

    monkeypatch.setattr(TrainWindows, "__next__", next_or_act)


# `python -m sweep.train` in a process where importing torch fails.
WITHOUT_TORCH = (
    "import runpy, sys\n"
    "sys.modules['torch'] = None\n"
    "sys.argv = ['sweep.train', *sys.argv[1:]]\n"
    "runpy.run_module('sweep.train', run_name='__main__', alter_sys=True)\n"
)


def train_cli(
    root: Path, *overrides: str, without_torch: bool = False
) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    entry = ["-c", WITHOUT_TORCH] if without_torch else ["-m", "sweep.train"]
    return subprocess.run(
        [PYTHON, *entry, f"paths.root_dir={root}",
         "logging.wandb.mode=disabled", *FIXED_HPARAMS, *overrides],
        cwd=root, env=env, capture_output=True, text=True, timeout=600,
    )


def test_eval_steps_are_log_spaced_with_both_ends():
    assert eval_steps(100, 5) == [0, 1, 3, 10, 32, 100]
    assert eval_steps(1, 8) == [0, 1]


def test_a_wrapped_out_of_memory_is_the_machine_not_the_code():
    """torch.compile re-raises an OOM while it autotunes inside its own error: the run is
    reported as out of device memory (with the relaunch advice), as a plain OOM is."""
    import torch

    compile_failed = RuntimeError("backend='inductor' raised: OutOfMemoryError")
    compile_failed.inner_exception = torch.OutOfMemoryError("CUDA out of memory")
    for err in (torch.OutOfMemoryError("CUDA out of memory"), compile_failed):
        assert train_module._is_machine_failure(err)
    assert not train_module._is_machine_failure(RuntimeError("shape mismatch"))


# 8192 held-out tokens per eval, not the default 32768: the evals were half the run's time
ONE_RUN = ("model=gpt_1m", "budget.tokens=3e4", "eval.points=4", "eval.tokens=8192")


def test_one_run_end_to_end(synthetic_root):
    result = train_cli(synthetic_root, *ONE_RUN)
    assert result.returncode == 0, result.stderr
    runs = list((synthetic_root / "runs" / "default").iterdir())
    assert len(runs) == 1
    run_dir = runs[0]
    # The lock file stays (unlocked); the end of the run is always checkpointed.
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock", "checkpoint-00000029.pt", "config.yaml", "metrics.jsonl", "summary.json"]
    summary = json.loads((run_dir / "summary.json").read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    manifest = json.loads((synthetic_root / "data_cache/synthetic/manifest.json").read_text())

    # The budget: 3e4 tokens in whole 1024-token steps.
    assert summary["status"] == "finished"
    assert (summary["steps"], summary["tokens"]) == (29, 29 * 1024)
    assert summary["resumes"] == 0 and not is_locked(run_dir)
    assert 0 < summary["train_time_s"] < summary["wall_time_s"]
    assert summary["tokens_per_s"] == summary["tokens"] / summary["train_time_s"]
    # Parameter counts in the record are PyTorch's own.
    shape = config["resolved"]["model"]
    model = GPT(GPTConfig(**shape))
    assert summary["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert summary["params"]["non_embedding"] == 1_328_448
    # The three FLOP totals are per-token counts times tokens.
    per_token = summary["flops_per_token"]
    for key in ("6nd", "6nd_total", "exact"):
        assert summary[f"flops_{key}"] == per_token[key] * summary["tokens"]
    assert per_token["6nd"] == 6 * 1_328_448
    # metrics.jsonl: every key, one row per planned eval, cumulative counters.
    assert [r["step"] for r in rows] == eval_steps(29, 4)
    assert all(list(r) == list(METRIC_KEYS) for r in rows)
    assert rows[-1]["flops_exact"] == summary["flops_exact"]
    assert rows[-1]["val_loss"] == summary["val_loss"]
    # It learned: from ~ln(512) to below the corpus's unigram entropy.
    truth = manifest["synthetic"]
    assert rows[0]["val_loss"] == pytest.approx(6.238, abs=0.1)
    assert summary["val_loss"] < truth["unigram_entropy_nats"] - 1.0
    assert summary["val_loss"] > truth["entropy_rate_nats"]
    # ... and the higher floor at its 128-token windows (data.synthetic_floor)
    floor = window_floor(ZipfFacts(**{key: manifest["source"][key] for key in (
        "vocab_size", "n_facts", "fact_len", "facts_per_doc", "zipf_exponent", "seed")}), 128)
    assert summary["dataset"]["window_floor_nats"] == floor.nats == pytest.approx(0.6213, abs=5e-4)
    assert summary["dataset"]["window_floor_stderr"] == floor.stderr
    assert "entropy rate 0.5909 nats/token, floor at seq_len 128 0.6213" in result.stdout
    assert summary["device"] == "cpu" and summary["precision"] == "fp32"
    assert summary["dataset"]["config_hash"] == manifest["config_hash"]
    # Its identity without the seed (another seed's run shares it), beside the one with it
    assert summary["replicate_hash"] == config["resolved"]["replicate_hash"]
    assert summary["replicate_hash"] != summary["config_hash"]
    # What tells it from another run at its (N, D) in a table: the pinned LR, the warmup the
    # schedule's fraction gave (5% of 29 steps), the schedule, the window order; and the C the
    # LR and batch rules see (6 N D of the budget's D), which sweep.fit.hparams fits them on
    assert summary["hparams"] == {"lr": 3e-3, "warmup_steps": 1, "schedule": "cosine",
                                  "windows": "shuffled",
                                  "compute": 6.0 * summary["params"]["non_embedding"] * 3e4}

    # Relaunching the same config skips the finished run and leaves its record alone.
    before = (run_dir / "summary.json").read_text()
    again = train_cli(synthetic_root, *ONE_RUN)
    assert again.returncode == 0 and "already finished" in again.stdout
    assert (run_dir / "summary.json").read_text() == before


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model=gpt_3m", "model.n_head=3", "budget.tokens=2e5"], "n_head=3 does not divide"),
        (["budget.tokens=-5"], "budget.tokens=-5 must be a positive"),
        (["model=gpt_9m", "budget.tokens=2e5"], "unknown model preset model=gpt_9m"),
        (["data=wikitext", "budget.tokens=2e5"], "unknown dataset data=wikitext"),
        (["data=tinystories", "budget.tokens=2e5"], "dataset 'tinystories' is not prepared"),
        (["budget.tokens=2e5", "launch.dry_run=maybe"], "launch.dry_run='maybe' must be true or"),
        (["budget.tokens=1e6"], "reads D=999,424 tokens, 3.33 epochs of the 299,925 train tokens"),
    ],
)
def test_bad_overrides_exit_nonzero_with_one_line(tmp_path, synthetic_root, overrides, needle):
    """Each is found before torch is imported (here it cannot be): a typo costs ~0.5 s, not the
    ~2 s torch takes to load."""
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "data_cache").symlink_to(synthetic_root / "data_cache")
    result = train_cli(root, *overrides, without_torch=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (root / "runs").exists()
    assert sorted(p.name for p in root.iterdir()) == ["data_cache"]


def test_dry_run_of_one_run_prints_its_plan_and_trains_nothing(tmp_path, synthetic_root):
    # launch.dry_run was read by the sweeper only: without -m the run trained
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "data_cache").symlink_to(synthetic_root / "data_cache")
    result = train_cli(root, "model=gpt_1m", "budget.tokens=2e4", "launch.dry_run=true")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[1].startswith("0  gpt_1m-") and lines[1].endswith("  train")
    assert lines[-1] == "dry run: nothing trained"
    assert sorted(p.name for p in root.iterdir()) == ["data_cache"]


@pytest.mark.slow
def test_demo_script_runs_the_smoke_sweep_and_a_relaunch_trains_nothing(tmp_path):
    """scripts/demo.sh as the README runs it (about 8 min on 2 CPU cores): nine finished runs, a
    report with plots, the best loss well below the val tokens' unigram cross-entropy; run again,
    it trains nothing. (No wall-clock bounds: the README's times are measured, not asserted.)"""
    env = {**os.environ, "WANDB_MODE": "disabled", "SCALING_ROOT": str(tmp_path)}

    def demo() -> str:
        result = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=tmp_path,
                                env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    demo()
    paths = sorted((tmp_path / "runs/smoke").glob("*/summary.json"))
    summaries = [json.loads(p.read_text()) for p in paths]
    assert [s["status"] for s in summaries] == ["finished"] * 9
    report = tmp_path / "reports/smoke"
    assert (report / "report.md").exists() and list(report.glob("*.png"))
    ds = TokenDataset.open(tmp_path / "data_cache" / "stdlib")
    train = np.concatenate(ds.tokens("train")).astype(np.int64)
    unigram = np.bincount(train, minlength=ds.vocab_size) / train.size
    val = np.concatenate(ds.tokens("val"))[:8192].astype(np.int64)  # smoke's eval.tokens
    unigram_nats = float(-np.log(np.maximum(unigram[val], 1e-12)).mean())
    assert min(s["val_loss"] for s in summaries) < unigram_nats - 1.0
    mtimes = {p: p.stat().st_mtime for p in (tmp_path / "runs/smoke").glob("*/summary.json")}
    again = demo()
    assert again.count("skip (finished, val_loss") == 9 and "nothing to train" in again
    assert {p: p.stat().st_mtime for p in mtimes} == mtimes  # nothing retrained


@pytest.mark.slow
def test_synthetic_demo_learns_toward_the_entropy_rate(tmp_path):
    """The README's synthetic-corpus commands (about 35 s on 2 CPU cores)."""
    env = {**os.environ, "WANDB_MODE": "disabled", "SCALING_ROOT": str(tmp_path)}
    subprocess.run([PYTHON, "-m", "data.prepare", "data=synthetic"], cwd=tmp_path,
                   env=env, check=True, capture_output=True)
    result = train_cli(tmp_path, "model=gpt_1m", "data=synthetic", "budget.tokens=2e5")
    assert result.returncode == 0, result.stderr
    summary = json.loads(next((tmp_path / "runs").glob("default/*/summary.json")).read_text())
    truth = json.loads((tmp_path / "data_cache/synthetic/manifest.json").read_text())["synthetic"]
    assert summary["val_loss"] < truth["unigram_entropy_nats"] - 3.0
    assert summary["val_loss"] < 2.5 * truth["entropy_rate_nats"]


@pytest.mark.cuda
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_uses_bf16_and_records_mfu(synthetic_root):
    result = train_cli(synthetic_root, "budget.tokens=3e4", "experiment_name=cuda",
                       "train.device=cuda")
    assert result.returncode == 0, result.stderr
    run = next((synthetic_root / "runs/cuda").glob("*/summary.json")).parent
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["precision"] == "bf16"
    assert summary["val_loss"] < 4.0
    # The one end-to-end check of the device-name -> peak lookup: an unmatched name logs null.
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    print(f"device {__import__('torch').cuda.get_device_name()}: last-window mfu {last['mfu']}")
    assert isinstance(last["mfu"], float) and 0 < last["mfu"] < 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_loss_stops_the_run_as_diverged_and_keeps_its_record(
    synthetic_root, monkeypatch, capsys, bad
):
    class NaNAfterFirstStep(GPT):
        calls = 0

        def forward(self, idx, targets=None, reduction="mean"):
            out = super().forward(idx, targets, reduction)
            if self.training:
                NaNAfterFirstStep.calls += 1
                if NaNAfterFirstStep.calls > 3:
                    return out * bad
            return out

    monkeypatch.setattr(start_module, "GPT", NaNAfterFirstStep)
    plan = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", f"experiment_name={bad}",
                                  "logging.interval=2", "eval.tokens=4096"))
    summary = start_module.run(plan)
    assert summary["status"] == "diverged"
    assert summary["error"] == "non-finite training loss by step 4"
    saved = json.loads((plan.run_dir / "summary.json").read_text())
    assert saved["status"] == "diverged" and saved["steps"] == 4
    assert saved["train_loss"] is None  # NaN is recorded as null in strict JSON
    rows = (plan.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 1, 2]
    # Diverged is kept: rerunning gives the same NaN, so a relaunch skips it.
    monkeypatch.setattr(start_module, "GPT", GPT)
    assert start_module.run(plan, rerun_failed=True) == saved
    assert "diverged before (non-finite training loss by step 4); kept and skipped" in (
        capsys.readouterr().out)


def test_sequential_windows_train_on_the_split_in_order(synthetic_root, monkeypatch):
    import data.loader
    loaders = []

    def recording(*args, **kwargs):
        loaders.append(data.loader.train_windows(*args, **kwargs))
        return loaders[-1]

    monkeypatch.setattr(start_module, "train_windows", recording)
    plan = plan_run(compose_train(synthetic_root, "budget.tokens=8192", "train.windows=sequential",
                                  "train.micro_batch_size=4", "experiment_name=sequential",
                                  "eval.points=2", "eval.tokens=4096"))
    summary = start_module.run(plan)
    assert summary["status"] == "finished" and summary["steps"] == 8
    assert yaml.safe_load((plan.run_dir / "config.yaml").read_text())["train"]["windows"] == (
        "sequential")
    (loader,) = loaders
    # 8 steps x 8 windows of 128 tokens (two micro-batches of 4 each): the first 64 windows of
    # the split. The loader serves whole optimizer steps, so its position is the step count.
    assert loader.order == "sequential" and loader.step == 8 and loader.batch_size == 8
    train = plan.dataset.tokens("train")[0]
    loader.step = 0
    x, y = next(loader)
    assert x[:, 0].tolist() == [int(train[i * 128]) for i in range(8)]
    assert y[-1].tolist() == train[7 * 128 + 1 : 8 * 128 + 1].tolist()
    first = json.loads((plan.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert summary["val_loss"] < first["val_loss"] - 0.5  # it learned from those windows


def test_fused_losses_train_the_same_run(synthetic_root, monkeypatch):
    """train.loss_chunk_tokens and train.loss_attention change how the loss is computed, not the
    run: same run id, the same learning curve up to float32 rounding."""
    calls = []
    attention = models.gpt.attention_cross_entropy
    monkeypatch.setattr(models.gpt, "attention_cross_entropy",
                        lambda *args: calls.append(1) or attention(*args))
    summaries, curves = [], []
    for experiment, override in (("plain", "train.loss_chunk_tokens=null"),
                                 ("chunked", "train.loss_chunk_tokens=300"),  # not a divisor
                                 ("attention", "train.loss_attention=true")):
        plan = plan_run(tiny_cfg(synthetic_root, experiment, override))
        before = len(calls)
        summaries.append(start_module.run(plan))
        # the loss as attention trained that run, and only that one (auto is false on a CPU)
        assert (len(calls) > before) is (experiment == "attention")
        curves.append(val_curve(plan.run_dir))
    plain = summaries[0]
    for fused, curve in zip(summaries[1:], curves[1:], strict=True):
        assert plain["run_id"] == fused["run_id"] and fused["status"] == "finished"
        assert fused["val_loss"] < curve[0] - 0.3  # it learned
        np.testing.assert_allclose(curve, curves[0], rtol=1e-4)
        assert fused["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)


@needs_cpu_fp8()
def test_an_fp8_run_learns_as_the_float32_one_does(synthetic_root, monkeypatch):
    """train.precision=fp8 on the CPU (FP8 matmuls, bf16 autocast): the run records its precision,
    its matmuls ran in FP8, and its learning curve follows float32's within FP8's rounding."""
    import models.fp8

    calls = []
    fp8_linear = models.fp8.fp8_linear
    monkeypatch.setattr(models.fp8, "fp8_linear",
                        lambda *args: calls.append(1) or fp8_linear(*args))
    curves, summaries = [], []
    for precision in ("fp32", "fp8"):
        plan = plan_run(tiny_cfg(synthetic_root, f"precision-{precision}",
                                 f"train.precision={precision}"))
        summaries.append(start_module.run(plan))
        curves.append(val_curve(plan.run_dir))
    fp8 = summaries[1]
    assert fp8["status"] == "finished" and fp8["precision"] == "fp8"
    # 4 Linear layers and the head a forward, in training and evaluation
    assert len(calls) >= 5 * 12
    assert fp8["val_loss"] < curves[1][0] - 0.3  # it learned
    # 5.2446 against 5.2426 after 12 steps here: FP8's rounding, not another run
    np.testing.assert_allclose(curves[1], curves[0], rtol=2e-3)


def test_a_bf16_residual_run_learns_as_the_float32_residual_one_and_says_so(synthetic_root):
    """train.residual_dtype=bf16 (bf16 autocast on the CPU): its config.yaml records it, and its
    learning curve follows the float32 stream's within bf16 rounding."""
    curves, configs = [], []
    for dtype in ("float32", "bf16"):
        plan = plan_run(tiny_cfg(synthetic_root, f"residual-{dtype}", "train.precision=bf16",
                                 f"train.residual_dtype={dtype}"))
        summary = start_module.run(plan)
        assert summary["status"] == "finished" and summary["precision"] == "bf16"
        curves.append(val_curve(plan.run_dir))
        configs.append(yaml.safe_load((plan.run_dir / "config.yaml").read_text()))
        assert summary["residual_dtype"] == dtype
    assert [(c["train"]["residual_dtype"], c["resolved"]["residual_dtype"])
            for c in configs] == [("float32", "float32"), ("bf16", "bf16")]
    assert curves[1][-1] < curves[1][0] - 0.3  # it learned
    assert curves[1] != curves[0]  # another rounding, so not the same bits
    np.testing.assert_allclose(curves[1], curves[0], rtol=5e-3)


def test_a_run_compiled_by_blocks_trains_as_the_eager_run(synthetic_root):
    """train.compile_scope=blocks through sweep.start: the blocks and the output compiled apart,
    training and evaluation, gives the eager run's curve (compiled kernels round a little
    differently)."""
    curves = []
    for name, overrides in (("eager", ["train.compile=false"]),
                            ("blocks", ["train.compile=true", "train.compile_scope=blocks"])):
        plan = plan_run(tiny_cfg(synthetic_root, f"scope-{name}", *overrides))
        assert start_module.run(plan)["status"] == "finished"
        curves.append(val_curve(plan.run_dir))
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-4)


def test_compiled_regions_under_several_ranks_are_refused_before_anything_is_written(
    synthetic_root,
):
    plan = plan_run(tiny_cfg(synthetic_root, "scope-ranks", "train.compile=true",
                             "train.compile_scope=blocks"))
    with pytest.raises(ConfigError) as info:
        start_module.run(plan, dist=Distributed(rank=0, world_size=2))
    assert str(info.value) == (
        "train.compile_scope=blocks compiles a single process's model, and this run has 2 "
        "ranks: use train.compile_scope=model")
    assert not plan.run_dir.exists()


def test_a_batch_the_loss_as_attention_cannot_hold_ends_the_run_diverged(
    synthetic_root, monkeypatch
):
    """Log-sum-exps too far apart for its weight gradient give a NaN loss (no sync, no crash):
    the run is recorded as diverged, and the error names the setting that follows it further."""
    monkeypatch.setattr(models.attention_loss, "MAX_LSE_SPREAD", -1.0)  # every batch beyond it
    plan = plan_run(compose_train(synthetic_root, "budget.tokens=2e4", "logging.interval=2",
                                  "eval.tokens=4096", "train.loss_attention=true",
                                  "experiment_name=lse"))
    summary = start_module.run(plan)
    assert summary["status"] == "diverged"
    assert summary["error"] == "non-finite training loss by step 1" + DIVERGED_HINT
    assert "train.loss_attention=false follows the run further" in summary["error"]


DEVICE_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy", "cpu")


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=[
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    ]),
])
def test_training_waits_for_the_device_only_at_log_steps(synthetic_root, monkeypatch, device):
    """No host-device sync per step: the project's code reads a tensor's value only at loss
    checks and evals (on CUDA, torch's sync debug mode also sees every sync the step makes)."""
    drawn = [0]  # training batches drawn so far: the step being trained
    original_next = TrainWindows.__next__

    def counting_next(self):
        batch = original_next(self)
        drawn[0] = self.step
        return batch

    monkeypatch.setattr(TrainWindows, "__next__", counting_next)
    waits_at: set[int] = set()
    project = tuple(str(REPO / package) for package in ("sweep", "data", "models"))

    def recording(original):
        def read(self, *args, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(project):
                waits_at.add(drawn[0])
            return original(self, *args, **kwargs)

        return read

    for name in DEVICE_READS:
        monkeypatch.setattr(torch.Tensor, name, recording(getattr(torch.Tensor, name)))

    def on_warning(message, *args, **kwargs):
        if "synchroniz" in str(message):
            waits_at.add(drawn[0])

    plan = plan_run(tiny_cfg(synthetic_root, f"no-sync-{device}", "logging.interval=5",
                             f"train.device={device}"))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        monkeypatch.setattr(warnings, "showwarning", on_warning)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            summary = start_module.run(plan)
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    assert summary["status"] == "finished"
    log_steps = {1, 3, 12} | {5, 10}  # evals, then loss checks every 5 steps
    assert 12 in waits_at  # the recorder sees reads: the last loss check and eval
    assert waits_at <= {0} | log_steps, f"waits for the device at steps {sorted(waits_at)}"


def test_failed_run_is_kept_and_only_retrained_when_asked(synthetic_root, monkeypatch, capsys):
    plan = plan_run(tiny_cfg(synthetic_root, "failed"))

    def fail():
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as m:
        on_loader_step(m, 7, fail)  # during step 8, after the checkpoint at step 6
        with pytest.raises(RuntimeError, match="disk on fire"):
            start_module.run(plan)
    failed = RunRecord(plan.run_dir).read_summary()
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: disk on fire"
    assert failed["steps"] == 7 and not is_locked(plan.run_dir)
    assert [p.name for p in list_checkpoints(plan.run_dir)] == ["checkpoint-00000006.pt"]

    capsys.readouterr()
    assert start_module.run(plan) == failed
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "failed before (RuntimeError: disk on fire)" in out[0]
    assert "launch.rerun_failed=true" in out[0]

    # main() hands launch.rerun_failed to run(): it resumes from the checkpoint at step 6.
    val_loss = train_module.main(tiny_cfg(synthetic_root, "failed", "launch.rerun_failed=true"))
    assert "resuming from checkpoint-00000006.pt (resume 1)" in capsys.readouterr().out
    summary = RunRecord(plan.run_dir).read_summary()
    assert summary["status"] == "finished" and summary["val_loss"] == val_loss
    assert summary["resumes"] == 1 and summary["steps"] == 12 and summary["error"] is None
    rows = (plan.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0, 1, 3, 12]

    # Finished: skipped, its record untouched.
    before = {p.name: p.read_bytes() for p in plan.run_dir.iterdir()}
    assert start_module.run(plan, rerun_failed=True)["finished_at"] == summary["finished_at"]
    assert "already finished" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in plan.run_dir.iterdir()} == before


def test_wandb_that_cannot_start_is_a_config_error_not_a_failed_run(
    synthetic_root, monkeypatch, capsys
):
    import wandb

    def no_key(**_):
        raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")

    monkeypatch.setattr(wandb, "init", no_key)
    monkeypatch.delenv("WANDB_MODE")  # it would win over the config (conftest disables wandb)
    cfg = tiny_cfg(synthetic_root, "wandb", "logging.wandb.mode=online")
    with pytest.raises(SystemExit) as exit_:
        train_module.main(cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: logging.wandb.mode=online: wandb did not start (UsageError: No API key "
                   "configured. Use `wandb login` to log in.): run `wandb login`, or set "
                   "logging.wandb.mode=offline (sync later) or disabled"]
    # No failed summary: the same run (logging is not its identity) trains on the relaunch
    plan = plan_run(cfg)
    assert RunRecord(plan.run_dir).read_summary() is None and not is_locked(plan.run_dir)
    train_module.main(tiny_cfg(synthetic_root, "wandb", "logging.wandb.mode=disabled"))
    assert RunRecord(plan.run_dir).read_summary()["status"] == "finished"


def test_wandb_mode_in_the_environment_wins_over_the_config(synthetic_root, monkeypatch, capsys):
    """WANDB_MODE=disabled (as CI exports it) keeps wandb off even where the config says online;
    wandb.init's own mode argument would otherwise beat the variable. An unknown value is one
    line."""
    import wandb

    def must_not_start(**_):
        raise AssertionError("wandb.init called under WANDB_MODE=disabled")

    monkeypatch.setattr(wandb, "init", must_not_start)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = tiny_cfg(synthetic_root, "wandb-env", "logging.wandb.mode=online")
    train_module.main(cfg)
    assert RunRecord(plan_run(cfg).run_dir).read_summary()["status"] == "finished"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(SystemExit) as exit_:
        train_module.main(tiny_cfg(synthetic_root, "wandb-env2", "logging.wandb.mode=online"))
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: WANDB_MODE='sometimes' in the environment is unknown: set one of offline, online, "
        "disabled, or unset it to use logging.wandb.mode")


@pytest.mark.parametrize(("how", "code"), [("ctrl-c", 130), ("sigterm", 143)])
def test_interruption_leaves_the_run_resumable_not_failed(
    synthetic_root, monkeypatch, capsys, how, code
):
    cfg = tiny_cfg(synthetic_root, f"interrupted-{how}")
    plan = plan_run(cfg)

    def interrupt():
        if how == "sigterm":  # what SLURM sends at preemption or the time limit
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        on_loader_step(m, 5, interrupt)  # during step 6, after the checkpoint at step 4
        with pytest.raises(SystemExit) as exit_:
            train_module.main(cfg)
    assert exit_.value.code == code
    assert signal.getsignal(signal.SIGTERM) is handler
    captured = capsys.readouterr()
    assert "interrupted after step 5; rerun to resume from step 4" in captured.out
    assert captured.err.strip().count("\n") == 0 and "interrupted" in captured.err
    assert not (plan.run_dir / "summary.json").exists() and not is_locked(plan.run_dir)
    assert [p.name for p in list_checkpoints(plan.run_dir)] == ["checkpoint-00000004.pt"]


def test_sigterm_during_a_checkpoint_write_waits_for_it(synthetic_root, monkeypatch, capsys):
    # Stopped midway, torch's zip writer turned the interruption into a RuntimeError of its
    # own: the run was recorded as failed, and a relaunch skipped it
    cfg = tiny_cfg(synthetic_root, "term-in-save")
    plan = plan_run(cfg)
    save = torch.save

    def save_while_terminated(obj, f, *args, **kwargs):
        if obj.get("step") == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        save(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", save_while_terminated)
        with pytest.raises(SystemExit) as exit_:
            train_module.main(cfg)
    assert exit_.value.code == 143
    assert not (plan.run_dir / "summary.json").exists()
    [newest] = list_checkpoints(plan.run_dir)
    assert newest.name == "checkpoint-00000004.pt"
    assert torch.load(newest, weights_only=False)["step"] == 4  # whole, not cut short
    capsys.readouterr()
    train_module.main(cfg)
    assert "resuming from checkpoint-00000004.pt (resume 1)" in capsys.readouterr().out


def test_run_refuses_a_run_another_process_trains(synthetic_root):
    plan = plan_run(tiny_cfg(synthetic_root, "locked"))
    hold = "import sys\nfrom sweep.lock import RunLock\nwith RunLock(sys.argv[1]):\n" \
           "    print('locked', flush=True)\n    sys.stdin.read()\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(plan.run_dir)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid} on "):
            start_module.run(plan)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert [p.name for p in plan.run_dir.iterdir()] == [".lock"]  # nothing written


def _ended_run(root: Path, experiment: str, status: str):
    cfg = tiny_cfg(root, experiment)
    plan = plan_run(cfg)
    RunRecord(plan.run_dir).start("")
    RunRecord(plan.run_dir).write_summary({"status": status, "error": f"it {status}"})
    return cfg, plan


def test_main_raises_run_failed_inside_a_multirun(synthetic_root, capsys):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    bad = tiny_cfg(synthetic_root, "multirun", "budget.tokens=-5")
    failed, failed_plan = _ended_run(synthetic_root, "mr-failed", "failed")
    diverged, diverged_plan = _ended_run(synthetic_root, "mr-diverged", "diverged")
    # One job of a sweep: SystemExit would end every later job, so a bad run raises RunFailed.
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        hydra_cfg = compose("train", return_hydra_config=True)
    hydra_cfg.hydra.mode = RunMode.MULTIRUN
    HydraConfig.instance().set_config(hydra_cfg)
    try:
        with pytest.raises(RunFailed, match="budget.tokens=-5 must be a positive"):
            train_module.main(bad)
        with pytest.raises(RunFailed, match=f"run {failed_plan.run_id} failed: it failed"):
            train_module.main(failed)
        with pytest.raises(RunFailed, match="diverged: it diverged"):
            train_module.main(diverged)
    finally:
        HydraConfig.instance().cfg = None
    # A single run keeps its exit codes: 2 for a config error, 1 for a run that did not finish.
    flag = tiny_cfg(synthetic_root, "multirun", "launch.rerun_failed=yes")
    for cfg, code in ((bad, 2), (flag, 2), (failed, 1), (diverged, 1)):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            train_module.main(cfg)
        assert exit_.value.code == code
        assert capsys.readouterr().err.startswith("error: ")
