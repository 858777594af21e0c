"""The hparams config a fitted rules file inherits from (configs/hparams/<base>.yaml), read through
its defaults list: its LR clamps, and what its own rules give at the budgets that were fitted.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.fit.table import TableError

HPARAMS_DIR = Path(__file__).resolve().parents[2] / "configs" / "hparams"
BLOCKS = ("lr", "batch", "warmup", "horizon")


def _path(base: str, seen: tuple[str, ...] = ()) -> Path:
    """configs/hparams/<base>.yaml, or a TableError naming the files there."""
    path = HPARAMS_DIR / f"{base}.yaml"
    if not path.is_file() or base in seen:
        have = ", ".join(sorted(p.stem for p in HPARAMS_DIR.glob("*.yaml")))
        what = "includes itself" if base in seen else "does not exist"
        raise TableError(f"--base {seen[0] if seen else base}: {path} {what}; name a file of "
                         f"configs/hparams ({have})")
    return path


def _number(value: Any) -> float | None:
    """A YAML value as a number: PyYAML reads 2e-3 (no dot) as a string, OmegaConf as 0.002."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _blocks(base: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(the BLOCKS' keys of <base>.yaml over those it inherits through its defaults
    list, merged in that list's order as Hydra composes it (`_self_` last where it is absent);
    the names of every file on the chain)."""
    import yaml

    path = _path(base, seen)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise TableError(f"--base {base}: cannot read {path} ({exc})") from None
    if not isinstance(data, dict) or not all(
            isinstance(data.get(block) or {}, dict) for block in BLOCKS):
        raise TableError(f"--base {base}: {path} is not an hparams config (its top level and "
                         f"its {', '.join(BLOCKS)} must be mappings, as in power_law.yaml)")
    entries = [e for e in data.get("defaults") or [] if isinstance(e, str)]
    if "_self_" not in entries:
        entries.append("_self_")
    merged: dict[str, dict[str, Any]] = {block: {} for block in BLOCKS}
    chain = [base]
    for entry in entries:
        if entry == "_self_":
            inherited = {block: data.get(block) or {} for block in BLOCKS}
        else:
            inherited, names = _blocks(entry, (*seen, base))
            chain += names
        for block, keys in inherited.items():
            merged[block].update(keys)
    return merged, chain


@dataclass(frozen=True)
class BaseRules:
    """A base config's rules: whichever numbers it sets in each block (lr and batch: coefficient,
    exponent, clamps; batch.min_steps; warmup; horizon)."""

    name: str
    lr: dict[str, float]
    batch: dict[str, float]
    chain: tuple[str, ...] = ()  # the base and every file it inherits from
    warmup: dict[str, float] = field(default_factory=dict)
    horizon: dict[str, float] = field(default_factory=dict)

    def clamps(self) -> tuple[float, float] | None:
        """(lr.min, lr.max), or None where it does not set both."""
        return (self.lr["min"], self.lr["max"]) if {"min", "max"} <= set(self.lr) else None

    def batch_clamps(self) -> tuple[int, int] | None:
        """(batch.min_sequences, batch.max_sequences), or None where it does not set both."""
        keys = ("min_sequences", "max_sequences")
        return tuple(int(self.batch[k]) for k in keys) if set(keys) <= set(self.batch) else None

    def lr_at(self, compute: float) -> float | None:
        """The peak LR its rule gives at C, clamped as sweep.hparams clamps it."""
        if not {"coefficient", "exponent"} <= set(self.lr):
            return None
        value = self.lr["coefficient"] * compute ** self.lr["exponent"]
        return min(max(value, self.lr.get("min", 0.0)), self.lr.get("max", float("inf")))

    def batch_at(self, compute: float) -> float | None:
        """Its batch rule's tokens at C, before sweep.hparams rounds them to a power of two of
        sequences (which needs the run's seq_len) and clamps them."""
        if not {"coefficient", "exponent"} <= set(self.batch):
            return None
        return self.batch["coefficient"] * compute ** self.batch["exponent"]


def read_base(base: str, notes: list[str]) -> BaseRules | None:
    """configs/hparams/<base>.yaml's rules; a TableError if it does not exist, and None (with a
    note) where PyYAML, which comes with hydra-core, is not installed: the fitter itself needs
    only numpy, scipy, pandas and matplotlib."""
    _path(base)
    try:
        import yaml  # noqa: F401 (only whether it is there)
    except ImportError:
        notes.append(f"{base}.yaml not read (no PyYAML): its lr clamps are not checked against "
                     "the law, nor its rules compared, nor its min_steps and warmup checked")
        return None
    blocks, chain = _blocks(base)

    def numbers_of(block: str) -> dict[str, float]:
        values = {k: _number(v) for k, v in blocks[block].items()}
        return {k: v for k, v in values.items() if v is not None}

    rules = BaseRules(base, numbers_of("lr"), numbers_of("batch"), tuple(chain),
                      numbers_of("warmup"), numbers_of("horizon"))
    if rules.clamps() is None:
        notes.append(f"lr clamps of {base}.yaml not checked against the law (it sets no numeric "
                     "lr.min and lr.max)")
    return rules


def compare(report: dict[str, Any], base: BaseRules) -> None:
    """Add what the base's rules give to each budget (`base`) and to the report (`base_rule`),
    and each law's ratio to the base's at the budgets' middle C."""
    for row in report["budgets"]:
        row["base"] = {k: v for k, v in (("lr", base.lr_at(row["C"])),
                                         ("batch", base.batch_at(row["C"]))) if v is not None}
    report["base_rule"] = {"name": base.name, "lr": base.lr, "batch": base.batch}
    for axis, law in report["laws"].items():
        value = base.lr_at(law["pivot_C"]) if axis == "lr" else base.batch_at(law["pivot_C"])
        if value is not None:
            law["over_base"] = law["at_pivot"] / value
