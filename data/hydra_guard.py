"""Check a command line's config-group choices (`model=gpt_9m`) before Hydra sees them.

Hydra reports an unknown option over a dozen lines; our entry points print one line. It lives
in `data`, the lowest package with a command line, so both `data` and `sweep` entry points use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

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
            if value and value not in options:
                return (
                    f"unknown {hints[group]} {group}={value}: choose one of {', '.join(options)} "
                    f"(configs/{group}/)"
                )
    return None
