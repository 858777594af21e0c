"""Several rows at one (N, D): the same run collected from several experiments counts once, and
distinct runs there (an LR probe, another seed, older code) are fitted with a one-line warning.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sweep.collect import collect_runs
from sweep.fit.__main__ import main
from sweep.fit.analysis import FitOptions, fit_report
from sweep.fit.points import SAME_D_DECADES, log_clusters, point_ids
from sweep.fit.synthetic import isoflop_table
from sweep.fit.table import Columns, load
from tests.test_sweep_collect import make_run

# (N, tokens, loss): three sizes at two budgets, the sweep itself.
GRID = [(1000, 20_000, 3.2), (2000, 20_000, 3.0), (4000, 20_000, 2.9),
        (1000, 80_000, 3.0), (2000, 80_000, 2.7), (4000, 80_000, 2.5)]


def _edit_summary(run_dir: Path, **fields: object) -> None:
    path = run_dir / "summary.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def _runs_with_copies_and_a_probe(root: Path) -> None:
    """The grid in exA; its first run also collected into exS and exS1 (the very same run: same
    run id and config hash); an LR probe at (2000, 80k) with its own config hash and seed."""
    for n, tokens, loss in GRID:
        make_run(root, n, tokens, loss, experiment="exA")
    # retrained there: the same loss but for float noise, as the reviewer's copies (~1e-9)
    for experiment, loss in (("exS", 3.2 * (1 + 3e-9)), ("exS1", 3.2)):
        make_run(root, 1000, 20_000, loss, experiment=experiment)
    probe = make_run(root, 2000, 80_000, 3.4, experiment="exA", run_id="n2000-d80000-lr")
    hparams = {"warmup_steps": 10, "schedule": "cosine", "windows": "shuffled"}
    _edit_summary(root / "exA" / "n2000-d80000", hparams={"lr": 3e-3, **hparams})
    _edit_summary(probe, config_hash="0a", seed=1, hparams={"lr": 1e-3, **hparams})


@pytest.mark.parametrize("as_table", [False, True])
def test_the_same_run_in_three_experiments_is_fitted_once(tmp_path: Path, as_table: bool) -> None:
    _runs_with_copies_and_a_probe(tmp_path / "runs")
    data = load(write_collected(tmp_path / "runs") if as_table else tmp_path / "runs", Columns())
    # 9 collected rows: 6 grid runs, 2 copies, 1 probe; the copies go, the probe stays
    assert len(data.runs) == 7
    assert list(data.runs["run"]).count("exA/n1000-d20000") == 1
    assert not data.runs["run"].str.startswith(("exS/", "exS1/")).any()
    dropped = [n for n in data.notes if n.startswith("dropped ")]
    assert dropped == ["dropped 2 repeated rows: the same run (same run_id, config_hash, N, D and "
                       "loss to 1e-04) collected more than once, e.g. n1000-d20000 in exA, exS, "
                       "exS1; each run is fitted once (its first row), not weighted by how many "
                       "experiments hold it"]
    if not as_table:
        # The curves lose the copies too: 7 runs of 4 eval points each (step 0 has no tokens)
        assert data.curves is not None and len(data.curves) == 7 * 4
        assert data.curves["run"].nunique() == 7


def test_two_runs_at_one_point_are_fitted_with_a_warning_naming_them(tmp_path: Path) -> None:
    _runs_with_copies_and_a_probe(tmp_path)
    data = load(tmp_path, Columns())
    assert len(data.warnings) == 1
    warning = data.warnings[0]
    assert "\n" not in warning
    assert warning.startswith("1 (N, D) points have more than one run")
    assert ("(e.g. N=2,000, D=80,000: exA/n2000-d80000 (loss 2.7), exA/n2000-d80000-lr "
            "(loss 3.4); they differ in seed, hparams_lr, config_hash)") in warning
    assert "filtering the table's rows" in warning and "fit runs/<experiment>" in warning


def test_one_run_id_trained_twice_to_other_losses_is_two_runs_and_warned(tmp_path: Path) -> None:
    # Same run id and config hash but 3 % apart: code the hash does not cover changed, so these
    # are two trainings; both stay (sweep.collect keys them by experiment) and are named.
    for n, tokens, loss in GRID:
        make_run(tmp_path, n, tokens, loss, experiment="exA")
    make_run(tmp_path, 4000, 80_000, 2.575, experiment="exB")
    for source in (tmp_path, write_collected(tmp_path)):
        data = load(source, Columns())
        assert len(data.runs) == 7 and not any(n.startswith("dropped ") for n in data.notes)
        (warning,) = data.warnings
        assert ("(e.g. N=4,000, D=80,000: exA/n4000-d80000 (loss 2.5), exB/n4000-d80000 "
                "(loss 2.575); they differ in experiment)") in warning


def write_collected(root: Path) -> Path:
    """sweep.collect's table of the runs under root, as a CSV beside it."""
    path = root.parent / f"{root.name}.csv"
    collect_runs(root).table.to_csv(path, index=False)
    return path


def test_a_table_without_run_ids_warns_and_says_nothing_tells_the_runs_apart(
        tmp_path: Path) -> None:
    rows = [{"N": n, "D": d, "loss": loss} for n, d, loss in GRID]
    rows += [{"N": 4000, "D": 80_000, "loss": 2.6}, {"N": 4000, "D": 80_000, "loss": 2.55},
             {"N": 1000, "D": 20_000 * 1.004, "loss": 3.25}]  # 0.4 % more D: step rounding
    path = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    data = load(path, Columns())
    assert len(data.runs) == 9  # no run ids: nothing says two rows are one run
    assert not any(n.startswith("dropped ") for n in data.notes)
    (warning,) = data.warnings
    assert warning.startswith("2 (N, D) points have more than one run")
    assert ("N=4,000, D=80,000: row5 (loss 2.5), row6 (loss 2.6), row7 (loss 2.55); the table "
            "has no column (seed, config_hash, ...) that says how they differ") in warning


def test_a_table_of_distinct_points_has_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    pd.DataFrame([{"run_id": f"r{i}", "N": n, "D": d, "loss": x}
                  for i, (n, d, x) in enumerate(GRID)]).to_csv(path, index=False)
    data = load(path, Columns())
    assert data.warnings == [] and len(data.runs) == 6


def test_cli_prints_and_reports_the_dropped_copies_and_the_warning(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "runs"
    _runs_with_copies_and_a_probe(runs)
    out = tmp_path / "report"
    assert main([str(runs), "--out", str(out), "--bootstrap", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("dropped 2 repeated rows: the same run") for line in lines)
    warned = [line for line in lines if line.startswith("warning: ")]
    assert len(warned) == 1 and warned[0].startswith(
        "warning: 1 (N, D) points have more than one run")
    report = json.loads((out / "report.json").read_text())
    assert report["n_runs"] == 7
    assert report["warnings"] == [warned[0].removeprefix("warning: ")]
    markdown = (out / "report.md").read_text()
    assert f"**Warning: {report['warnings'][0]}.**" in markdown
    # The Kaplan L(N) here has 3 sizes, the fewest its line needs: no interval, and the reason
    row = next(line for line in markdown.splitlines()
               if line.startswith("| L(N), without offset"))
    assert "no CI: 3 points" in row and "[" not in row
    assert report["kaplan"]["L_N"]["without_offset"]["ci95"] == {}
    np.testing.assert_allclose(sorted(p["N"] for p in report["kaplan"]["L_N"]["points"]),
                               [1000, 2000, 4000])


def _seed_table(tmp_path: Path, probe: bool = False) -> Path:
    """GRID at seeds 0, 1, 2 (each seed a config hash of its own), the losses a per-seed offset
    apart; with probe, one more run at (2000, 80k) with another LR as well."""
    offsets = {0: 1.0, 1: 1.02, 2: 0.97}
    rows = [{"run_id": f"n{n}-d{d}-s{seed}", "seed": seed, "config_hash": f"h{seed}{i}",
             "N": n, "D": d, "loss": loss * offsets[seed]}
            for i, (n, d, loss) in enumerate(GRID) for seed in offsets]
    if probe:
        rows.append({"run_id": "lr-probe", "seed": 0, "config_hash": "p", "lr": 1e-2, "N": 2000,
                     "D": 80_000, "loss": 3.3})
    path = tmp_path / "seeds.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_seed_replicates_are_a_note_with_their_measured_noise(tmp_path: Path) -> None:
    data = load(_seed_table(tmp_path), Columns())
    assert data.warnings == [] and len(data.runs) == 18
    # Every point holds the same three offsets: the pooled sd is their sample sd
    sd = float(np.std(np.log([1.0, 1.02, 0.97]), ddof=1))
    assert data.seed_noise == {"points": 6, "runs": 18, "sd_log_loss": pytest.approx(sd)}
    (note,) = [n for n in data.notes if "several seeds" in n]
    assert note.startswith("seed replicates: 6 (N, D) points have runs at several seeds (18 "
                           "runs, no describing column but the seed differs): each run is a fit "
                           "point")
    assert f"seed-to-seed spread of the loss {100 * sd:.2f} % (pooled sd of log loss)" in note
    assert sorted(data.runs["replicate"].unique()) == list(range(6))


def test_a_probe_among_seed_replicates_is_warned_and_the_other_points_noted(
        tmp_path: Path) -> None:
    data = load(_seed_table(tmp_path, probe=True), Columns())
    # The probe's point is warned about, alone; the five pure points are still replicates
    (warning,) = data.warnings
    assert warning.startswith("1 (N, D) points have more than one run")
    assert "lr-probe (loss 3.3); they differ in seed, lr, config_hash)" in warning
    assert data.seed_noise is not None and data.seed_noise["points"] == 5
    probe_point = (data.runs["N"] == 2000) & (data.runs["D"] == 80_000)
    assert (data.runs.loc[probe_point, "replicate"] == -1).all()
    assert (data.runs.loc[~probe_point, "replicate"] >= 0).all()


def test_a_stray_point_beside_replicates_is_the_one_named(tmp_path: Path) -> None:
    # Seed replicates everywhere, and an LR probe pair at a point of its own
    table = pd.read_csv(_seed_table(tmp_path))
    probes = pd.DataFrame([{"run_id": f"probe-{lr}", "seed": 0, "config_hash": f"p{lr}",
                            "lr": lr, "N": 8000, "D": 80_000, "loss": loss}
                           for lr, loss in ((1e-3, 2.3), (1e-2, 2.6))])
    path = tmp_path / "mixed.csv"
    pd.concat([table, probes]).to_csv(path, index=False)
    data = load(path, Columns())
    (warning,) = data.warnings
    assert warning.startswith("1 (N, D) points have more than one run")
    assert ("probe-0.001 (loss 2.3), probe-0.01 (loss 2.6); they differ in lr, config_hash"
            in warning)
    assert data.seed_noise["points"] == 6


def test_replicates_by_hash_pooled_over_unequal_points(tmp_path: Path) -> None:
    # sweep.train's replicate hash decides; two points with 2 and 4 seeds: a pooled sd, not a
    # mean of the points' sds
    losses = {(1000, 20_000): [3.0, 3.1], (2000, 20_000): [2.8, 2.75, 2.9, 2.85]}
    rows = [{"run_id": f"n{n}-s{i}", "seed": i, "config_hash": f"h{n}{i}",
             "replicate_hash": f"r{n}", "N": n, "D": d, "loss": loss}
            for (n, d), point in losses.items() for i, loss in enumerate(point)]
    rows += [{"run_id": f"x{i}", "seed": 0, "config_hash": f"x{i}", "replicate_hash": f"x{i}",
              "N": n, "D": d, "loss": 3.5 - i / 10}
             for i, (n, d) in enumerate([(4000, 20_000), (1000, 80_000), (2000, 80_000)])]
    # ... and one point whose two runs share a seed's describing columns but not the hash
    rows += [{"run_id": f"w{i}", "seed": i, "config_hash": f"w{i}", "replicate_hash": f"w{i}",
              "N": 4000, "D": 80_000, "loss": 2.5 + i / 10} for i in range(2)]
    path = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    data = load(path, Columns())
    logs = [np.log(v) for v in losses.values()]
    pooled = np.sqrt(sum(((x - x.mean()) ** 2).sum() for x in logs) / (1 + 3))
    assert data.seed_noise == {"points": 2, "runs": 6, "sd_log_loss": pytest.approx(pooled)}
    assert "(6 runs, one config each, by sweep.train's replicate hash)" in data.notes[-1]
    (warning,) = data.warnings
    assert "w0 (loss 2.5), w1 (loss 2.6); they differ in seed, config_hash" in warning


def test_the_same_seed_twice_is_not_a_replicate(tmp_path: Path) -> None:
    rows = [{"run_id": f"r{i}", "seed": 0 if i < 2 else i, "config_hash": f"h{i}", "N": n,
             "D": 20_000, "loss": 3.0 + i / 100}
            for i, n in enumerate([1000, 1000, 2000, 4000, 8000])]
    rows.append({"run_id": "r9", "seed": 0, "config_hash": "h9", "N": 2000, "D": 80_000,
                 "loss": 2.5})
    path = tmp_path / "t.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    data = load(path, Columns())
    assert data.seed_noise is None and len(data.warnings) == 1


def test_kaplan_takes_the_best_point_per_n_over_its_seeds_mean(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main([str(_seed_table(tmp_path)), "--out", str(out), "--bootstrap", "0"]) == 0
    assert "\nseed replicates: 6 (N, D) points" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["seed_noise"]["runs"] == 18
    mean = float(np.exp(np.mean(np.log([1.0, 1.02, 0.97]))))
    # Best per N is the 80k point (GRID's losses) times the seeds' geometric mean, not seed 2's
    points = {p["N"]: p["loss"] for p in report["kaplan"]["L_N"]["points"]}
    assert points == pytest.approx({1000: 3.0 * mean, 2000: 2.7 * mean, 4000: 2.5 * mean})
    assert report["kaplan"]["L_N"]["note"] == "best (N, D) point, its seeds averaged, per N"
    assert any("several seeds" in note for note in report["notes"])


def test_a_curves_table_tells_seed_replicates_apart_as_a_runs_folder_does(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for n, tokens, loss in GRID:
        for seed, offset in ((0, 1.0), (1, 1.03)):
            run = make_run(runs, n, tokens, loss * offset, run_id=f"n{n}-d{tokens}-s{seed}")
            _edit_summary(run, seed=seed, config_hash=f"c{seed}", replicate_hash=f"r{n}{tokens}",
                          hparams={"lr": 3e-3, "warmup_steps": 5, "schedule": "cosine",
                                   "windows": "shuffled"})
    curves = tmp_path / "curves.csv"
    collect_runs(runs, curves=True).table.to_csv(curves, index=False)
    assert {"seed", "replicate_hash", "code_version", "hparams_lr"} <= set(pd.read_csv(curves))
    for source in (runs, curves):
        data = load(source, Columns())
        assert data.warnings == [] and data.seed_noise["runs"] == 12, source
        assert len(load(source, Columns(), where="seed == 0").runs) == 6


def test_the_compute_frontier_of_final_points_takes_the_seeds_mean(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main([str(_seed_table(tmp_path)), "--out", str(out), "--bootstrap", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    mean = float(np.exp(np.mean(np.log([1.0, 1.02, 0.97]))))
    grid_losses = {loss for _, _, loss in GRID}
    # Every frontier point is a point's seed mean, never a single (lucky) seed's loss
    for point in report["kaplan"]["L_C"]["points"]:
        assert any(point["loss"] == pytest.approx(loss * mean, rel=1e-9) for loss in grid_losses)


def test_d_values_close_in_a_chain_are_not_one_point() -> None:
    # Each D 0.3 % above the last: neighbours are within step rounding, the chain is a decade
    d = 1e9 * 1.003 ** np.arange(800)
    ids = log_clusters(d, SAME_D_DECADES)
    assert len(np.unique(ids)) > 100
    spans = [np.log10(d[ids == k].max() / d[ids == k].min()) for k in np.unique(ids)]
    assert max(spans) <= SAME_D_DECADES
    # Two runs of one point, 0.4 % apart, stay one point whatever other sizes' D do
    n = np.array([1e6, 1e6, 2e6, 2e6, 2e6])
    d = np.array([1e9, 1.004e9, 0.999e9, 1.0025e9, 1.03e9])
    ids = point_ids(n, d)
    assert ids[0] == ids[1] and len(set(ids)) == 3


def test_approach_1_and_the_frontier_use_each_replicated_points_mean_curve(
        tmp_path: Path) -> None:
    # An IsoFLOP grid with curves, each run at two seeds 3 % apart (the first seed the better)
    table = isoflop_table(budgets=(1e16, 1e17, 1e18), sizes_per_budget=5, curve_points=3,
                          noise=0.005, seed=1)
    seeds = [table.assign(run_id=table.run_id + f"-s{seed}", seed=seed,
                          config_hash=table.run_id + f"-s{seed}", replicate_hash=table.run_id,
                          loss=table.loss * factor)
             for seed, factor in ((0, 1.0), (1, 1.03))]
    path = tmp_path / "curves.csv"
    pd.concat(seeds).to_csv(path, index=False)
    # Only approach 1 and Kaplan's L(C) read the curves; the methods of final points are left out
    options = FitOptions(bootstrap=0, methods=("approach1", "kaplan"))
    report = fit_report(load(path, Columns()), options)
    assert report["seed_noise"]["points"] == 15
    assert report["approach1"]["runs"] == 15 and report["approach1"]["seed_replicates_merged"]
    assert report["kaplan"]["L_C"]["note"] == ("lower envelope of the learning curves, seed "
                                               "replicates averaged")
    # The envelope is the seeds' geometric mean, sqrt(1.03) above the better seed's curve
    alone = fit_report(load(_write(seeds[0], tmp_path / "s0.csv"), Columns()), options)
    ratio = np.array([p["loss"] for p in report["kaplan"]["L_C"]["points"]]) / np.array(
        [p["loss"] for p in alone["kaplan"]["L_C"]["points"]])
    np.testing.assert_allclose(ratio, np.sqrt(1.03), rtol=1e-6)


def _write(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("column", "values", "replicated"), [
    ("device", ["NVIDIA H100", "NVIDIA A100"], True),  # the machine is not the run's identity
    ("experiment", ["isoflop", "isoflop_seeds"], True),  # nor is the folder it went into
    ("replicate_hash", ["r1", np.nan], False),  # one run cannot be shown the same config
    ("replicate_hash", ["r1", "r2"], False),
    ("code_version", ["abc", "def"], False),
])
def test_what_replicates_may_differ_in(tmp_path: Path, column: str, values: list,
                                       replicated: bool) -> None:
    rows = [{"run_id": f"n{n}-d{d}-s{seed}", "seed": seed, "config_hash": f"h{n}{d}{seed}",
             "replicate_hash": f"r{n}-{d}", "N": n, "D": d, "loss": loss * (1 + seed / 50)}
            for n, d, loss in GRID for seed in (0, 1)]
    frame = pd.DataFrame(rows)
    if column not in frame:
        frame[column] = values[0]
    # The first point's two seeds differ in the column, in seed order
    frame[column] = frame[column].astype(object)
    frame.loc[frame.index[:2], column] = values
    data = load(_write(frame, tmp_path / "t.csv"), Columns())
    assert data.seed_noise["points"] == (6 if replicated else 5)
    assert bool(data.warnings) != replicated
