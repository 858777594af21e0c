"""The wandb mode a run uses: WANDB_MODE from the environment over the config, in wandb's words."""

from __future__ import annotations

import pytest

from sweep.errors import ConfigError
from sweep.logger import wandb_mode


@pytest.mark.parametrize(("env", "mode"), [
    (None, "online"), ("", "online"), ("disabled", "disabled"), ("offline", "offline"),
    ("dryrun", "offline"), ("run", "online"), ("shared", "shared"),
])
def test_the_environment_wins_in_any_spelling_wandb_accepts(monkeypatch, env, mode):
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    assert wandb_mode("online") == mode


def test_an_unknown_value_is_one_line(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match=r"^WANDB_MODE='sometimes' in the environment is "
                                          r"unknown: set one of offline, online, disabled"):
        wandb_mode("offline")
