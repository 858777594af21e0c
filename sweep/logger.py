"""Where a run's progress goes besides its record: a rich progress bar and, optionally, wandb.

wandb defaults to offline mode (no account, nothing on the network; `wandb sync` uploads later).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from sweep.errors import ConfigError, first_line

WANDB_MODES = ("offline", "online", "disabled")
_WANDB_ALIASES = {"dryrun": "offline", "run": "online"}  # wandb's older names for them


def wandb_mode(configured: str) -> str:
    """The wandb mode a run uses: the WANDB_MODE environment variable when set, else the config's.

    The variable wins (wandb.init's own `mode` argument would beat it) so that
    `WANDB_MODE=disabled`, as CI and the GPU checks export it, turns wandb off for every run.
    wandb's other spellings are taken as wandb takes them (dryrun is offline, run is online).
    """
    env = os.environ.get("WANDB_MODE")
    if not env:
        return configured
    mode = _WANDB_ALIASES.get(env, env)
    if mode not in (*WANDB_MODES, "shared"):
        raise ConfigError(f"WANDB_MODE={env!r} in the environment is unknown: set one of "
                          f"{', '.join(WANDB_MODES)}, or unset it to use logging.wandb.mode")
    return mode


class RunLogger:
    """Console progress plus wandb, opened for one run and closed when it ends."""

    def __init__(
        self,
        logging_cfg: Mapping[str, Any],
        *,
        run_dir: Path,
        run_id: str,
        total_steps: int,
        config: Mapping[str, Any],
        quiet: bool = False,
    ) -> None:
        """quiet: no bar, no wandb, no console lines (the ranks of a data-parallel run but 0)."""
        self.console = Console(quiet=quiet)
        self._progress: Progress | None = None
        self._task = None
        if logging_cfg["progress"] and not quiet:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(run_id, total=total_steps, loss="-", tps="-")
            self._progress.start()
        wandb_cfg = {**logging_cfg["wandb"], "mode": wandb_mode(logging_cfg["wandb"]["mode"])}
        self._wandb = None
        if wandb_cfg["mode"] != "disabled" and not quiet:
            import wandb  # imported lazily: it is slow to import and unused when disabled

            try:
                self._wandb = wandb.init(
                    project=wandb_cfg["project"],
                    entity=wandb_cfg["entity"],
                    name=run_id,
                    dir=str(run_dir),
                    config=dict(config),
                    mode=wandb_cfg["mode"],
                )
            except Exception as exc:  # no API key, no server, an unknown entity, ...
                if self._progress is not None:
                    self._progress.stop()
                # A setting, not the run: a ConfigError, so that no failed summary is written
                # and a relaunch with wandb fixed trains the run.
                raise ConfigError(
                    f"logging.wandb.mode={wandb_cfg['mode']}: wandb did not start "
                    f"({type(exc).__name__}: {first_line(exc)}): run `wandb login`, or set "
                    "logging.wandb.mode=offline (sync later) or disabled"
                ) from None

    def step(self, step: int, loss: float | None = None, tokens_per_s: float | None = None) -> None:
        """Advance the bar to `step` optimizer steps, refreshing loss and throughput when given."""
        if self._progress is None:
            return
        fields: dict[str, str] = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if tokens_per_s is not None:
            fields["tps"] = f"{tokens_per_s:,.0f}"
        self._progress.update(self._task, completed=step, **fields)

    def metrics(self, row: Mapping[str, Any]) -> None:
        """Send one evaluation row to wandb."""
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in row.items() if v is not None}, step=row["step"])

    def print(self, message: str) -> None:
        """A line on the console that does not tear the progress bar."""
        # soft_wrap: a log line stays one line (greppable) whatever the terminal width.
        self.console.print(message, highlight=False, soft_wrap=True)

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        """Stop the bar and finish the wandb run (with the summary's scalars)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._wandb is not None:
            if summary:
                for key, value in summary.items():
                    if isinstance(value, int | float | str):
                        self._wandb.summary[key] = value
            self._wandb.finish(
                exit_code=0 if not summary or summary.get("status") == "finished" else 1
            )
            self._wandb = None
