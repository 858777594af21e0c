"""Who trains a run: an exclusive flock on run_dir/.lock while it does; SIGTERM as an interruption.

The kernel drops an flock when its process exits, however it exits, so a dead owner never holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from sweep.errors import ConfigError

LOCK_NAME = ".lock"
# is_locked() holds a shared lock for microseconds while it probes; a trainer starting in that
# instant retries briefly instead of reporting the prober as the holder.
_ACQUIRE_TRIES = 5
_RETRY_S = 0.02


class RunLocked(ConfigError):
    """Another live process holds the run's lock (printed as one line, exit code 2)."""


def _holder(path: Path) -> str:
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    host, _, pid = text.partition(" ")
    return f"pid {pid} on {host}" if pid else "another process"


def lock_holder(run_dir: Path) -> str:
    """Who holds run_dir's lock, as "pid N on HOST" (or "another process")."""
    return _holder(Path(run_dir) / LOCK_NAME)


class RunLock:
    """`with RunLock(run_dir):` makes this process the run's only writer (creating run_dir)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RunLocked naming the holder; never blocks for long."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: the holder's host and pid must survive until we know the lock is ours.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._flock(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        except BaseException:
            # Closing drops the flock too: a lock whose holder could not be recorded (a full
            # disk) would otherwise stay held, with nothing to release it, until this process
            # exits, and a sweep's basic launcher goes on to other runs in this same process.
            os.close(fd)
            raise
        self._fd = fd

    def _flock(self, fd: int) -> None:
        """Take the exclusive flock on fd, retrying briefly; RunLocked names the holder."""
        for attempt in range(_ACQUIRE_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if attempt == _ACQUIRE_TRIES - 1:
                    raise RunLocked(
                        f"run {self.run_dir} is being trained by {_holder(self.path)}: wait for "
                        "it to end or stop it (it resumes from its last checkpoint), then rerun"
                    ) from None
                time.sleep(_RETRY_S)

    def release(self) -> None:
        """Drop the lock. The file stays: unlinking it would let a process that had already
        opened the old inode lock a file that no longer guards the directory."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def is_locked(run_dir: Path) -> bool:
    """Whether a live process holds run_dir's lock (a run training now); creates nothing."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        # Shared, so that two probes never see each other as the holder.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM preemption or time limit) as an interruption: no failed summary is written,
    the run resumes from its last checkpoint."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within this block SIGTERM raises Terminated (the old handler comes back after it)."""
    # Python lets only the main thread install handlers; elsewhere SIGTERM keeps its old meaning.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT that arrive within this block take effect at its end, as they would
    have (Terminated, KeyboardInterrupt, or whatever handler was there).

    For a checkpoint write: stopped midway, torch's zip writer turns the interruption into a
    RuntimeError of its own, and the run was recorded as failed instead of interrupted.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, _frame: object) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        if caught:
            signal.raise_signal(caught[0])  # now, under the handler it would have met
