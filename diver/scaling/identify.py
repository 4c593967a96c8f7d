"""Is each parameter determined by the runs?  Search bounds, profiles, conditioning.

A percentile interval is only an interval when the resamples' optima are interior: a
parameter the runs do not pin down drifts to the search box
(:func:`diver.scaling.optimise.bounds`), and its "interval" is then partly the box
(e.g. ``R_N*`` at ``e^10`` in 76 % of resamples gave ``[80.9, 22026]``).  Such a
parameter is reported as **not identified by this design**, with its profile
likelihood instead of a percentile interval.  A parameter is not identified when any
of these holds:

- its estimate sits on the search bound (within :data:`BOUND_TOL` of the box's width);
- more than ``(1 - level) / 2`` = 2.5 % of the converged bootstrap refits sit on a
  bound.  Why that share: the 95 % percentile interval's ends are the 2.5th and 97.5th
  percentiles, so beyond 2.5 % of resamples on a bound the interval's end *is* the
  bound - an artefact of the box, not of the data;
- its profile likelihood stays within the 95 % cutoff all the way to a bound (the
  data cannot exclude the box's edge, so the profile interval is open there).

**Profile likelihood.**  For a parameter ``j`` and a value ``v``: the objective
minimised over the other parameters with ``x_j = v`` (each point refitted from the
full fit's distinct optima, in one batch).  The objective is a summed Huber loss;
read as the negative log-likelihood of residuals with density
``p(r) ∝ exp(-Huber_delta(r) / s)``, its scale ``s`` is estimated by maximum
likelihood at the optimum (:func:`residual_scale`), and the profile's 95 % cutoff is
``Δobjective <= s * chi2_1(0.95) / 2 = 1.92 s`` (Wilks).  That is an approximation
(the residuals are not exactly Huber-distributed), which is why the profile is shown
as a curve and its interval is called a profile interval, not a confidence interval.

**Conditioning.**  The Gauss-Newton information ``J^T J`` of the log predictions in
the log-space parameters (``J`` = :func:`diver.scaling.laws.log_loss`'s Jacobian at the
optimum, free coordinates only): its condition number and the standard errors it
implies at the residuals' RMS.  A condition number above :data:`MAX_CONDITION` means
some direction is determined to fewer than four significant digits of float64: the
parameters along it trade off almost freely.  (Why not the objective's own Hessian:
with delta = 1e-3 and residuals of ~0.02 the Huber objective is piecewise linear, its
Hessian almost zero away from kinks.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize_scalar

from diver.scaling.bootstrap import refit_multistart
from diver.scaling.laws import PARAM_NAMES, log_loss
from diver.scaling.observations import Runs
from diver.scaling.optimise import huber
from diver.scaling.options import HUBER_DELTA

#: A value within this share of its box's width from a bound is "on the bound".
BOUND_TOL = 1e-3
#: chi2 with one degree of freedom, 95 % quantile, halved: the profile cutoff in
#: units of the Huber scale (module doc).
PROFILE_CUTOFF = 3.841458820694124 / 2.0
#: Above this the Gauss-Newton information is numerically singular (module doc).
MAX_CONDITION = 1e12
#: L-BFGS iterations per profile point.  Points far out along a flat direction crawl;
#: stopped early, their objective is an upper bound of the profile there (L-BFGS only
#: descends), so a point within the cutoff is within it, converged or not.
PROFILE_MAX_ITER = 1000
#: Fractions of the way from the estimate to each bound at which the profile is read.
PROFILE_STEPS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


def residual_scale(residuals: NDArray[np.float64], delta: float = HUBER_DELTA) -> dict[str, float]:
    """Scales of the fit's log-loss residuals: RMS, 1.4826 x MAD, and the maximum-
    likelihood scale ``s`` of the Huber density ``exp(-Huber_delta(r) / s) / Z(s)``,
    ``Z(s) = sqrt(2 pi s) erf(delta / sqrt(2 s)) + 2 (s / delta) exp(-delta^2 / (2 s))``.

    ``s`` converts the summed Huber objective into a negative log-likelihood
    (``objective / s``); ``delta_over_mad`` says where the fit works (<< 1: almost
    every residual is in Huber's linear part, a least-absolute-deviations fit).
    """
    r = np.asarray(residuals, dtype=float)
    n = r.size
    total = float(huber(r, delta)[0].sum())
    mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))

    def nll(log_s: float) -> float:
        s = math.exp(log_s)
        z = math.sqrt(2 * math.pi * s) * math.erf(delta / math.sqrt(2 * s))
        z += 2.0 * (s / delta) * math.exp(-(delta**2) / (2 * s))
        return total / s + n * math.log(z)

    guess = math.log(max(total / max(n, 1), 1e-300))
    res = minimize_scalar(nll, bracket=(guess - 2.0, guess + 2.0), tol=1e-10)
    scale = math.exp(float(res.x))
    return {
        "rms": float(np.sqrt(np.mean(r**2))),
        "mad": mad,
        "huber_scale": scale,
        "delta_over_mad": delta / mad if mad > 0 else math.inf,
    }


def on_bound(
    x: NDArray[np.float64], lo: NDArray[np.float64], hi: NDArray[np.float64]
) -> NDArray[np.bool_]:
    """Which coordinates of ``x`` (``(k,)`` or ``(B, k)``) sit on a (non-fixed) bound."""
    width = np.where(hi > lo, hi - lo, 1.0)
    tol = BOUND_TOL * width
    at = (np.abs(x - lo) <= tol) | (np.abs(x - hi) <= tol)
    return at & (hi > lo)


def conditioning(
    runs: Runs, form: str, x: NDArray[np.float64], free: NDArray[np.bool_], rms: float
) -> dict[str, Any]:
    """Gauss-Newton conditioning at ``x`` over the ``free`` coordinates (module doc):
    ``condition_number``, ``se_log`` per free parameter (log-space standard errors at
    residual RMS ``rms``; null when singular) and ``weakest`` (the eigenvector of the
    smallest eigenvalue, by parameter: which parameters trade off)."""
    log_n, log_d, log_ud, _ = runs.logs()
    _, jac = log_loss(x, log_n, log_d, log_ud if form == "data-constrained" else None, grad=True)
    assert jac is not None
    names = [n for n, f in zip(PARAM_NAMES[form], free, strict=True) if f]
    j = jac[:, free]
    info = j.T @ j
    eig, vec = np.linalg.eigh(info)
    top = float(eig[-1]) if eig.size else 0.0
    cond = math.inf if eig.size == 0 or eig[0] <= top * 1e-300 else float(top / eig[0])
    se: dict[str, float | None] = {n: None for n in names}
    if math.isfinite(cond) and cond < 1e16:
        cov = np.linalg.inv(info)
        se = {n: float(rms * math.sqrt(max(cov[i, i], 0.0))) for i, n in enumerate(names)}
    weakest = {n: float(v) for n, v in zip(names, vec[:, 0], strict=True)} if eig.size else {}
    return {"condition_number": cond, "se_log": se, "weakest": weakest}


def profile_values(x_hat: float, lo: float, hi: float) -> NDArray[np.float64]:
    """Values of one log-space coordinate at which to read its profile: the estimate
    and :data:`PROFILE_STEPS` of the way to each bound, in increasing order."""
    steps = np.asarray(PROFILE_STEPS)
    below = x_hat + (lo - x_hat) * steps
    above = x_hat + (hi - x_hat) * steps
    values = np.concatenate([below[::-1], [x_hat], above])
    return np.unique(values)


def profiles(
    runs: Runs,
    form: str,
    starts: NDArray[np.float64],
    x_hat: NDArray[np.float64],
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    *,
    delta: float = HUBER_DELTA,
    jobs: int | None = 1,
    which: Sequence[int] | None = None,
) -> dict[int, tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]]:
    """Profile objective of each free coordinate (``which``: a subset): ``{j: (values,
    objective, converged)}``, all coordinates' points refitted in one batch."""
    free = [j for j in range(x_hat.size) if hi[j] > lo[j]]
    chosen = free if which is None else [j for j in which if j in free]
    grids = {j: profile_values(float(x_hat[j]), float(lo[j]), float(hi[j])) for j in chosen}
    if not grids:
        return {}
    rows = [(j, v) for j, vals in grids.items() for v in vals]
    lo_b = np.tile(lo, (len(rows), 1))
    hi_b = np.tile(hi, (len(rows), 1))
    for i, (j, v) in enumerate(rows):
        lo_b[i, j] = hi_b[i, j] = v
    all_starts = np.vstack([x_hat[None, :], starts])
    weights = np.ones((len(rows), runs.n))
    refits = refit_multistart(
        all_starts,
        runs,
        form,
        weights,
        delta=delta,
        jobs=jobs,
        lo=lo_b,
        hi=hi_b,
        max_iter=PROFILE_MAX_ITER,
    )
    out = {}
    at = 0
    for j, vals in grids.items():
        m = vals.size
        out[j] = (vals, refits.value[at : at + m].copy(), refits.converged[at : at + m].copy())
        at += m
    return out


def profile_interval(
    values: NDArray[np.float64], objective: NDArray[np.float64], best: float, cutoff: float
) -> tuple[float, float, bool, bool]:
    """``(lo, hi, open_below, open_above)``: the hull of the values where the profile is
    within ``cutoff`` of ``best`` (ends interpolated linearly to the crossing); a
    multi-modal profile that dips back under the cutoff far out makes the hull reach
    there.  ``open_*`` when the profile is within the cutoff at the grid's end (the
    search bound): the data cannot exclude the bound."""
    rise = np.where(np.isfinite(objective), objective - best, np.inf)
    inside = rise <= cutoff
    if not inside.any():
        i = int(np.argmin(rise))
        return float(values[i]), float(values[i]), False, False
    where = np.flatnonzero(inside)
    i, j = int(where[0]), int(where[-1])

    def cross(a: int, b: int) -> float:
        ra, rb = rise[a], rise[b]
        if not np.isfinite(rb) or rb == ra:
            return float(values[a])
        t = (cutoff - ra) / (rb - ra)
        return float(values[a] + t * (values[b] - values[a]))

    lo_v = float(values[0]) if i == 0 else cross(i, i - 1)
    hi_v = float(values[-1]) if j == values.size - 1 else cross(j, j + 1)
    return lo_v, hi_v, bool(inside[0]), bool(inside[-1])
