"""The optimum LR and batch per budget and their laws in C, on grids drawn from known optima."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweep.fit.optimum import OptimumOptions, budgets, fit_optimum, near_optimal_laws

# DeepSeek LLM's fits (sec. 3.1), the truth the synthetic sweeps are drawn from
LR_K, LR_E, B_K, B_E = 0.3118, -0.125, 0.292, 0.3271
SIZES = [(3e6, 1e16), (6e6, 4e16), (1.1e7, 1.5e17), (2.5e7, 8e17)]


def _loss(lr: float, batch: float, c: float, cross: float = 0.0) -> float:
    """3 x exp of a quadratic in the decades off each optimum (LR the sharper), with a tilt."""
    u, v = np.log10(lr / (LR_K * c**LR_E)), np.log10(batch / (B_K * c**B_E))
    return 3.0 * float(np.exp(0.2 * u * u + 0.1 * v * v + cross * u * v))


def sweep(noise: float = 0.0, lr_steps: np.ndarray | None = None,
          batch_steps: np.ndarray | None = None, seed: int = 1, cross: float = 0.0,
          sizes: list[tuple[float, float]] = SIZES) -> pd.DataFrame:
    """An LR x batch grid of factors of 2 around each budget's optimum (off-centre, so no grid
    point sits on it), with multiplicative noise."""
    rng = np.random.default_rng(seed)
    lr_steps = np.arange(-2.3, 2.7) if lr_steps is None else lr_steps
    batch_steps = np.arange(-1.6, 2.4) if batch_steps is None else batch_steps
    rows = []
    for n, c in sizes:
        for i in lr_steps:
            for j in batch_steps:
                lr, batch = LR_K * c**LR_E * 2.0**i, B_K * c**B_E * 2.0**j
                rows.append({"N": n, "C": c, "lr": lr, "batch": batch,
                             "loss": _loss(lr, batch, c, cross) * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(rows)


def test_noisy_grid_recovers_deepseeks_laws_and_the_intervals_cover_them() -> None:
    report = fit_optimum(sweep(noise=0.002), OptimumOptions(bootstrap=300))
    lr, batch = report["laws"]["lr"], report["laws"]["batch"]
    assert lr["budgets"] == batch["budgets"] == 4
    assert lr["exponent"] == pytest.approx(LR_E, abs=0.01)
    assert batch["exponent"] == pytest.approx(B_E, abs=0.02)
    # the law at the budgets' middle is pinned far better than its coefficient
    pivot = lr["pivot_C"]
    assert lr["at_pivot"] == pytest.approx(LR_K * pivot**LR_E, rel=0.03)
    assert batch["at_pivot"] == pytest.approx(B_K * pivot**B_E, rel=0.06)
    for law, e, k in ((lr, LR_E, LR_K), (batch, B_E, B_K)):
        lo, hi = law["ci95"]["exponent"]
        assert lo < e < hi and hi - lo < 0.1
        lo, hi = law["ci95"]["at_pivot"]
        assert lo < k * pivot**e < hi
    assert report["skipped"] == {} and report["no_ci"] == {} and report["warnings"] == []
    assert all(row["form"] == ["2d"] and not any(row["edge"].values())
               for row in report["budgets"])


def test_noiseless_quadratic_with_a_tilt_is_located_exactly() -> None:
    # LR and batch optima couple (cross term): the 2-D quadratic's vertex is the joint minimum,
    # which a parabola along LR at the best run's batch would miss
    report = fit_optimum(sweep(cross=0.08), OptimumOptions(bootstrap=0))
    for row in report["budgets"]:
        assert row["lr"] == pytest.approx(LR_K * row["C"]**LR_E, rel=1e-6)
        assert row["batch"] == pytest.approx(B_K * row["C"]**B_E, rel=1e-6)
        assert row["loss"] == pytest.approx(3.0, rel=1e-9)
    assert report["laws"]["lr"]["exponent"] == pytest.approx(LR_E, abs=1e-9)
    assert report["laws"]["lr"]["coefficient"] == pytest.approx(LR_K, rel=1e-6)
    assert report["no_ci"] == {"lr": "--bootstrap 0", "batch": "--bootstrap 0"}


def test_a_cross_shaped_grid_fits_a_parabola_along_each_axis() -> None:
    # LRs at the second batch, batches at the middle LR: 8 runs a budget, no full grid; the best
    # run, (middle LR, third batch), is on the batch arm, off the LR arm
    full = sweep()
    keep = []
    for _, group in full.groupby("C"):
        lrs, batches = np.sort(group["lr"].unique()), np.sort(group["batch"].unique())
        keep += list(group.index[(group["batch"] == batches[1]) | (group["lr"] == lrs[2])])
    report = fit_optimum(full.loc[keep].reset_index(drop=True), OptimumOptions(bootstrap=0))
    for row in report["budgets"]:
        assert row["form"] == ["lr", "batch"]
        assert row["lr"] == pytest.approx(LR_K * row["C"]**LR_E, rel=1e-6)
        assert row["batch"] == pytest.approx(B_K * row["C"]**B_E, rel=1e-6)


def _lr_below_the_optimum_at_the_smallest_budget(noise: float) -> pd.DataFrame:
    """The sweep with the smallest budget's LRs 16x lower (noiseless there): its best run is
    its grid's largest LR, so its LR optimum is at the edge."""
    table = sweep(noise=noise)
    first = table["C"] == SIZES[0][1]
    table.loc[first, "lr"] /= 16
    table.loc[first, "loss"] = [_loss(lr, b, c) for lr, b, c in
                                table.loc[first, ["lr", "batch", "C"]].to_numpy()]
    return table


def test_an_optimum_at_the_grid_edge_stays_out_of_the_law_unless_asked() -> None:
    table = _lr_below_the_optimum_at_the_smallest_budget(noise=0.001)
    report = fit_optimum(table, OptimumOptions(bootstrap=0))
    row = report["budgets"][0]
    assert row["edge"] == {"lr": True, "batch": False}
    assert row["used"] == {"lr": False, "batch": True}
    assert report["laws"]["lr"]["budgets"] == 3 and report["laws"]["batch"]["budgets"] == 4
    assert fit_optimum(table, OptimumOptions(bootstrap=0, include_edge=True))["laws"]["lr"][
        "budgets"] == 4


def test_budgets_that_cannot_place_an_optimum_say_why() -> None:
    two = sweep(lr_steps=np.array([-0.5, 0.5]), batch_steps=np.array([0.3]))
    report = fit_optimum(two, OptimumOptions(bootstrap=0))
    assert all(row["skipped"] == "2 LRs and 1 batch sizes lie within 0.75 decades of the best run; "
               "a parabola needs 3 values of one (along one line of the other)"
               for row in report["budgets"])
    # loss rising towards the middle LR: no minimum
    hill = sweep(batch_steps=np.array([0.3]), sizes=SIZES[:2])
    hill["loss"] = 6.0 - hill["loss"]
    report = fit_optimum(hill, OptimumOptions(bootstrap=0))
    assert report["budgets"][0]["skipped"].startswith("log loss has no minimum in log lr")
    assert set(report["skipped"]) == {"lr", "batch"}
    assert report["skipped"]["batch"] == ("no budget's runs vary the batch (one value a "
                                          "budget): grid train.batch_tokens too to fit its law")


def test_exact_parabolas_leave_no_residuals_and_no_interval() -> None:
    # 3 LRs a budget at one batch: each parabola passes through its runs
    table = sweep(noise=0.002, lr_steps=np.array([-1.3, -0.3, 0.7]), batch_steps=np.array([0.3]))
    report = fit_optimum(table, OptimumOptions(bootstrap=50))
    assert "ci95" not in report["laws"]["lr"]
    assert report["no_ci"]["lr"].startswith("every surface fits its runs exactly")


def test_near_optimal_band_is_a_line_through_the_runs_within_the_tolerance() -> None:
    table = sweep(noise=0.0)
    groups = budgets(table, 1.0)
    band = near_optimal_laws(table, groups, 0.0)
    best = table.loc[table.groupby("C")["loss"].idxmin()]
    slope, intercept = np.polyfit(np.log(best["C"]), np.log(best["lr"]), 1)
    assert band["runs"] == 4
    assert band["lr"]["exponent"] == pytest.approx(slope)
    assert band["lr"]["coefficient"] == pytest.approx(np.exp(intercept))
    assert near_optimal_laws(table, groups, 0.05)["runs"] > 4


def test_several_sizes_at_one_compute_are_separate_budgets() -> None:
    # an isoFLOP LR sweep: two models at each C; their optima are fitted apart
    one, other = sweep(), sweep()
    other["N"] *= 2
    report = fit_optimum(pd.concat([one, other], ignore_index=True), OptimumOptions(bootstrap=0))
    one_c = fit_optimum(pd.concat([one, other])[lambda t: t["C"] == SIZES[0][1]],
                        OptimumOptions(bootstrap=0))
    assert one_c["skipped"]["lr"] == ("the 2 budgets with a usable lr optimum all sit at C = "
                                      "1e+16: a law in C needs budgets at 2 or more C")
    assert [(row["N"], row["C"]) for row in report["budgets"][:2]] == [
        (SIZES[0][0], SIZES[0][1]), (2 * SIZES[0][0], SIZES[0][1])]
    assert report["laws"]["lr"]["budgets"] == 8


def test_a_law_against_every_published_fit_or_through_2_budgets_is_warned() -> None:
    # the optimum LR rising with C (a tiny-budget sweep can show that), at only two budgets
    table = sweep(sizes=SIZES[:2])
    table.loc[table["C"] == SIZES[1][1], "lr"] *= 4
    report = fit_optimum(table, OptimumOptions(bootstrap=0))
    assert report["laws"]["lr"]["exponent"] > 0
    assert report["warnings"] == [
        f"the lr law rises with C (exponent {report['laws']['lr']['exponent']:.3g}), against "
        "every published fit (DeepSeek: -0.125): tiny or few budgets, or grids that barely "
        "bracket the optima, can do that; check the per-budget fits before training with it",
        "the lr law passes through its 2 budgets exactly: add budgets to test the power law "
        "itself",
        "the batch law passes through its 2 budgets exactly: add budgets to test the power law "
        "itself"]


def test_loss_falling_to_the_smallest_batch_still_locates_the_lr() -> None:
    # the CPU regime: smaller batches (more steps) win everywhere, so the 2-D surface has no
    # minimum; the LR parabola at the best batch still places the LR optimum
    table = sweep(batch_steps=np.array([-0.3, 0.7, 1.7]))
    u = np.log10(table["lr"] / (LR_K * table["C"] ** LR_E))
    v = np.log10(table["batch"] / table.groupby("C")["batch"].transform("min"))
    table["loss"] = 3.0 * np.exp(0.2 * u * u + 0.05 * v - 0.02 * v * v)  # rising, concave
    report = fit_optimum(table, OptimumOptions(bootstrap=0))
    for row in report["budgets"]:
        assert row["form"] == ["lr"] and "batch" not in row
        assert row["unlocated"]["batch"].startswith("log loss has no minimum in log batch")
        assert row["best_run"]["batch"] == table.loc[table["C"] == row["C"], "batch"].min()
    assert report["laws"]["lr"]["budgets"] == 4 and "batch" in report["skipped"]
    # each LR optimum is the one at the smallest batch tried, not a joint optimum: warned
    assert all(row["conditional"] == {"lr": {"batch": pytest.approx(row["best_run"]["batch"])}}
               for row in report["budgets"])
    assert report["warnings"] == [
        "4 of the lr law's 4 budgets place their lr optimum at one batch (the best run's), "
        "where the batch has no minimum in the grid: the law holds at those batch values, not "
        "at a joint optimum; extend the batch grid to locate it"]


def test_a_plateau_has_no_optimum_whatever_the_row_order() -> None:
    table = sweep(noise=0.001)
    first = table["C"] == SIZES[0][1]
    table.loc[first, "loss"] = 3.0
    for seed in (0, 1):  # argmin would pick whichever tied run comes first
        shuffled = table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        report = fit_optimum(shuffled, OptimumOptions(bootstrap=0))
        assert report["budgets"][0]["skipped"].startswith(
            "the loss is flat (its runs within 0 % of")
        assert report["laws"]["lr"]["budgets"] == 3


def test_the_bootstrap_refits_the_law_over_the_fits_budgets_only() -> None:
    # budget 0's LR optimum is at the grid's edge: out of the law, and out of every draw's law
    table = _lr_below_the_optimum_at_the_smallest_budget(noise=0.003)
    report = fit_optimum(table, OptimumOptions(bootstrap=200, seed=3))
    lr = report["laws"]["lr"]
    assert lr["budgets"] == 3 and lr["ci95"]["draws"] == 200
    lo, hi = lr["ci95"]["exponent"]
    assert lo < lr["exponent"] < hi and lo < LR_E < hi
    # refitting over the edge budget as well would spread the draws (to [-0.21, -0.06])
    assert hi - lo < 0.03
