"""Our entry points' guard around Hydra: config-group choices (`model=gpt_9m`) checked before
Hydra sees them, and Hydra's own override errors (a misspelt key) reported in one line.

Hydra reports these over several lines; our entry points print one. It lives in `data`, the
lowest package with a command line, so both `data` and `sweep` entry points use it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class SearchPath:
    """Where Hydra will look for config groups, as the command line tells it: the repo's configs,
    then a --config-dir, then the file entries of a hydra.searchpath=[...] override.

    `opaque` holds entries the guard cannot list (pkg://, structured://): a group may have
    options there, so the guard checks nothing while there are any.
    """

    dirs: tuple[tuple[Path, str], ...]  # (folder, as the user wrote it) in Hydra's order
    opaque: tuple[str, ...] = ()

    def options(self, group: str) -> list[str]:
        return sorted({name for folder, _ in self.dirs for name in available(group, folder)})

    def places(self, group: str) -> str:
        return ", ".join(f"{shown}/{group}/" for _, shown in self.dirs)


def search_path(argv: Sequence[str], config_dir: Path = CONFIG_DIR) -> SearchPath | str | None:
    """The config folders a command line makes Hydra search, or a one-line error (a --config-dir
    that is not a folder), or None where Hydra itself will refuse the command line."""
    try:  # private to Hydra (1.3): should it move, the guard steps aside, Hydra checks alone
        from hydra._internal.utils import get_args_parser
    except ImportError:
        return None

    # Hydra's own parser, so that exactly the spellings hydra.main reads count here
    # (--config-dir X, --config-dir=X, -cd X, an unambiguous prefix); its errors are Hydra's to
    # report, after this guard has stepped aside. Known args only: Hydra refuses an option among
    # the overrides (`a=1 -m b=2`), but a bad choice there still deserves its one line.
    parser = get_args_parser()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args, _ = parser.parse_known_args(list(argv))
    except SystemExit:
        return None
    dirs: list[tuple[Path, str]] = [(config_dir, "configs")]
    if args.config_dir is not None:
        # Hydra resolves it against the working directory and refuses a missing one with a
        # traceback; say so in one line instead.
        folder = Path(os.path.abspath(args.config_dir))
        if not folder.is_dir():
            return (
                f"--config-dir {args.config_dir}: no such directory ({folder}): give a folder "
                "holding <group>/<name>.yaml files, e.g. experiment/mine.yaml"
            )
        dirs.append((folder, args.config_dir.rstrip("/") or "/"))
    entries = _searchpath_override(argv)
    if entries is None:
        return None
    opaque = []
    for entry in entries:
        scheme, sep, rest = entry.partition("://")
        if not sep:  # Hydra reads a bare path as file://
            scheme, rest = "file", entry
        if scheme == "file":  # relative to the working directory, as Hydra opens it
            dirs.append((Path(os.path.abspath(rest)), rest.rstrip("/") or "/"))
        else:
            opaque.append(entry)
    unique: dict[Path, tuple[Path, str]] = {}
    for folder, shown in dirs:  # a folder named twice is listed once
        unique.setdefault(folder.resolve(), (folder, shown))
    return SearchPath(tuple(unique.values()), tuple(opaque))


def _searchpath_override(argv: Sequence[str]) -> list[str] | None:
    """The entries of the command line's hydra.searchpath=[...] (the first one, as Hydra takes),
    [] without one, None where Hydra will refuse it (unparsable, not a list of strings)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for text in argv:
        # Hydra honours exactly the key `hydra.searchpath` (no +, ++ or ~ in front).
        if not text.startswith("hydra.searchpath="):
            continue
        try:
            value = OverridesParser.create().parse_override(text).value()
        except Exception:  # Hydra reports its own parse errors in one line (hydra_error_line)
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None
        return value
    return []


def unknown_choice(
    argv: Sequence[str], hints: Mapping[str, str], config_dir: Path = CONFIG_DIR
) -> str | None:
    """A one-line error for the first `group=option` naming no config file Hydra would find (in
    configs/, a --config-dir, or a file:// entry of hydra.searchpath), else None.

    `hints` maps each group to check onto a phrase naming what its options are.
    """
    where = search_path(argv, config_dir)
    if where is None or isinstance(where, str):
        return where
    for arg in argv:
        match = _CHOICE.match(arg)
        if not match or match["group"] not in hints:
            continue
        group = match["group"]
        options = where.options(group)
        for value in match["value"].split(","):
            if value == "null":
                # Hydra's defaults list raises a bare ValueError (a traceback) on it
                return (
                    f"{group}=null: a config group cannot be set to null on the command line; "
                    f"leave {group}=... out to use configs' default"
                )
            if value and value not in options and not where.opaque:
                return (
                    f"unknown {hints[group]} {group}={value}: choose one of {', '.join(options)} "
                    f"({where.places(group)})"
                )
    return None


def _added_twice(first: str, argv: Sequence[str]) -> str | None:
    """The `+group=option` of the command line behind Hydra's "group given twice" errors, or None
    (a config file's defaults list can set a group twice too, with no + typed)."""
    twice = re.match(r"Multiple values for ([\w/]+)\.", first) or re.match(
        r"([\w/]+) appears more than once in the final defaults list", first)
    if twice is None:
        return None
    return next((arg for arg in argv if arg.startswith(f"+{twice[1]}=")), None)


def hydra_error_line(err: BaseException, command: str, argv: Sequence[str] = ()) -> str:
    """One line for an error Hydra raised while reading the command line (`argv`) or composing
    the config: the override at fault and how to fix it."""
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
    added = _added_twice(first, argv)
    if added is not None:
        # `+group=x` appends a second entry for a group the defaults list already sets
        group, option = added[1:].split("=", 1)
        return (
            f"{added} adds {group} to {command}'s defaults list, which already has it: write "
            f"{group}={option}, without the +"
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
        print(f"error: {hydra_error_line(err, command, sys.argv[1:])}", file=sys.stderr)
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
