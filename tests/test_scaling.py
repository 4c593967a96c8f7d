"""Scaling laws (diver.scaling): the laws against SPEC §4's formulas, the approach-3 fit
(recovery, refusals, bootstrap coverage), the frontier, and the ``scaling`` commands.

Synthetic runs come from :func:`diver.scaling.laws.simulate_runs`, i.e. the same law
code (and the same ``N_opt(U_D)``) the fit uses; :func:`spec_loss` below re-derives
the data-constrained law straight from SPEC §4's text, independently of that code, so
a shared mistake in the two would not go unnoticed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diver.scaling import cli as scaling_cli
from diver.scaling.bootstrap import bootstrap_weights
from diver.scaling.fit import fit_law, fit_point
from diver.scaling.frontier import (
    compute_optimal_rows,
    constrained_optimum,
    frontier_table,
    iso_flop,
    iso_loss,
    plan,
)
from diver.scaling.laws import (
    CHINCHILLA,
    DIVER1_IEEG_1S,
    IEEG_1S_PARAMS,
    IEEG_UNIQUE_TOKENS,
    PARAM_NAMES,
    LawParams,
    compute_optimal,
    design_grid,
    effective_counts,
    log_loss,
    n_opt_for_unique_tokens,
    predict,
    simulate_runs,
)
from diver.scaling.observations import ScalingFitError, make_runs
from diver.scaling.optimise import batched_lbfgs, lbfgs, objective
from diver.scaling.study import FIGURES, fit_study

TRUE = DIVER1_IEEG_1S


def spec_loss(p: LawParams, n: np.ndarray, d: np.ndarray, u: np.ndarray) -> np.ndarray:
    """SPEC §4's data-constrained law written out term by term (no log space)."""
    assert p.R_D_star is not None and p.R_N_star is not None
    u_seen = np.minimum(u, d)
    r_d = np.maximum(d / u_seen - 1.0, 0.0)
    d_eff = u_seen + u_seen * p.R_D_star * (1.0 - np.exp(-r_d / p.R_D_star))
    # N_opt(U_D): SPEC §4's N_opt(C) at the budget C whose D_opt(C) equals U_D.
    g = (p.alpha * p.A / (p.beta * p.B)) ** (1.0 / (p.alpha + p.beta))
    c6 = (g * u_seen) ** ((p.alpha + p.beta) / p.alpha)
    n_opt = g * c6 ** (p.beta / (p.alpha + p.beta))
    u_n = np.minimum(n_opt, n)
    r_n = np.maximum(n / u_n - 1.0, 0.0)
    n_eff = u_n + u_n * p.R_N_star * (1.0 - np.exp(-r_n / p.R_N_star))
    return p.E + p.A / n_eff**p.alpha + p.B / d_eff**p.beta


def design_runs(noise: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
    n, d, u = design_grid()
    return simulate_runs(TRUE, n, d, u, noise=noise, rng=np.random.default_rng(seed))


def chinchilla_runs() -> dict[str, np.ndarray]:
    n = np.repeat(np.logspace(7, 10, 6), 6)
    d = np.tile(np.logspace(9, 12, 6), 6)
    return simulate_runs(CHINCHILLA, n, d)


# --- laws ------------------------------------------------------------------------


def test_law_matches_spec_formula_in_every_regime() -> None:
    n, d, u = design_grid()
    extra_n = np.array([1e5, 1e6, 1e12, 13.03e6, 1.83e9])
    extra_d = np.array([1e8, 5e7, 1e12, 3e8, 1e13])  # incl. D < U_D (part of an epoch)
    extra_u = np.array([1e8, 1e8, 1e9, 3.44e8, 1e9])
    n, d, u = (np.concatenate(p) for p in ((n, extra_n), (d, extra_d), (u, extra_u)))
    for params in (TRUE, LawParams(1.3e3, 2.1e2, 0.5, 0.6, 0.25, 0.7, 40.0)):
        np.testing.assert_allclose(predict(params, n, d, u), spec_loss(params, n, d, u), rtol=1e-12)
    chin = CHINCHILLA.E + CHINCHILLA.A / n**CHINCHILLA.alpha + CHINCHILLA.B / d**CHINCHILLA.beta
    np.testing.assert_allclose(predict(CHINCHILLA, n, d), chin, rtol=1e-12)


def test_n_opt_of_unique_tokens_is_the_compute_optimal_n_for_one_epoch() -> None:
    """N_opt(U_D) is SPEC §4's N_opt(C) at the C whose compute-optimal D is U_D."""
    u = np.array([1e7, IEEG_UNIQUE_TOKENS, 1e11])
    n_u = n_opt_for_unique_tokens(TRUE, u)
    n_c, d_c = compute_optimal(TRUE, 6.0 * n_u * u)
    np.testing.assert_allclose(d_c, u, rtol=1e-10)
    np.testing.assert_allclose(n_c, n_u, rtol=1e-10)
    assert n_u[1] == pytest.approx(5.7593e6, rel=1e-4)  # below every DIVER-1 size
    # With fresh data at the compute-optimal point U_N = N and R_D = 0: the law is
    # Chinchilla's there.
    chin = LawParams(TRUE.A, TRUE.B, TRUE.E, TRUE.alpha, TRUE.beta)
    np.testing.assert_allclose(predict(TRUE, n_c, d_c), predict(chin, n_c, d_c), rtol=1e-9)


@pytest.mark.parametrize("form", ["data-constrained", "chinchilla"])
def test_log_loss_gradient_matches_finite_differences(form: str) -> None:
    rng = np.random.default_rng(3)
    n, d, u = design_grid()
    n = np.concatenate([n, [1e5, 2e6]])  # one run with U_N = N next to U_N < N ones
    d = np.concatenate([d, [1e9, 1e9]])
    u = np.concatenate([u, [1e9, 5e8]])
    base = TRUE.to_vector() if form == "data-constrained" else CHINCHILLA.to_vector()
    args = (np.log(n), np.log(d), np.log(u) if form == "data-constrained" else None)
    for _ in range(4):
        x = base + rng.normal(0.0, 0.2, base.size)
        _, jac = log_loss(x, *args, grad=True)
        assert jac is not None
        h = 1e-6
        for i in range(x.size):
            step = np.zeros_like(x)
            step[i] = h
            numeric = (log_loss(x + step, *args)[0] - log_loss(x - step, *args)[0]) / (2 * h)
            np.testing.assert_allclose(jac[:, i], numeric, rtol=1e-5, atol=1e-7)
    # The batched form agrees with the single-vector one, row by row.
    xs = base + rng.normal(0.0, 0.2, (5, base.size))
    batched, _ = log_loss(xs, *args)
    for row, x in zip(batched, xs, strict=True):
        np.testing.assert_allclose(row, log_loss(x, *args)[0], rtol=1e-13)


def test_design_makes_all_seven_parameters_identifiable() -> None:
    """The test design spans U_N = N, U_N < N and R_D > 0, and its Fisher information
    at 2 % noise pins every parameter; SPEC §3's fixed-U_D grid does not."""
    n, d, u = design_grid()
    counts = effective_counts(TRUE, n, d, u)
    assert 0.3 < np.mean(counts["U_N"] < n) < 0.9
    assert 0.3 < np.mean(counts["R_D"] > 0) < 0.9

    def standard_errors(n: np.ndarray, d: np.ndarray, u: np.ndarray) -> np.ndarray:
        _, jac = log_loss(TRUE.to_vector(), np.log(n), np.log(d), np.log(u), grad=True)
        assert jac is not None
        return 0.02 * np.sqrt(np.diag(np.linalg.inv(jac.T @ jac)))

    se = standard_errors(n, d, u)
    assert np.all(se < 0.35), se  # log A, log B, log E, alpha, beta, log R_D*, log R_N*
    paper_n = np.repeat(IEEG_1S_PARAMS, 6)
    paper_u = np.full(36, float(IEEG_UNIQUE_TOKENS))
    paper_d = paper_u * np.tile([1, 2, 4, 8, 16, 64], 6)
    assert np.all(effective_counts(TRUE, paper_n, paper_d, paper_u)["U_N"] < paper_n)
    assert standard_errors(paper_n, paper_d, paper_u)[0] > 10.0  # log A: unidentified


def test_published_law_reproduces_the_headline_claim() -> None:
    """SPEC §4: 51M at 32 epochs beats 1.8B at 8 epochs (on 9x less compute)."""
    u = float(IEEG_UNIQUE_TOKENS)
    small = predict(TRUE, 51.36e6, 32 * u, u)
    xxl = predict(TRUE, 1.83e9, 8 * u, u)
    assert small < xxl
    assert (1.83e9 * 8) / (51.36e6 * 32) > 8.5  # the XXL run's compute is 8.9x Small's


# --- fit ---------------------------------------------------------------------------


def test_noiseless_fit_recovers_diver1_ieeg_1s_parameters() -> None:
    runs = make_runs(design_runs(), "data-constrained")
    result = fit_law(runs, "data-constrained", bootstrap=0)
    fitted = result.params.to_dict()
    for name, true in TRUE.to_dict().items():
        assert fitted[name] == pytest.approx(true, rel=0.02), name
    assert result.r2_log > 0.999999 and result.r2_linear > 0.999999
    assert result.loo_rmse_log < 1e-4
    assert result.converged


def test_chinchilla_form_recovers_published_chinchilla() -> None:
    runs = make_runs(chinchilla_runs(), "chinchilla")
    best, starts = fit_point(runs, "chinchilla")
    fitted = LawParams.from_vector(best.x).to_dict()
    for name, true in CHINCHILLA.to_dict().items():
        assert fitted[name] == pytest.approx(true, rel=0.01), name
    assert starts == 25 + 8


def test_refuses_too_few_points_constant_and_nan_losses() -> None:
    cols = design_runs()
    few = {k: v[:6] for k, v in cols.items()}
    with pytest.raises(ScalingFitError, match=r"runs.csv: 6 usable run\(s\), fewer than the 7"):
        make_runs(few, "data-constrained", source="runs.csv")
    make_runs({k: v[:6] for k, v in cols.items()}, "chinchilla")  # 6 >= 5: fine
    with pytest.raises(ScalingFitError, match="fewer than the 5 parameters"):
        make_runs({k: v[:4] for k, v in cols.items()}, "chinchilla")
    with pytest.raises(ScalingFitError, match="losses are equal"):
        make_runs({**cols, "loss": np.full(36, 0.1)}, "data-constrained")
    nan_loss = cols["loss"].copy()
    nan_loss[[3, 7]] = np.nan
    with pytest.raises(ScalingFitError, match=r"'loss' has NaN values in 2 row\(s\).*\[3, 7\]"):
        make_runs({**cols, "loss": nan_loss}, "data-constrained")
    with pytest.raises(ScalingFitError, match=r"missing column.*unique_tokens"):
        make_runs({k: v for k, v in cols.items() if k != "unique_tokens"}, "data-constrained")
    with pytest.raises(ScalingFitError, match="'params' has non-finite or non-positive"):
        make_runs({**cols, "params": -cols["params"]}, "data-constrained")


def test_batched_refits_match_scipy_lbfgsb() -> None:
    """Bootstrap refits (batched L-BFGS) reach scipy's L-BFGS-B optimum or better."""
    runs = make_runs(design_runs(noise=0.02, seed=5), "data-constrained")
    best, _ = fit_point(runs, "data-constrained")
    data = runs.logs()
    weights = bootstrap_weights(runs.n, 12, seed=1)
    batch = batched_lbfgs(best.x, data, "data-constrained", weights)
    assert batch.converged.all()
    agree = 0
    for i, w in enumerate(weights):
        ref = lbfgs(best.x, data, "data-constrained", weights=w)
        assert batch.value[i] <= ref.value * (1 + 1e-8)
        assert objective(batch.x[i], data, w)[0] == pytest.approx(batch.value[i], rel=1e-12)
        agree += np.max(np.abs(batch.x[i] - ref.x)) < 1e-3
    assert agree >= 10  # scipy occasionally stops short on the near-L1 objective


def test_bootstrap_is_reproducible_and_independent_of_jobs() -> None:
    runs = make_runs(design_runs(noise=0.02, seed=2), "data-constrained")
    one = fit_law(runs, "data-constrained", bootstrap=160, seed=4, jobs=1, profile=False)
    two = fit_law(runs, "data-constrained", bootstrap=160, seed=4, jobs=2, profile=False)
    np.testing.assert_array_equal(one.bootstrap_samples, two.bootstrap_samples)
    assert one.bootstrap_failed == 0
    for name, (lo, hi) in one.ci.items():
        value = one.params.to_dict()[name]
        assert lo < value < hi, name
    other = fit_law(runs, "data-constrained", bootstrap=160, seed=5, jobs=1, profile=False)
    assert not np.array_equal(one.bootstrap_samples, other.bootstrap_samples)
    assert 0.9 < one.r2_linear < 1.0 and 0.9 < one.r2_log < 1.0
    assert 0.01 < one.loo_rmse_log < 0.05  # ~ the 2 % noise, a little above


# Coverage of the intervals on noisy replicates (slow tier):
# tests/test_scaling_identify.py::test_bootstrap_intervals_cover_the_truth_for_identified_parameters


# --- frontier ------------------------------------------------------------------------


def test_frontier_spends_the_budget_and_scales_as_published() -> None:
    flops = np.logspace(18, 26, 9)
    for params in (TRUE, CHINCHILLA):
        n, d = compute_optimal(params, flops)
        np.testing.assert_allclose(6.0 * n * d, flops, rtol=1e-12)
        slope_n = np.polyfit(np.log(flops), np.log(n), 1)[0]
        slope_d = np.polyfit(np.log(flops), np.log(d), 1)[0]
        assert slope_n == pytest.approx(params.beta / (params.alpha + params.beta), rel=1e-10)
        assert slope_d == pytest.approx(params.alpha / (params.alpha + params.beta), rel=1e-10)
    # Chinchilla's published exponents: N_opt ~ C^0.45.
    assert CHINCHILLA.beta / (CHINCHILLA.alpha + CHINCHILLA.beta) == pytest.approx(0.4516, 1e-3)


def test_frontier_point_minimises_the_iso_flop_curve() -> None:
    flops = np.array([1e19, 1e21, 1e23])
    for params in (TRUE, CHINCHILLA):
        n_opt, _ = compute_optimal(params, flops)
        factors = np.array([1 / 1.5, 1 / 1.05, 1.0, 1.05, 1.5])
        for c, n0 in zip(flops, n_opt, strict=True):
            curve = iso_flop(params, [c], n0 * factors)[0]  # fresh data
            assert np.argmin(curve) == 2


def test_frontier_table_bands_contain_the_point_estimates() -> None:
    runs = make_runs(design_runs(noise=0.02, seed=8), "data-constrained")
    result = fit_law(runs, "data-constrained", bootstrap=100, seed=0, jobs=1)
    table = frontier_table(result.params, np.logspace(17, 23, 7), result.bootstrap_samples)
    np.testing.assert_allclose(6 * table["N_opt"] * table["D_opt"], table["C"], rtol=1e-12)
    for col in ("N_opt", "D_opt", "loss"):
        assert (table[f"{col}_lo"] <= table[col] * (1 + 1e-9)).all()
        assert (table[col] <= table[f"{col}_hi"] * (1 + 1e-9)).all()
    # Samples' allocations are the same formula row by row.
    n_rows, d_rows = compute_optimal_rows(result.x[None, :], table["C"].to_numpy())
    np.testing.assert_allclose(n_rows[0], table["N_opt"], rtol=1e-10)
    np.testing.assert_allclose(d_rows[0], table["D_opt"], rtol=1e-10)


@pytest.mark.parametrize("unique", [None, 3.44e8])
def test_iso_loss_curves_reach_their_loss(unique: float | None) -> None:
    n = np.logspace(6, 11, 11)
    for params in (TRUE, CHINCHILLA) if unique is None else (TRUE,):
        target = float(predict(params, 1e8, 1e10, unique)) * 1.02
        d = iso_loss(params, target, n, unique)
        ok = np.isfinite(d)
        assert ok.sum() >= 4
        np.testing.assert_allclose(predict(params, n[ok], d[ok], unique), target, rtol=1e-8)
        # Unreachable: small models cannot get there with any data.
        assert not ok[0]


def test_constrained_optimum_beats_the_unconstrained_allocation_when_data_is_short() -> None:
    u = 3.44e8
    for c in (1e18, 1e19, 1e20):
        n_c, d_c, loss_c = constrained_optimum(TRUE, c, u)
        assert 6 * n_c * d_c == pytest.approx(c, rel=1e-12)
        n_opt, d_opt = compute_optimal(TRUE, c)
        assert loss_c <= float(predict(TRUE, n_opt, d_opt, u)) * (1 + 1e-12)
        for f in (0.8, 1.25):
            assert loss_c <= float(predict(TRUE, n_c * f, c / (6 * n_c * f), u)) * (1 + 1e-12)
    # With plenty of unique data the two allocations coincide.
    n_c, _, _ = constrained_optimum(TRUE, 1e19, 1e15)
    assert n_c == pytest.approx(float(compute_optimal(TRUE, 1e19)[0]), rel=1e-3)


def test_plan_reports_epochs_and_intervals() -> None:
    runs = make_runs(design_runs(noise=0.02, seed=9), "data-constrained")
    result = fit_law(runs, "data-constrained", bootstrap=100, seed=0, jobs=1)
    out = plan(result.params, 1e20, 3.44e8, result.bootstrap_samples)
    n, d = out["N_opt"]["value"], out["D_opt"]["value"]
    assert 6 * n * d == pytest.approx(1e20, rel=1e-12)
    assert out["epochs"]["value"] == pytest.approx(d / 3.44e8)
    for key in ("N_opt", "D_opt", "epochs", "loss"):
        lo, hi = out[key]["ci"]
        assert lo <= out[key]["value"] * (1 + 1e-9) and out[key]["value"] <= hi * (1 + 1e-9)
    assert out["constrained"]["loss"]["value"] <= out["loss"]["value"] * (1 + 1e-12)
    with pytest.raises(ValueError, match="positive"):
        plan(result.params, -1.0)


# --- command line ------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    """The way diver/cli.py wires it: register() on the top-level subparsers."""
    parser = argparse.ArgumentParser(prog="diver")
    scaling_cli.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_fit_and_plan_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    runs_csv = tmp_path / "runs.csv"
    pd.DataFrame(design_runs(noise=0.02, seed=11)).to_csv(runs_csv, index=False)
    out = tmp_path / "fit"
    argv = ["scaling", "fit", "--runs", str(runs_csv), "--out", str(out), "--bootstrap", "80"]
    args = _parser().parse_args([*argv, "--audit", "1"])
    assert args.func(args) == 0
    assert "R_N_star" in capsys.readouterr().out

    summary = json.loads((out / "fit.json").read_text())
    names = PARAM_NAMES["data-constrained"]
    assert summary["form"] == "data-constrained" and summary["n_points"] == 36
    assert summary["bootstrap"] == 80
    for name in names:
        lo, hi = summary["ci"][name]
        assert lo <= summary[name] <= hi
    for name in ("alpha", "beta"):
        assert summary[name] == pytest.approx(TRUE.to_dict()[name], rel=0.1)
    for key in ("r2_linear", "r2_log", "loo_rmse_log"):
        assert np.isfinite(summary[key])
    samples = pd.read_csv(out / "bootstrap.csv")
    assert list(samples.columns) == [*names, "converged", "start"] and len(samples) == 80
    assert samples["converged"].sum() == 80 - summary["bootstrap_failed"]
    assert samples.loc[samples["converged"], list(names)].notna().all().all()
    frontier = pd.read_csv(out / "frontier.csv")
    assert {"C", "N_opt", "D_opt", "loss", "loss_lo", "loss_hi"} <= set(frontier.columns)
    run_flops = 6 * np.asarray(design_runs()["params"]) * np.asarray(design_runs()["tokens"])
    assert frontier["C"].min() < run_flops.min() and frontier["C"].max() > run_flops.max()
    for png in FIGURES:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp-*"))

    args = _parser().parse_args(
        ["scaling", "plan", "--fit", str(out / "fit.json"), "--flops", "1e20", "--format", "json"]
    )
    assert args.func(args) == 0
    planned = json.loads(capsys.readouterr().out)
    assert 6 * planned["N_opt"]["value"] * planned["D_opt"]["value"] == pytest.approx(1e20)
    assert len(planned["loss"]["ci"]) == 2 and "epochs" not in planned

    plan_args = ["scaling", "plan", "--fit", str(out / "fit.json"), "--flops", "1e20"]
    args = _parser().parse_args([*plan_args, "--unique-tokens", "3.44e8"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "epochs" in text and "best allocation with U_D" in text and "[" in text


def test_fit_study_chinchilla_form_without_unique_tokens(tmp_path: Path) -> None:
    runs_csv = tmp_path / "runs.csv"
    cols = chinchilla_runs()
    pd.DataFrame({k: cols[k] for k in ("params", "tokens", "loss")}).to_csv(runs_csv, index=False)
    out = tmp_path / "fit"
    fit_study(runs_csv, out, form="chinchilla", bootstrap=0)
    summary = json.loads((out / "fit.json").read_text())
    assert summary["E"] == pytest.approx(1.69, rel=0.01)
    assert "R_D_star" not in summary and summary["files"]["bootstrap"] is None
    assert not (out / "bootstrap.csv").exists()


def test_cli_bad_input_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "runs.csv"
    cols = design_runs()
    pd.DataFrame({k: v for k, v in cols.items() if k != "loss"}).to_csv(bad, index=False)
    code = scaling_cli.main(["scaling", "fit", "--runs", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "missing column" in err and "loss" in err

    frame = pd.DataFrame(cols)
    frame.loc[5, "loss"] = np.nan
    frame.to_csv(bad, index=False)
    assert scaling_cli.main(["scaling", "fit", "--runs", str(bad), "--out", str(tmp_path)]) == 2
    assert "NaN" in capsys.readouterr().err

    missing = tmp_path / "nope.csv"
    assert scaling_cli.main(["scaling", "fit", "--runs", str(missing), "--out", "x"]) == 2
    assert f"{missing}: no such runs file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_plan_standalone_process_rejects_a_broken_fit(tmp_path: Path) -> None:
    broken = tmp_path / "fit.json"
    broken.write_text(json.dumps({"form": "data-constrained", "A": 1.0}))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from diver.scaling.cli import main; sys.exit(main())",
            "scaling",
            "plan",
            "--fit",
            str(broken),
            "--flops",
            "1e20",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert str(broken) in proc.stderr and "missing" in proc.stderr
