"""Validation of `data.*` config values: one-line DataErrors naming the key, value and fix.

Values are normalized (ints as int, floats as float) so that the config hash depends on what the
values mean, not on whether a command line wrote `1` or `1.0`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from data.errors import DataError

# train.windows: the orders data.loader can read training windows in (its classes by `order`),
# named here so that config checks need no torch.
TRAIN_WINDOW_ORDERS = ("random", "sequential", "shuffled")


def check_keys(cfg: Mapping[str, Any], known: Iterable[str], source: str) -> None:
    """Reject misspelled or missing keys: a typo must not silently fall back to a default."""
    known = list(known)
    unknown = [k for k in cfg if k not in known]
    if unknown:
        raise DataError(
            f"data.{unknown[0]} is not an option of source '{source}' (options: "
            f"{', '.join(known)}): remove it or fix its spelling"
        )
    missing = [k for k in known if k not in cfg]
    if missing:
        raise DataError(f"data.{missing[0]} is missing: set it in the data config")


def check_int(cfg: Mapping[str, Any], key: str, minimum: int, maximum: int | None = None) -> int:
    value = cfg[key]
    # A command line's 2e6 arrives as a float; an integral float means the integer it writes.
    integral = isinstance(value, float) and value.is_integer()
    ok = (isinstance(value, int) and not isinstance(value, bool)) or integral
    if ok and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    raise DataError(f"data.{key}={value!r} must be an integer {bound}: fix data.{key}")


def check_float(cfg: Mapping[str, Any], key: str, minimum: float) -> float:
    value = cfg[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and math.isfinite(value) and value >= minimum:
        return float(value)
    raise DataError(f"data.{key}={value!r} must be a finite number >= {minimum}: fix data.{key}")


def check_name(cfg: Mapping[str, Any], key: str = "name") -> str:
    """A dataset name becomes a directory under paths.data_dir, so it must be one plain name."""
    value = cfg.get(key)
    bad = (
        not isinstance(value, str)
        or not value
        or value.startswith(".")
        or any(c in value for c in "/\\\0")
        or ".tmp-" in value
        or ".old-" in value
    )
    if bad:
        raise DataError(
            f"data.{key}={value!r} is not a usable dataset name: use letters, digits, '-', '_'"
        )
    return value


def check_str(cfg: Mapping[str, Any], key: str, optional: bool = False) -> str | None:
    value = cfg[key]
    if (value is None and optional) or (isinstance(value, str) and value):
        return value
    what = "a non-empty string or null" if optional else "a non-empty string"
    raise DataError(f"data.{key}={value!r} must be {what}: fix data.{key}")


def check_bool(cfg: Mapping[str, Any], key: str) -> bool:
    value = cfg[key]
    if isinstance(value, bool):
        return value
    raise DataError(f"data.{key}={value!r} must be true or false: fix data.{key}")


def check_choice(cfg: Mapping[str, Any], key: str, choices: Iterable[str]) -> str:
    value, choices = cfg[key], list(choices)
    if value in choices:
        return value
    raise DataError(f"data.{key}={value!r} must be one of {', '.join(choices)}: fix data.{key}")


def check_fraction(cfg: Mapping[str, Any], key: str) -> float:
    """A fraction strictly inside (0, 1)."""
    value = cfg[key]
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and 0.0 < value < 1.0:
        return float(value)
    raise DataError(
        f"data.{key}={value!r} must be a number strictly between 0 and 1: fix data.{key}"
    )
