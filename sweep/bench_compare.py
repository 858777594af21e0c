"""`python -m sweep.bench_compare A.json B.json ...`: several sweep.bench results of one device side
by side, shape by shape, as a Markdown table for BENCHMARKS.md, with the best variant's ratio to
nanoGPT and this project's throughput goals (`--check-goals` exits 1 when one is missed).

Each file holds one variant (the loss plain, in chunks or as attention, a compile mode or scope, a
bf16 residual stream, copies, or nanoGPT's GPT timed by `sweep.bench --arch nanogpt`), at some
shapes: files of one variant at other shapes are merged.
They must share the device, torch release and protocol, and files of one precision their MFU peak,
or the comparison would mean nothing; a precision other than bf16 (fp8, fp32) is a variant of its
own, whose MFU is against its own peak (FP8's for fp8).
nanoGPT's numbers are the ones timed on this card when given, else sweep/nanogpt.py's for the
card (its H100 table, or its architecture timed earlier on the card, as on an H200).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.errors import OneLineParser
from sweep.nanogpt import MFU_GOALS, PROTOCOL, RATIO_GOALS, reference_for

# What results must share to be compared; files of one precision share peak_flops too (MFU divides
# by it), while fp8's is FP8's own peak
SHARED = ("device", "torch", "protocol")


class CompareError(ValueError):
    """A results file that cannot be compared (one line naming it and the fix)."""


@dataclass(frozen=True)
class Variant:
    """One results file: its label, its rows and failed shapes by (n_layer, d_model, n_head)."""

    path: Path
    label: str
    copies: int
    arch: str  # "project", or "nanogpt" for the baseline
    rows: dict[tuple[int, int, int], dict[str, Any]]
    failed: dict[tuple[int, int, int], dict[str, Any]]
    report: dict[str, Any]
    dates: tuple[str, ...] = ()  # the days its files were taken (merged files: each one's)


def _shape(entry: dict[str, Any]) -> tuple[int, int, int]:
    return entry["n_layer"], entry["d_model"], entry["n_head"]


def _label(report: dict[str, Any]) -> str:
    compile_ = "compile" if report["compile"] else "eager"
    if report.get("compile_mode"):
        compile_ += f" {report['compile_mode']}"
    if report.get("compile_scope", "model") != "model":
        compile_ += f" by {report['compile_scope']}"
    # Inductor switches set through the environment, e.g. COORDINATE_DESCENT_TUNING=1
    for key, value in report.get("inductor_env", {}).items():
        compile_ += f" {key.removeprefix('TORCHINDUCTOR_')}={value}"
    if report.get("residual_dtype", "float32") != "float32":
        compile_ = f"{report['residual_dtype']} residual, {compile_}"
    if report.get("precision", "bf16") != "bf16":
        compile_ = f"{report['precision']}, {compile_}"
    if report.get("arch") == "nanogpt":
        return f"nanoGPT's GPT, {compile_}"
    chunk = report.get("loss_chunk_tokens")
    attention = report.get("loss_attention")  # true, false, or "auto": each row says which ran
    loss = ("chunks of " + str(chunk) if chunk else "fused kernel"
            if report.get("loss_kernel") == "fused" else "auto" if attention == "auto"
            else "as attention" if attention else "plain")
    label = f"{compile_}, loss {loss}"
    copies = report.get("copies", 1)
    return label + (f", {copies} copies together" if copies > 1 else "")


def read_variant(path: Path) -> Variant:
    """One sweep.bench JSON; CompareError when it is missing, unreadable or not one."""
    try:
        report = json.loads(path.read_text())
        rows = {_shape(r): r for r in report["rows"]}
        failed = {_shape(f): f for f in report.get("failed", [])}
        entries = [_shape(e) for e in [*report["rows"], *report.get("failed", [])]]
        # Results from before --arch existed are this project's GPT
        variant = Variant(path, _label(report), report.get("copies", 1),
                          report.get("arch", "project"), rows, failed, report,
                          (report["date"][:10],) if report.get("date") else ())
    except OSError as err:
        raise CompareError(f"{path}: {err.strerror or err}: pass a JSON that sweep.bench "
                           "--out wrote") from None
    except (ValueError, KeyError, TypeError) as err:
        raise CompareError(f"{path} is not a sweep.bench result ({type(err).__name__}: {err}): "
                           "pass a JSON that sweep.bench --out wrote") from None
    twice = next((shape for shape in entries if entries.count(shape) > 1), None)
    if twice is not None:
        # Older sweep.bench timed 12,768,12 twice under --shapes all (nanogpt-4 and gpt_85m)
        raise CompareError(f"{path} holds {','.join(map(str, twice))} twice: keep one of its "
                           "results (sweep.bench now times a shape once)")
    return variant


def combine(variants: list[Variant]) -> list[Variant]:
    """The files as variants, those of one variant (say one file per shape) merged into one.
    CompareError unless every file was taken on one device, torch release and protocol, those of
    one precision with one peak, each shape of a variant is in one file only, and there is at
    most one nanoGPT baseline."""
    first = variants[0]
    for v in variants[1:]:
        for key in SHARED:
            if v.report.get(key) != first.report.get(key):
                raise CompareError(
                    f"{v.path} has {key}={v.report.get(key)!r} but {first.path} has "
                    f"{first.report.get(key)!r}: compare results of one device, torch "
                    "and protocol"
                )
    peaks: dict[str, Variant] = {}
    for v in variants:
        precision = v.report.get("precision")
        same = peaks.setdefault(precision, v)
        if v.report.get("peak_flops") != same.report.get("peak_flops"):
            raise CompareError(
                f"{v.path} has peak_flops={v.report.get('peak_flops')!r} but {same.path} has "
                f"{same.report.get('peak_flops')!r} at precision {precision}: compare results "
                "whose MFU divides by one peak (sweep.bench --peak-flops)")
    merged: dict[str, Variant] = {}
    where: dict[tuple[str, tuple[int, int, int]], Path] = {}
    for v in variants:
        for shape in [*v.rows, *v.failed]:
            if (v.label, shape) in where:
                raise CompareError(
                    f"{v.path} repeats {','.join(map(str, shape))} of the variant '{v.label}' "
                    f"in {where[v.label, shape]}: pass each shape of a variant once")
            where[v.label, shape] = v.path
        if v.label in merged:
            into = merged[v.label]
            v = dataclasses.replace(into, rows={**into.rows, **v.rows},
                                    failed={**into.failed, **v.failed},
                                    dates=(*into.dates, *v.dates))
        merged[v.label] = v
    variants = list(merged.values())
    baselines = [v for v in variants if v.arch == "nanogpt"]
    if len(baselines) > 1:
        raise CompareError(f"{baselines[1].path} is a second nanoGPT baseline after "
                           f"{baselines[0].path}: pass one sweep.bench --arch nanogpt result")
    return variants


def _millions(tokens_per_s: float) -> str:
    # GPU rates in millions; a CPU's few thousand stay readable
    return f"{tokens_per_s / 1e6:.3f}M" if tokens_per_s >= 1e5 else f"{tokens_per_s:,.0f}"


@dataclass(frozen=True)
class Comparison:
    """compare()'s result: the table, the goals missed, and how many goals applied."""

    lines: list[str]
    missed: list[str]
    goals: int


def _goals(name: str, shape: tuple[int, int, int], ratio: float | None, mfu: float | None,
           no_ratio: str) -> tuple[list[str], list[str]]:
    """The goal cells of one nanoGPT shape, and a line for each goal it missed; no_ratio says
    why ratio is None."""
    cells, missed = [], []
    where = f"{name} ({','.join(map(str, shape))})"
    if shape in RATIO_GOALS:
        goal = RATIO_GOALS[shape]
        met = ratio is not None and ratio >= goal
        cells.append(f"≥{goal:.2f}x {'met' if met else 'missed'}")
        if not met:
            shown = no_ratio if ratio is None else f"{ratio:.2f}x nanoGPT's tokens/s"
            missed.append(f"{where} {shown}, goal {goal}x")
    if shape in MFU_GOALS:
        goal = MFU_GOALS[shape]
        met = mfu is not None and mfu >= goal
        cells.append(f"MFU ≥{goal:.0%} {'met' if met else 'missed'}")
        if not met:
            shown = "no result" if mfu is None else f"MFU {mfu:.1%}"
            missed.append(f"{where} {shown}, goal MFU {goal:.0%}")
    return cells, missed


def compare(variants: list[Variant]) -> Comparison:
    """The variants side by side, shape by shape, with the best one-copy variant of this
    project's GPT against nanoGPT, and the goals where there are nanoGPT numbers: its GPT timed
    here (an --arch nanogpt variant), else sweep/nanogpt.py's for the card (default protocol)."""
    names: dict[tuple[int, int, int], str] = {}
    for v in variants:
        for shape, entry in [*v.rows.items(), *v.failed.items()]:
            names.setdefault(shape, entry["name"])
    # Smallest first, as sweep.bench orders them (a failed shape has no row to keep its place).
    names = dict(sorted(names.items(), key=lambda item: (item[0][0] * item[0][1] ** 2, item[0])))
    first = variants[0].report
    # sweep.bench gives rows a nanoGPT reference with its default protocol on a card that
    # sweep/nanogpt.py has numbers for only; a shape that failed there still has its goal (missed).
    referenced = any(row.get("nanogpt_tokens_per_s") for v in variants for row in v.rows.values())
    source, reference_table = reference_for(first["device"]) if referenced else ("", {})
    baseline = next((v for v in variants if v.arch == "nanogpt"), None)
    against = ("nanoGPT's GPT timed here (sweep.bench --arch nanogpt)" if baseline
               else source or "no nanoGPT numbers for this device")
    dates = sorted({day for v in variants for day in v.dates})
    taken = f"; taken {' to '.join(dict.fromkeys([dates[0], dates[-1]]))}" if dates else ""
    lines = [
        f"Device: {first['device']}; torch {first['torch']}{taken}; protocol {first['protocol']}. "
        "In bold the best per shape of the variants of this project's GPT that train one copy "
        f"(copies measure a sweep, not a run); best / nanoGPT is against {against}.",
        "",
        "| shape | L,d,h | nanoGPT table | " + " | ".join(v.label for v in variants)
        + " | best / nanoGPT | highest MFU 6N | goal |",
        "| --- " * (len(variants) + 6) + "|",
    ]
    missed: list[str] = []
    goals = 0
    for shape, name in names.items():
        single = [v.rows[shape] for v in variants
                  if shape in v.rows and v.copies == 1 and v.arch == "project"]
        best = max(single, key=lambda row: row["tokens_per_s"], default=None)
        cells = []
        for v in variants:
            row = v.rows.get(shape)
            if row is None:
                cells.append("failed" if shape in v.failed else "-")
            else:
                text = _millions(row["tokens_per_s"])
                cells.append(f"**{text}**" if row is best else text)
        table = reference_table.get(shape)
        if baseline is not None:
            # A baseline that failed at a shape leaves its goal without a reference: missed
            measured = baseline.rows.get(shape)
            reference = measured["tokens_per_s"] if measured else None
        else:
            reference = table
        ratio = best["tokens_per_s"] / reference if best and reference else None
        # The best utilisation of any variant: an fp8 one is judged against FP8's peak, so the
        # fastest need not be the best used
        mfu = max((row["mfu_6n"] for row in single if row["mfu_6n"] is not None), default=None)
        goal_cells: list[str] = []
        # The goals hold for the reference protocol only (a --tiny baseline sets none)
        if (baseline is not None or table is not None) and first["protocol"] == PROTOCOL:
            no_ratio = "no result" if best is None else "no nanoGPT result"
            goal_cells, shape_missed = _goals(name, shape, ratio, mfu, no_ratio)
            goals += len(goal_cells)
            missed += shape_missed
        lines.append(
            f"| {name} | {','.join(map(str, shape))} | "
            f"{_millions(table) if table else '-'} | " + " | ".join(cells)
            + f" | {f'{ratio:.2f}x' if ratio else '-'} | {'-' if mfu is None else f'{mfu:.1%}'}"
            f" | {'; '.join(goal_cells) or '-'} |"
        )
    return Comparison(lines, missed, goals)


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m sweep.bench_compare", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", type=Path, help="sweep.bench --out JSON files")
    p.add_argument("--check-goals", action="store_true",
                   help="exit 1 when a goal against nanoGPT is missed (needs an --arch "
                        "nanogpt result among them, or results from a card sweep/nanogpt.py "
                        "has nanoGPT's numbers for: H100, H200)")
    args = p.parse_args(argv)
    try:
        variants = combine([read_variant(path) for path in args.results])
    except CompareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = compare(variants)
    if args.check_goals and not result.goals:
        # a flag that cannot apply is a usage error: one line, before any table
        report = variants[0].report
        print(f"error: --check-goals: no goal applies to these results (device "
              f"{report['device']!r}, protocol {report['protocol']}): goals need nanoGPT's "
              "shapes, sweep.bench's default protocol and nanoGPT's numbers for the device (an "
              "--arch nanogpt result among them, or a card sweep/nanogpt.py has them for): "
              "leave out --check-goals",
              file=sys.stderr)
        return 2
    print("\n".join(result.lines))
    if not args.check_goals:
        return 0
    if result.missed:
        print(f"error: {len(result.missed)} of {result.goals} goals missed: "
              f"{'; '.join(result.missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
