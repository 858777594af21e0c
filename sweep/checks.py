"""A run's config checked against its model group and its dataset: the model's shape (or the
ladder rule's for a target), data overrides that contradict the build, and budgets that would
repeat data.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from data import TokenDataset
from data.shards import prepare_command
from models import GPTConfig, shape_for_params
from sweep.errors import ConfigError

SHAPE_KEYS = ("n_layer", "d_model", "n_head")


def _override_key(override: str) -> str:
    """The key a command-line override sets: `model.n_layer` of `+model.n_layer=4`."""
    return override.split("=", 1)[0].lstrip("+~")


def model_config(model_cfg: DictConfig, vocab_size: int, overrides: list[str]) -> GPTConfig:
    """The GPTConfig of a `model` group: its shape as given, or the ladder rule's for a target."""
    name = model_cfg.get("name", "custom")
    if model_cfg.get("vocab_size") not in (None, vocab_size):
        raise ConfigError(
            f"model.vocab_size={model_cfg.vocab_size} does not match the dataset's vocab_size="
            f"{vocab_size}: leave model.vocab_size=null to take it from the data"
        )
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    values = {k: v for k, v in OmegaConf.to_container(model_cfg).items() if k in fields}
    # The float fields as floats (GPTConfig checks their range): the run id hashes them, and
    # dropout 0 and 0.0 are one run.
    for f in dataclasses.fields(GPTConfig):
        if f.type == "float" and type(values.get(f.name)) is int:
            values[f.name] = float(values[f.name])
    values["vocab_size"] = vocab_size
    target = model_cfg.get("target_params")
    try:
        if target is None:
            return GPTConfig(**values)
        pinned = [
            o
            for o in overrides
            if _override_key(o) in {f"model.{k}" for k in SHAPE_KEYS}
        ]
        if pinned:
            raise ConfigError(
                f"model.target_params={target} chooses n_layer, d_model and n_head itself, but "
                f"{', '.join(pinned)} was also given: drop one of them"
            )
        if isinstance(target, bool) or not isinstance(target, int | float) or target <= 0:
            raise ConfigError(f"model.target_params={target!r} must be a positive parameter count")
        return shape_for_params(
            float(target),
            GPTConfig(**values),
            aspect_ratio=model_cfg.aspect_ratio,
            head_dim=model_cfg.head_dim,
            min_heads=model_cfg.min_heads,
        )
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {name}: {err}") from None


def check_data_overrides(
    dataset: TokenDataset, data_cfg: dict[str, Any], overrides: list[str]
) -> dict[str, Any]:
    """The config the dataset was built from; ConfigError for a `data.<key>=` override that it
    contradicts. A run trains on the shards as built, so such an override (data.zipf_exponent
    in a sweep's grid, say) would be ignored, yet written to config.yaml, and every point would
    be the same run. Keys left at the preset's value are not compared: prepare's overrides need
    not be repeated when training."""
    built = dataset.manifest.get("source") or {}
    for override in overrides:
        key = _override_key(override)
        name = key.removeprefix("data.")
        if name == key or name == "name" or name not in built or data_cfg.get(name) == built[name]:
            continue
        value = data_cfg.get(name)
        raise ConfigError(
            f"data.{name}={value!r}, but dataset '{dataset.name}' at {dataset.path} was built with "
            f"data.{name}={built[name]!r}, and a run trains on the shards as built: drop the "
            f"override, or prepare it under another name (python -m data.prepare ... "
            f"data.{name}={value} data.name=<new name>) and train with data.name=<new name>"
        )
    return built


def check_epochs(run_id: str, tokens: int, dataset: TokenDataset, max_epochs: float) -> None:
    """ConfigError when run `run_id`'s D (`tokens`) exceeds `max_epochs` passes over `dataset`'s
    train split. Training windows are drawn from the split however small it is, so an oversized
    budget would silently repeat data; the line names the run, both token counts and both fixes.
    """
    available = dataset.num_tokens("train")
    if tokens <= max_epochs * available:
        return
    if not available:  # every document went to val: no number of epochs helps
        raise ConfigError(
            f"run {run_id} reads D={tokens:,} tokens, but dataset '{dataset.name}' at "
            f"{dataset.path} has no train tokens: prepare it from a larger corpus "
            f"({prepare_command(dataset.name, True, dataset.path.parent)})"
        )
    epochs = tokens / available
    # 3 digits, unless they round down to the limit ("1 epochs" of a run just over it)
    shown = f"{epochs:.3g}" if float(f"{epochs:.3g}") > max_epochs else f"{epochs:.7g}"
    raise ConfigError(
        f"run {run_id} reads D={tokens:,} tokens, {shown} epochs of the {available:,} "
        f"train tokens of dataset '{dataset.name}' (budget.max_epochs={max_epochs:g}), so it "
        f"would repeat data: {_more_data(dataset, tokens / max_epochs)}, or raise "
        f"budget.max_epochs to {math.ceil(epochs * 100) / 100:g} to repeat it on purpose"
    )


def _more_data(dataset: TokenDataset, wanted: float) -> str:
    """How to prepare `dataset` again with `wanted` train tokens, for check_epochs."""
    built = dataset.manifest.get("source") or {}
    command = prepare_command(dataset.name, True, dataset.path.parent)
    if "train_tokens" in built:  # a generated corpus is sized in tokens
        # ... of whole documents, rounded down: ask for enough whole ones, or the new build falls
        # short again
        split = dataset.manifest["splits"]["train"]
        per_doc = round(int(split["tokens"]) / int(split["documents"])) if split.get(
            "documents") else 1
        return (f"prepare more data ({command} data.train_tokens="
                f"{math.ceil(wanted / per_doc) * per_doc})")
    if built.get("max_documents") is None:
        return f"prepare a larger corpus (dataset '{dataset.name}' holds all of its source)"
    # Documents in proportion to tokens, rounded up to two significant digits: an estimate, since
    # documents vary in length (the check says again if it falls short)
    documents = sum(int(s.get("documents") or 0) for s in dataset.manifest["splits"].values())
    if not documents:  # a manifest that does not count them
        return f"prepare more data ({command} with a larger data.max_documents)"
    needed = documents * wanted / dataset.num_tokens("train")
    scale = 10 ** max(0, math.floor(math.log10(needed)) - 1)
    return f"prepare more data ({command} data.max_documents={math.ceil(needed / scale) * scale})"
