"""Uncertainty of a fitted law: bootstrap over runs and leave-one-out refits.

Bootstrap over runs (resampling the rows with replacement, 4,000 resamples by default
as in Besiroglu et al. 2024), each refit warm-started from the full-sample optimum
with a single L-BFGS run (a resample is a re-weighting of the same points, so the
resample's optimum lies near it); 95 % percentile intervals (SPEC §4 asks for the
law's parameters with their uncertainty).  Leave-one-out is the same machinery with
weight 0 on one run: each point predicted by a fit without it.

Kept apart from the point fit (:mod:`diver.scaling.fit`) because this is the costly,
parallel part: it fans the re-weighted problems out over processes, and its results
must not depend on how many.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from numpy.typing import NDArray

from diver.scaling.laws import check_form, log_loss
from diver.scaling.observations import Runs
from diver.scaling.optimise import HUBER_DELTA, BatchOptimum, batched_lbfgs

#: Bootstrap resamples (Besiroglu et al. 2024).
DEFAULT_BOOTSTRAP = 4000
#: Coverage of the reported intervals.
CI_LEVEL = 0.95


def _refit_chunk(
    x0: NDArray[np.float64],
    data: tuple[NDArray[np.float64], ...],
    form: str,
    weights: NDArray[np.float64],
    delta: float,
) -> BatchOptimum:
    """Warm-started refits of a chunk of problems (a process-pool work item)."""
    return batched_lbfgs(x0, data, form, weights, delta)


def refit_weighted(
    x0: NDArray[np.float64],
    runs: Runs,
    form: str,
    weights: NDArray[np.float64],
    *,
    delta: float = HUBER_DELTA,
    jobs: int | None = 1,
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """One warm-started L-BFGS per row of ``weights`` (``(B, n)`` run multiplicities).

    A bootstrap resample is the same runs with integer weights (how often each was
    drawn), and leave-one-out is weight 0 on one run, so both are this.  The rows are
    solved together by :func:`batched_lbfgs`, split into ``jobs`` contiguous chunks on
    a process pool when ``jobs > 1`` (``None``: one per CPU); the results do not
    depend on ``jobs``.  Returns the log-space optima and whether each is usable.
    """
    data = runs.logs()
    jobs = (os.cpu_count() or 1) if jobs is None else max(1, int(jobs))
    rows = weights.shape[0]
    if jobs == 1 or rows < 64 * jobs:
        parts = [_refit_chunk(x0, data, form, weights, delta)]
    else:
        pieces = np.array_split(np.arange(rows), jobs)
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [
                pool.submit(_refit_chunk, x0, data, form, weights[idx], delta) for idx in pieces
            ]
            parts = [fut.result() for fut in futures]
    xs = np.concatenate([p.x for p in parts])
    values = np.concatenate([p.value for p in parts])
    ok = np.isfinite(values) & np.all(np.isfinite(xs), axis=1)
    return xs, ok


def bootstrap_weights(n: int, samples: int, seed: int) -> NDArray[np.float64]:
    """``(samples, n)`` multiplicities of ``n`` runs drawn with replacement."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(samples, n))
    counts = np.zeros((samples, n))
    np.add.at(counts, (np.repeat(np.arange(samples), n), draws.ravel()), 1.0)
    return counts


def natural(x: NDArray[np.float64], form: str) -> NDArray[np.float64]:
    """Log-space rows -> natural parameters (``A, B, E, alpha, beta[, R_D*, R_N*]``)."""
    out = np.array(x, dtype=float, copy=True)
    out[..., :3] = np.exp(out[..., :3])
    if check_form(form) == "data-constrained":
        out[..., 5:] = np.exp(out[..., 5:])
    return out


def percentile_intervals(
    samples: NDArray[np.float64], names: tuple[str, ...], level: float = CI_LEVEL
) -> dict[str, list[float]]:
    """Percentile intervals ``{name: [lo, hi]}`` of the finite bootstrap rows."""
    finite = samples[np.all(np.isfinite(samples), axis=1)]
    if finite.shape[0] == 0:
        return {name: [math.nan, math.nan] for name in names}
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail], axis=0)
    return {name: [float(lo[i]), float(hi[i])] for i, name in enumerate(names)}


def leave_one_out(
    runs: Runs, form: str, x_hat: NDArray[np.float64], *, jobs: int | None = 1
) -> NDArray[np.float64]:
    """log-loss prediction of each run by the fit without it (warm-started at ``x_hat``)."""
    weights = 1.0 - np.eye(runs.n)
    xs, _ = refit_weighted(x_hat, runs, form, weights, jobs=jobs)
    log_n, log_d, log_ud, _ = runs.logs()
    preds = np.empty(runs.n)
    for i in range(runs.n):
        ud = log_ud[i : i + 1] if form == "data-constrained" else None
        pred, _ = log_loss(xs[i], log_n[i : i + 1], log_d[i : i + 1], ud)
        preds[i] = pred[0]
    return preds
