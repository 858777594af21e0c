"""Turn a composed Hydra config into a validated run plan, before anything touches the disk.

Every mistake a user can make (shape, budget, batch, device, data) surfaces here as one line.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from data import TokenDataset
from data.config import TRAIN_WINDOW_ORDERS
from data.prepare import check_tokenizer
from models import FlopsPerToken, GPTConfig, ParamCounts, count_params, flops_per_token
from models.config import LOSS_KERNELS, loss_fusions
from sweep.budget import Budget
from sweep.checks import check_data_overrides, check_epochs, model_config
from sweep.errors import ConfigError, finite_number, whole_number
from sweep.hparams import resolve_hparams
from sweep.logger import WANDB_MODES
from sweep.logger import wandb_mode as effective_wandb_mode
from sweep.records import config_hash
from sweep.schedule import Schedule, build_schedule

if TYPE_CHECKING:
    from sweep.hardware import Hardware

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
    # train.loss_attention resolved on this device (auto: where it is the faster loss)
    loss_attention: bool = False


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
    _check_train(train, model)
    optimizer = _optimizer(train)
    max_epochs = _check_run_settings(cfg)
    seq_len = train.seq_len

    params = count_params(model)
    flops = flops_per_token(model, seq_len)
    hp = resolve_hparams(
        cfg, non_embedding_params=params.non_embedding, flops_per_token=flops.flops_exact
    )
    budget = hp.budget
    schedule = build_schedule(cfg.schedule, budget.steps, warmup_steps=hp.warmup_steps)
    _check_wandb(cfg.logging.wandb.mode)
    evaluation = _evaluation(cfg.eval)
    # The run's identity, whose hash is its id: the science, not where or how fast it trains
    train_identity = _train_identity(train)
    train_identity.update(lr=hp.lr, batch_tokens=hp.batch_tokens, **optimizer)
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
    from sweep.hardware import inductor_env, resolve_hardware, resolve_loss_attention

    hardware = resolve_hardware(
        train.device, train.precision, train.compile, train.peak_flops, train.compile_mode,
        train.residual_dtype, train.compile_scope,
    )
    loss_attention = resolve_loss_attention(train.loss_attention, hardware, model.d_model,
                                            model.bias, train.loss_chunk_tokens, train.loss_kernel)
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
        "residual_dtype": hardware.residual_dtype,
        "loss_attention": loss_attention,  # train.loss_attention as it resolved here
        # TORCHINDUCTOR_* switches in the environment, which change the compiled kernels
        "inductor_env": inductor_env() if hardware.compile else {},
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
        loss_attention=loss_attention,
    )


def _check_train(train: DictConfig, model: GPTConfig) -> None:
    """ConfigError for a train.* setting that no run can use (lr and batch_tokens are checked by
    resolve_hparams, where null means a rule)."""
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
    attention = train.loss_attention
    if attention != "auto" and not isinstance(attention, bool):
        raise ConfigError(f"train.loss_attention={attention!r} must be auto, true or false")
    if attention is True and model.bias:
        raise ConfigError(
            "train.loss_attention=true needs an output head without bias: set model.bias=false "
            "or train.loss_attention=false"
        )
    kernel = train.loss_kernel
    if kernel not in LOSS_KERNELS:
        raise ConfigError(f"train.loss_kernel={kernel!r} is unknown: use one of "
                          f"{', '.join(LOSS_KERNELS)}")
    fusions = loss_fusions(chunk, attention, kernel)
    if len(fusions) > 1:
        asked = " and ".join(f"train.{key}={value}" for key, value, _ in fusions)
        offs = [f"{key}={off}" for key, _, off in fusions]
        fix = (f"set {' or '.join(offs)}" if len(offs) == 2
               else f"keep one and set the others off ({', '.join(offs)})")
        raise ConfigError(f"{asked} are different ways to fuse the head and loss: {fix}")
    if train.data_parallel not in ("ddp", "fsdp"):
        raise ConfigError(
            f"train.data_parallel={train.data_parallel!r} is unknown: use ddp (replicated) or "
            "fsdp (sharded)"
        )
    if train.seq_len > model.max_seq_len:
        raise ConfigError(
            f"train.seq_len={train.seq_len} exceeds the model's context model.max_seq_len="
            f"{model.max_seq_len}: lower train.seq_len or raise model.max_seq_len"
        )


def _optimizer(train: DictConfig) -> dict[str, float | None]:
    """AdamW's settings, checked, as floats: the run id hashes them, and 1 and 1.0 are one run."""
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
    return optimizer


def _check_run_settings(cfg: DictConfig) -> float:
    """budget.max_epochs (returned), logging.interval and train.windows, checked."""
    rule = "must be a positive number of passes over the dataset's train split (e.g. 1)"
    max_epochs = finite_number("budget.max_epochs", cfg.budget.get("max_epochs"), rule)
    if max_epochs <= 0:
        raise ConfigError(f"budget.max_epochs={cfg.budget.max_epochs!r} {rule}")
    rule = "must be a positive whole number of steps"
    if whole_number("logging.interval", cfg.logging.interval, rule) < 1:
        raise ConfigError(f"logging.interval={cfg.logging.interval!r} {rule}")
    if cfg.train.windows not in TRAIN_WINDOW_ORDERS:
        raise ConfigError(
            f"train.windows={cfg.train.windows!r} is unknown: use one of "
            f"{', '.join(TRAIN_WINDOW_ORDERS)}"
        )
    return max_epochs


def _check_wandb(mode: Any) -> None:
    if mode not in WANDB_MODES:
        raise ConfigError(
            f"logging.wandb.mode={mode!r} is unknown: use one of {', '.join(WANDB_MODES)}"
        )
    effective_wandb_mode(mode)  # an unknown WANDB_MODE is refused here, before any run


def _evaluation(eval_cfg: DictConfig) -> dict[str, int]:
    """eval.tokens, batch_size and points as ints: 5e5 and 500000 held-out tokens are one run."""
    evaluation: dict[str, int] = {}
    for key in ("tokens", "batch_size", "points"):
        rule = "must be a positive whole number"
        evaluation[key] = whole_number(f"eval.{key}", eval_cfg[key], rule)
        if evaluation[key] < 1:
            raise ConfigError(f"eval.{key}={eval_cfg[key]!r} {rule}")
    return evaluation


# Where and how fast a run trains: not part of its identity (the run id)
_TRAIN_COSMETIC = ("micro_batch_size", "min_micro_batch_size", "loss_chunk_tokens",
                   "loss_attention", "loss_kernel", "data_parallel", "device", "precision",
                   "compile", "compile_mode", "peak_flops", "residual_dtype",
                   "compile_scope")


def _train_identity(train: DictConfig) -> dict[str, Any]:
    """train.* as part of the run's identity, which is the science: shape, data, budget,
    optimisation and evaluation, not the device, precision, compile, micro-batching, how the loss
    is fused, or logging. The caller adds the hyperparameters the run resolved to, not the nulls or
    rule constants that chose them: a pinned value and a rule that land on one number are one
    run."""
    identity = {k: v for k, v in OmegaConf.to_container(train).items()
                if k not in _TRAIN_COSMETIC}
    # Every run from before train.windows existed read random windows: `random` stays out of the
    # identity, so pinning it keeps those run ids (the default is now shuffled, which is in it).
    if identity.get("windows") == "random":
        del identity["windows"]
    return identity


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
