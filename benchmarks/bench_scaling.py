"""Scaling-fit benchmark: 4,000 bootstrap refits of a 36-run grid, against one cold fit.

The runs are the test design (``diver.scaling.laws.design_grid``: the six 1 s sizes of
SPEC §2 x six (data fraction, epochs) columns) generated from DIVER-1's iEEG 1 s law
(SPEC §4) with 2 % multiplicative noise, fitted in the data-constrained form.

Timed, each on its own:

- ``cold fit``: :func:`diver.scaling.fit.fit_point` - the screen of the 216,000-point
  initialisation grid, batched L-BFGS from the 33 selected starts, scipy L-BFGS-B
  finishing the best three;
- ``bootstrap``: :func:`diver.scaling.bootstrap.refit_weighted` on 4,000 resamples, each a
  single L-BFGS warm-started at the full-sample optimum (the batched solver, split
  over ``--jobs`` processes);
- ``scipy sample``: the same refits one at a time through ``scipy.optimize.minimize``
  (L-BFGS-B) for the first ``--scipy-sample`` resamples, as the reference cost.  Its
  cost depends on OpenBLAS threading (scipy's L-BFGS-B calls BLAS on 7-vectors, and
  idle OpenBLAS threads spin): on a busy 2-core machine ~20 ms per refit with
  ``OPENBLAS_NUM_THREADS=1``, several times that without.

Prints the bootstrap's wall time (budget: 60 s on a 2-core machine; exit status 1
when over), the per-refit cost, and its ratio to one cold fit.

    python benchmarks/bench_scaling.py [--samples 4000] [--jobs 2] [--scipy-sample 40]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from diver.scaling.bootstrap import (
    bootstrap_weights,
    natural,
    percentile_intervals,
    refit_weighted,
)
from diver.scaling.fit import fit_point
from diver.scaling.laws import DIVER1_IEEG_1S, PARAM_NAMES, design_grid, simulate_runs
from diver.scaling.observations import make_runs
from diver.scaling.optimise import lbfgs

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
    best, starts = fit_point(runs, form)
    cold = time.perf_counter() - t0

    weights = bootstrap_weights(runs.n, args.samples, args.seed)
    data = runs.logs()
    t0 = time.perf_counter()
    for w in weights[: args.scipy_sample]:
        lbfgs(best.x, data, form, weights=w)
    scipy_each = (time.perf_counter() - t0) / max(1, args.scipy_sample)

    t0 = time.perf_counter()
    xs, ok = refit_weighted(best.x, runs, form, weights, jobs=args.jobs)
    boot = time.perf_counter() - t0

    per_refit = boot / args.samples
    print(f"runs: {runs.n} (36-run design, 2 % noise), form {form}, {os.cpu_count()} CPUs")
    print(f"cold fit (screen + {starts} starts + polish): {cold:8.2f} s")
    print(
        f"bootstrap, {args.samples} warm-started refits, jobs={args.jobs}: {boot:8.2f} s  "
        f"({ok.sum()} usable)"
    )
    print(f"per refit: {1e3 * per_refit:.2f} ms = {per_refit / cold:.2e} x one cold fit")
    if args.scipy_sample:
        print(
            f"scipy L-BFGS-B one at a time: {1e3 * scipy_each:.1f} ms per refit "
            f"({scipy_each / per_refit:.1f}x the batched cost; "
            f"{args.samples * scipy_each:.0f} s for {args.samples} on one core)"
        )
    ci = percentile_intervals(natural(xs[ok], form), PARAM_NAMES[form])
    print("95 % intervals: " + ", ".join(f"{k} [{lo:.4g}, {hi:.4g}]" for k, (lo, hi) in ci.items()))
    verdict = "PASS" if boot < BUDGET_S else "FAIL"
    print(f"{verdict}: {args.samples} refits in {boot:.1f} s (budget {BUDGET_S:.0f} s)")
    return 0 if boot < BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
