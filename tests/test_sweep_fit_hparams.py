"""`python -m sweep.fit.hparams`: a sweep's table or runs in, the report and a usable
configs/hparams file out; bad input is one line and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from sweep.fit.hparams import main
from sweep.hparams import load_rules, rule_batch_sequences
from tests.conftest import PYTHON
from tests.test_sweep_collect import make_run
from tests.test_sweep_fit_optimum import B_E, B_K, LR_E, LR_K, SIZES, sweep

ROOT = Path(__file__).resolve().parent.parent


def _csv(path: Path, **kwargs: object) -> Path:
    table = sweep(**kwargs).rename(columns={"C": "hparams_compute", "lr": "hparams_lr",
                                            "batch": "batch_tokens"})
    table.insert(0, "run_id", [f"r{i}" for i in range(len(table))])
    table.to_csv(path, index=False)
    return path


def test_a_table_gives_the_laws_and_a_hparams_config_hydra_composes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    source = _csv(tmp_path / "sweep.csv", noise=0.002)
    pd.read_csv(source).assign(hparams_schedule="cosine").to_csv(source, index=False)
    assert main([str(source), "--out", str(out), "--bootstrap", "100"]) == 0
    printed = capsys.readouterr().out
    assert "lr_opt = 0.3" in printed and "(4 budgets; 1.00x power_law's at C=8.3e+16)" in printed
    assert "copy it to configs/hparams/fitted.yaml and train with hparams=fitted" in printed
    assert sorted(p.name for p in out.iterdir()) == ["hparams.yaml", "hparams_fit.png",
                                                     "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    lr = report["laws"]["lr"]
    assert lr["exponent"] == pytest.approx(LR_E, abs=0.01)
    assert "![hparams_fit.png](hparams_fit.png)" in (out / "report.md").read_text()

    rules = yaml.safe_load((out / "hparams.yaml").read_text())
    assert rules["defaults"] == ["power_law", "_self_"] and rules["name"] == "fitted"
    assert rules["lr"]["coefficient"] == pytest.approx(lr["coefficient"], rel=1e-5)
    assert rules["batch"]["exponent"] == pytest.approx(report["laws"]["batch"]["exponent"],
                                                       rel=1e-5)
    # these budgets' optimum LRs (1.9e-3 to 3.1e-3) pass power_law's clamp of 3e-3 at the
    # smallest: the file lifts it to the law's LR there, rounded up
    assert LR_K * SIZES[0][1]**LR_E == pytest.approx(3.118e-3, rel=1e-3)
    assert rules["lr"]["max"] == 3.2e-3 and "min" not in rules["lr"]

    # As a config of the hparams group: the ladder table at a budget inside the fitted range
    # gets the law's LR (gpt_49m at 20 tokens per parameter: C = 2.9e17)
    (tmp_path / "configs" / "hparams").mkdir(parents=True)
    (tmp_path / "configs" / "hparams" / "fitted.yaml").write_text(
        (out / "hparams.yaml").read_text())
    # gets the law's LR (gpt_49m at 20 tokens per parameter: C = 2.9e17), and one below it the
    # lifted clamp (gpt_3m: C = 1.2e15, where the law gives 4.4e-3)
    table = subprocess.run(
        [PYTHON, "-m", "sweep.hparams", "hparams=fitted", "budget.tokens_per_param=20",
         f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "--models", "gpt_3m,gpt_49m"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    small, large = (line.split() for line in table.stdout.splitlines()[1:3])
    c, lr_shown = float(large[3]), float(large[4])
    assert lr_shown == pytest.approx(lr["coefficient"] * c ** lr["exponent"], rel=0.01)
    assert small[0] == "gpt_3m" and small[4] == "3.20e-03*"  # * : the clamp set it
    # Fitted on cosine runs (train.yaml's schedule): a WSD run is refused them, in one line
    wsd = subprocess.run(
        [PYTHON, "-m", "sweep.hparams", "hparams=fitted", "schedule.kind=wsd",
         f"hydra.searchpath=[file://{tmp_path / 'configs'}]", "--models", "gpt_3m"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert wsd.returncode == 2 and len(wsd.stderr.strip().splitlines()) == 1, wsd.stderr
    assert "hparams=fitted was fitted on cosine runs, but schedule.kind=wsd" in wsd.stderr


def test_runs_directory_reads_each_runs_lr_batch_and_rule_compute(tmp_path: Path) -> None:
    # Two budgets of 5 LRs at one batch, as sweep.train records them; the second budget's
    # runs predate summary.hparams.compute, so their C is 6 N x the budget's tokens
    runs = tmp_path / "runs"
    for n, tokens, with_compute in ((1000, 20_000, True), (4000, 80_000, False)):
        c = 6.0 * n * tokens
        for i, step in enumerate(np.arange(-2.3, 2.7)):
            lr = LR_K * c**LR_E * 2.0**step
            loss = 3.0 * float(np.exp(0.2 * np.log10(lr / (LR_K * c**LR_E)) ** 2))
            run = make_run(runs, n, tokens, loss, run_id=f"n{n}-lr{i}")
            summary = json.loads((run / "summary.json").read_text())
            summary["hparams"] = {"lr": lr, "schedule": "cosine",
                                  **({"compute": c} if with_compute else {})}
            summary["batch_tokens"] = 4096
            (run / "summary.json").write_text(json.dumps(summary))
    make_run(runs, 1000, 20_000, None, status="diverged", run_id="n1000-lr9")
    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out), "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [row["C"] for row in report["budgets"]] == [1.2e8, 1.92e9]
    for row in report["budgets"]:
        assert row["lr"] == pytest.approx(LR_K * row["C"] ** LR_E, rel=1e-6)
    assert report["laws"]["lr"]["exponent"] == pytest.approx(LR_E, abs=1e-6)
    assert "batch" in report["skipped"] and "batch" not in json.loads(
        json.dumps(yaml.safe_load((out / "hparams.yaml").read_text())))
    assert any(n.startswith("1 diverged runs left out") for n in report["notes"])
    assert "C: 5 runs without 'hparams_compute' (older summaries)" in " ".join(report["notes"])


def test_the_runs_schedule_is_written_into_the_rules_and_a_mix_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = _csv(tmp_path / "sweep.csv")
    table = pd.read_csv(source).assign(hparams_schedule="wsd")
    table.to_csv(source, index=False)
    out = tmp_path / "report"
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    assert "schedule: every run trained with wsd" in capsys.readouterr().out
    assert yaml.safe_load((out / "hparams.yaml").read_text())["fitted"] == {"schedule": "wsd"}
    assert json.loads((out / "report.json").read_text())["schedule"] == "wsd"
    assert "trained with the wsd LR schedule" in (out / "report.md").read_text()
    # A sweep of two schedules has no one optimum LR per budget: refused, and --where picks one
    table.loc[table.index[:10], "hparams_schedule"] = "cosine"
    table.to_csv(source, index=False)
    mixed = tmp_path / "mixed"
    assert main([str(source), "--out", str(mixed), "--bootstrap", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: the runs in {source} mix LR schedules: wsd (70 runs), cosine (10 "
                   "runs); the optimum LR depends on the schedule: fit one at a time, e.g. "
                   "--where \"hparams_schedule == 'wsd'\"")
    assert not mixed.exists()
    assert main([str(source), "--out", str(mixed), "--bootstrap", "0",
                 "--where", "hparams_schedule == 'wsd'"]) == 0


@pytest.mark.parametrize(("seq_len", "batch_lines"), [
    # The batch law gives 5.0e4 to 2.1e5 tokens over the budgets: at 16384 tokens a sequence the
    # smallest is 3 sequences, 4 as sweep.hparams rounds it, under power_law's min of 8
    ([16384], {"min_sequences": 4}),
    # at 8, 6250 to 26206 sequences: 32768 rounded, over its max of 4096
    ([8], {"max_sequences": 32768}),
    ([1024], {}),  # 49 to 205 sequences: inside [8, 4096]
    ([1024, 2048], {}),  # sequences are not one number: nothing is checked, and a note says so
])
def test_batch_clamps_that_would_cut_into_the_fitted_range_are_widened(
        tmp_path: Path, seq_len: list[int], batch_lines: dict[str, int]) -> None:
    source = _csv(tmp_path / "sweep.csv")
    table = pd.read_csv(source)
    table.assign(shape_seq_len=np.resize(seq_len, len(table))).to_csv(source, index=False)
    out = tmp_path / "report"
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    rules = yaml.safe_load((out / "hparams.yaml").read_text())
    assert {k: v for k, v in rules["batch"].items() if k.endswith("_sequences")} == batch_lines
    notes = json.loads((out / "report.json").read_text())["notes"]
    assert any("runs of 2 sequence lengths (1024, 2048)" in n for n in notes) == (
        len(seq_len) == 2)


def test_min_steps_that_would_halve_the_laws_batch_is_lowered(tmp_path: Path) -> None:
    # The law's batch at C = 1e16 is 5.0e4 tokens: 64 sequences of 1024 as sweep.hparams rounds
    # it. A budget of 9e5 tokens there is 13 steps of it, under power_law's min_steps of 32, so
    # the base would halve the batch the sweep found best: hparams.yaml lowers min_steps to 13
    source = _csv(tmp_path / "sweep.csv")
    table = pd.read_csv(source).assign(shape_seq_len=1024, budget_kind="tokens")
    table["budget_value"] = np.where(table["hparams_compute"] == SIZES[0][1], 9e5, 1e9)
    table.to_csv(source, index=False)
    out = tmp_path / "report"
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    text = (out / "hparams.yaml").read_text()
    assert ("  min_steps: 13  # base's 32 would halve the law's batch at the fitted budget "
            "C = 1e+16") in text
    fitted = OmegaConf.merge(OmegaConf.load(ROOT / "configs/hparams/power_law.yaml"),
                             {k: v for k, v in yaml.safe_load(text).items() if k != "defaults"})
    base = load_rules(OmegaConf.load(ROOT / "configs/hparams/power_law.yaml"))
    assert rule_batch_sequences(load_rules(fitted), SIZES[0][1], 1024, 9e5) == 64
    assert rule_batch_sequences(base, SIZES[0][1], 1024, 9e5) == 16
    # Budgets of 1e9 tokens everywhere: nothing halves, no line; nor without budget columns
    table.assign(budget_value=1e9).to_csv(source, index=False)
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    assert "  min_steps:" not in (out / "hparams.yaml").read_text()
    table.drop(columns=["budget_kind", "budget_value"]).to_csv(source, index=False)
    assert main([str(source), "--out", str(out), "--bootstrap", "0"]) == 0
    assert "  min_steps:" not in (out / "hparams.yaml").read_text()
    assert any(n.startswith("batch.min_steps of power_law.yaml not checked against the batch "
                            "law: the source has no budget_kind and budget_value columns")
               for n in json.loads((out / "report.json").read_text())["notes"])


def _warmup_runs(root: Path, fraction: float | None) -> Path:
    """Two budgets of 5 LRs at a batch of 4096 tokens, warmed up as power_law's rule gives
    (fraction None: N tokens, here 24 and 98 steps) or over `fraction` of their steps."""
    for n, tokens in ((100_000, 2_000_000), (400_000, 8_000_000)):
        c, steps = 6.0 * n * tokens, tokens // 4096
        warmup = round(n / 4096) if fraction is None else max(1, round(fraction * steps))
        for i, step in enumerate(np.arange(-2.3, 2.7)):
            lr = LR_K * c**LR_E * 2.0**step
            loss = 3.0 * float(np.exp(0.2 * np.log10(lr / (LR_K * c**LR_E)) ** 2))
            run = make_run(root, n, tokens, loss, run_id=f"n{n}-lr{i}")
            summary = json.loads((run / "summary.json").read_text())
            summary.update(batch_tokens=4096, steps=steps, hparams={
                "lr": lr, "schedule": "cosine", "compute": c, "warmup_steps": warmup})
            (run / "summary.json").write_text(json.dumps(summary))
    return root


def test_the_sweeps_warmup_is_checked_against_the_rule_the_file_inherits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main([str(_warmup_runs(tmp_path / "rule", None)), "--out", str(out),
                 "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["warmup"] == {"runs": 10, "off_rule": 0}
    assert not any("warmed up" in w for w in report["warnings"])
    assert ("warmup: all 10 runs warmed up as power_law's warmup rule (warmup.tokens_per_param=1, "
            "max_fraction=0.1) gives") in capsys.readouterr().out
    # A sweep that pinned schedule.warmup_fraction=0.1 (49 and 195 steps): the fitted LR is the
    # optimum at that warmup, not at the rule's, which the file would train with
    assert main([str(_warmup_runs(tmp_path / "pinned", 0.1)), "--out", str(out),
                 "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["warmup"]["off_rule"] == 10 and report["warmup"]["fraction"] == 0.1
    warning = ("10 of 10 runs warmed up otherwise than power_law's warmup rule "
               "(warmup.tokens_per_param=1, max_fraction=0.1), which training with these rules "
               "follows (run n100000-lr0: 49 steps, the rule 24); the LR optimum depends on the "
               "warmup: they fit schedule.warmup_fraction=0.1: train with these rules and "
               "schedule.warmup_fraction=0.1, or refit on a sweep with the rule's warmup")
    assert report["warnings"][-1] == warning
    assert f"warning: {warning}" in capsys.readouterr().out
    assert f"**warning**: {warning}" in (out / "report.md").read_text()
    header = [line[2:] for line in (out / "hparams.yaml").read_text().splitlines()
              if line.startswith("# ")]
    assert f"Warning: {warning}." in " ".join(header)


def test_one_budget_gives_its_optimum_but_no_rules_file(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(_csv(tmp_path / "one.csv", sizes=SIZES[:1])), "--out", str(out),
                 "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["laws"] == {} and "needs 2 or more at distinct C" in report["skipped"]["lr"]
    assert report["budgets"][0]["batch"] == pytest.approx(B_K * SIZES[0][1] ** B_E, rel=1e-6)
    assert not (out / "hparams.yaml").exists()


@pytest.mark.parametrize("args, message", [
    (["--lr-col", "lr"], "column 'lr' (for the peak LR) is not in the runs in"),
    (["--window", "0"], "--window 0 must be > 0 decades"),
    (["--near-optimal", "1.5"], "--near-optimal 1.5 must be in [0, 1)"),
    (["--base", "nope"], "--base nope: "),
    (["--name", "a b"], "--name 'a b' is not a config name"),
    (["--where", "N > 1e12"], "--where 'N > 1e12' keeps none of the 80 runs"),
    (["--name", "power_law"], "--name power_law is --base's name"),
])
def test_bad_input_is_one_line_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    out = tmp_path / "report"
    assert main([str(_csv(tmp_path / "sweep.csv")), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_a_sweep_with_no_locatable_optimum_and_an_occupied_out_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    two = _csv(tmp_path / "two.csv", lr_steps=np.array([-0.5, 0.5]), batch_steps=np.array([0.3]))
    assert main([str(two), "--out", str(out)]) == 2
    assert "no budget's optimum can be located" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main([str(_csv(tmp_path / "sweep.csv")), "--out", str(out)]) == 2
    assert "is not a report directory (it holds notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_the_cli_runs_without_torch_hydra_or_pyyaml(tmp_path: Path) -> None:
    # The fitter's promise (numpy, scipy, pandas, matplotlib only); without PyYAML the base's
    # LR clamps go unchecked, and the report says so
    blocked = ("torch", "hydra", "omegaconf", "yaml", "datasets", "tokenizers", "wandb")
    code = (f"import runpy, sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n"
            "sys.argv = ['sweep.fit.hparams', *sys.argv[1:]]\n"
            "runpy.run_module('sweep.fit.hparams', run_name='__main__', alter_sys=True)\n")
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "-c", code, str(_csv(tmp_path / "sweep.csv")),
                           "--out", str(out), "--bootstrap", "20"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("power_law.yaml not read (no PyYAML): its lr clamps are not checked against the "
            "law, nor its rules compared") in done.stdout
    assert "max:" not in (out / "hparams.yaml").read_text()


def test_repeated_rows_count_once_and_a_missing_base_is_refused_for_any_law(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _csv(tmp_path / "sweep.csv", noise=0.002)
    once = tmp_path / "once"
    assert main([str(path), "--out", str(once), "--bootstrap", "0"]) == 0
    capsys.readouterr()
    table = pd.read_csv(path)
    # two collected tables concatenated: the repeated rows count once
    pd.concat([table, table.iloc[:5]]).to_csv(tmp_path / "twice.csv", index=False)
    twice = tmp_path / "twice"
    assert main([str(tmp_path / "twice.csv"), "--out", str(twice), "--bootstrap", "0"]) == 0
    assert "dropped 5 rows repeating another row in every column" in capsys.readouterr().out
    assert json.loads((twice / "report.json").read_text())["laws"] == json.loads(
        (once / "report.json").read_text())["laws"]
    # one run id with two different rows is not one run: refused
    table.assign(loss=table["loss"] * 1.01).iloc[:1].pipe(
        lambda other: pd.concat([table, other])).to_csv(tmp_path / "clash.csv", index=False)
    assert main([str(tmp_path / "clash.csv"), "--out", str(twice)]) == 2
    assert "has run ids in several rows that differ" in capsys.readouterr().err
    # a batch-only sweep (one LR a budget) still names its base in hparams.yaml: it must exist
    batch_only = table[table.groupby("hparams_compute")["hparams_lr"].transform(
        lambda lr: lr == sorted(lr.unique())[2])]
    batch_only.to_csv(tmp_path / "batch.csv", index=False)
    out = tmp_path / "batch"
    assert main([str(tmp_path / "batch.csv"), "--out", str(out), "--base", "nope"]) == 2
    assert "--base nope: " in capsys.readouterr().err and not out.exists()
    assert main([str(tmp_path / "batch.csv"), "--out", str(out), "--bootstrap", "0"]) == 0
    rules = yaml.safe_load((out / "hparams.yaml").read_text())
    assert set(rules) == {"defaults", "name", "batch"}


def test_the_base_rules_are_compared_and_read_through_their_defaults(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Runs drawn from DeepSeek's laws against power_law (DeepSeek's): ratios of 1, and the
    # base's values per budget beside the optima
    path = _csv(tmp_path / "sweep.csv", noise=0.002)
    out = tmp_path / "report"
    assert main([str(path), "--out", str(out), "--bootstrap", "0"]) == 0
    assert "(4 budgets; 1.00x power_law's at C=8.3e+16)" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["base_rule"]["lr"] == {"coefficient": 0.3118, "exponent": -0.125,
                                         "min": 1e-4, "max": 3e-3}
    assert report["laws"]["lr"]["over_base"] == pytest.approx(1.0, abs=0.02)
    assert report["laws"]["batch"]["over_base"] == pytest.approx(1.0, abs=0.04)
    smallest = report["budgets"][0]
    assert smallest["base"] == {"lr": 3e-3,  # clamped: the rule gives 3.12e-3 at 1e16
                                "batch": pytest.approx(B_K * SIZES[0][1] ** B_E)}
    assert "| power_law: LR, batch |" in (out / "report.md").read_text()

    # An earlier fitted file as the base: its own lr over power_law's clamps
    configs = tmp_path / "hparams"
    configs.mkdir()
    (configs / "power_law.yaml").write_text((ROOT / "configs/hparams/power_law.yaml").read_text())
    (configs / "v1.yaml").write_text("defaults:\n  - power_law\n  - _self_\n\nname: v1\nlr:\n"
                                     "  coefficient: 0.6236\n  exponent: -0.125\n")
    monkeypatch.setattr("sweep.fit.base_rules.HPARAMS_DIR", configs)
    assert main([str(path), "--out", str(out), "--bootstrap", "0", "--base", "v1",
                 "--name", "v2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["base_rule"]["lr"] == {"coefficient": 0.6236, "exponent": -0.125,
                                         "min": 1e-4, "max": 3e-3}
    # v1's rule, twice DeepSeek's, gives 4.8e-3 at the middle C: power_law's lr.max clamps it
    lr = report["laws"]["lr"]
    assert lr["over_base"] == pytest.approx(lr["at_pivot"] / 3e-3) == pytest.approx(0.8, abs=0.02)
    assert "defaults:\n  - v1\n  - _self_\n\nname: v2\n" in (out / "hparams.yaml").read_text()
    (configs / "v1.yaml").write_text("defaults:\n  - v1\n")
    assert main([str(path), "--out", str(out), "--base", "v1", "--name", "v2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --base v1: ") and "v1.yaml includes itself" in err


@pytest.mark.parametrize("base_text, outcome", [
    # PyYAML reads 2e-3 as a string; Hydra (OmegaConf) as 0.002, and so must the check
    ("defaults:\n  - power_law\n  - _self_\nlr:\n  max: 2e-3\n", {"max": 2e-3}),
    # _self_ first: power_law, composed after it, wins
    ("defaults:\n  - _self_\n  - power_law\nlr:\n  max: 0.01\n", {"max": 3e-3}),
    ("defaults:\n  - power_law\nlr: 0.003\n", "is not an hparams config"),
    ("defaults:\n  - mine\n", "mine.yaml includes itself"),
])
def test_a_base_is_read_as_hydra_composes_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        base_text: str, outcome: dict | str) -> None:
    configs = tmp_path / "hparams"
    configs.mkdir()
    (configs / "power_law.yaml").write_text((ROOT / "configs/hparams/power_law.yaml").read_text())
    (configs / "mine.yaml").write_text(base_text)
    monkeypatch.setattr("sweep.fit.base_rules.HPARAMS_DIR", configs)
    out = tmp_path / "report"
    code = main([str(_csv(tmp_path / "sweep.csv")), "--out", str(out), "--bootstrap", "0",
                 "--base", "mine"])
    if isinstance(outcome, str):
        assert code == 2 and outcome in capsys.readouterr().err and not out.exists()
        return
    assert code == 0
    lr = json.loads((out / "report.json").read_text())["base_rule"]["lr"]
    assert lr["max"] == outcome["max"] and lr["min"] == 1e-4
    rules = yaml.safe_load((out / "hparams.yaml").read_text())
    # the fitted optima reach 3.1e-3: a max of 2e-3 or 3e-3 is lifted to 3.2e-3
    assert rules["lr"]["max"] == 3.2e-3
    # a name on the base's chain would overwrite a file it inherits from
    assert main([str(_csv(tmp_path / "sweep.csv")), "--out", str(out), "--base", "mine",
                 "--name", "power_law"]) == 2
    assert "--name power_law is a config --base mine inherits from" in capsys.readouterr().err
