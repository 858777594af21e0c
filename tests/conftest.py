"""Shared fixtures: a small prepared synthetic dataset and a composed train config pointing at it.

wandb is forced off for every test, so nothing ever tries the network.
"""

from __future__ import annotations

import os

# Under pytest-xdist each worker, and every CLI it launches, gets one thread: the workers share
# the cores, and one thread per core each would oversubscribe them. Set before anything imports
# numpy: OpenBLAS reads it once, at load, and two threads per worker spun ~40 % more CPU in the
# fit tests for nothing. (A plain `pytest` run keeps every library's default.)
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    for threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[threads] = "1"
os.environ["WANDB_MODE"] = "disabled"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from data import prepare  # noqa: E402
from data.shards import read_manifest  # noqa: E402
from data.synthetic_floor import dataset_window_floor  # noqa: E402
from tests import preload  # noqa: E402

# The interpreter the end-to-end tests start their CLIs with (tests/preload.py): set here, before
# any test module copies os.environ, which must name the preload server's socket.
PYTHON = preload.python()
if os.environ.get("PYTEST_XDIST_WORKER"):
    preload.launch()  # its imports overlap the worker's collection
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# Small enough to build in well under a second, large enough for a few hundred training steps.
TINY_DATA = {"train_tokens": 300_000, "val_tokens": 40_000}
# Training tests assert exact step counts and learning progress: they pin the hyperparameters the
# per-size rules would otherwise choose. Tests of the rules themselves override these with null.
# They also pin the CPU, where a GPU is present too: auto would pick CUDA with bf16 and compiled
# kernels, which are not bitwise reproducible (the resume tests compare runs exactly), and the
# 2-rank tests would ask one GPU for two. The CUDA tests pass train.device=cuda, which wins.
FIXED_HPARAMS = ("train.lr=3e-3", "train.batch_tokens=1024", "schedule.warmup_fraction=0.05",
                 "train.device=cpu")
# A small model trained for 19 steps of 1024 tokens, evaluated at steps 0, 1, 3, 7 and 19 and
# checkpointed at every logging check (every 2 steps and each eval): the fault-injection runs.
SMALL_RUN = (
    "model=base", "model.n_layer=2", "model.d_model=64", "model.n_head=2",
    "budget.tokens=2e4", "eval.points=4", "eval.tokens=4096", "logging.interval=2",
    "checkpoint.interval_s=0", "logging.wandb.mode=disabled", "logging.progress=false",
    *FIXED_HPARAMS,
)
# Appended after FIXED_HPARAMS (the later override wins), these hand all three back to the rules.
RULE_HPARAMS = ("train.lr=null", "train.batch_tokens=null", "schedule.warmup_fraction=null")


@pytest.fixture(scope="session", autouse=True)
def preload_server() -> None:
    """The server behind PYTHON, listening before the first test (a CLI started earlier would
    run in a plain interpreter: correct, only slower)."""
    preload.launch(wait_s=30)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root dir (as paths.root_dir) whose data_cache/synthetic holds a tiny prepared dataset."""
    root = tmp_path_factory.mktemp("root")
    data_cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "data" / "synthetic.yaml"))
    dataset = prepare({**data_cfg, **TINY_DATA}, root / "data_cache")
    # The window floor at the default seq_len, cached in the dataset now: every run would
    # otherwise wait a second for it, and every test's copy of the dataset compute it again
    dataset_window_floor(dataset, read_manifest(dataset), 128)
    return root


def compose_train(root: Path, *overrides: str) -> DictConfig:
    """The train config as `python -m sweep.train` would compose it, rooted at `root`."""
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(
            "train",
            overrides=[f"paths.root_dir={root}", "logging.wandb.mode=disabled",
                       "logging.progress=false", *FIXED_HPARAMS, *overrides],
        )
