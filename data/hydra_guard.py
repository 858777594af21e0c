"""Our entry points' guard around Hydra: config-group choices (`model=gpt_9m`) checked before
Hydra sees them, and Hydra's own override errors (a misspelt key) reported in one line.

Hydra reports these over several lines; our entry points print one. It lives in `data`, the
lowest package with a command line, so both `data` and `sweep` entry points use it.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from data.errors import first_line

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
# group=option or group=a,b,c (a multirun list); the group is a plain name, never dotted.
_CHOICE = re.compile(r"^[+~]{0,2}(?P<group>[A-Za-z_][\w/]*)=(?P<value>[\w.,/-]*)$")


def available(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The options of a config group: the YAML files in configs/<group>/, except fragments that
    other files include (names starting with `_`)."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml") if not p.stem.startswith("_"))


def unknown_choice(
    argv: Sequence[str], hints: Mapping[str, str], config_dir: Path = CONFIG_DIR
) -> str | None:
    """A one-line error for the first `group=option` naming no config file, else None.

    `hints` maps each group to check onto a phrase naming what its options are.
    """
    for arg in argv:
        match = _CHOICE.match(arg)
        if not match or match["group"] not in hints:
            continue
        group = match["group"]
        options = available(group, config_dir)
        for value in match["value"].split(","):
            if value == "null":
                # Hydra's defaults list raises a bare ValueError (a traceback) on it
                return (
                    f"{group}=null: a config group cannot be set to null on the command line; "
                    f"leave {group}=... out to use configs' default"
                )
            if value and value not in options:
                return (
                    f"unknown {hints[group]} {group}={value}: choose one of {', '.join(options)} "
                    f"(configs/{group}/)"
                )
    return None


def hydra_error_line(err: BaseException, command: str) -> str:
    """One line for an error Hydra raised while reading the command line or composing the config:
    the override at fault and how to fix it."""
    from hydra.errors import OverrideParseException

    cause = err.__cause__
    first = first_line(err, limit=10_000)  # matched below: never cut short
    if isinstance(err, OverrideParseException):
        return (
            f"cannot parse the override {err.override!r} ({err.message.splitlines()[0]}): write "
            "key=value, quoting values with brackets or spaces (see "
            "https://hydra.cc/docs/advanced/override_grammar/basic)"
        )
    ambiguous = re.match(r"Ambiguous value for argument '([^']+)'", first)
    if ambiguous:
        return (
            f"{ambiguous[1]} lists several values: add --multirun to sweep over them, write "
            "key=[a,b] for a list, or give one value"
        )
    detail = first_line(cause) if cause else ""
    unknown = re.match(r"Could not override '([^']+)'", first)
    if unknown and "No match in the defaults list" in first:
        return (
            f"{unknown[1]} is not a config group of {command}: drop {unknown[1]}=..., or see "
            f"`{command} --help` for its groups"
        )
    if unknown and re.match(r"Key '[^']+' (is )?not in ", detail):
        key = unknown[1]
        return (
            f"unknown config key {key}: check its spelling against `{command} --cfg job`, or add "
            f"a new key with +{key}=..."
        )
    return f"{first}{f' ({detail})' if detail else ''}: see `{command} --help`"


def run_hydra(task: Callable[[Any], Any], config_name: str, command: str) -> None:
    """Run `task` as hydra.main would, with configs/<config_name>.yaml; Hydra's errors about the
    command line or the config become one `error:` line and exit code 2."""
    import hydra
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )

    # Hydra prints its errors over several lines and exits 1 unless told to raise them.
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)(
            task
        )()
    except (ConfigCompositionException, MissingConfigException, OverrideParseException) as err:
        print(f"error: {hydra_error_line(err, command)}", file=sys.stderr)
        raise SystemExit(2) from None
    except InstantiationException as err:
        # A plugin (the gpu_pool launcher, say) refusing a setting raises ValueError with one
        # line naming it; anything else is a bug, and its traceback stays.
        if not isinstance(err.__cause__, ValueError):
            raise
        print(f"error: {err.__cause__}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous
