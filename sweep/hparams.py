"""Per-size hyperparameters: peak LR, global batch and warmup as rules of N and D (configs/hparams).

`python -m sweep.hparams budget.tokens_per_param=20` prints what the rules give each ladder rung.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sweep.budget import Budget, budget_target, whole_steps
from sweep.errors import ConfigError, OneLineParser, finite_number
from sweep.rules import halved_for_steps, nearest_power_of_two, warmup_length
from sweep.schedule import SCHEDULE_KINDS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
# What a rule can choose, and the train.yaml key whose null asks for it.
RULE_KEYS = {
    "lr": "train.lr",
    "batch_tokens": "train.batch_tokens",
    "warmup_steps": "schedule.warmup_fraction",
}


@dataclass(frozen=True)
class Rules:
    """The constants of configs/hparams/<rule>.yaml, checked."""

    lr_coefficient: float
    lr_exponent: float
    lr_min: float
    lr_max: float
    batch_coefficient: float
    batch_exponent: float
    batch_min_sequences: int
    batch_max_sequences: int
    batch_min_steps: int
    warmup_tokens_per_param: float
    warmup_max_fraction: float
    horizon_tokens_per_param: float | None = None  # rules for D = this x N, not the run's own D
    fitted_schedule: str | None = None  # schedule.kind of the sweep the LR and batch were fitted on


@dataclass(frozen=True)
class Hyperparameters:
    """What one run trains with, and which of its values a rule chose."""

    lr: float  # peak learning rate
    batch_tokens: int  # tokens per optimizer step
    micro_batch_size: int  # sequences per forward/backward
    grad_accum: int
    warmup_steps: int | None  # None: schedule.warmup_fraction fixes the warmup
    budget: Budget
    compute: float  # the C the rules are functions of: budget.flops, else 6 N D of the target
    from_rule: dict[str, bool]  # RULE_KEYS -> chosen by a rule (True) or pinned in train.yaml
    lr_clamp: str | None = None  # "min" or "max": the rule's LR lay beyond that hparams.lr bound


def _number(cfg: Mapping[str, Any], path: str, bound: str = "", integer: bool = False) -> Any:
    """hparams.<path> as a finite number meeting `bound` ("> 0", ">= 0", ">= 1" or none)."""
    section, key = path.split(".")
    value = (cfg.get(section) or {}).get(key)
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and bound:
        op, limit = bound.split()
        ok = value > float(limit) if op == ">" else value >= float(limit)
    if not ok or (integer and value != int(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(
            f"hparams.{path}={value!r} must be {kind}{' ' + bound if bound else ''} "
            "(configs/hparams/power_law.yaml documents every key)"
        )
    return int(value) if integer else float(value)


def load_rules(cfg: Mapping[str, Any]) -> Rules:
    """Check the `hparams` config group; every mistake is one line naming the key."""
    # A zero coefficient or LR bound makes no rule; exponents may take either sign.
    rules = Rules(
        lr_coefficient=_number(cfg, "lr.coefficient", "> 0"),
        lr_exponent=_number(cfg, "lr.exponent"),
        lr_min=_number(cfg, "lr.min", "> 0"),
        lr_max=_number(cfg, "lr.max", "> 0"),
        batch_coefficient=_number(cfg, "batch.coefficient", "> 0"),
        batch_exponent=_number(cfg, "batch.exponent"),
        batch_min_sequences=_number(cfg, "batch.min_sequences", ">= 1", integer=True),
        batch_max_sequences=_number(cfg, "batch.max_sequences", ">= 1", integer=True),
        batch_min_steps=_number(cfg, "batch.min_steps", ">= 1", integer=True),
        warmup_tokens_per_param=_number(cfg, "warmup.tokens_per_param", ">= 0"),
        warmup_max_fraction=_number(cfg, "warmup.max_fraction", ">= 0"),
        horizon_tokens_per_param=(
            _number(cfg, "horizon.tokens_per_param", "> 0")
            if (cfg.get("horizon") or {}).get("tokens_per_param") is not None
            else None
        ),
        fitted_schedule=_fitted_schedule(cfg),
    )
    if rules.lr_min > rules.lr_max:
        raise ConfigError(
            f"hparams.lr.min={rules.lr_min:g} exceeds hparams.lr.max={rules.lr_max:g}: swap them"
        )
    for key in ("min_sequences", "max_sequences"):
        value = getattr(rules, f"batch_{key}")
        if value & (value - 1):  # power-of-two bounds keep a power-of-two batch inside them
            below = 2 ** (value.bit_length() - 1)
            raise ConfigError(f"hparams.batch.{key}={value} must be a power of two (e.g. {below})")
    if rules.batch_min_sequences > rules.batch_max_sequences:
        raise ConfigError(
            f"hparams.batch.min_sequences={rules.batch_min_sequences} exceeds "
            f"hparams.batch.max_sequences={rules.batch_max_sequences}: swap them"
        )
    if rules.warmup_max_fraction > 1:
        raise ConfigError(
            f"hparams.warmup.max_fraction={rules.warmup_max_fraction:g} must be at most 1"
        )
    return rules


def _fitted_schedule(cfg: Mapping[str, Any]) -> str | None:
    value = (cfg.get("fitted") or {}).get("schedule")
    if value is not None and value not in SCHEDULE_KINDS:
        raise ConfigError(f"hparams.fitted.schedule={value!r} must be one of "
                          f"{', '.join(SCHEDULE_KINDS)} or null")
    return value


def check_fitted_schedule(rules: Rules, kind: str, name: Any) -> None:
    """Refuse rules fitted on one LR schedule to a run of another: the optimum LR (and batch) of
    a cosine sweep is not a WSD run's, and nothing else would say so."""
    if rules.fitted_schedule is not None and kind != rules.fitted_schedule:
        raise ConfigError(
            f"hparams={name} was fitted on {rules.fitted_schedule} runs, but schedule.kind={kind}:"
            f" fit the rules on {kind} runs (python -m sweep.fit.hparams), pin train.lr and "
            "train.batch_tokens, or set hparams.fitted.schedule=null to use them anyway")


def rule_lr(rules: Rules, compute: float) -> float:
    """Peak LR = coefficient x C^exponent, clamped to [lr.min, lr.max]."""
    lr = rules.lr_coefficient * compute**rules.lr_exponent
    return min(max(lr, rules.lr_min), rules.lr_max)


def lr_clamp(rules: Rules, compute: float) -> str | None:
    """Which bound of [lr.min, lr.max] rule_lr clamped at C, if either."""
    lr = rules.lr_coefficient * compute**rules.lr_exponent
    return "min" if lr < rules.lr_min else "max" if lr > rules.lr_max else None


def rule_batch_sequences(rules: Rules, compute: float, seq_len: int, target_tokens: float) -> int:
    """The rule's batch in sequences of `seq_len`: a power of two within the configured bounds."""
    raw = rules.batch_coefficient * compute**rules.batch_exponent / seq_len
    sequences = nearest_power_of_two(raw)
    sequences = int(min(max(sequences, rules.batch_min_sequences), rules.batch_max_sequences))
    return halved_for_steps(
        sequences, rules.batch_min_sequences, seq_len, target_tokens, rules.batch_min_steps
    )


def micro_batch(micro_batch_size: int, batch_sequences: int) -> int:
    """Sequences per forward/backward for a rule's batch: train.micro_batch_size or the batch."""
    micro = min(micro_batch_size, batch_sequences)
    if batch_sequences % micro:
        below = 2 ** (micro.bit_length() - 1)
        raise ConfigError(
            f"train.micro_batch_size={micro_batch_size} does not divide the batch rule's "
            f"{batch_sequences} sequences: use a power of two (e.g. {below}) or pin "
            "train.batch_tokens"
        )
    return micro


def rule_warmup_steps(
    rules: Rules, non_embedding_params: int, batch_tokens: int, total_steps: int
) -> int:
    """About tokens_per_param x N tokens of warmup, at most max_fraction of the run, at least 1."""
    return warmup_length(
        rules.warmup_tokens_per_param,
        rules.warmup_max_fraction,
        non_embedding_params,
        batch_tokens,
        total_steps,
    )


def _positive_int(train: Mapping[str, Any], key: str) -> int:
    value = train.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"train.{key}={value!r} must be a positive integer")
    return value


def resolve_hparams(
    cfg: DictConfig | Mapping[str, Any], *, non_embedding_params: int, flops_per_token: int
) -> Hyperparameters:
    """LR, batch and warmup of the composed train config `cfg`: numbers pinned, nulls from rules.

    Order matters: the target tokens D, then the batch (the rule needs C), then whole steps of
    that batch, then the LR and the warmup (which needs the steps). C is the budget's own for
    budget.flops, so every run of one isoFLOP profile shares its LR and batch, else 6 N D; with
    hparams.horizon.tokens_per_param = k it is 6 N (k N) for every budget of a size.
    """
    train, schedule = cfg["train"], cfg["schedule"]
    seq_len = _positive_int(train, "seq_len")
    micro = _positive_int(train, "micro_batch_size")
    unpinned = {
        "lr": train.get("lr") is None,
        "batch_tokens": train.get("batch_tokens") is None,
        "warmup_steps": schedule.get("warmup_fraction") is None,
    }
    rules = None
    if any(unpinned.values()):
        group = cfg.get("hparams")
        if group is None:
            key = RULE_KEYS[next(name for name, rule in unpinned.items() if rule)]
            raise ConfigError(
                f"{key}=null asks for a rule, but no hparams group is selected: add "
                "`- hparams: power_law` to train.yaml's defaults or set a number"
            )
        if isinstance(group, DictConfig):
            group = OmegaConf.to_container(group, resolve=True)
        rules = load_rules(group)
        if unpinned["lr"] or unpinned["batch_tokens"]:
            check_fitted_schedule(rules, schedule.get("kind"), group.get("name"))

    target = budget_target(
        cfg["budget"], non_embedding_params=non_embedding_params, flops_per_token=flops_per_token
    )
    # The rules are functions of the compute budget alone (see the YAML). A FLOP budget is that C:
    # its D comes from exact FLOPs per token, which exceed 6N by an N-dependent factor, so 6ND
    # would hand one isoFLOP profile's sizes different LRs and batches. Token budgets have no
    # C of their own: Kaplan's 6ND with N non-embedding (DeepSeek's M also leaves embeddings out).
    six_nd = 6.0 * non_embedding_params * target.tokens
    compute = target.value if target.kind == "flops" else six_nd
    # hparams.horizon: the rules see one D per size (horizon x N), whatever the run's budget, so
    # that WSD runs of several budgets train with one LR, batch and warmup until their cooldowns
    horizon = rules.horizon_tokens_per_param if rules is not None else None
    rule_tokens = horizon * non_embedding_params if horizon else target.tokens
    if horizon:
        compute = 6.0 * non_embedding_params * rule_tokens

    if rules is not None and unpinned["batch_tokens"]:
        sequences = rule_batch_sequences(rules, compute, seq_len, rule_tokens)
        micro = micro_batch(micro, sequences)
        batch_tokens = sequences * seq_len
        batch_name = "hparams.batch.min_sequences x train.seq_len"
    else:
        batch_tokens = _positive_int(train, "batch_tokens")
        if batch_tokens % (micro * seq_len):
            raise ConfigError(
                f"train.batch_tokens={batch_tokens} is not a multiple of train.micro_batch_size x "
                f"train.seq_len = {micro * seq_len}: make it one (e.g. {micro * seq_len})"
            )
        batch_name = "train.batch_tokens"
    budget = whole_steps(target, batch_tokens, batch_name=batch_name)

    clamp = None
    if rules is not None and unpinned["lr"]:
        lr, clamp = rule_lr(rules, compute), lr_clamp(rules, compute)
    else:
        rule = "is out of range: use a number >= 0 (e.g. 3.0e-3) or null for the rule"
        lr = finite_number("train.lr", train.get("lr"), rule)
        if lr < 0:
            raise ConfigError(f"train.lr={train.get('lr')!r} {rule}")
    warmup_steps = None
    if rules is not None and unpinned["warmup_steps"]:
        rule_steps = int(rule_tokens // batch_tokens) if horizon else budget.steps
        warmup_steps = rule_warmup_steps(rules, non_embedding_params, batch_tokens, rule_steps)
    return Hyperparameters(
        lr=lr,
        batch_tokens=batch_tokens,
        micro_batch_size=micro,
        grad_accum=batch_tokens // (micro * seq_len),
        warmup_steps=warmup_steps,
        budget=budget,
        compute=compute,
        from_rule=unpinned,
        lr_clamp=clamp,
    )


# ---- CLI: the ladder table -------------------------------------------------------------------


def ladder_rungs() -> list[str]:
    """The model presets of the size ladder (configs/model/gpt_*.yaml)."""
    return sorted(path.stem for path in (CONFIGS / "model").glob("gpt_*.yaml"))


@dataclass(frozen=True)
class Rung:
    """One ladder rung as a run of the given config would train it."""

    model: str
    non_embedding_params: int
    hparams: Hyperparameters
    warmup_steps: int
    seq_len: int


def ladder(overrides: Sequence[str], rungs: Sequence[str]) -> list[Rung]:
    """Resolve each rung's hyperparameters from train.yaml plus `overrides`, smallest first."""
    from hydra import compose, initialize_config_dir

    from models import count_params, flops_per_token
    from sweep.checks import model_config
    from sweep.schedule import build_schedule

    out = []
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for name in rungs:
            cfg = compose("train", overrides=[*overrides, f"model={name}"])
            # No prepared dataset is needed: the data config's vocab_size stands in for it.
            vocab = cfg.model.get("vocab_size") or cfg.data.get("vocab_size")
            if vocab is None:
                raise ConfigError(f"data={cfg.data.name} has no vocab_size: set data.vocab_size")
            model = model_config(cfg.model, int(vocab), list(overrides))
            n = count_params(model).non_embedding
            exact = flops_per_token(model, cfg.train.seq_len).flops_exact
            hp = resolve_hparams(cfg, non_embedding_params=n, flops_per_token=exact)
            schedule = build_schedule(cfg.schedule, hp.budget.steps, warmup_steps=hp.warmup_steps)
            out.append(Rung(name, n, hp, schedule.warmup_steps, cfg.train.seq_len))
    return sorted(out, key=lambda rung: rung.non_embedding_params)


def ladder_table(rungs: Sequence[Rung]) -> str:
    """The ladder as an aligned text table, with a line saying which values came from rules."""
    header = [
        "model",
        "N",
        "D",
        "C=6ND",
        "lr",
        "batch_tokens",
        "seqs",
        "micro x accum",
        "steps",
        "warmup",
    ]
    table = [header]
    for r in rungs:
        hp, n, d = r.hparams, r.non_embedding_params, r.hparams.budget.tokens
        table.append(
            [
                r.model,
                f"{n:,}",
                f"{d:,}",
                f"{6 * n * d:.2e}",
                f"{hp.lr:.2e}" + ("*" if hp.lr_clamp else ""),
                f"{hp.batch_tokens:,}",
                str(hp.batch_tokens // r.seq_len),
                f"{hp.micro_batch_size} x {hp.grad_accum}",
                f"{hp.budget.steps:,}",
                str(r.warmup_steps),
            ]
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    # Names left-aligned, numbers right-aligned.
    lines = [
        "  ".join(row[i].rjust(w) if i else row[i].ljust(w) for i, w in enumerate(widths))
        for row in table
    ]
    if rungs:
        from_rule = rungs[0].hparams.from_rule
        ruled = ", ".join(k for k, rule in from_rule.items() if rule) or "nothing"
        pinned = ", ".join(RULE_KEYS[k] for k, rule in from_rule.items() if not rule)
        lines.append(f"from rules: {ruled}" + (f"; pinned: {pinned}" if pinned else ""))
        bounds = sorted({r.hparams.lr_clamp for r in rungs if r.hparams.lr_clamp})
        if bounds:
            # a fitted rule (python -m sweep.fit.hparams) clamped here is not the fit's LR
            lines.append("* the LR rule's value lies beyond hparams.lr."
                         + " and hparams.lr.".join(bounds) + ", which clamps it")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the ladder table for the given Hydra overrides (the budget, at least)."""
    parser = OneLineParser(
        prog="python -m sweep.hparams",
        description="Per-rung hyperparameters the rules give, e.g. budget.tokens_per_param=20",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for sweep.train")
    parser.add_argument("--models", help="comma-separated rungs (default: every gpt_* preset)")
    args = parser.parse_args(argv)
    rungs = args.models.split(",") if args.models else ladder_rungs()
    unknown = sorted(set(rungs) - {path.stem for path in (CONFIGS / "model").glob("*.yaml")})
    if unknown:
        parser.error(f"unknown model preset {', '.join(unknown)} (configs/model/)")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        print(ladder_table(ladder(args.overrides, rungs)))
    except (ConfigError, ValueError, HydraException, OmegaConfBaseException) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        print(f"error: {'; '.join(lines)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
