"""Tests for sweep.lock: one trainer per run directory, checked against a real second process,
and SIGTERM turned into an interruption only while a run trains.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.errors import ConfigError
from sweep.lock import RunLock, RunLocked, Terminated, is_locked, sigterm_interrupts

REPO = Path(__file__).resolve().parent.parent
HOLD = (
    "import sys\n"
    "from sweep.lock import RunLock\n"
    "with RunLock(sys.argv[1]):\n"
    "    print('locked', flush=True)\n"
    "    sys.stdin.read()\n"  # hold until the test closes our stdin
)


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A second process that holds run_dir's lock until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_until_the_holder_exits(tmp_path):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        assert is_locked(run_dir)
        with pytest.raises(RunLocked) as err:
            RunLock(run_dir).acquire()
        message = str(err.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
        assert "\n" not in message and "rerun" in message
        assert isinstance(err.value, ConfigError)  # main() prints it as one line, exit 2
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0
    assert not is_locked(run_dir)
    with RunLock(run_dir):
        assert is_locked(run_dir)
        assert (run_dir / ".lock").read_text() == f"{socket.gethostname()} {os.getpid()}\n"
    assert not is_locked(run_dir)


def test_a_killed_holder_never_holds_the_lock(tmp_path):
    holder = hold_lock(tmp_path)
    assert is_locked(tmp_path)
    holder.kill()  # SIGKILL: no cleanup code runs; the kernel drops the flock
    holder.wait(timeout=30)
    holder.stdin.close()
    assert not is_locked(tmp_path)
    with RunLock(tmp_path):
        pass


def test_is_locked_creates_nothing(tmp_path):
    assert not is_locked(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    assert not is_locked(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_one_process_cannot_take_its_own_lock_twice(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()


def test_sigterm_raises_terminated_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as err, sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
    assert err.value.signum == signal.SIGTERM
    assert isinstance(err.value, KeyboardInterrupt)  # not an Exception: no failed summary
    assert signal.getsignal(signal.SIGTERM) is before
