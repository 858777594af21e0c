"""Fault injection for the reliability tests: run a CLI in a process that dies or fails on cue.

`python tests/faults.py FAULT [FAULT ...] -- MODULE [ARGS ...]` installs each FAULT, then runs
`python -m MODULE ARGS` in this process. Faults (N counts calls from 1):
  kill@step=N        SIGKILL during optimizer step N (after its backward, before the update)
  kill1@step=N       the same in rank 1 only (RANK=1), after a pause of LOST_RANK_PAUSE_S: a
                     data-parallel run losing one rank while the other waits for it
  kill@eval=N        SIGKILL halfway through the N-th evaluation
  kill@metrics=N     SIGKILL after writing half of the N-th metrics.jsonl line (a torn line)
  kill@checkpoint=N  SIGKILL between writing the N-th checkpoint's temp file and its rename
  kill@summary=N     SIGKILL between writing the N-th summary.json temp file and its rename
  enospc@checkpoint=N  the N-th checkpoint write fails with ENOSPC after writing some bytes
  oom@micro_batch=B  every training forward/backward of more than B sequences raises torch's
                     out-of-memory error (B=0: nothing fits)
  nan@d_model=W      training losses of every model with d_model W become NaN from its 3rd step
  slow@summary=MS    every summary.json write starts with a pause of MS milliseconds (a slow
                     disk, or a loaded machine)
  erofs=DIR          DIR is on a read-only file system: creating anything in it fails with EROFS
                     (tests run as root here, where chmod cannot make a directory read-only)
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys
import time
from collections.abc import Callable
from typing import Any


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _on_call(n: int, action: Callable[[], None]) -> Callable[[], None]:
    """A tick() that runs `action` on its n-th call."""
    calls = 0

    def tick() -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            action()

    return tick


# How long rank 1 pauses before kill1@step dies: rank 0 meanwhile reaches its next collective and
# waits in it, so the death breaks that collective at once. Without the pause rank 0 may still be
# computing when torchrun, which polls its ranks every 0.1 s, sends it SIGTERM: an interruption
# too, but not the lost-rank error under test (a flake under load).
LOST_RANK_PAUSE_S = 2.0


def _pause_then_die() -> None:
    time.sleep(LOST_RANK_PAUSE_S)
    _die()


def _kill_step(n: int, action: Callable[[], None] = _die) -> None:
    import torch

    tick = _on_call(n, action)
    original = torch.optim.AdamW.step

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        tick()
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = step


def _kill_eval(n: int) -> None:
    # Patched where it is defined: runpy runs sweep.train afresh, importing it from there.
    import sweep.evaluate

    original = sweep.evaluate.evaluate
    calls = 0

    def evaluate(model: Any, windows: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == n:
            # Evaluate half the windows, then die: the kill lands inside the evaluation.
            original(model, windows[: max(1, len(windows) // 2)], *args, **kwargs)
            _die()
        return original(model, windows, *args, **kwargs)

    sweep.evaluate.evaluate = evaluate


def _kill_metrics(n: int) -> None:
    from sweep.records import RunRecord, dumps

    original = RunRecord.append_metrics
    calls = 0

    def append_metrics(self: RunRecord, row: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            line = dumps(row) + "\n"
            with self.metrics_path.open("a") as handle:
                handle.write(line[: len(line) // 2])
                handle.flush()
                os.fsync(handle.fileno())
            _die()
        original(self, row)

    RunRecord.append_metrics = append_metrics


def _before_rename(pattern: Callable[[str], bool], n: int) -> None:
    """SIGKILL when the n-th temp file matching `pattern` is about to be renamed into place."""
    tick = _on_call(n, _die)
    original = os.replace

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if pattern(os.path.basename(os.fspath(src))):
            tick()
        original(src, dst, *args, **kwargs)

    os.replace = replace


def _enospc_checkpoint(n: int) -> None:
    import torch

    original = torch.save
    calls = 0

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == n:
            f.write(b"\0" * 4096)  # part of the file reaches the disk before it fills
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(obj, f, *args, **kwargs)

    torch.save = save


def _oom_above(limit: int) -> None:
    import torch

    import sweep.step

    original = sweep.step.accumulate_gradients

    def accumulate(model: Any, xs: Any, ys: Any, micro: int, *args: Any) -> Any:
        if micro > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(model, xs, ys, micro, *args)

    sweep.step.accumulate_gradients = accumulate


def _nan_d_model(width: int) -> None:
    from models import gpt

    original = gpt.GPT.forward
    calls: dict[int, int] = {}

    def forward(self: Any, idx: Any, targets: Any = None, reduction: str = "mean") -> Any:
        out = original(self, idx, targets, reduction)
        if self.training and self.config.d_model == width:
            calls[id(self)] = calls.get(id(self), 0) + 1
            if calls[id(self)] > 2:
                return out * float("nan")
        return out

    gpt.GPT.forward = forward


def _slow_summary(ms: int) -> None:
    from sweep.records import RunRecord

    original = RunRecord.write_summary

    def write_summary(self: Any, summary: Any) -> None:
        time.sleep(ms / 1000)
        original(self, summary)

    RunRecord.write_summary = write_summary


def _read_only(directory: str) -> None:
    root = os.path.realpath(directory)
    original_mkdir, original_open = os.mkdir, os.open

    def inside(path: Any) -> bool:
        parent = os.path.dirname(os.path.realpath(os.fspath(path)))
        return parent == root or parent.startswith(root + os.sep)

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path) and not os.path.isdir(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        original_mkdir(path, *args, **kwargs)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return original_open(path, flags, *args, **kwargs)

    os.mkdir, os.open = mkdir, open_


def install(fault: str) -> None:
    """Install one FAULT spec (see the module docstring); ValueError for an unknown one."""
    kind, _, arg = fault.partition("=")
    if kind == "erofs":
        _read_only(arg)
        return
    n = int(arg)
    installers: dict[str, Callable[[int], None]] = {
        "kill@step": _kill_step,
        "kill1@step": lambda k: (_kill_step(k, _pause_then_die) if os.environ.get("RANK") == "1"
                                 else None),
        "kill@eval": _kill_eval,
        "kill@metrics": _kill_metrics,
        "kill@checkpoint": lambda k: _before_rename(
            lambda name: name.startswith(".checkpoint-") and ".tmp-" in name, k
        ),
        "kill@summary": lambda k: _before_rename(
            lambda name: name.startswith("summary.json.tmp-"), k
        ),
        "enospc@checkpoint": _enospc_checkpoint,
        "oom@micro_batch": _oom_above,
        "nan@d_model": _nan_d_model,
        "slow@summary": _slow_summary,
    }
    if kind not in installers:
        raise ValueError(f"unknown fault {fault!r}: one of {sorted(installers)}")
    installers[kind](n)


def main(argv: list[str]) -> None:
    """Install the faults before `--`, then run the module after it as __main__."""
    split = argv.index("--")
    faults, (module, *args) = argv[:split], argv[split + 1 :]
    for fault in faults:
        install(fault)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # Run from its path, this file puts tests/ first on sys.path: the repo root must win.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    main(sys.argv[1:])
