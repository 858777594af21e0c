"""Tests for sweep.bench_compare: variants side by side, the best per shape, nanoGPT's ratio and
the goals, and one-line refusals of results that cannot be compared.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sweep.bench_compare import main
from sweep.nanogpt import MEASURED, PROTOCOL, REFERENCE, reference_for

H100 = "NVIDIA H100 80GB HBM3"


def write_report(path: Path, ratios: dict, *, chunk=None, device=H100, mfu_302m=0.52,
                 failed=(), copies=1, arch=None, date=None, table=REFERENCE,
                 attention=False, kernel=None, **fields) -> Path:
    """A sweep.bench JSON whose rows run at `ratios` x nanoGPT's tokens/s (table), shape by
    shape; its rows carry that reference where sweep.nanogpt has numbers for the device.
    `fields`: more of the header's keys (precision, compile_scope, ...)."""
    rows = []
    for i, (shape, reference) in enumerate(table.items()):
        if shape in failed or shape not in ratios:
            continue
        rows.append({
            "name": f"nanogpt-{i}", "n_layer": shape[0], "d_model": shape[1], "n_head": shape[2],
            "tokens_per_s": ratios[shape] * reference,
            "mfu_6n": mfu_302m if shape == (24, 1024, 16) else 0.3,
            "nanogpt_tokens_per_s": reference if reference_for(device)[1] else None,
        })
    failures = [{"name": f"nanogpt-{list(REFERENCE).index(s)}", "n_layer": s[0],
                 "d_model": s[1], "n_head": s[2], "error": "ran out of device memory"}
                for s in failed]
    path.write_text(json.dumps({
        "device": device, "torch": "2.11.0+cu128", "protocol": PROTOCOL, "compile": True,
        "compile_mode": None, "loss_chunk_tokens": chunk, "loss_attention": attention,
        "copies": copies, "rows": rows,
        "failed": failures, "pending": [], **({"arch": arch} if arch else {}),
        **({"date": date} if date else {}), **({"loss_kernel": kernel} if kernel else {}),
        **fields,
    }))
    return path


SMALL, LARGE = list(REFERENCE)[:3], list(REFERENCE)[3:]


def test_the_best_variant_per_shape_meets_the_goals(tmp_path, capsys):
    plain = write_report(tmp_path / "plain.json", {**dict.fromkeys(SMALL, 1.2),
                                                    **dict.fromkeys(LARGE, 1.10)})
    chunk = write_report(tmp_path / "chunk.json", {**dict.fromkeys(SMALL, 1.35),
                                                    **dict.fromkeys(LARGE, 1.02)}, chunk=8192)
    assert main([str(plain), str(chunk), "--check-goals"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Device: NVIDIA H100 80GB HBM3; torch 2.11.0+cu128; protocol ")
    assert "best / nanoGPT is against nanoGPT's H100 table." in out[0]
    assert out[2] == ("| shape | L,d,h | nanoGPT table | compile, loss plain | compile, loss "
                      "chunks of 8192 | best / nanoGPT | highest MFU 6N | goal |")
    # The smallest shape: the chunked loss is the best, at 1.35 x 3.72M tokens/s
    assert out[4] == ("| nanogpt-0 | 4,128,2 | 3.720M | 4.464M | **5.022M** | 1.35x | 30.0% | "
                      "≥1.30x met |")
    assert out[-1] == ("| nanogpt-5 | 24,1024,16 | 0.205M | **0.226M** | 0.209M | 1.10x | "
                       "52.0% | ≥1.05x met; MFU ≥50% met |")
    assert len(out) == 4 + 6


def test_fp8_is_a_variant_of_its_own_judged_against_its_own_peak(tmp_path, capsys):
    # fp8 is the fastest at 24x1024, but its MFU against FP8's peak is low: the MFU goal takes
    # the highest MFU of any variant, the bf16 one's here
    bf16 = write_report(tmp_path / "bf16.json", dict.fromkeys(LARGE, 1.0), mfu_302m=0.51,
                        precision="bf16", peak_flops=989.4e12)
    fp8 = write_report(tmp_path / "fp8.json", dict.fromkeys(LARGE, 1.2), mfu_302m=0.3,
                       precision="fp8", peak_flops=1978.8e12)
    assert main([str(bf16), str(fp8), "--check-goals"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == ("| shape | L,d,h | nanoGPT table | compile, loss plain | fp8, compile, loss "
                      "plain | best / nanoGPT | highest MFU 6N | goal |")
    assert out[-1] == ("| nanogpt-5 | 24,1024,16 | 0.205M | 0.205M | **0.246M** | 1.20x | "
                       "51.0% | ≥1.05x met; MFU ≥50% met |")


def test_a_missed_goal_is_named_and_exits_1(tmp_path, capsys):
    ratios = {**dict.fromkeys(SMALL, 1.4), **dict.fromkeys(LARGE, 1.1)}
    slow = write_report(tmp_path / "a.json", ratios, mfu_302m=0.481, failed=[(4, 128, 2)])
    assert main([str(slow)]) == 0  # without --check-goals: only the table
    assert main([str(slow), "--check-goals"]) == 1
    captured = capsys.readouterr()
    # A shape that failed still has its goal, missed; it keeps its place in the table.
    assert captured.out.splitlines()[4] == (
        "| nanogpt-0 | 4,128,2 | 3.720M | failed | - | - | ≥1.30x missed |")
    assert captured.err.splitlines() == [
        "error: 2 of 7 goals missed: nanogpt-0 (4,128,2) no result, goal 1.3x; "
        "nanogpt-5 (24,1024,16) MFU 48.1%, goal MFU 50%"]


def test_copies_are_shown_but_never_the_best_of_a_run(tmp_path, capsys):
    one = write_report(tmp_path / "one.json", dict.fromkeys(SMALL, 1.0))
    four = write_report(tmp_path / "four.json", dict.fromkeys(SMALL, 2.0), copies=4)
    assert main([str(one), str(four), "--check-goals"]) == 1
    captured = capsys.readouterr()
    assert "| nanogpt-0 | 4,128,2 | 3.720M | **3.720M** | 7.440M | 1.00x |" in captured.out
    assert "compile, loss plain, 4 copies together" in captured.out
    assert captured.err.startswith("error: 3 of 3 goals missed: nanogpt-0 (4,128,2) 1.00x "
                                   "nanoGPT's tokens/s, goal 1.3x; ")


H200 = "NVIDIA H200"
# A card sweep/nanogpt.py has no nanoGPT numbers for: its goals need a baseline timed on it
A100 = "NVIDIA A100-SXM4-80GB"


def test_on_another_card_the_goals_are_against_nanogpt_timed_there(tmp_path, capsys):
    """An A100 has no nanoGPT numbers: an --arch nanogpt result is the baseline, never the best."""
    everything = {**dict.fromkeys(SMALL, 1.0), **dict.fromkeys(LARGE, 1.0)}
    baseline = write_report(tmp_path / "nanogpt.json", everything, device=A100, arch="nanogpt",
                            date="2026-12-02T00:01:10+00:00")
    ours = write_report(tmp_path / "plain.json", {**dict.fromkeys(SMALL, 1.4),
                                                   **dict.fromkeys(LARGE, 1.04)}, device=A100,
                        date="2026-12-01T23:58:02+00:00")
    assert main([str(baseline), str(ours), "--check-goals"]) == 1
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith("Device: NVIDIA A100-SXM4-80GB; torch 2.11.0+cu128; taken "
                             "2026-12-01 to 2026-12-02; protocol ")
    # Files of one variant merged keep each one's date
    later = write_report(tmp_path / "later.json", dict.fromkeys(LARGE, 1.04), device=A100,
                         date="2026-12-05T10:00:00+00:00")
    small = write_report(tmp_path / "small.json", dict.fromkeys(SMALL, 1.4), device=A100,
                         date="2026-12-01T23:58:02+00:00")
    main([str(baseline), str(small), str(later)])
    assert "; taken 2026-12-01 to 2026-12-05; " in capsys.readouterr().out.splitlines()[0]
    assert "best / nanoGPT is against nanoGPT's GPT timed here (sweep.bench --arch nanogpt)" \
        in out[0]
    assert out[2].startswith("| shape | L,d,h | nanoGPT table | nanoGPT's GPT, compile | "
                             "compile, loss plain | best / nanoGPT |")
    # The H100 table does not apply to an A100; the measured baseline does (3.72M here).
    assert out[4] == ("| nanogpt-0 | 4,128,2 | - | 3.720M | **5.208M** | 1.40x | 30.0% | "
                      "≥1.30x met |")
    assert captured.err.splitlines() == [
        "error: 3 of 7 goals missed: nanogpt-3 (12,512,8) 1.04x nanoGPT's tokens/s, goal 1.05x; "
        "nanogpt-4 (12,768,12) 1.04x nanoGPT's tokens/s, goal 1.05x; nanogpt-5 (24,1024,16) "
        "1.04x nanoGPT's tokens/s, goal 1.05x"]


def test_a_card_with_measured_nanogpt_numbers_needs_no_baseline_run(tmp_path, capsys):
    """On an H200, sweep.bench rows carry nanoGPT's architecture as timed there earlier
    (sweep/nanogpt.py's MEASURED), and the goals apply without an --arch nanogpt file."""
    source, table = MEASURED[H200]
    ours = write_report(tmp_path / "plain.json", {**dict.fromkeys(SMALL, 1.35),
                                                   **dict.fromkeys(LARGE, 1.04)},
                        device=H200, table=table)
    assert main([str(ours), "--check-goals"]) == 1
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].endswith(f"best / nanoGPT is against {source}.")
    assert source.startswith("nanoGPT's GPT timed on an NVIDIA H200 on 2026-12-04")
    assert out[4] == ("| nanogpt-0 | 4,128,2 | 5.319M | **7.181M** | 1.35x | 30.0% | "
                      "≥1.30x met |")
    assert captured.err.startswith("error: 3 of 7 goals missed: nanogpt-3 (12,512,8) 1.04x ")
    # A baseline timed in the same call wins over the stored numbers
    baseline = write_report(tmp_path / "nanogpt.json", dict.fromkeys(REFERENCE, 1.0),
                            device=H200, table={s: v * 1.02 for s, v in table.items()},
                            arch="nanogpt")
    assert main([str(baseline), str(ours), "--check-goals"]) == 1
    assert capsys.readouterr().out.splitlines()[4] == (
        "| nanogpt-0 | 4,128,2 | 5.319M | 5.425M | **7.181M** | 1.32x | 30.0% | ≥1.30x met |")


def test_the_loss_as_attention_is_a_variant_of_its_own(tmp_path, capsys):
    plain = write_report(tmp_path / "plain.json", dict.fromkeys(SMALL, 1.0))
    attention = write_report(tmp_path / "attention.json", dict.fromkeys(SMALL, 1.4),
                             attention=True)
    assert main([str(plain), str(attention), "--check-goals"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| shape | L,d,h | nanoGPT table | compile, loss plain | compile, "
                             "loss as attention | best / nanoGPT |")
    assert out[4] == ("| nanogpt-0 | 4,128,2 | 3.720M | 3.720M | **5.208M** | 1.40x | 30.0% | "
                      "≥1.30x met |")


def test_the_fused_loss_kernel_is_a_variant_of_its_own(tmp_path, capsys):
    plain = write_report(tmp_path / "plain.json", dict.fromkeys(SMALL, 1.0), kernel="plain")
    fused = write_report(tmp_path / "fused.json", dict.fromkeys(SMALL, 1.1), kernel="fused")
    assert main([str(plain), str(fused)]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith(
        "| shape | L,d,h | nanoGPT table | compile, loss plain | compile, loss fused kernel |")


def test_a_compile_scope_is_a_variant_of_its_own(tmp_path, capsys):
    default = write_report(tmp_path / "default.json", dict.fromkeys(SMALL, 1.0))
    blocks = write_report(tmp_path / "blocks.json", dict.fromkeys(SMALL, 1.0),
                          compile_scope="blocks")
    assert main([str(default), str(blocks)]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith(
        "| shape | L,d,h | nanoGPT table | compile, loss plain | compile by blocks, loss plain |")


def test_a_bf16_residual_stream_is_a_variant_of_its_own(tmp_path, capsys):
    default = write_report(tmp_path / "default.json", dict.fromkeys(LARGE, 1.0))
    bf16 = write_report(tmp_path / "bf16.json", dict.fromkeys(LARGE, 1.1), residual_dtype="bf16")
    assert main([str(default), str(bf16)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| shape | L,d,h | nanoGPT table | compile, loss plain | bf16 "
                             "residual, compile, loss plain | best / nanoGPT |")
    assert out[-1].startswith("| nanogpt-5 | 24,1024,16 | 0.205M | 0.205M | **0.226M** | 1.10x |")


def test_the_loss_as_training_picks_it_is_labelled_auto(tmp_path, capsys):
    auto = write_report(tmp_path / "auto.json", dict.fromkeys(SMALL, 1.3), attention="auto")
    assert main([str(auto)]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith(
        "| shape | L,d,h | nanoGPT table | compile, loss auto | best / nanoGPT |")


def test_inductor_switches_make_a_variant_of_their_own(tmp_path, capsys):
    """The same compile mode with coordinate-descent tuning on is another column, named so."""
    default = write_report(tmp_path / "default.json", dict.fromkeys(SMALL, 1.0))
    tuned = write_report(tmp_path / "tuned.json", dict.fromkeys(SMALL, 1.1),
                         inductor_env={"TORCHINDUCTOR_COORDINATE_DESCENT_TUNING": "1"})
    assert main([str(default), str(tuned)]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith(
        "| shape | L,d,h | nanoGPT table | compile, loss plain | compile "
        "COORDINATE_DESCENT_TUNING=1, loss plain | best / nanoGPT |")


def test_files_of_one_variant_at_other_shapes_are_merged(tmp_path, capsys):
    """gpu_check.sh times each shape in a process of its own: one file per variant and shape."""
    paths = []
    for shape in SMALL:
        for arch, ratio in (("nanogpt", 1.0), (None, 1.5)):
            paths.append(write_report(tmp_path / f"{arch}-{shape[0]}.json", {shape: ratio},
                                      device=A100, arch=arch))
    assert main([*map(str, paths), "--check-goals"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].startswith("| shape | L,d,h | nanoGPT table | nanoGPT's GPT, compile | "
                             "compile, loss plain | best / nanoGPT |")
    assert [line.split(" | ")[-3:] for line in out[4:]] == [["1.50x", "30.0%", "≥1.30x met |"]] * 3


def test_a_shape_the_baseline_could_not_time_misses_its_goal(tmp_path, capsys):
    baseline = write_report(tmp_path / "nanogpt.json", dict.fromkeys(SMALL, 1.0), device=A100,
                            arch="nanogpt", failed=[(4, 128, 2)])
    ours = write_report(tmp_path / "plain.json", dict.fromkeys(SMALL, 1.5), device=A100)
    assert main([str(baseline), str(ours), "--check-goals"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[4] == (
        "| nanogpt-0 | 4,128,2 | - | failed | **5.580M** | - | 30.0% | ≥1.30x missed |")
    # Goals apply to the shapes in the results only (none of the larger three here)
    assert captured.err.splitlines() == [
        "error: 1 of 3 goals missed: nanogpt-0 (4,128,2) no nanoGPT result, goal 1.3x"]


@pytest.mark.parametrize(("case", "line"), [
    ("device", "error: {b} has device='NVIDIA H200' but {a} has 'NVIDIA H100 80GB HBM3': "
               "compare results of one device, torch and protocol"),
    ("peak", "error: {b} has peak_flops=900000000000000.0 but {a} has 989400000000000.0 at "
             "precision bf16: compare results whose MFU divides by one peak (sweep.bench "
             "--peak-flops)"),
    ("one file", "error: {b} holds 4,128,2 twice: keep one of its results (sweep.bench now "
                 "times a shape once)"),
    ("twice", "error: {b} repeats 4,128,2 of the variant 'compile, loss plain' in {a}: pass each "
              "shape of a variant once"),
    ("missing", "error: {b}: No such file or directory: pass a JSON that sweep.bench --out wrote"),
    ("garbage", "error: {b} is not a sweep.bench result (JSONDecodeError: "),
    ("goals", "error: --check-goals: no goal applies to these results (device 'cpu', protocol "
              "{{'vocab_size': 32768, 'seq_len': 1024, 'batch_size': 64, 'warmup_steps': 10, "
              "'timed_steps': 20}}): goals need nanoGPT's shapes, sweep.bench's default protocol "
              "and nanoGPT's numbers for the device (an --arch nanogpt result among them, or a "
              "card sweep/nanogpt.py has them for): leave out --check-goals"),
    ("tiny", "error: --check-goals: no goal applies to these results (device 'NVIDIA H200', "
             "protocol {{'vocab_size': 512,"),
    ("baselines", "error: {b} is a second nanoGPT baseline after {a}: pass one sweep.bench "
                  "--arch nanogpt result"),
])
def test_results_that_cannot_be_compared_are_one_line(tmp_path, capsys, case, line):
    a = write_report(tmp_path / "a.json", dict.fromkeys(SMALL, 1.0),
                     device="cpu" if case == "goals" else H100)
    b = tmp_path / "b.json"
    if case == "device":
        write_report(b, dict.fromkeys(SMALL, 1.0), device="NVIDIA H200")
    elif case == "tiny":
        # a baseline at nanoGPT's shapes, but with another protocol: no goal holds
        for path, arch in ((a, "nanogpt"), (b, None)):
            write_report(path, dict.fromkeys(SMALL, 1.5), device=H200, arch=arch)
            path.write_text(path.read_text().replace('"vocab_size": 32768', '"vocab_size": 512'))
    elif case == "baselines":
        write_report(a, dict.fromkeys(SMALL, 1.0), arch="nanogpt")
        # eager: another label, but still a second baseline
        b.write_text(a.read_text().replace('"compile": true', '"compile": false'))
    elif case == "twice":
        write_report(b, dict.fromkeys(SMALL, 1.0))
    elif case == "garbage":
        b.write_text("{not json")
    elif case == "peak":
        for path, peak in ((a, 989.4e12), (b, 900e12)):
            report = json.loads(path.read_text()) if path.exists() else None
            report = report or json.loads(write_report(path, dict.fromkeys(LARGE, 1.0)
                                                       ).read_text())
            path.write_text(json.dumps({**report, "precision": "bf16", "peak_flops": peak}))
    elif case == "one file":
        report = json.loads(write_report(b, dict.fromkeys(SMALL, 1.0)).read_text())
        b.write_text(json.dumps({**report, "rows": [*report["rows"], report["rows"][0]]}))
    args = [str(a)] if case == "goals" else [str(a), str(b)]
    assert main([*args, "--check-goals"]) == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and err.startswith(line.format(a=a, b=b))
    assert out == ""  # the error alone, no table before it
