"""The report's scaling section shows what issue 17 asks of a fit: identification
verdicts, profile intervals (not percentile ones) for parameters the design does not
identify, the profile curves, how the bootstrap was made (unit, starts, convergence,
audit), and with ``--form auto`` both laws side by side.

The fits are real ``fit_study`` runs on generated points: a Chinchilla law without an
irreducible loss (``E`` runs to its search bound: not identified), its points paired
into runs by ``run_dir``; and the identifiable 36-run design under ``--form auto``.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from diver.report.html import fmt_number
from diver.report.sections import fit_block, scaling_section
from diver.scaling.laws import DIVER1_IEEG_1S, LawParams, design_grid, simulate_runs
from diver.scaling.study import FIGURES, fit_study
from diver.study.artifacts import FitSummary


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scaling-report")
    # A Chinchilla law without an irreducible loss (E = 0): E is not identified.
    n = np.repeat(np.logspace(7, 10, 6), 6)
    d = np.tile(np.logspace(9, 12, 6), 6)
    law = LawParams(A=406.4, B=410.7, E=1e-12, alpha=0.34, beta=0.28)
    cols = simulate_runs(law, n, d, noise=0.01, rng=np.random.default_rng(1))
    runs = root / "runs.csv"
    pd.DataFrame({**cols, "run_dir": [f"run{i // 2}" for i in range(n.size)]}).to_csv(
        runs, index=False
    )
    fit_study(runs, root / "ch", form="chinchilla", bootstrap=20, audit=1)
    # The identifiable design, auto: both laws fitted, the data-constrained one chosen.
    n, d, u = design_grid()
    cols = simulate_runs(DIVER1_IEEG_1S, n, d, u, noise=0.02, rng=np.random.default_rng(5))
    good = root / "good.csv"
    pd.DataFrame(cols).to_csv(good, index=False)
    fit_study(good, root / "auto", bootstrap=0)
    return {"ch": root / "ch" / "fit.json", "auto": root / "auto" / "fit.json"}


def test_fit_block_shows_verdicts_profile_intervals_and_procedure(fits: dict[str, Path]) -> None:
    fit = FitSummary.from_json(fits["ch"])
    assert "E" in fit.extra["not_identified"]
    html = fit_block(fit, fits["ch"])
    assert "Not identified by this design: E" in html
    assert "not identified by this design (the profile likelihood stays within" in html
    # E's row: a profile interval open at the search bound, not a percentile interval.
    row = re.search(r"<tr><td class=\"text\">E</td>(.*?)</tr>", html)
    assert row is not None and "profile [bound," in row.group(1)
    lo, hi = fit.extra["profile_ci"]["E"]
    assert lo < fit.params["E"] < hi or lo <= fit.params["E"]
    # Identified parameters keep their bootstrap interval.
    row = re.search(r"<tr><td class=\"text\">β</td>(.*?)</tr>", html)
    assert row is not None and "[" in row.group(1) and "profile" not in row.group(1)
    assert "identified" in row.group(1)
    # How the intervals were made.
    assert "20 bootstrap resamples by run (run_dir)" in html
    assert "did not converge and are excluded" in html
    assert "audit: " in html and "Huber scale" in html and "condition number" in html
    # The profile figure is embedded with its caption.
    assert "profiles.png" in FIGURES and "Profile likelihood of each free parameter" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) == len(FIGURES)
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)


def test_auto_fit_shows_both_laws_side_by_side(fits: dict[str, Path]) -> None:
    fit = FitSummary.from_json(fits["auto"])
    assert fit.form == "data-constrained"
    assert set(fit.extra["forms"]) == {"data-constrained", "chinchilla"}
    html = scaling_section([fits["auto"]])
    assert "Both laws (--form auto)" in html and "data-constrained (chosen)" in html
    table = html[html.index("Both laws") :]
    assert "held-out RMSE (log loss)" in table and "not identified" in table
    for law in ("data-constrained", "chinchilla"):
        rmse = fit.extra["forms"][law]["loo_rmse_log"]
        assert fmt_number(rmse) in table, law
    assert "by evidence, the data-constrained law" in table
