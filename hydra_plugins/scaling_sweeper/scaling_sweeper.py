"""The `scaling` sweeper: Hydra's basic grid expansion, plus a planning pass before any launch.

Every grid point is planned first (a bad one stops the sweep before anything trains), the table
of runs and actions is printed, and only the points left to train or resume go to the launcher.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus


class ScalingSweeper(BasicSweeper):
    """BasicSweeper whose sweep() plans, filters and reports the grid (see sweep.grid)."""

    def sweep(self, arguments: list[str]) -> Any:
        # Imported here: Hydra imports every plugin module on each start, and torch is slow.
        from sweep.grid import (
            GridError,
            describe_failures,
            format_plan,
            held_points,
            horizon_note,
            plan_grid,
            runs_outside,
            write_manifest,
        )
        from sweep.waves import launch_waves, predecessors, release_files, sharing_note

        assert self.config is not None and self.launcher is not None
        assert self.hydra_context is not None
        world = os.environ.get("WORLD_SIZE", "1")
        if world.isdigit() and int(world) > 1:
            # Every rank would run the whole sweep, re-joining a process group per run (which
            # hangs): ranks belong to one run
            print(f"error: a sweep (-m) under torchrun (WORLD_SIZE={world}) is not supported: "
                  "run one grid point per torchrun, or launch the sweep with "
                  "hydra/launcher=slurm hydra.launcher.tasks_per_node=N (see the README's Sweeps)",
                  file=sys.stderr)
            raise SystemExit(2)
        params = self._parse_config()
        params.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = [list(job) for batch in self.split_arguments(parser.parse_overrides(params), None)
                for job in batch]
        loader = self.hydra_context.config_loader
        task_overrides = list(self.config.hydra.overrides.task)
        experiment = str(self.config.experiment_name)
        try:
            configs = [loader.load_sweep_config(self.config, job) for job in jobs]
            points = plan_grid(jobs, configs, task_overrides)
        except GridError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        print(format_plan(experiment, points), flush=True)
        # A launcher that can wait for one job (gpu_pool) starts each run of a shared stable
        # phase once the run it continues has saved its state (or ended); others go wave by
        # wave, where a wave ends with its slowest run and leaves the other slots idle
        chained = hasattr(self.launcher, "launch_after") and not self.max_batch_size
        for note in (runs_outside(points), sharing_note(points, chained), horizon_note(points)):
            if note:
                print(note, flush=True)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if self.config.launch.dry_run:
            # Nothing written either: a preview of another grid must not replace the plan that
            # sweep.status reads for the sweep launched in this folder
            print("dry run: nothing launched", flush=True)
            return []
        write_manifest(sweep_dir, experiment, points)
        # Waves: a shared stable phase's runs go one budget a wave, each continuing the state
        # the wave before saved (one wave of everything when nothing is shared)
        waves = launch_waves(points)
        order = [p for wave in waves for p in wave]
        todo = [list(p.overrides) for p in order]
        held = held_points(points)
        if not todo:
            print("nothing to train", flush=True)
            if held:
                print(f"error: {describe_failures(held)}", file=sys.stderr)
                raise SystemExit(1)
            return []

        start = time.perf_counter()
        if chained:
            after = predecessors(order)
            returns = [self.launcher.launch_after(todo, initial_job_idx=0, after=after,
                                                  released_by=release_files(order, after))]
        else:
            returns, first = [], 0
            for wave in waves:
                size = self.max_batch_size or len(wave)
                for offset in range(0, len(wave), size):
                    jobs = [list(p.overrides) for p in wave[offset : offset + size]]
                    returns.append(self.launcher.launch(jobs, initial_job_idx=first + offset))
                first += len(wave)
        # A job that raised is recorded, not re-raised: the other runs of the sweep went on.
        failures = [
            (r.overrides, r._return_value)
            for batch in returns
            for r in batch
            if r.status == JobStatus.FAILED
        ]
        print(
            f"sweep {experiment}: {len(todo) - len(failures)} of {len(todo)} launched runs ended "
            f"in {time.perf_counter() - start:.0f} s; status: python -m sweep.status {sweep_dir}",
            flush=True,
        )
        failures += held  # found in another process's hands when the grid was planned
        if failures:
            print(f"error: {describe_failures(failures)}", file=sys.stderr)
            raise SystemExit(1)
        return returns
