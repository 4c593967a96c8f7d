"""The optimiser of the approach-3 fit: the summed Huber objective and L-BFGS(-B).

What is minimised (SPEC §4; Hoffmann et al. 2022, Appendix D.2)::

    sum_i Huber_delta( LSE(a - alpha log N'_i, b - beta log D'_i, e) - log L_i ),  delta = 1e-3

over ``x = (a, b, e, alpha, beta[, log R_D*, log R_N*])`` with ``A = e^a`` etc., by
L-BFGS-B (``scipy.optimize.minimize``) with the exact gradient of
:func:`diver.scaling.laws.log_loss`.  Besiroglu et al. (2024) found that Chinchilla's
fit *averaged* the Huber loss and so stopped early (L-BFGS's tolerance is absolute
once ``|f| < 1``); here the loss is *summed* and the tolerances are set far below the
objective's scale (``ftol`` 1e-15, ``gtol`` 1e-12), so the optimiser stops on
stationarity, not on a default threshold.

Two solvers of the same problem live here, apart from where they are used
(:mod:`diver.scaling.fit` picks starts, :mod:`diver.scaling.bootstrap` refits):
:func:`lbfgs` is one scipy L-BFGS-B run (the reference, and the last polish of the
point estimate); :func:`batched_lbfgs` runs thousands of warm-started weighted
problems in lock-step with element-wise numpy, which is what makes 4,000 bootstrap
refits affordable (its docstring says why and how it simplifies L-BFGS-B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

from diver.scaling.laws import check_form, log_loss
from diver.scaling.options import HUBER_DELTA

# L-BFGS-B settings.  ftol is compared with (f_k - f_k+1) / max(|f_k|, |f_k+1|, 1),
# i.e. *absolutely* whenever |f| < 1 - which a summed Huber(1e-3) of a good fit always
# is (36 residuals of 0.02 give f ~ 7e-4) - so it must sit far below the objective.
_LBFGS_OPTIONS = {"maxiter": 5000, "maxfun": 20000, "ftol": 1e-15, "gtol": 1e-12, "maxcor": 20}


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


def huber(r: NDArray[np.float64], delta: float) -> tuple[NDArray[np.float64], NDArray]:
    """Huber loss and its derivative (``r^2/2`` inside ``|r| <= delta``, linear outside)."""
    a = np.abs(r)
    inside = a <= delta
    value = np.where(inside, 0.5 * r * r, delta * (a - 0.5 * delta))
    slope = np.where(inside, r, delta * np.sign(r))
    return value, slope


def box_arrays(
    form: str, fixed: dict[int, float] | None = None
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(lo, hi)`` of :func:`bounds` with each ``fixed`` coordinate pinned (``lo = hi``).

    Fixing a parameter is a box whose two ends meet: both optimisers then hold it
    where it is (scipy's L-BFGS-B accepts equal bounds; :func:`batched_lbfgs` clips to
    them and never frees them), so ``--fix``, the two-stage fit and the profile
    likelihood need no second code path.
    """
    box = np.array(bounds(form), dtype=float)
    lo, hi = box[:, 0].copy(), box[:, 1].copy()
    for i, value in (fixed or {}).items():
        lo[i] = hi[i] = float(value)
    return lo, hi


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
    fixed: dict[int, float] | None = None,
) -> Optimum:
    """A single L-BFGS-B run of :func:`objective` from ``x0`` (``fixed``: coordinates
    held at a value, see :func:`box_arrays`)."""
    lo, hi = box_arrays(form, fixed)
    box = list(zip(lo.tolist(), hi.tolist(), strict=True))
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


def batch_objective(
    x: NDArray[np.float64],
    data: tuple[NDArray[np.float64], ...],
    weights: NDArray[np.float64],
    delta: float = HUBER_DELTA,
    targets: NDArray[np.float64] | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """:func:`objective` for ``B`` problems at once: ``x (B, k)``, ``weights (B, n)``;
    ``targets (B, n)``, when given, replace the observed log losses per problem (the
    residual bootstrap's synthetic responses).

    Element-wise numpy only (no BLAS call), so it neither spawns nor fights over
    BLAS threads when several processes run it.
    """
    log_n, log_d, log_ud, log_l = data
    if targets is not None:
        log_l = targets
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
    lo: NDArray[np.float64] | None = None,
    hi: NDArray[np.float64] | None = None,
    targets: NDArray[np.float64] | None = None,
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

    ``lo``, ``hi`` (``(k,)`` or ``(B, k)``, default :func:`bounds`) are the box of each
    problem: a coordinate with ``lo = hi`` is fixed (:func:`box_arrays`), which is how
    profile-likelihood points and two-stage refits, each with its own fixed values,
    share one batch.  ``targets`` (``(B, n)``): per-problem log losses (residual
    bootstrap).

    Each problem's iterates do not depend on the others in the batch, so results do
    not depend on how the problems are chunked.  tests/test_scaling.py checks the
    optima against scipy's L-BFGS-B.
    """
    check_form(form)
    ftol, gtol, memory = _LBFGS_OPTIONS["ftol"], _LBFGS_OPTIONS["gtol"], _LBFGS_OPTIONS["maxcor"]
    b, k = weights.shape[0], x0.shape[-1]
    box = np.array(bounds(form))
    lo_all = np.broadcast_to(box[:, 0] if lo is None else lo, (b, k)).astype(float)
    hi_all = np.broadcast_to(box[:, 1] if hi is None else hi, (b, k)).astype(float)
    x = np.clip(np.broadcast_to(x0, (b, k)).astype(float), lo_all, hi_all)
    f, g = batch_objective(x, data, weights, delta, targets)
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
        lo, hi = lo_all[idx], hi_all[idx]
        projected = np.clip(xa - ga, lo, hi) - xa
        done = np.max(np.abs(projected), axis=1) <= gtol
        converged[idx[done]] = True
        active[idx[done]] = False
        keep = ~done
        idx, xa, fa, ga = idx[keep], xa[keep], fa[keep], ga[keep]
        lo, hi = lo[keep], hi[keep]
        if idx.size == 0:
            break

        free = ~(((xa <= lo) & (ga > 0)) | ((xa >= hi) & (ga < 0))) & (hi > lo)
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
            cand = np.clip(xa[pending] + step[pending, None] * d[pending], lo[pending], hi[pending])
            sub = idx[pending]
            fc, gc = batch_objective(
                cand, data, weights[sub], delta, None if targets is None else targets[sub]
            )
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
