"""Chinchilla approach-3 fit of a scaling law, with Besiroglu et al.'s corrections.

The objective and the optimisers are :mod:`diver.scaling.optimise`'s, the intervals
:mod:`diver.scaling.bootstrap`'s; this module finds the point estimate and assembles
the :class:`FitResult` (SPEC §4).

Initialisations: SPEC §4's grid (``alpha, beta`` in ``{0, 0.5, ..., 2}``, ``e`` in
``{-1, ..., 1}``, ``a, b`` in ``{0, 5, ..., 25}``) with ``e`` extended down to -6 (DIVER-1's
``E`` are 0.0004-0.0092, ``log E`` down to -7.8) and, for the data-constrained form,
``log R_D*, log R_N*`` in ``{0, 1, 2, 3}``: 13,500 Chinchilla / 216,000 data-constrained
starts.  Running L-BFGS to convergence from every one of them would take hours, so
the whole grid is *screened* (the objective evaluated at every start, vectorised),
L-BFGS runs from the best start of each ``(alpha, beta)`` cell plus the 8 best
overall (33 starts), the 3 best distinct optima are finished by scipy's L-BFGS-B, and
the best is kept.  In the data-constrained form ``alpha = 0`` (or ``beta = 0``) makes
``N_opt(U_D)`` undefined (it divides by ``alpha``), so there the grid's 0 becomes 0.05.

Goodness of fit: R^2 in linear and log space and the leave-one-out prediction error
(each point predicted by a fit without it, warm-started the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diver.scaling.bootstrap import (
    CI_LEVEL,
    DEFAULT_BOOTSTRAP,
    bootstrap_weights,
    leave_one_out,
    natural,
    percentile_intervals,
    refit_weighted,
)
from diver.scaling.laws import LOG_NAMES, PARAM_NAMES, Form, LawParams, check_form, log_loss
from diver.scaling.observations import Runs, ScalingFitError
from diver.scaling.optimise import (
    HUBER_DELTA,
    Optimum,
    batched_lbfgs,
    huber,
    lbfgs,
)

#: Screened starts beyond the best one per (alpha, beta) cell.
EXTRA_STARTS = 8

_START_ITER = 1000  # batched L-BFGS iterations per grid start before scipy finishes
_POLISHED = 3  # distinct start optima finished by scipy's L-BFGS-B
_ALPHA_FLOOR = 0.05  # replaces the grid's alpha/beta = 0 in the data-constrained form


def initial_grid(form: str) -> NDArray[np.float64]:
    """SPEC §4's grid of initialisations, extended (module doc), shape ``(m, k)``."""
    check_form(form)
    ab = np.arange(0.0, 2.01, 0.5)
    if form == "data-constrained":
        ab = np.where(ab == 0.0, _ALPHA_FLOOR, ab)
    axes = [
        np.arange(0.0, 25.1, 5.0),  # a
        np.arange(0.0, 25.1, 5.0),  # b
        np.arange(-6.0, 1.01, 0.5),  # e
        ab,  # alpha
        ab,  # beta
    ]
    if form == "data-constrained":
        axes += [np.arange(0.0, 3.1, 1.0), np.arange(0.0, 3.1, 1.0)]  # log R_D*, log R_N*
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def screen(
    grid: NDArray[np.float64],
    data: tuple[NDArray[np.float64], ...],
    delta: float = HUBER_DELTA,
    chunk: int = 8192,
) -> NDArray[np.float64]:
    """Objective at every row of ``grid`` (vectorised in chunks), shape ``(m,)``."""
    log_n, log_d, log_ud, log_l = data
    out = np.empty(grid.shape[0])
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, grid.shape[0], chunk):
            block = grid[start : start + chunk]
            pred, _ = log_loss(block, log_n, log_d, log_ud if block.shape[1] == 7 else None)
            value, _ = huber(pred - log_l, delta)
            out[start : start + chunk] = value.sum(axis=1)
    return np.where(np.isfinite(out), out, np.inf)


def select_starts(
    grid: NDArray[np.float64], values: NDArray[np.float64], extra: int = EXTRA_STARTS
) -> NDArray[np.float64]:
    """The best grid point of each ``(alpha, beta)`` cell, then the ``extra`` best overall.

    One start per exponent pair keeps the starts spread over the basins the exponents
    define (the best points overall tend to sit in one basin).
    """
    order = np.argsort(values, kind="stable")
    chosen: list[int] = []
    seen: set[tuple[float, float]] = set()
    for i in order:
        if not np.isfinite(values[i]):
            break
        cell = (float(grid[i, 3]), float(grid[i, 4]))
        if cell not in seen:
            seen.add(cell)
            chosen.append(int(i))
    chosen_set = set(chosen)
    added = 0
    for i in order:
        if added >= extra or not np.isfinite(values[i]):
            break
        if int(i) not in chosen_set:
            chosen.append(int(i))
            added += 1
    return grid[chosen]


def fit_point(
    runs: Runs,
    form: str,
    *,
    delta: float = HUBER_DELTA,
    extra_starts: int = EXTRA_STARTS,
) -> tuple[Optimum, int]:
    """The approach-3 optimum over the initialisation grid: ``(best, number of starts)``.

    Starts: the best grid point of each ``(alpha, beta)`` cell and the
    ``extra_starts`` best others (module doc).  They run together through
    :func:`batched_lbfgs`; the best distinct optima are then restarted with scipy's
    L-BFGS-B until that gains nothing more, so the reported point is a scipy L-BFGS-B
    optimum.  (Why not scipy from every start: besides its per-call overhead, scipy's
    L-BFGS-B calls multi-threaded OpenBLAS on 7-vectors, which on a busy 2-core
    machine costs it 10x in spinning threads.)
    """
    check_form(form)
    data = runs.logs()
    grid = initial_grid(form)
    starts = select_starts(grid, screen(grid, data, delta), extra=extra_starts)
    batch = batched_lbfgs(
        starts, data, form, np.ones((starts.shape[0], runs.n)), delta, max_iter=_START_ITER
    )
    values, optima = batch.value, batch.x
    # The few starts still crawling after _START_ITER iterations sit in flat regions;
    # scipy finishes the best _POLISHED distinct candidates, and the best result wins.
    candidates: list[NDArray[np.float64]] = []
    for j in np.argsort(values, kind="stable"):
        if not np.isfinite(values[j]) or len(candidates) == _POLISHED:
            break
        if all(np.max(np.abs(optima[j] - c)) > 1e-6 for c in candidates):
            candidates.append(optima[j])
    best: Optimum | None = None
    for x in candidates:
        opt = lbfgs(x, data, form, delta=delta)
        # L-BFGS restarted at its own optimum discards a stale curvature model, which
        # on a nearly piecewise-linear (Huber) objective can still gain a little.
        for _ in range(5):
            again = lbfgs(opt.x, data, form, delta=delta)
            if again.value >= opt.value - 1e-15 * max(1.0, abs(opt.value)):
                break
            opt = again
        if best is None or opt.value < best.value:
            best = opt
    if best is None:
        raise ScalingFitError(f"{runs.source}: the objective is not finite at any start")
    return best, int(starts.shape[0])


def r_squared(observed: ArrayLike, predicted: ArrayLike) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``."""
    obs = np.asarray(observed, dtype=float)
    pred = np.asarray(predicted, dtype=float)
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    return 1.0 - float(np.sum((obs - pred) ** 2)) / ss_tot


@dataclass
class FitResult:
    """A fitted law with its goodness of fit and (optionally) bootstrap intervals."""

    form: Form
    params: LawParams
    x: NDArray[np.float64]
    objective: float
    converged: bool
    n_points: int
    n_starts: int
    r2_linear: float
    r2_log: float
    loo_rmse_log: float
    loo_mape: float
    bootstrap: int = 0
    bootstrap_samples: NDArray[np.float64] = field(default_factory=lambda: np.empty((0, 0)))
    bootstrap_failed: int = 0
    ci: dict[str, list[float]] = field(default_factory=dict)
    seed: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (``fit.json``'s content, minus file references)."""
        out: dict[str, Any] = {"form": self.form}
        out.update(self.params.to_dict())
        out.update(
            {
                "ci": self.ci,
                "ci_level": CI_LEVEL,
                "r2_linear": self.r2_linear,
                "r2_log": self.r2_log,
                "loo_rmse_log": self.loo_rmse_log,
                "loo_mape": self.loo_mape,
                "n_points": self.n_points,
                "bootstrap": self.bootstrap,
                "bootstrap_failed": self.bootstrap_failed,
                "seed": self.seed,
                "objective": self.objective,
                "converged": self.converged,
                "n_starts": self.n_starts,
                "huber_delta": HUBER_DELTA,
                "log_params": dict(zip(LOG_NAMES[self.form], self.x.tolist(), strict=True)),
            }
        )
        return out


def fit_law(
    runs: Runs,
    form: str = "data-constrained",
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    jobs: int | None = 1,
    extra_starts: int = EXTRA_STARTS,
) -> FitResult:
    """Approach-3 fit of ``form`` to ``runs``, R^2, leave-one-out error, bootstrap CIs.

    ``bootstrap`` = 0 skips the intervals.  Reproducible for a given ``seed`` whatever
    ``jobs`` is.
    """
    form = check_form(form)
    best, n_starts = fit_point(runs, form, extra_starts=extra_starts)
    log_n, log_d, log_ud, log_l = runs.logs()
    pred, _ = log_loss(best.x, log_n, log_d, log_ud if form == "data-constrained" else None)
    loo = leave_one_out(runs, form, best.x, jobs=jobs)
    result = FitResult(
        form=form,
        params=LawParams.from_vector(best.x),
        x=best.x,
        objective=best.value,
        converged=best.converged,
        n_points=runs.n,
        n_starts=n_starts,
        r2_linear=r_squared(runs.loss, np.exp(pred)),
        r2_log=r_squared(log_l, pred),
        loo_rmse_log=float(np.sqrt(np.mean((loo - log_l) ** 2))),
        loo_mape=float(np.mean(np.abs(np.exp(loo - log_l) - 1.0))),
        seed=seed,
    )
    if bootstrap > 0:
        weights = bootstrap_weights(runs.n, bootstrap, seed)
        xs, ok = refit_weighted(best.x, runs, form, weights, jobs=jobs)
        samples = natural(xs, form)
        samples[~ok] = np.nan
        result.bootstrap = bootstrap
        result.bootstrap_samples = samples
        result.bootstrap_failed = int((~ok).sum())
        result.ci = percentile_intervals(samples, PARAM_NAMES[form])
    return result
