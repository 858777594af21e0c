"""The tests' `python` (see tests/preload.py): hands `[-u] -m MODULE ARGS` or `[-u] SCRIPT ARGS`
to the preload server and becomes its forked process's stand-in; runs anything else plainly.

Started with -S, so standard library only. tests/preload.py writes this file out behind a shebang
naming the real interpreter. The stand-in forwards every signal it can catch to the process, ends
as it ends (exit code or signal), and a SIGKILL of the stand-in kills the process too.
"""

import array
import io
import json
import os
import signal
import socket
import sys

# Switches read when torch, OpenMP or Python start: a command whose environment sets them other
# than the server's needs an interpreter of its own.
AT_START = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
            "TORCH_LOGS", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONSAFEPATH")
AT_START_PREFIXES = ("TORCHDYNAMO_", "TORCHINDUCTOR_", "PYTORCH_", "KMP_", "GOMP_")
# Modules whose parent names them by their pid (submitit's job controller: the job id is its pid),
# which the stand-in's pid is not.
PID_BOUND = ("submitit.local._local",)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2, signal.SIGALRM, signal.SIGCONT)


def log(what: str) -> None:
    """With SWEEP_PRELOAD_LOG set, append how this command ran to that file."""
    if os.environ.get("SWEEP_PRELOAD_LOG"):
        with open(os.environ["SWEEP_PRELOAD_LOG"], "a") as handle:
            handle.write(f"{what}: {' '.join(sys.argv[1:])[:200]}\n")


def plain(why: str) -> None:
    """Run the command in the real interpreter: the one this file's shebang started."""
    log(f"plain ({why})")
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])


def parse(args: list[str]) -> dict | None:
    """`[-u] -m MODULE ARGS` or `[-u] SCRIPT ARGS`; None for anything else."""
    unbuffered = False
    while args and args[0] == "-u":
        unbuffered, args = True, args[1:]
    if len(args) >= 2 and args[0] == "-m":
        return {"module": args[1], "script": None, "args": args[2:], "unbuffered": unbuffered}
    if args and not args[0].startswith("-") and args[0].endswith(".py"):
        return {"module": None, "script": args[0], "args": args[1:], "unbuffered": unbuffered}
    return None


def differs_at_start(server: dict, env: dict) -> bool:
    """Whether env sets a start-up switch other than the server had it (before its imports, or
    as they set it: importing torch sets TORCHINDUCTOR_CACHE_DIR in the test process too)."""
    before, after = server["before"], server["after"]
    keys = {k for k in (*before, *after, *env) if k in AT_START or k.startswith(AT_START_PREFIXES)}
    return any(env.get(k) not in (before.get(k), after.get(k)) for k in keys)


def reply(reader: io.TextIOBase, word: str, failure: str) -> str:
    """The value of the server's next line, `WORD VALUE`; exit 1 saying `failure` without it."""
    line = reader.readline().split()
    if line[:1] != [word]:
        print(f"error: the preload server {failure} (tests/preload.py); rerun with "
              "SWEEP_TEST_PRELOAD=0", file=sys.stderr)
        sys.exit(1)
    return line[1]


def main() -> None:
    request = parse(sys.argv[1:])
    path = os.environ.get("SWEEP_PRELOAD_SOCKET")
    if request is None:
        plain("not -m MODULE or SCRIPT.py")
    if request["module"] in PID_BOUND:
        plain("its parent knows it by pid")
    if not path or not os.path.exists(path):
        plain("no server")
    env = dict(os.environ)
    if request["unbuffered"] is False and env.get("PYTHONUNBUFFERED"):
        request["unbuffered"] = True
    try:
        with open(path + ".env") as handle:
            if differs_at_start(json.load(handle), env):
                plain("start-up switches differ")
    except (OSError, ValueError):
        plain("no server")
    request.update(cwd=os.getcwd(), env=env, shim_pid=os.getpid())
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        plain("no server")
    payload = json.dumps(request).encode()
    conn.sendmsg([len(payload).to_bytes(8, "big")],
                 [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0, 1, 2]))])
    conn.sendall(payload)
    reader = conn.makefile("r")
    child = int(reply(reader, "pid", "did not start the command"))
    log(f"forked {child}")
    for sig in FORWARDED:
        signal.signal(sig, lambda sig, _frame: os.kill(child, sig))
    status = int(reply(reader, "exit", "ended before the command"))
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


main()
