"""The guard's check of config-group choices (data/hydra_guard.py) against every folder Hydra
searches: the repo's configs, a --config-dir and the file entries of hydra.searchpath.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from data.hydra_guard import hydra_error_line, unknown_choice
from tests.conftest import FIXED_HPARAMS, PYTHON
from tests.helpers import linked_root

TRAIN_HINTS = {"model": "model preset", "data": "dataset", "experiment": "experiment",
               "hparams": "hyperparameter rules", "paths": "paths preset"}
# configs/experiment/smoke.yaml as a researcher would copy it to their own folder: shrunk to one
# point on the synthetic data, with a model preset of their own from the same folder.
MINE = """\
# @package _global_
defaults:
  - override /data: synthetic

experiment_name: mine

train:
  batch_tokens: 1024

eval:
  tokens: 4096
  points: 2

logging:
  progress: false
  wandb:
    mode: disabled

hydra:
  mode: MULTIRUN
  sweep:
    dir: ${paths.runs_dir}/${experiment_name}
  sweeper:
    params:
      model: tiny2
      budget.tokens: 2e4
"""
TINY2 = """\
defaults:
  - base
  - _self_

name: tiny2
n_layer: 2
d_model: 64
n_head: 2
"""


@pytest.fixture
def own_configs(tmp_path: Path) -> Path:
    """A config folder outside the repo holding experiment/mine.yaml and model/tiny2.yaml."""
    folder = tmp_path / "my_configs"
    (folder / "experiment").mkdir(parents=True)
    (folder / "model").mkdir()
    (folder / "experiment" / "mine.yaml").write_text(MINE)
    (folder / "model" / "tiny2.yaml").write_text(TINY2)
    (folder / "model" / "_fragment.yaml").write_text("n_layer: 1\n")  # included, never chosen
    return folder


def spellings(folder: Path) -> list[list[str]]:
    """Every way a command line can add `folder` to Hydra's search path."""
    return [["--config-dir", str(folder)], [f"--config-dir={folder}"], ["-cd", str(folder)],
            ["--config-d", str(folder)],  # argparse takes an unambiguous prefix, so Hydra does
            [f"hydra.searchpath=[file://{folder}]"], [f"hydra.searchpath=[{folder}]"],
            [f"hydra.searchpath=['file://{folder}',pkg://hydra.conf]"]]


@pytest.mark.parametrize("way", range(7))
@pytest.mark.parametrize("choice", ["experiment=mine", "model=tiny2", "model=gpt_1m,tiny2"])
def test_a_choice_from_another_config_folder_is_accepted(own_configs: Path, way: int,
                                                         choice: str) -> None:
    argv = spellings(own_configs)[way]
    assert unknown_choice([*argv, choice], TRAIN_HINTS) is None
    assert unknown_choice([choice, *argv], TRAIN_HINTS) is None


def test_a_relative_config_dir_is_read_from_the_working_directory(
        own_configs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(own_configs.parent)
    assert unknown_choice(["-cd", "my_configs", "model=tiny2"], TRAIN_HINTS) is None
    assert unknown_choice(["hydra.searchpath=[file://my_configs]", "model=tiny2"],
                          TRAIN_HINTS) is None
    assert "unknown model preset model=tiny2" in unknown_choice(["model=tiny2"], TRAIN_HINTS)


def test_a_typo_under_a_config_dir_lists_the_options_of_both_folders(own_configs: Path) -> None:
    line = unknown_choice(["--config-dir", str(own_configs), "experiment=mien"], TRAIN_HINTS)
    assert line == (
        "unknown experiment experiment=mien: choose one of floor_cpu, horizons, horizons_wsd, "
        f"isoflop, kaplan, ladder_300m, lr_batch, mine, smoke (configs/experiment/, "
        f"{own_configs}/experiment/)")
    line = unknown_choice([f"hydra.searchpath=[file://{own_configs}]", "model=tiny3"],
                          TRAIN_HINTS)
    assert line is not None and "\n" not in line
    assert "model=tiny3: choose one of base, gpt_11m" in line
    assert "gpt_85m, tiny2 (configs/model/, " in line and "_fragment" not in line
    assert line.endswith(f"{own_configs}/model/)")


def test_without_another_folder_the_repo_configs_alone_are_listed() -> None:
    assert unknown_choice(["experiment=mine"], TRAIN_HINTS) == (
        "unknown experiment experiment=mine: choose one of floor_cpu, horizons, horizons_wsd, "
        "isoflop, kaplan, ladder_300m, lr_batch, smoke (configs/experiment/)")
    assert unknown_choice(["model=gpt_1m", "experiment=smoke"], TRAIN_HINTS) is None


def test_a_package_on_the_search_path_is_left_to_hydra() -> None:
    # The guard cannot list a package's folders without importing it: it does not guess.
    assert unknown_choice(["hydra.searchpath=[pkg://some.package]", "model=tiny9"],
                          TRAIN_HINTS) is None
    # null is refused whatever the search path: Hydra would raise a traceback.
    assert unknown_choice(["hydra.searchpath=[pkg://some.package]", "model=null"],
                          TRAIN_HINTS).startswith("model=null: a config group cannot be set")


def test_only_the_searchpath_hydra_honours_counts(own_configs: Path) -> None:
    # Hydra reads the key hydra.searchpath only (no +): the folder is not searched, so the
    # choice is unknown.
    line = unknown_choice([f"+hydra.searchpath=[file://{own_configs}]", "model=tiny2"],
                          TRAIN_HINTS)
    assert line is not None and line.endswith("(configs/model/)")
    # An override Hydra cannot parse is Hydra's to report (hydra_error_line): the guard steps aside.
    assert unknown_choice(["hydra.searchpath=[file://x", "model=tiny9"], TRAIN_HINTS) is None


def test_a_missing_config_dir_is_one_line(tmp_path: Path) -> None:
    line = unknown_choice(["--config-dir", str(tmp_path / "nope"), "model=tiny2"], TRAIN_HINTS)
    assert line == (
        f"--config-dir {tmp_path / 'nope'}: no such directory ({tmp_path / 'nope'}): give a "
        "folder holding <group>/<name>.yaml files, e.g. experiment/mine.yaml")


# --- the command line, for real ----------------------------------------------------------------


def train_cli(root: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "-m", "sweep.train", *argv, f"paths.root_dir={root}",
         "logging.wandb.mode=disabled", "logging.progress=false", *FIXED_HPARAMS],
        cwd=root, env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True, text=True,
        timeout=600)


@pytest.mark.slow  # 5 s of training; the dry runs above check what the guard decides
def test_an_experiment_and_a_model_from_a_config_dir_train_a_run(
        own_configs: Path, synthetic_root: Path, tmp_path: Path) -> None:
    root = linked_root(tmp_path, synthetic_root, "root")
    result = train_cli(root, "--config-dir", str(own_configs), "experiment=mine")
    assert result.returncode == 0, result.stderr
    (run_dir,) = (root / "runs" / "mine").glob("tiny2-*")  # beside the sweep's sweep.json
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["params"]["non_embedding"] == 98_624  # 2 layers of width 64, as tiny2.yaml


def test_a_config_dir_model_and_a_searchpath_experiment_dry_run(
        own_configs: Path, synthetic_root: Path, tmp_path: Path) -> None:
    root = linked_root(tmp_path, synthetic_root, "root")
    model = train_cli(root, "-cd", str(own_configs), "model=tiny2", "budget.tokens=2e4",
                      "launch.dry_run=true")
    assert model.returncode == 0, model.stderr
    assert " tiny2-" in model.stdout and "dry run: nothing trained" in model.stdout
    sweep = train_cli(root, f"hydra.searchpath=[file://{own_configs}]", "experiment=mine",
                      "launch.dry_run=true")
    assert sweep.returncode == 0, sweep.stderr
    assert "sweep mine: 1 grid points" in sweep.stdout and " tiny2-" in sweep.stdout
    assert sorted(p.name for p in root.iterdir()) == ["data_cache"]  # a dry run writes nothing


@pytest.mark.parametrize("message", [
    "Multiple values for model. To override a value use 'override model: gpt_3m'",
    "model appears more than once in the final defaults list",
])
def test_a_group_given_twice_says_drop_the_plus_only_when_a_plus_was_typed(message: str) -> None:
    from hydra.errors import ConfigCompositionException

    err = ConfigCompositionException(message)
    typed = hydra_error_line(err, "python -m sweep.train", ["+model=gpt_3m", "seed=1"])
    assert typed == ("+model=gpt_3m adds model to python -m sweep.train's defaults list, which "
                     "already has it: write model=gpt_3m, without the +")
    # A config file of one's own whose defaults list sets model twice: Hydra's advice stands
    untyped = hydra_error_line(err, "python -m sweep.train", ["experiment=mine"])
    assert "without the +" not in untyped and untyped.startswith(message.split(".")[0])
