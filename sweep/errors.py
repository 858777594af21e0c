"""Mistakes a user can make: the config error type, and an argparse that reports in one line.

Each message is a single line that names the offending value and says how to fix it.
"""

import argparse
import math
import sys
from typing import Any, NoReturn


class ConfigError(ValueError):
    """A config value that cannot be trained as given (printed as one line, exit code 2)."""


def finite_number(name: str, value: object, rule: str) -> float:
    """value as a float when it is a finite number, else ConfigError "name=value rule".

    NaN and infinity would pass every range check (NaN compares false both ways) and surface as
    a traceback or a run recorded as diverged; a bool is YAML's true/false, not a number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} {rule}")
    return float(value)


def whole_number(name: str, value: object, rule: str) -> int:
    """value as an int when it is a finite whole number (5e5 included), else ConfigError."""
    number = finite_number(name, value, rule)
    if not number.is_integer():
        raise ConfigError(f"{name}={value!r} {rule}")
    return int(number)


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an error's message (its class name when it has none), for one-line
    reports of errors that carry several lines (torch's, gloo's, wandb's)."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


class RunFailed(Exception):
    """One run of a sweep could not finish (bad config or data, failed, diverged): one line.

    Raised instead of SystemExit inside a Hydra multirun, whose launcher records an Exception
    for that job and goes on with the next one, but lets SystemExit end the whole sweep.
    """


class RunHeld(RunFailed):
    """One run of a sweep is being trained by another process (say, a second sweep of the same
    grid), so this sweep left it to that one. A class of its own, not a cause: submitit pickles
    exceptions back to the sweep, and pickling keeps the class but drops the cause."""


class RankLost(RuntimeError):
    """A data-parallel run lost one of its ranks (killed, or failed on its own): the run is
    interrupted, not failed, and resumes from its last checkpoint when relaunched."""


class OutOfMemory(RuntimeError):
    """A training step ran out of memory even at the smallest micro-batch allowed."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error:` line (exit 2), like every other mistake."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(2)


def finite_or_none(value: Any) -> float | None:
    """value as a float when it is a finite number, else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
