"""Chinchilla approach-3 fit of a scaling law, with Besiroglu et al.'s corrections.

What is minimised (SPEC §4; Hoffmann et al. 2022, Appendix D.2)::

    sum_i Huber_delta( LSE(a - alpha log N'_i, b - beta log D'_i, e) - log L_i ),  delta = 1e-3

over ``x = (a, b, e, alpha, beta[, log R_D*, log R_N*])`` with ``A = e^a`` etc., by
L-BFGS-B (``scipy.optimize.minimize``) with the exact gradient of
:func:`diver.scaling.laws.log_loss`.  Besiroglu et al. (2024) found that Chinchilla's
fit *averaged* the Huber loss and so stopped early (L-BFGS's tolerance is absolute
once ``|f| < 1``); here the loss is *summed* and the tolerances are set far below the
objective's scale (``ftol`` 1e-15, ``gtol`` 1e-12), so the optimiser stops on
stationarity, not on a default threshold.

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

Uncertainty: bootstrap over runs (resampling the rows with replacement, 4,000
resamples by default as in Besiroglu et al.), each refit warm-started from the
full-sample optimum with a single L-BFGS run (a resample is a re-weighting of the same
points, so the resample's optimum lies near it); 95 % percentile intervals.  Also
R^2 in linear and log space and the leave-one-out prediction error (each point
predicted by a fit without it, warm-started the same way).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize

from diver.errors import DiverError
from diver.scaling.laws import (
    LOG_NAMES,
    PARAM_NAMES,
    Form,
    LawParams,
    check_form,
    log_loss,
    n_params,
)

#: Huber threshold on the log loss (SPEC §4, Hoffmann et al. 2022).
HUBER_DELTA = 1e-3
#: Bootstrap resamples (Besiroglu et al. 2024).
DEFAULT_BOOTSTRAP = 4000
#: Coverage of the reported intervals.
CI_LEVEL = 0.95
#: Screened starts beyond the best one per (alpha, beta) cell.
EXTRA_STARTS = 8

# L-BFGS-B settings.  ftol is compared with (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1),
# i.e. *absolutely* whenever |f| < 1 - which a summed Huber(1e-3) of a good fit always
# is (36 residuals of 0.02 give f ~ 7e-4) - so it must sit far below the objective.
_LBFGS_OPTIONS = {"maxiter": 5000, "maxfun": 20000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}
_START_ITER = 1000  # batched L-BFGS iterations per grid start before scipy finishes
_POLISHED = 3  # distinct start optima finished by scipy's L-BFGS-B
_ALPHA_FLOOR = 0.05  # replaces the grid's alpha/beta = 0 in the data-constrained form


class ScalingFitError(DiverError, ValueError):
    """Input a scaling-law fit cannot use; the message names the problem."""


def bounds(form: str) -> list[tuple[float, float]]:
    """Box constraints of the log-space parameters.

    Wide enough never to bind at a sensible optimum; they keep L-BFGS from walking
    into overflow along flat directions (e.g. ``E -> 0`` is ``e -> -inf``).  The
    data-constrained form needs ``alpha, beta > 0`` for ``N_opt(U_D)``.
    """
    low = 1e-3 if check_form(form) == "data-constrained" else 0.0
    box = [(-20.0, 60.0), (-20.0, 60.0), (-30.0, 10.0), (low, 10.0), (low, 10.0)]
    if form == "data-constrained":
        box += [(-10.0, 10.0), (-10.0, 10.0)]
    return box


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


@dataclass(frozen=True)
class Runs:
    """Training runs as the fit sees them: logs of N, D, U_D and the loss."""

    params: NDArray[np.float64]
    tokens: NDArray[np.float64]
    unique_tokens: NDArray[np.float64]
    loss: NDArray[np.float64]
    source: str = "runs"

    @property
    def n(self) -> int:
        return int(self.loss.size)

    def logs(self) -> tuple[NDArray[np.float64], ...]:
        """``(log N, log D, log U_D, log L)``."""
        return (
            np.log(self.params),
            np.log(self.tokens),
            np.log(self.unique_tokens),
            np.log(self.loss),
        )


REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "data-constrained": ("params", "tokens", "unique_tokens", "loss"),
    "chinchilla": ("params", "tokens", "loss"),
}


def make_runs(columns: Mapping[str, Any], form: str, *, source: str = "runs") -> Runs:
    """Validated :class:`Runs` from columns ``params, tokens, [unique_tokens,] loss``.

    Refuses (:class:`ScalingFitError`, naming ``source``) a missing column, a value
    that is not a finite positive number (NaN losses included: a diverged or missing
    run must be dealt with, not silently dropped), fewer runs than the form has
    parameters, and losses that are all equal (nothing to fit).
    """
    check_form(form)
    missing = [c for c in REQUIRED_COLUMNS[form] if c not in columns]
    if missing:
        raise ScalingFitError(
            f"{source}: missing column(s) {missing}; a {form} fit needs "
            f"{list(REQUIRED_COLUMNS[form])}"
        )
    arrays: dict[str, NDArray[np.float64]] = {}
    for name in REQUIRED_COLUMNS[form]:
        try:
            values = np.asarray(columns[name], dtype=float).ravel()
        except (TypeError, ValueError) as exc:
            raise ScalingFitError(f"{source}: column {name!r} is not numeric ({exc})") from exc
        bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
        if bad.size:
            what = "NaN" if np.isnan(values[bad]).any() else "non-finite or non-positive"
            raise ScalingFitError(
                f"{source}: column {name!r} has {what} values in {bad.size} row(s) "
                f"(0-based rows {bad[:10].tolist()}{' ...' if bad.size > 10 else ''}); "
                "every run needs a finite positive value"
            )
        arrays[name] = values
    sizes = {v.size for v in arrays.values()}
    if len(sizes) != 1:
        raise ScalingFitError(f"{source}: columns have different lengths {sorted(sizes)}")
    n = sizes.pop()
    k = n_params(form)
    if n < k:
        raise ScalingFitError(
            f"{source}: {n} usable run(s), fewer than the {k} parameters of the {form} law; "
            f"need at least {k}"
        )
    loss = arrays["loss"]
    if np.ptp(np.log(loss)) <= 1e-12:
        raise ScalingFitError(
            f"{source}: all {n} losses are equal ({loss[0]:.6g}); a constant loss "
            "determines no scaling law"
        )
    unique = arrays.get("unique_tokens", arrays["tokens"])
    return Runs(arrays["params"], arrays["tokens"], unique, loss, source)


def huber(r: NDArray[np.float64], delta: float) -> tuple[NDArray[np.float64], NDArray]:
    """Huber loss and its derivative (``r^2/2`` inside ``|r| <= delta``, linear outside)."""
    a = np.abs(r)
    inside = a <= delta
    value = np.where(inside, 0.5 * r * r, delta * (a - 0.5 * delta))
    slope = np.where(inside, r, delta * np.sign(r))
    return value, slope


def objective(
    x: NDArray[np.float64],
    data: tuple[NDArray[np.float64], ...],
    weights: NDArray[np.float64] | None = None,
    delta: float = HUBER_DELTA,
) -> tuple[float, NDArray[np.float64]]:
    """Summed (weighted) Huber objective and its gradient at one parameter vector."""
    log_n, log_d, log_ud, log_l = data
    pred, jac = log_loss(x, log_n, log_d, log_ud if x.size == 7 else None, grad=True)
    assert jac is not None
    value, slope = huber(pred - log_l, delta)
    if weights is not None:
        value = value * weights
        slope = slope * weights
    return float(value.sum()), (slope[:, None] * jac).sum(axis=0)


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


@dataclass(frozen=True)
class Optimum:
    """One L-BFGS result: the log-space point, its objective, and whether it converged."""

    x: NDArray[np.float64]
    value: float
    converged: bool
    iterations: int


def lbfgs(
    x0: NDArray[np.float64],
    data: tuple[NDArray[np.float64], ...],
    form: str,
    weights: NDArray[np.float64] | None = None,
    delta: float = HUBER_DELTA,
) -> Optimum:
    """A single L-BFGS-B run of :func:`objective` from ``x0``."""
    box = bounds(form)
    lo = np.array([b[0] for b in box])
    hi = np.array([b[1] for b in box])
    start = np.clip(np.asarray(x0, dtype=float), lo, hi)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        res = minimize(
            objective,
            start,
            args=(data, weights, delta),
            jac=True,
            method="L-BFGS-B",
            bounds=box,
            options=_LBFGS_OPTIONS,
        )
    value = float(res.fun) if np.isfinite(res.fun) else math.inf
    # "ABNORMAL" line-search exits where the gradient has all but vanished are optima in
    # all but name (no float64 step decreases the objective): count them.  The scale:
    # far from an optimum the gradient is ~ n * delta * |log N| ~ 1, so 1e-6 is tiny.
    projected = np.clip(res.x - res.jac, lo, hi) - res.x
    converged = bool(res.success) or bool(np.max(np.abs(projected)) < 1e-6)
    return Optimum(np.asarray(res.x), value, converged, int(res.nit))


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


def batch_objective(
    x: NDArray[np.float64],
    data: tuple[NDArray[np.float64], ...],
    weights: NDArray[np.float64],
    delta: float = HUBER_DELTA,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """:func:`objective` for ``B`` problems at once: ``x (B, k)``, ``weights (B, n)``.

    Element-wise numpy only (no BLAS call), so it neither spawns nor fights over
    BLAS threads when several processes run it.
    """
    log_n, log_d, log_ud, log_l = data
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        pred, jac = log_loss(x, log_n, log_d, log_ud if x.shape[1] == 7 else None, grad=True)
        assert jac is not None
        value, slope = huber(pred - log_l, delta)
        f = (value * weights).sum(axis=1)
        g = ((slope * weights)[:, :, None] * jac).sum(axis=1)
    bad = ~np.isfinite(f) | ~np.all(np.isfinite(g), axis=1)
    f[bad] = np.inf
    g[bad] = 0.0
    return f, g


@dataclass(frozen=True)
class BatchOptimum:
    """Results of :func:`batched_lbfgs`, one row per problem."""

    x: NDArray[np.float64]
    value: NDArray[np.float64]
    converged: NDArray[np.bool_]
    iterations: NDArray[np.int64]


def batched_lbfgs(
    x0: NDArray[np.float64],
    data: tuple[NDArray[np.float64], ...],
    form: str,
    weights: NDArray[np.float64],
    delta: float = HUBER_DELTA,
    *,
    max_iter: int = int(_LBFGS_OPTIONS["maxiter"]),
) -> BatchOptimum:
    """L-BFGS on ``B`` weighted problems in lock-step, vectorised over the problems.

    Why not ``B`` calls of scipy's L-BFGS-B: one refit costs ~100 iterations of a
    ~100 µs Python round trip, 4,000 refits about a minute of one core, while a
    vectorised step over all problems costs about as much as ten single ones.  The
    algorithm is L-BFGS-B's, simplified where a warm start makes it safe:

    - direction: the two-loop recursion over the last 20 ``(s, y)`` pairs (pairs with
      ``s.y <= 0`` are skipped) with ``H0 = (s.y / y.y) I``, restricted to the free
      variables (a variable at a bound whose gradient points outward is held there);
    - step: projected backtracking (Armijo, ``c1 = 1e-4``), first trial step 1
      (``1 / |d|`` on the first iteration, as L-BFGS-B); a problem whose step
      cannot decrease the objective in 40 halvings is at a float64 optimum and stops;
    - stopping: scipy's ``ftol`` and ``gtol`` rules with this module's settings, or
      ``max_iter`` iterations (``converged`` stays False).

    Each problem's iterates do not depend on the others in the batch, so results do
    not depend on how the problems are chunked.  tests/test_scaling.py checks the
    optima against scipy's L-BFGS-B.
    """
    check_form(form)
    box = np.array(bounds(form))
    lo, hi = box[:, 0], box[:, 1]
    ftol, gtol, memory = _LBFGS_OPTIONS["ftol"], _LBFGS_OPTIONS["gtol"], _LBFGS_OPTIONS["maxcor"]
    b, k = weights.shape[0], x0.shape[-1]
    x = np.clip(np.broadcast_to(x0, (b, k)).astype(float), lo, hi)
    f, g = batch_objective(x, data, weights, delta)
    s_hist = np.zeros((b, memory, k))
    y_hist = np.zeros((b, memory, k))
    rho = np.zeros((b, memory))
    gamma = np.ones(b)
    has_pairs = np.zeros(b, dtype=bool)
    converged = np.zeros(b, dtype=bool)
    iterations = np.zeros(b, dtype=np.int64)
    active = np.isfinite(f)
    pos = 0
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xa, fa, ga = x[idx], f[idx], g[idx]
        projected = np.clip(xa - ga, lo, hi) - xa
        done = np.max(np.abs(projected), axis=1) <= gtol
        converged[idx[done]] = True
        active[idx[done]] = False
        keep = ~done
        idx, xa, fa, ga = idx[keep], xa[keep], fa[keep], ga[keep]
        if idx.size == 0:
            break

        free = ~(((xa <= lo) & (ga > 0)) | ((xa >= hi) & (ga < 0)))
        q = ga * free
        order = [(pos - 1 - j) % memory for j in range(memory)]
        alphas = []
        for j in order:
            a_j = rho[idx, j] * np.sum(s_hist[idx, j] * q, axis=1)
            q -= a_j[:, None] * y_hist[idx, j]
            alphas.append(a_j)
        r = gamma[idx, None] * q
        for j, a_j in zip(reversed(order), reversed(alphas), strict=True):
            b_j = rho[idx, j] * np.sum(y_hist[idx, j] * r, axis=1)
            r += s_hist[idx, j] * (a_j - b_j)[:, None]
        d = -r * free
        uphill = ~(np.sum(d * ga, axis=1) < 0)
        d[uphill] = -(ga * free)[uphill]

        first = np.minimum(1.0, 1.0 / np.maximum(np.linalg.norm(d, axis=1), 1e-300))
        step = np.where(has_pairs[idx], 1.0, first)
        x_new, f_new, g_new = xa.copy(), fa.copy(), ga.copy()
        accepted = np.zeros(idx.size, dtype=bool)
        pending = np.arange(idx.size)
        for _halving in range(40):
            cand = np.clip(xa[pending] + step[pending, None] * d[pending], lo, hi)
            fc, gc = batch_objective(cand, data, weights[idx[pending]], delta)
            decrease = np.sum(ga[pending] * (cand - xa[pending]), axis=1)
            ok = fc <= fa[pending] + 1e-4 * decrease
            good = pending[ok]
            x_new[good], f_new[good], g_new[good] = cand[ok], fc[ok], gc[ok]
            accepted[good] = True
            pending = pending[~ok]
            if pending.size == 0:
                break
            step[pending] *= 0.5
        iterations[idx] += 1
        # No decrease along a descent direction: a float64 optimum (scipy's ABNORMAL).
        stalled = ~accepted
        converged[idx[stalled]] = True
        active[idx[stalled]] = False

        s_vec = x_new - xa
        y_vec = g_new - ga
        sy = np.sum(s_vec * y_vec, axis=1)
        yy = np.sum(y_vec * y_vec, axis=1)
        valid = accepted & (sy > 1e-10 * np.sqrt(np.sum(s_vec**2, axis=1) * yy))
        s_hist[idx, pos] = np.where(valid[:, None], s_vec, 0.0)
        y_hist[idx, pos] = np.where(valid[:, None], y_vec, 0.0)
        rho[idx, pos] = np.where(valid, 1.0 / np.where(valid, sy, 1.0), 0.0)
        gamma[idx] = np.where(valid, sy / np.where(valid, yy, 1.0), gamma[idx])
        has_pairs[idx] |= valid
        pos = (pos + 1) % memory

        x[idx], f[idx], g[idx] = x_new, f_new, g_new
        small = (fa - f_new) <= ftol * np.maximum(np.maximum(np.abs(fa), np.abs(f_new)), 1.0)
        small &= accepted
        converged[idx[small]] = True
        active[idx[small]] = False
    return BatchOptimum(x, f, converged, iterations)


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
