"""One run's records as table rows: its summary.json flattened, or a row per eval point of its
metrics.jsonl, each starting with the columns the fitter reads (run_id, N, D, C, loss).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# The metrics.jsonl fields a curves row carries beside the lead columns
CURVE_METRICS = (
    "train_loss", "val_bpb", "lr", "flops_6nd_total", "flops_exact", "tokens_per_s", "mfu",
)


def finite(value: Any) -> bool:
    """Whether value is a finite number (a bool, None or a string is not)."""
    try:
        return value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def _lead(summary: Mapping[str, Any], tokens: Any, flops: Any, loss: Any) -> dict[str, Any]:
    """The columns every table starts with, in this order; the fitter's defaults name them."""
    return {
        "run_id": summary["run_id"],
        "experiment": summary["experiment"],
        "N": summary["params"]["non_embedding"],
        "N_total": summary["params"]["total"],
        "D": tokens,
        "C": flops,
        "loss": loss,
    }


def summary_row(summary: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """A runs-table row: the lead columns, then every summary field flattened (params_total,
    dataset_name, ...); KeyError or TypeError when the summary lacks what the lead needs."""
    lead = _lead(summary, summary["tokens"], summary["flops_6nd"], summary["val_loss"])
    rest = {k: v for k, v in _flatten(summary).items() if k not in lead}
    return {**lead, **rest, "run_dir": run_dir}


def curve_rows(
    path: Path, summary: dict[str, Any], run_dir: str, unreadable: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    """A curves-table row per eval point of metrics.jsonl (finite val_loss, tokens > 0); the
    file, or its first line that is not a metrics row, goes into `unreadable` with the reason."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        unreadable.append((str(path), exc.strerror or type(exc).__name__))
        return []
    except UnicodeDecodeError:
        unreadable.append((str(path), "not UTF-8 text"))
        return []
    rows, torn = [], 0
    dataset = dataset_of(summary)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            point = json.loads(line)
            keep = finite(point["val_loss"]) and float(point["tokens"]) > 0
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            # sweep.train drops a torn last line when it resumes, so a finished run has none:
            # this file was damaged after the run.
            torn = torn or number
            continue
        if not keep:
            continue
        rows.append({
            **_lead(summary, point["tokens"], point.get("flops_6nd"), point["val_loss"]),
            "step": point.get("step"),
            **{key: point.get(key) for key in CURVE_METRICS},
            "final_loss": summary["val_loss"],
            "model_name": summary.get("model_name"),
            "budget_kind": summary.get("budget", {}).get("kind"),
            "budget_value": summary.get("budget", {}).get("value"),
            # The fitter refuses a table mixing datasets; a curves table needs these to be checked
            "dataset_name": dataset.get("name"),
            "dataset_config_hash": dataset.get("config_hash"),
            # ... and its floors, which the fitter sets the fitted E against (synthetic data)
            "dataset_entropy_rate_nats": dataset.get("entropy_rate_nats"),
            "dataset_window_floor_nats": dataset.get("window_floor_nats"),
            **_how_made(summary),
            "run_dir": run_dir,
        })
    if torn:
        unreadable.append((str(path), f"line {torn} is not a metrics row"))
    return rows


def _how_made(summary: Mapping[str, Any]) -> dict[str, Any]:
    """What tells two runs at one (N, D) apart, for a curves table as for a runs table: the
    seed, the hashes, the code and the hyperparameters (seed replicates, --where 'seed == 0')."""
    hparams = summary.get("hparams")
    return {
        **{key: summary.get(key) for key in ("seed", "config_hash", "replicate_hash",
                                             "stable_hash", "code_version")},
        **{f"hparams_{k}": v for k, v in (hparams if isinstance(hparams, Mapping) else {}).items()},
    }


def dataset_of(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    """The summary's `dataset` record ({} when missing or not an object)."""
    dataset = summary.get("dataset")
    return dataset if isinstance(dataset, Mapping) else {}
