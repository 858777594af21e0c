"""The run record (DESIGN.md's contract): config.yaml, metrics.jsonl and summary.json per run.

Whole files go to a temporary name, are fsynced, then renamed: a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data.shards import atomic_write_bytes
from sweep.errors import ConfigError

if TYPE_CHECKING:
    from data.synthetic_floor import WindowFloor
    from sweep.plan import RunPlan

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


def code_version(root: Path | None = None) -> str:
    """`git describe` of the checkout this code runs from (or `root`), else 'unknown'. With
    uncommitted changes, -dirty-<hash of the diff>: runs of differently edited code read apart."""
    root = root or Path(__file__).resolve().parent.parent

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, timeout=10,
                              check=True).stdout

    try:
        described = git("describe", "--always", "--dirty", "--abbrev=12").decode().strip()
        if described.endswith("-dirty"):
            described += "-" + hashlib.sha256(git("diff", "HEAD", "--binary")).hexdigest()[:8]
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return "unknown"
    return described or "unknown"


def _version(package: str) -> str:
    # From the installed metadata: this module must not import torch (the fitter reads records).
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def build_summary(plan: RunPlan, status: str, window_floor: WindowFloor | None = None,
                  **fields: Any) -> dict[str, Any]:
    """summary.json's body: the plan's facts around the outcome in `fields` (tokens, steps,
    losses, times, ...); window_floor is the lowest loss at the run's seq_len, where known."""
    m = plan.model
    tokens = fields.pop("tokens")
    return {
        "status": status,
        "run_id": plan.run_id,
        "experiment": plan.experiment,
        "model_name": plan.model_name,
        "shape": {
            "n_layer": m.n_layer,
            "d_model": m.d_model,
            "n_head": m.n_head,
            "head_dim": m.head_dim,
            "vocab_size": m.vocab_size,
            "seq_len": plan.seq_len,
            "max_seq_len": m.max_seq_len,
            "positions": m.positions,
            "tie_embeddings": m.tie_embeddings,
            "bias": m.bias,
            "mlp_ratio": m.mlp_ratio,
        },
        "params": {
            "total": plan.params.total,
            "embedding": plan.params.embedding,
            "position": plan.params.position,
            "head": plan.params.head,
            "non_embedding": plan.params.non_embedding,
        },
        "tokens": tokens,
        "steps": fields.pop("steps"),
        "batch_tokens": plan.batch_tokens,
        # What sets two runs at one (N, D) apart in a table (an LR probe, another window order):
        # the fitter names these when it finds several runs at one point
        "hparams": {
            "lr": plan.lr,
            "warmup_steps": plan.schedule.warmup_steps,
            "schedule": plan.schedule.kind,
            "windows": plan.config["train"]["windows"],
            # the C the LR and batch rules see: what python -m sweep.fit.hparams fits them on
            "compute": plan.config["resolved"]["hparams"]["compute"],
        },
        "budget": {
            "kind": plan.budget.kind,
            "value": plan.budget.value,
            "tokens": plan.budget.tokens,
        },
        "flops_per_token": {
            "6nd": plan.flops.flops_6nd,
            "6nd_total": plan.flops.flops_6nd_total,
            "exact": plan.flops.flops_exact,
        },
        "flops_6nd": plan.flops.flops_6nd * tokens,
        "flops_6nd_total": plan.flops.flops_6nd_total * tokens,
        "flops_exact": plan.flops.flops_exact * tokens,
        **fields,
        "dataset": {
            "name": plan.dataset.name,
            "config_hash": plan.dataset.manifest.get("config_hash"),
            "tokenizer_hash": plan.dataset.manifest.get("tokenizer", {}).get("hash"),
            # The data's exact loss floor where it is known (the synthetic corpus), else null:
            # sweep.fit sets a fitted irreducible loss beside it
            "entropy_rate_nats": (plan.dataset.manifest.get("synthetic") or {}).get(
                "entropy_rate_nats"),
            # ... and the higher floor of a model reading this run's seq_len-token windows,
            # the loss a fitted E should find (data.synthetic_floor; null for text)
            "window_floor_nats": None if window_floor is None else window_floor.nats,
            "window_floor_stderr": None if window_floor is None else window_floor.stderr,
        },
        "device": plan.hardware.device_name,
        "precision": plan.hardware.precision,
        "residual_dtype": plan.hardware.residual_dtype,  # train.residual_dtype: float32 or bf16
        "seed": plan.config["seed"],
        "config_hash": plan.config_hash,
        # The identity without the seed: runs that share it differ in their seed alone
        "replicate_hash": plan.replicate_hash,
        # schedule.share_stable: the trajectory the run shares with the other budgets (else null)
        "stable_hash": plan.stable_hash,
        "code_version": code_version(),
        "torch_version": _version("torch"),
        "python_version": platform.python_version(),
    }


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in path, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


class RunRecord:
    """Writes one run's directory: the resolved config, one metrics line per eval, the summary."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.config_path = run_dir / "config.yaml"
        self.metrics_path = run_dir / "metrics.jsonl"
        self.summary_path = run_dir / "summary.json"

    def read_summary(self) -> dict[str, Any] | None:
        """The existing summary, or None when the run never finished writing one."""
        return read_json_object(self.summary_path)

    def remove_stale_temps(self) -> list[Path]:
        """Delete the temp files of config.yaml, metrics.jsonl and summary.json that a killed
        writer left behind (the run lock makes this process the only writer); returns them."""
        stale = sorted(
            path
            for target in (self.config_path, self.metrics_path, self.summary_path)
            for path in self.run_dir.glob(f"{target.name}.tmp-*")
        )
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def start(self, config_yaml: str, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        """Create the directory and write config.yaml; a fresh start replaces old metrics with
        `rows` (a stable phase's, taken over from another run), or none."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temps()
        atomic_write_bytes(self.config_path, config_yaml.encode())
        atomic_write_bytes(self.metrics_path, "".join(dumps(r) + "\n" for r in rows).encode())
        self.summary_path.unlink(missing_ok=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics rows written so far (by this process: no torn line to expect)."""
        text = self.metrics_path.read_text() if self.metrics_path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line]

    def resume(self, config_yaml: str, step: int) -> int:
        """Continue the run from its checkpoint after `step`: rewrite config.yaml, cut metrics back
        to the rows with step <= `step`, drop the old summary; returns how many rows remain.

        A torn last line (a crash mid-append) is dropped; the file is rewritten atomically.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temps()
        try:
            text = self.metrics_path.read_text()
        except FileNotFoundError:
            text = ""
        lines = text.split("\n")
        # Only the last line can be torn, and it then lacks its newline (or is not yet JSON).
        last = lines.pop()  # "" when the file ends with a newline
        kept = []
        for number, line in enumerate(lines, start=1):
            try:
                row_step = json.loads(line)["step"]
            except (json.JSONDecodeError, KeyError, TypeError):
                if number == len(lines) and not last:
                    break
                raise ConfigError(
                    f"{self.metrics_path} line {number} is not a metrics row: delete "
                    f"{self.run_dir} to retrain the run"
                ) from None
            if row_step <= step:
                kept.append(line + "\n")
        atomic_write_bytes(self.config_path, config_yaml.encode())
        atomic_write_bytes(self.metrics_path, "".join(kept).encode())
        self.summary_path.unlink(missing_ok=True)
        return len(kept)

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
