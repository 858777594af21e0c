"""The tests' preloaded `python` (tests/preload.py): a forked process stands in for a fresh
interpreter in what a test sees of it: arguments, streams, exit codes, signals and death.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON

needs_server = pytest.mark.skipif(sys.executable == PYTHON, reason="SWEEP_TEST_PRELOAD=0")

SCRIPT = """\
import os, signal, sys, time
print("argv", sys.argv[1:], "cwd", os.getcwd(), "flag", os.environ.get("PRELOAD_TEST_FLAG"))
print("executable", sys.executable, "torch", "torch" in sys.modules)
print("to stderr", file=sys.stderr)
mode = sys.argv[1]
if mode == "exit":
    sys.exit(int(sys.argv[2]))
if mode == "kill":
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "wait":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
    with open(sys.argv[2], "w") as handle:
        handle.write(str(os.getpid()))
    time.sleep(60)
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "probe.py"
    path.write_text(SCRIPT)
    return path


def run(script: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(script), *args], cwd=script.parent, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


@needs_server
def test_a_script_sees_its_arguments_streams_and_exit_code(script: Path) -> None:
    done = run(script, "exit", "3", PRELOAD_TEST_FLAG="on")
    assert done.returncode == 3, done.stderr
    first, second = done.stdout.splitlines()
    assert first == f"argv ['exit', '3'] cwd {script.parent} flag on"
    # Forked from the server (its children's interpreter is the shim too), torch already loaded
    assert second == f"executable {PYTHON} torch True"
    assert done.stderr == "to stderr\n"


@needs_server
def test_a_process_that_kills_itself_ends_killed(script: Path) -> None:
    done = run(script, "kill")
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.startswith("argv ['kill']")


@needs_server
def test_a_different_thread_setting_gets_a_plain_interpreter(script: Path) -> None:
    threads = str(int(os.environ.get("OMP_NUM_THREADS", "1")) + 1)
    done = run(script, "exit", "0", OMP_NUM_THREADS=threads)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == f"executable {sys.executable} torch False"


def _wait_for(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, "the probe never started"
        time.sleep(0.02)
    return int(path.read_text())


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


@needs_server
def test_signals_reach_the_process_and_its_death_follows_the_stand_ins(
    script: Path, tmp_path: Path
) -> None:
    for sig, code in ((signal.SIGTERM, 7), (signal.SIGKILL, -signal.SIGKILL)):
        pid_file = tmp_path / f"pid-{sig}"
        proc = subprocess.Popen([PYTHON, str(script), "wait", str(pid_file)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        child = _wait_for(pid_file)
        assert child != proc.pid  # the stand-in and the process are two
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == code
        assert _gone(child)
