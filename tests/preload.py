"""A preloaded Python for the end-to-end tests: a server that imported torch, Hydra and the fitter's
libraries once forks a fresh process for each CLI a test starts (SWEEP_TEST_PRELOAD=0: none).
"""

# Why: every training subprocess spent ~4 s of CPU importing torch, torch._dynamo (which every
# torch.optim optimizer imports) and Hydra before its first step, most of CI's time. The tests'
# `python` is python_shim.py, which hands its command line, environment, working directory and
# standard streams to this server and stands in for the forked child: a process of its own (own
# pid, exit code, faults), which imported only third-party libraries before the fork and imports
# the project's modules afresh, as `python -m MODULE` would.

from __future__ import annotations

import array
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHIM_SOURCE = Path(__file__).resolve().with_name("python_shim.py")
SOCKET_ENV = "SWEEP_PRELOAD_SOCKET"
# What a preloaded child imported before it was asked for: third-party libraries whose import
# reads nothing a test changes (the shim falls back to a plain interpreter when the thread
# settings or a torch switch differ from the server's). Never the project's own modules.
PRELOAD = ("numpy", "torch", "torch._dynamo", "torch.distributed", "hydra", "hydra.main",
           "omegaconf", "pandas", "scipy.optimize", "scipy.stats")


# --- the test side --------------------------------------------------------------------------


_PYTHON: str | None = None
_SERVER: subprocess.Popen | None = None


def python() -> str:
    """The `python` a test gives its CLIs: the shim (written once per test process), or
    sys.executable itself when SWEEP_TEST_PRELOAD=0 or the shim cannot run. Until launch() has a
    server listening, the shim runs a plain interpreter, so a test never waits for the server."""
    global _PYTHON
    if _PYTHON is None:
        shim = None if os.environ.get("SWEEP_TEST_PRELOAD", "1") == "0" else _write_shim()
        _PYTHON = shim or sys.executable
    return _PYTHON


def _write_shim() -> str | None:
    folder = Path(tempfile.mkdtemp(prefix="sweep-preload-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    # -S starts the shim in ~15 ms (no site-packages); -E keeps PYTHONPATH out of it.
    shim = folder / "python"
    shim.write_text(f"#!{sys.executable} -SE\n" + SHIM_SOURCE.read_text())
    shim.chmod(0o755)
    try:  # a temp folder mounted noexec, say: every test CLI runs plainly then
        subprocess.run([str(shim), "-c", "pass"], check=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    os.environ[SOCKET_ENV] = str(folder / "server.sock")
    return str(shim)


def launch(wait_s: float = 0.0) -> None:
    """Start the server behind python()'s shim (once; it ends with this process), and wait up
    to wait_s seconds for it to listen."""
    global _SERVER
    shim = python()
    if shim == sys.executable:
        return
    if _SERVER is None:
        _SERVER = subprocess.Popen(
            [sys.executable, __file__, os.environ[SOCKET_ENV], shim], stdin=subprocess.DEVNULL,
            env=os.environ.copy())
        atexit.register(_stop, _SERVER)
    deadline = time.monotonic() + wait_s
    while (not Path(os.environ[SOCKET_ENV]).exists() and _SERVER.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.05)


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


# --- the server -----------------------------------------------------------------------------


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the shim hung up mid-request")
        data += chunk
    return data


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """One request: an 8-byte length with the shim's stdin, stdout and stderr, then JSON."""
    fds = array.array("i")
    head, ancillary, _, _ = conn.recvmsg(8, socket.CMSG_SPACE(3 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if len(head) < 8:
        head += _recv_exact(conn, 8 - len(head))
    request = json.loads(_recv_exact(conn, int.from_bytes(head, "big")))
    return request, list(fds)


def serve(sock_path: str, start_env: dict) -> tuple[dict, list[int]] | None:
    """Accept requests until this process's parent ends; return (request, fds) in each forked
    child, None in the server when it stops. start_env: the environment before the imports."""
    import select

    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path + ".tmp")
    listener.listen(64)
    # The environment torch was imported under, and as the imports left it, for the shim to
    # compare its own with.
    with open(sock_path + ".env", "w") as handle:
        json.dump({"before": start_env, "after": dict(os.environ)}, handle)
    os.replace(sock_path + ".tmp", sock_path)  # the shim sees a socket only once it listens
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    waiting: dict[int, socket.socket] = {}
    while os.getppid() == parent:
        ready, _, _ = select.select([listener, wake_r], [], [], 1.0)
        if wake_r in ready:
            os.read(wake_r, 4096)
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                with contextlib.suppress(OSError):  # a shim gone already: nobody to tell
                    conn.sendall(f"exit {status}\n".encode())
                conn.close()
        if listener not in ready:
            continue
        conn, _ = listener.accept()
        conn.settimeout(10)
        try:
            request, fds = _read_request(conn)
        except (OSError, ValueError):
            conn.close()
            continue
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            for handle in (listener, conn, *waiting.values()):
                handle.close()
            os.close(wake_r)
            os.close(wake_w)
            return request, fds
        for fd in fds:
            os.close(fd)
        with contextlib.suppress(OSError):
            conn.sendall(f"pid {pid}\n".encode())
        waiting[pid] = conn
    return None


def _watch_shim(shim_pid: int) -> None:
    """Die with the shim, and take this process's own group along: a test that SIGKILLs the
    process (or the process group) it started kills this one and what it started too."""
    import select
    import threading

    try:
        handle = os.pidfd_open(shim_pid)
    except (AttributeError, OSError):
        return

    def watch() -> None:
        select.select([handle], [], [])
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="preload-shim-watch").start()


def run_child(request: dict, fds: list[int], shim: str) -> int:
    """Become the process `python ARGV` would have been, run it and return its exit code."""
    import io
    import random
    import runpy
    import traceback
    import types

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.setsid()  # a group of its own, for _watch_shim to end with everything in it
    _watch_shim(request["shim_pid"])
    random.seed()  # forked children would otherwise share one random stream
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    unbuffered = request["unbuffered"]
    # New streams on the passed descriptors, buffered as a fresh interpreter's would be.
    def writer(fd: int) -> io.RawIOBase | io.BufferedWriter:
        raw = io.FileIO(fd, "wb", closefd=False)
        return raw if unbuffered else io.BufferedWriter(raw)

    sys.stdin = io.TextIOWrapper(io.FileIO(0, "rb", closefd=False), encoding=sys.stdin.encoding)
    sys.stdout = io.TextIOWrapper(writer(1), encoding=sys.stdout.encoding,
                                  errors=sys.stdout.errors, line_buffering=os.isatty(1),
                                  write_through=unbuffered)
    sys.stderr = io.TextIOWrapper(writer(2), encoding=sys.stderr.encoding,
                                  errors="backslashreplace", line_buffering=True,
                                  write_through=unbuffered)
    sys.executable = shim  # what the CLI starts in turn is preloaded too
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main
    try:
        if request["module"] is not None:
            sys.argv = ["-m", *request["args"]]
            sys.path[0] = os.getcwd()
            runpy._run_module_as_main(request["module"])  # exactly what `python -m` calls
        else:
            script = request["script"]
            sys.argv = [script, *request["args"]]
            sys.path[0] = os.path.dirname(os.path.abspath(script))
            source = Path(script).read_bytes()
            main.__dict__.update(__file__=script, __cached__=None, __builtins__=__builtins__)
            exec(compile(source, script, "exec"), main.__dict__)
        return 0
    except SystemExit as stop:
        if stop.code is None:
            return 0
        if isinstance(stop.code, int):
            return stop.code
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sock_path, shim_path = sys.argv[1], sys.argv[2]
    del sys.argv[1:]
    start_env = dict(os.environ)
    try:  # end with the test process even if it is killed
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    forked = serve(sock_path, start_env)
    if forked is not None:
        request, fds = forked
        code = run_child(request, fds, shim_path)
        # The interpreter's own exit, less its teardown of every module (1.4 s with torch,
        # pandas and scipy loaded): non-daemon threads joined, atexit run, streams flushed.
        import threading

        threading._shutdown()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)
