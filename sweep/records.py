"""The run record (DESIGN.md's contract): config.yaml, metrics.jsonl and summary.json per run.

Whole files go to a temporary name, are fsynced, then renamed: a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.shards import atomic_write_bytes

SCHEMA_VERSION = 1
METRIC_KEYS = (
    "step",
    "tokens",
    "flops_6nd",
    "flops_6nd_total",
    "flops_exact",
    "train_loss",
    "val_loss",
    "val_bpb",
    "lr",
    "tokens_per_s",
    "mfu",
)


def json_safe(value: Any) -> Any:
    """value with every NaN/inf replaced by None (JSON has neither; the status says why)."""
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(record: Mapping[str, Any]) -> str:
    """Strict JSON (no NaN), keys in insertion order."""
    return json.dumps(json_safe(record), allow_nan=False)


def config_hash(identity: Mapping[str, Any]) -> str:
    """Stable hash of the settings that define a run (cosmetic keys already removed)."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def code_version() -> str:
    """`git describe` of the checkout this code runs from (with -dirty), else 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


class RunRecord:
    """Writes one run's directory: the resolved config, one metrics line per eval, the summary."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.config_path = run_dir / "config.yaml"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.summary_path = run_dir / "summary.json"

    def read_summary(self) -> dict[str, Any] | None:
        """The existing summary, or None when the run never finished writing one."""
        try:
            return json.loads(self.summary_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def start(self, config_yaml: str) -> None:
        """Create the directory and write config.yaml; a fresh start truncates old metrics."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.config_path, config_yaml.encode())
        self.metrics_path.write_text("")
        self.summary_path.unlink(missing_ok=True)

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one evaluation point; flushed and fsynced so a crash loses at most this line."""
        missing = [key for key in METRIC_KEYS if key not in row]
        if missing:
            raise KeyError(f"metrics row lacks {missing}")
        with self.metrics_path.open("a") as handle:
            handle.write(dumps(row) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Write summary.json atomically; its presence with status 'finished' marks a done run."""
        body = {"schema_version": SCHEMA_VERSION, **summary}
        text = json.dumps(json_safe(body), indent=2, allow_nan=False) + "\n"
        atomic_write_bytes(self.summary_path, text.encode())
