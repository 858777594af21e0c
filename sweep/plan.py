"""Turn a composed Hydra config into a validated run plan, before anything touches the disk.

Every mistake a user can make (shape, budget, batch, device, data) surfaces here as one line.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from data import TokenDataset
from data.config import TRAIN_WINDOW_ORDERS
from data.prepare import check_tokenizer
from data.shards import prepare_command
from models import (
    FlopsPerToken,
    GPTConfig,
    ParamCounts,
    count_params,
    flops_per_token,
    shape_for_params,
)
from sweep.budget import Budget
from sweep.errors import ConfigError, finite_number, whole_number
from sweep.hparams import resolve_hparams
from sweep.logger import WANDB_MODES
from sweep.logger import wandb_mode as effective_wandb_mode
from sweep.records import config_hash
from sweep.schedule import Schedule, build_schedule

if TYPE_CHECKING:
    from sweep.hardware import Hardware

SHAPE_KEYS = ("n_layer", "d_model", "n_head")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")


@dataclass(frozen=True)
class RunPlan:
    """Everything one run needs, resolved and checked."""

    run_id: str
    run_dir: Path
    experiment: str
    model_name: str
    model: GPTConfig
    params: ParamCounts
    flops: FlopsPerToken
    budget: Budget
    lr: float  # peak learning rate
    seq_len: int
    micro_batch_size: int
    min_micro_batch_size: int  # the floor an out-of-memory step may halve the micro-batch to
    batch_tokens: int
    grad_accum: int
    schedule: Schedule
    hardware: Hardware
    dataset: TokenDataset
    max_epochs: float  # budget.max_epochs: passes over the train split the budget may take
    config_hash: str
    config: dict[str, Any]  # the resolved config plus the derived values, as written to config.yaml
    # The hash of the run's identity without its seed: runs sharing it are seed replicates
    replicate_hash: str = ""
    # schedule.share_stable: the hash of the trajectory up to the cooldown (the identity without
    # the budget, the schedule as warmup alone), shared by the runs that differ in their budget
    stable_hash: str | None = None


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


def plan_run(
    cfg: DictConfig, overrides: list[str] | None = None, *, epochs_checked: bool = True
) -> RunPlan:
    """Validate `cfg` (a composed train config) and derive the run; writes nothing.

    `epochs_checked=False` leaves check_epochs to the caller: a sweep skips points outside its
    D/N range, whose budget may exceed the data, before it checks the others.
    """
    overrides = overrides or []
    experiment = str(cfg.experiment_name)
    if not _SAFE_NAME.match(experiment):
        raise ConfigError(
            f"experiment_name={experiment!r} must be a plain directory name "
            "(letters, digits, . _ = -)"
        )
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r} must be a non-negative integer")
    dataset = TokenDataset.open(Path(cfg.paths.data_dir) / cfg.data.name)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    check_tokenizer(dataset, data_cfg)  # type: ignore[arg-type]
    built = check_data_overrides(dataset, data_cfg, overrides)  # type: ignore[arg-type]
    model = model_config(cfg.model, dataset.vocab_size, overrides)

    train = cfg.train
    seq_len = train.seq_len
    for key in ("seq_len", "micro_batch_size", "min_micro_batch_size"):
        value = train[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"train.{key}={value!r} must be a positive integer")
    chunk = train.loss_chunk_tokens
    if chunk is not None and (not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1):
        raise ConfigError(
            f"train.loss_chunk_tokens={chunk!r} must be a positive integer (tokens per chunk of "
            "the fused head and loss) or null (the plain head and loss)"
        )
    if train.data_parallel not in ("ddp", "fsdp"):
        raise ConfigError(
            f"train.data_parallel={train.data_parallel!r} is unknown: use ddp (replicated) or "
            "fsdp (sharded)"
        )
    if seq_len > model.max_seq_len:
        raise ConfigError(
            f"train.seq_len={seq_len} exceeds the model's context model.max_seq_len="
            f"{model.max_seq_len}: lower train.seq_len or raise model.max_seq_len"
        )
    # train.lr and train.batch_tokens are checked by resolve_hparams (null there means a rule).
    # The numbers as floats: the run id hashes them, and 1 and 1.0 are one run.
    optimizer: dict[str, float | None] = {}
    for key in ("weight_decay", "beta1", "beta2", "eps"):
        rule = "must be a number in [0, 1)" if key.startswith("beta") else "must be a number >= 0"
        value = finite_number(f"train.{key}", train[key], rule)
        if value < 0 or (key.startswith("beta") and value >= 1):
            raise ConfigError(f"train.{key}={train[key]!r} {rule}")
        optimizer[key] = value
    optimizer["grad_clip"] = None
    if train.grad_clip is not None:
        rule = "must be a positive number or null"
        clip = finite_number("train.grad_clip", train.grad_clip, rule)
        if clip <= 0:
            raise ConfigError(f"train.grad_clip={train.grad_clip!r} {rule}")
        optimizer["grad_clip"] = clip
    rule = "must be a positive number of passes over the dataset's train split (e.g. 1)"
    max_epochs = finite_number("budget.max_epochs", cfg.budget.get("max_epochs"), rule)
    if max_epochs <= 0:
        raise ConfigError(f"budget.max_epochs={cfg.budget.max_epochs!r} {rule}")
    rule = "must be a positive whole number of steps"
    if whole_number("logging.interval", cfg.logging.interval, rule) < 1:
        raise ConfigError(f"logging.interval={cfg.logging.interval!r} {rule}")
    if train.windows not in TRAIN_WINDOW_ORDERS:
        raise ConfigError(
            f"train.windows={train.windows!r} is unknown: use one of "
            f"{', '.join(TRAIN_WINDOW_ORDERS)}"
        )

    params = count_params(model)
    flops = flops_per_token(model, seq_len)
    hp = resolve_hparams(
        cfg, non_embedding_params=params.non_embedding, flops_per_token=flops.flops_exact
    )
    budget = hp.budget
    schedule = build_schedule(cfg.schedule, budget.steps, warmup_steps=hp.warmup_steps)
    wandb_mode = cfg.logging.wandb.mode
    if wandb_mode not in WANDB_MODES:
        raise ConfigError(
            f"logging.wandb.mode={wandb_mode!r} is unknown: use one of {', '.join(WANDB_MODES)}"
        )
    effective_wandb_mode(wandb_mode)  # an unknown WANDB_MODE is refused here, before any run
    # Whole numbers, as ints: 5e5 and 500000 held-out tokens are one run
    evaluation: dict[str, int] = {}
    for key in ("tokens", "batch_size", "points"):
        rule = "must be a positive whole number"
        evaluation[key] = whole_number(f"eval.{key}", cfg.eval[key], rule)
        if evaluation[key] < 1:
            raise ConfigError(f"eval.{key}={cfg.eval[key]!r} {rule}")
    # The run's identity is the science: shape, data, budget, optimisation and evaluation. Where
    # and how fast it runs (device, precision, compile, micro-batching, loss chunking, logging) is
    # not part of it.
    # It holds the hyperparameters the run resolved to, not the nulls or rule constants that chose
    # them: a pinned value and a rule that land on the same number are the same run.
    train_identity = {
        k: v
        for k, v in OmegaConf.to_container(train).items()
        if k
        not in (
            "micro_batch_size",
            "min_micro_batch_size",
            "loss_chunk_tokens",
            "data_parallel",
            "device",
            "precision",
            "compile",
            "compile_mode",
            "peak_flops",
        )
    }
    train_identity.update(lr=hp.lr, batch_tokens=hp.batch_tokens, **optimizer)
    # Every run from before train.windows existed read random windows: `random` stays out of the
    # identity, so pinning it keeps those run ids (the default is now shuffled, which is in it).
    if train_identity.get("windows") == "random":
        del train_identity["windows"]
    identity = {
        "model": dataclasses.asdict(model),
        "data": {"name": dataset.name, "config_hash": dataset.manifest.get("config_hash")},
        "tokens": budget.tokens,
        "seed": cfg.seed,
        "train": train_identity,
        "schedule": dataclasses.asdict(schedule),  # warmup and cooldown in steps, as trained
        "eval": {**OmegaConf.to_container(cfg.eval), **evaluation},
    }
    digest = config_hash(identity)
    replicate = config_hash({k: v for k, v in identity.items() if k != "seed"})
    stable = stable_hash(identity, schedule) if _share_stable(cfg.schedule, schedule) else None
    model_name = str(cfg.model.get("name", "custom"))
    if cfg.model.get("target_params") is not None:
        model_name = f"target{float(cfg.model.target_params):.3g}".replace("+", "")
    run_id = f"{model_name}-{digest[:10]}"
    if epochs_checked:
        check_epochs(run_id, budget.tokens, dataset, max_epochs)
    # The device last, and torch (~2 s to import) with it: every check above is a fraction of a
    # second, so a typo is reported before torch loads.
    from sweep.hardware import resolve_hardware

    hardware = resolve_hardware(
        train.device, train.precision, train.compile, train.peak_flops, train.compile_mode
    )
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # config.yaml holds the numbers the run used (a rerun from it is the same run);
    # resolved.hparams.from_rule records which of them a rule chose.
    resolved["train"].update(lr=hp.lr, batch_tokens=hp.batch_tokens, **optimizer)
    # The data as built, not the preset's values where a run left them unset: what it trained on
    resolved["data"].update(built)
    resolved["eval"].update(evaluation)
    resolved["resolved"] = {
        "run_id": run_id,
        "config_hash": digest,
        "replicate_hash": replicate,
        "stable_hash": stable,
        "model": dataclasses.asdict(model),
        "budget": dataclasses.asdict(budget),
        "hparams": {
            "lr": hp.lr,
            "batch_tokens": hp.batch_tokens,
            "warmup_steps": schedule.warmup_steps,
            "grad_accum": hp.grad_accum,
            "micro_batch_size": hp.micro_batch_size,
            "compute": hp.compute,  # the C of the LR and batch rules (budget.flops, else 6ND)
            "from_rule": hp.from_rule,
        },
        "schedule": dataclasses.asdict(schedule),
        "grad_accum": hp.grad_accum,  # also under hparams; kept here for existing readers
        "device": str(hardware.device),
        "precision": hardware.precision,
    }
    return RunPlan(
        run_id=run_id,
        run_dir=Path(cfg.paths.runs_dir) / experiment / run_id,
        experiment=experiment,
        model_name=model_name,
        model=model,
        params=params,
        flops=flops,
        budget=budget,
        lr=hp.lr,
        seq_len=seq_len,
        micro_batch_size=hp.micro_batch_size,
        min_micro_batch_size=train.min_micro_batch_size,
        batch_tokens=hp.batch_tokens,
        grad_accum=hp.grad_accum,
        schedule=schedule,
        hardware=hardware,
        dataset=dataset,
        max_epochs=max_epochs,
        config_hash=digest,
        config=resolved,
        replicate_hash=replicate,
        stable_hash=stable,
    )


def _share_stable(cfg: DictConfig, schedule: Schedule) -> bool:
    """schedule.share_stable, checked: a yes or no, and only for a WSD schedule."""
    share = cfg.get("share_stable", False)
    if not isinstance(share, bool):
        raise ConfigError(f"schedule.share_stable={share!r} must be true or false")
    if share and schedule.kind != "wsd":
        raise ConfigError(
            f"schedule.share_stable=true needs schedule.kind=wsd, not {schedule.kind}: only a "
            "warmup-stable-decay run holds its LR until a cooldown, so only WSD runs of several "
            "budgets share a trajectory (set schedule.kind=wsd or schedule.share_stable=false)"
        )
    return share


def stable_hash(identity: dict[str, Any], schedule: Schedule) -> str:
    """The hash of a WSD run's trajectory up to its cooldown: its identity without the budget, and
    the schedule as its warmup alone. Runs that share it are one run until the first cooldown."""
    trunk = {k: v for k, v in identity.items() if k != "tokens"}
    trunk["schedule"] = {"kind": schedule.kind, "warmup_steps": schedule.warmup_steps}
    return config_hash(trunk)
