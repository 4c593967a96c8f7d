"""Scaling-fit benchmark: 4,000 bootstrap refits of a 36-run grid, multistart against
the old single-start refit, measured in the same run.

The runs are the test design (``diver.scaling.laws.design_grid``: the six 1 s sizes of
SPEC §2 x six (data fraction, epochs) columns) generated from DIVER-1's iEEG 1 s law
(SPEC §4) with 2 % multiplicative noise, fitted in the data-constrained form.

Timed, each on its own:

- ``cold fit``: :func:`diver.scaling.fit.fit_point_full` - the screen of the 216,000-point
  initialisation grid, batched L-BFGS from the 33 selected starts, scipy L-BFGS-B
  finishing the best three, the distinct optima kept as bootstrap starts;
- ``single-start bootstrap`` (the procedure before issue 17):
  :func:`diver.scaling.bootstrap.refit_weighted`, each resample one L-BFGS
  warm-started at the full-sample optimum;
- ``multistart bootstrap`` (what ``diver scaling fit`` runs):
  :func:`diver.scaling.bootstrap.refit_multistart` from the full-sample optimum and the
  best distinct optima of the grid starts (up to ``BOOTSTRAP_STARTS``), by run;
- ``scipy sample``: single-start refits one at a time through
  ``scipy.optimize.minimize`` (L-BFGS-B) for the first ``--scipy-sample`` resamples,
  as the reference cost.

Prints both bootstrap wall times, their ratio, the starts used and how often a start
other than the full-sample optimum won (a resample that the single-start refit would
have left in the wrong basin), and exits 1 when the multistart bootstrap is over the
budget (60 s on a 2-core machine).

    python benchmarks/bench_scaling.py [--samples 4000] [--jobs 2] [--scipy-sample 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from diver.scaling.bootstrap import (
    BOOTSTRAP_STARTS,
    bootstrap_weights,
    natural,
    percentile_intervals,
    refit_multistart,
    refit_weighted,
)
from diver.scaling.fit import fit_point_full
from diver.scaling.laws import DIVER1_IEEG_1S, PARAM_NAMES, design_grid, simulate_runs
from diver.scaling.observations import make_runs
from diver.scaling.optimise import batch_objective, lbfgs

BUDGET_S = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000, help="bootstrap resamples")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes")
    parser.add_argument("--scipy-sample", type=int, default=40, help="scipy refits to time")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    n, d, u = design_grid()
    cols = simulate_runs(DIVER1_IEEG_1S, n, d, u, noise=0.02, rng=np.random.default_rng(args.seed))
    runs = make_runs(cols, "data-constrained", source="benchmark grid")
    form = "data-constrained"

    t0 = time.perf_counter()
    point = fit_point_full(runs, form)
    cold = time.perf_counter() - t0
    best = point.best
    starts = point.optima[:BOOTSTRAP_STARTS]

    weights = bootstrap_weights(runs.n, args.samples, args.seed)
    data = runs.logs()
    t0 = time.perf_counter()
    for w in weights[: args.scipy_sample]:
        lbfgs(best.x, data, form, weights=w)
    scipy_each = (time.perf_counter() - t0) / max(1, args.scipy_sample)

    t0 = time.perf_counter()
    xs_single, ok_single = refit_weighted(best.x, runs, form, weights, jobs=args.jobs)
    single = time.perf_counter() - t0

    t0 = time.perf_counter()
    refits = refit_multistart(starts, runs, form, weights, jobs=args.jobs)
    multi = time.perf_counter() - t0
    ok = refits.ok

    print(f"runs: {runs.n} (36-run design, 2 % noise), form {form}, {os.cpu_count()} CPUs")
    print(f"cold fit (screen + {point.n_starts} starts + polish): {cold:8.2f} s")
    print(
        f"single-start bootstrap, {args.samples} refits, jobs={args.jobs}: {single:8.2f} s  "
        f"({ok_single.sum()} converged)"
    )
    print(
        f"multistart bootstrap, {args.samples} refits x {starts.shape[0]} starts, "
        f"jobs={args.jobs}: {multi:8.2f} s  ({ok.sum()} converged)"
    )
    print(f"ratio multistart / single-start: {multi / single:.2f}")
    moved = int((refits.start > 0).sum())
    single_values, _ = batch_objective(xs_single, data, weights)
    gained = int(np.sum(refits.value < single_values * (1.0 - 1e-6)))
    print(
        f"resamples whose best start was not the full-sample optimum: {moved}; "
        f"multistart optimum lower than the single-start one: {gained} "
        f"({100 * gained / args.samples:.2f} %)"
    )
    per_refit = multi / args.samples
    print(f"per multistart refit: {1e3 * per_refit:.2f} ms = {per_refit / cold:.2e} x one cold fit")
    if args.scipy_sample:
        print(
            f"scipy L-BFGS-B one at a time: {1e3 * scipy_each:.1f} ms per single-start refit "
            f"({args.samples * scipy_each:.0f} s for {args.samples} on one core)"
        )
    ci = percentile_intervals(natural(refits.x[ok], form), PARAM_NAMES[form])
    print("95 % intervals: " + ", ".join(f"{k} [{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in ci.items()))
    verdict = "PASS" if multi < BUDGET_S else "FAIL"
    print(f"{verdict}: {args.samples} multistart refits in {multi:.1f} s (budget {BUDGET_S:.0f} s)")
    return 0 if multi < BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
