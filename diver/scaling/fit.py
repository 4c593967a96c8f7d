"""Chinchilla approach-3 fit of a scaling law, with Besiroglu et al.'s corrections.

The objective and the optimisers are :mod:`diver.scaling.optimise`'s, the intervals
:mod:`diver.scaling.bootstrap`'s, the identification checks
:mod:`diver.scaling.identify`'s; this module finds the point estimate and assembles
the :class:`FitResult` (SPEC §4).

Initialisations: SPEC §4's grid (``alpha, beta`` in ``{0, 0.5, ..., 2}``, ``e`` in
``{-1, ..., 1}``, ``a, b`` in ``{0, 5, ..., 25}``) with ``e`` extended down to -6 (DIVER-1's
``E`` are 0.0004-0.0092, ``log E`` down to -7.8) and, for the data-constrained form,
``log R_D*, log R_N*`` in ``{-1, 0, ..., 6}`` (``R*`` from 0.37 to 403): 13,500 Chinchilla
/ 864,000 data-constrained starts.  Running L-BFGS to convergence from every one of them
would take hours, so the whole grid is *screened* (the objective evaluated at every
start, vectorised), L-BFGS runs from the best start of each ``(alpha, beta)`` cell, of
each ``(log R_D*, log R_N*)`` cell and the 8 best overall (33 Chinchilla / about 95
data-constrained starts; 1.8 s for a 36-run grid), the 3 best distinct optima are
finished by scipy's L-BFGS-B, and the best is kept.  The distinct optima the starts
reached are kept too: they are the bootstrap's and the profiles' extra starts
(:mod:`diver.scaling.bootstrap`).  In the data-constrained form ``alpha = 0`` (or
``beta = 0``) makes ``N_opt(U_D)`` undefined (it divides by ``alpha``), so there the
grid's 0 becomes 0.05.

Fixed parameters (``--fix``, and the two-stage procedure's second stage) are boxes
whose ends meet (:func:`diver.scaling.optimise.box_arrays`); the grid's column of a
fixed parameter collapses to its value.

**Two-stage procedure** (Muennighoff et al. 2023, ``--two-stage``): stage one fits the
Chinchilla law (``A, B, E, alpha, beta``) to the runs that saw their data once (one
epoch: ``R_D = 0``, so ``D' = D``; or a named subset), stage two fits ``R_D*`` and
``R_N*`` of the data-constrained law to all runs with those five held at stage one's
values.  Each bootstrap resample redoes both stages (stage one on the resample's
stage-one runs), so the intervals of ``R_D*, R_N*`` carry stage one's uncertainty.

Goodness of fit: R^2 in linear and log space and the held-out prediction error by run:
leave-one-run-out (each run's points predicted by a fit without that run, refitted from
the same starts as a bootstrap resample) up to :data:`LORO_MAX_RUNS` runs, else
:data:`K_FOLDS`-fold cross-validation over runs.  In the two-stage procedure the
held-out refits are of stage two with stage one held at its full-sample values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diver.scaling.bootstrap import (
    BOOTSTRAP_STARTS,
    CI_LEVEL,
    Refits,
    bootstrap_weights,
    held_out_predictions,
    natural,
    percentile_intervals,
    refit_multistart,
    residual_targets,
)
from diver.scaling.identify import (
    MAX_CONDITION,
    PROFILE_CUTOFF,
    conditioning,
    on_bound,
    profile_interval,
    profiles,
    residual_scale,
)
from diver.scaling.laws import LOG_NAMES, PARAM_NAMES, Form, LawParams, check_form, log_loss
from diver.scaling.observations import Runs, ScalingFitError
from diver.scaling.optimise import Optimum, batched_lbfgs, box_arrays, huber, lbfgs
from diver.scaling.options import DEFAULT_BOOTSTRAP, HUBER_DELTA, RESAMPLE_UNITS

#: Screened starts beyond the best one per (alpha, beta) cell.
EXTRA_STARTS = 8
#: Leave-one-run-out up to this many runs, else K_FOLDS-fold CV over runs.
LORO_MAX_RUNS = 60
#: Folds of the cross-validation over runs when there are more runs than LORO_MAX_RUNS.
K_FOLDS = 10
#: Two optima closer than this (max-norm, log space) are the same basin.
DISTINCT_TOL = 1e-2
#: ... or whose objectives agree to this relative precision (:func:`distinct_rows`).
SAME_VALUE = 1e-5
#: A bootstrap refit more than this (relative objective) above the audit's full
#: multistart refit of the same resample missed a better optimum.
AUDIT_GAP = 1e-4
#: Distinct optima whose objective exceeds the best's by more than this factor are not
#: kept as bootstrap starts (:func:`fit_point_full`).
BASIN_RATIO = 3.0
#: Natural parameters whose log-space coordinate is their log (the rest: themselves).
LOGGED = ("A", "B", "E", "R_D_star", "R_N_star")
VERDICT_OK = "identified"
VERDICT_NOT = "not identified by this design"
VERDICT_FIXED = "fixed"

_START_ITER = 1000  # batched L-BFGS iterations per grid start before scipy finishes
_POLISHED = 3  # distinct start optima finished by scipy's L-BFGS-B
_ALPHA_FLOOR = 0.05  # replaces the grid's alpha/beta = 0 in the data-constrained form
_KEEP_OPTIMA = 8  # distinct optima kept as later starts (the bootstrap uses the best few)
#: Grid of log R_D* and log R_N* (R* from 0.37 to 403; module doc).
_LOG_R_AXIS = np.arange(-1.0, 6.01, 1.0)
#: Columns whose grid values define the cells :func:`select_starts` takes one start from:
#: the exponents, and (data-constrained) the two repetition parameters.
_START_CELLS = ((3, 4), (5, 6))


def to_log(name: str, value: float) -> float:
    """A natural parameter value -> its log-space coordinate."""
    if name in LOGGED:
        if not value > 0:
            raise ScalingFitError(f"{name} must be positive to be fixed, got {value}")
        return math.log(value)
    return float(value)


def to_natural(name: str, value: float) -> float:
    """A log-space coordinate -> the natural parameter value."""
    return math.exp(value) if name in LOGGED else float(value)


def fixed_indices(form: str, fixed: Mapping[str, float] | None) -> dict[int, float]:
    """``{coordinate: log-space value}`` of natural-unit ``fixed`` values of ``form``."""
    names = PARAM_NAMES[check_form(form)]
    out: dict[int, float] = {}
    for name, value in (fixed or {}).items():
        if name not in names:
            raise ScalingFitError(f"cannot fix {name!r}: the {form} law's parameters are {names}")
        out[names.index(name)] = to_log(name, float(value))
    return out


def initial_grid(form: str, fixed: Mapping[int, float] | None = None) -> NDArray[np.float64]:
    """SPEC §4's grid of initialisations, extended (module doc), shape ``(m, k)``;
    a ``fixed`` coordinate's column is its value (duplicate rows dropped)."""
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
        axes += [_LOG_R_AXIS, _LOG_R_AXIS]  # log R_D*, log R_N*
    for i, value in (fixed or {}).items():
        axes[i] = np.array([value])
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.ravel() for m in mesh], axis=1)


def screen(
    grid: NDArray[np.float64],
    data: tuple[NDArray[np.float64], ...],
    delta: float = HUBER_DELTA,
    chunk: int = 8192,
    weights: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Objective at every row of ``grid`` (vectorised in chunks), shape ``(m,)``."""
    log_n, log_d, log_ud, log_l = data
    out = np.empty(grid.shape[0])
    w = np.ones_like(log_l) if weights is None else weights
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, grid.shape[0], chunk):
            block = grid[start : start + chunk]
            pred, _ = log_loss(block, log_n, log_d, log_ud if block.shape[1] == 7 else None)
            value, _ = huber(pred - log_l, delta)
            out[start : start + chunk] = (value * w).sum(axis=1)
    return np.where(np.isfinite(out), out, np.inf)


def select_starts(
    grid: NDArray[np.float64], values: NDArray[np.float64], extra: int = EXTRA_STARTS
) -> NDArray[np.float64]:
    """The best grid point of each ``(alpha, beta)`` cell and (data-constrained) of each
    ``(log R_D*, log R_N*)`` cell, then the ``extra`` best overall.

    One start per cell keeps the starts spread over the basins those coordinates
    define: the best points overall tend to sit in one basin, and the repetition
    parameters have basins of their own (Muennighoff et al.'s 182 runs with stage one
    fixed have four, at ``R_D*`` of 15, 47, 94 and 168, within 0.2 % of each other).
    A cell whose coordinates are all fixed is one cell.
    """
    order = np.argsort(values, kind="stable")
    order = order[np.isfinite(values[order])]
    chosen: list[int] = []
    for cols in _START_CELLS:
        if max(cols) >= grid.shape[1]:
            continue
        # Each row's cell as one integer; its first occurrence in best-first order is
        # the cell's best point.
        cell = np.zeros(grid.shape[0], dtype=np.int64)
        for c in cols:
            levels, code = np.unique(grid[:, c], return_inverse=True)
            cell = cell * levels.size + code
        _, first = np.unique(cell[order], return_index=True)
        chosen += [int(i) for i in order[np.sort(first)] if int(i) not in chosen]
    taken = set(chosen)
    chosen += [int(i) for i in order[: extra + len(chosen)] if int(i) not in taken][:extra]
    return grid[chosen]


def distinct_rows(
    xs: NDArray[np.float64],
    values: NDArray[np.float64],
    limit: int,
    tol: float = DISTINCT_TOL,
    value_tol: float = SAME_VALUE,
) -> list[NDArray[np.float64]]:
    """Up to ``limit`` rows of ``xs``, best ``values`` first, each more than ``tol``
    apart (max-norm) from those kept *and* with an objective differing by more than
    ``value_tol`` (relative): the distinct basins the rows ended in.  Optima along a
    flat valley (``E -> 0`` with nothing else moving, or ``R_N*`` when no run has
    ``U_N < N``) share their objective value: they are one basin, and a second start
    there would only cost time."""
    kept: list[NDArray[np.float64]] = []
    kept_values: list[float] = []
    for j in np.argsort(values, kind="stable"):
        if not np.isfinite(values[j]) or len(kept) == limit:
            break
        v = float(values[j])
        same = [
            np.max(np.abs(xs[j] - c)) <= tol or abs(v - cv) <= value_tol * max(abs(v), 1e-300)
            for c, cv in zip(kept, kept_values, strict=True)
        ]
        if not any(same):
            kept.append(xs[j])
            kept_values.append(v)
    return kept


@dataclass(frozen=True)
class PointFit:
    """The approach-3 optimum, how many grid starts ran, and the distinct optima they
    reached (best first; the first is the optimum itself)."""

    best: Optimum
    n_starts: int
    optima: NDArray[np.float64]


def fit_point_full(
    runs: Runs,
    form: str,
    *,
    delta: float = HUBER_DELTA,
    extra_starts: int = EXTRA_STARTS,
    fixed: Mapping[int, float] | None = None,
    weights: NDArray[np.float64] | None = None,
) -> PointFit:
    """The approach-3 optimum over the initialisation grid (see :func:`fit_point`),
    with the distinct optima the starts reached.  ``fixed``: log-space coordinates held
    at a value; ``weights``: per-point multiplicities (a resample's full refit)."""
    check_form(form)
    data = runs.logs()
    lo, hi = box_arrays(form, dict(fixed or {}))
    grid = initial_grid(form, fixed)
    starts = select_starts(grid, screen(grid, data, delta, weights=weights), extra=extra_starts)
    w = np.ones(runs.n) if weights is None else np.asarray(weights, dtype=float)
    batch = batched_lbfgs(
        starts,
        data,
        form,
        np.broadcast_to(w, (starts.shape[0], runs.n)),
        delta,
        max_iter=_START_ITER,
        lo=lo,
        hi=hi,
    )
    # The few starts still crawling after _START_ITER iterations sit in flat regions;
    # scipy finishes the best _POLISHED distinct candidates, and the best result wins.
    candidates = distinct_rows(batch.x, batch.value, _POLISHED, tol=1e-6, value_tol=0.0)
    fix = dict(fixed or {})
    best: Optimum | None = None
    polished = []
    for x in candidates:
        opt = lbfgs(x, data, form, weights=weights, delta=delta, fixed=fix)
        # L-BFGS restarted at its own optimum discards a stale curvature model, which
        # on a nearly piecewise-linear (Huber) objective can still gain a little.
        for _ in range(5):
            again = lbfgs(opt.x, data, form, weights=weights, delta=delta, fixed=fix)
            if again.value >= opt.value - 1e-15 * max(1.0, abs(opt.value)):
                break
            opt = again
        polished.append(opt)
        if best is None or opt.value < best.value:
            best = opt
    if best is None:
        raise ScalingFitError(f"{runs.source}: the objective is not finite at any start")
    # Starts still crawling after _START_ITER iterations reached no optimum: they are
    # not basins, and as bootstrap starts they would only crawl again.
    reached = batch.converged
    xs = np.vstack([best.x[None, :], *[p.x[None, :] for p in polished], batch.x[reached]])
    values = np.concatenate([[best.value], [p.value for p in polished], batch.value[reached]])
    # A basin far worse than the optimum on the full sample does not become a
    # resample's best (a resample re-weights the same points), and reaching its bottom
    # can take thousands of iterations: only basins within BASIN_RATIO are kept.
    near = values <= BASIN_RATIO * best.value
    optima = np.array(distinct_rows(xs[near], values[near], _KEEP_OPTIMA))
    return PointFit(best, int(starts.shape[0]), optima)


def fit_point(
    runs: Runs,
    form: str,
    *,
    delta: float = HUBER_DELTA,
    extra_starts: int = EXTRA_STARTS,
    fixed: Mapping[int, float] | None = None,
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
    point = fit_point_full(runs, form, delta=delta, extra_starts=extra_starts, fixed=fixed)
    return point.best, point.n_starts


def r_squared(observed: ArrayLike, predicted: ArrayLike) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot``."""
    obs = np.asarray(observed, dtype=float)
    pred = np.asarray(predicted, dtype=float)
    ss_tot = float(np.sum((obs - obs.mean()) ** 2))
    return 1.0 - float(np.sum((obs - pred) ** 2)) / ss_tot


def subset(runs: Runs, mask: NDArray[np.bool_]) -> Runs:
    """The runs of ``mask`` (stage one of the two-stage procedure)."""
    return Runs(
        runs.params[mask],
        runs.tokens[mask],
        runs.unique_tokens[mask],
        runs.loss[mask],
        f"{runs.source} (stage one)",
    )


def one_epoch_rows(runs: Runs) -> NDArray[np.bool_]:
    """Points that saw their data at most once (``D <= U_D``): two-stage's stage one."""
    return runs.tokens <= runs.unique_tokens * (1.0 + 1e-9)


def holdout_groups(groups: NDArray[np.int64], seed: int) -> tuple[NDArray[np.int64], str]:
    """Each point's held-out group and the scheme's name (module doc)."""
    n_groups = int(groups.max()) + 1
    if n_groups <= LORO_MAX_RUNS:
        return groups, "leave-one-run-out"
    rng = np.random.default_rng(seed)
    fold_of_run = rng.permutation(n_groups) % K_FOLDS
    return fold_of_run[groups].astype(np.int64), f"{K_FOLDS}-fold by run"


#: Two-stage bookkeeping: stage one's fit, its rows, and its box ``(lo, hi)``.
StageOne = tuple[PointFit, NDArray[np.bool_], NDArray[np.float64], NDArray[np.float64]]


@dataclass
class FitResult:
    """A fitted law with its goodness of fit, identification and bootstrap intervals."""

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
    holdout: str = "leave-one-run-out"
    delta: float = HUBER_DELTA
    fixed: dict[str, float] = field(default_factory=dict)
    n_runs: int = 0
    resample_unit: str = "run"
    residual_scale: dict[str, float] = field(default_factory=dict)
    conditioning: dict[str, Any] = field(default_factory=dict)
    identification: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile_ci: dict[str, list[float]] = field(default_factory=dict)
    optima: NDArray[np.float64] = field(default_factory=lambda: np.empty((0, 0)))
    stage_one: dict[str, Any] | None = None
    audit: dict[str, Any] | None = None
    bootstrap: int = 0
    bootstrap_starts: int = 0
    bootstrap_samples: NDArray[np.float64] = field(default_factory=lambda: np.empty((0, 0)))
    bootstrap_failed: int = 0
    #: Per resample: did its refit converge, and which start won (0: the optimum).
    bootstrap_converged: NDArray[np.bool_] = field(default_factory=lambda: np.empty(0, bool))
    bootstrap_start: NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))
    ci: dict[str, list[float]] = field(default_factory=dict)
    seed: int = 0

    @property
    def not_identified(self) -> list[str]:
        """Parameters reported as not identified by this design (module doc)."""
        return [n for n, v in self.identification.items() if v["status"] == VERDICT_NOT]

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
                "holdout": self.holdout,
                "n_points": self.n_points,
                "n_runs": self.n_runs,
                "bootstrap": self.bootstrap,
                "bootstrap_failed": self.bootstrap_failed,
                "bootstrap_converged": self.bootstrap - self.bootstrap_failed,
                "bootstrap_starts": self.bootstrap_starts,
                "audit": self.audit,
                "resample_unit": self.resample_unit,
                "seed": self.seed,
                "objective": self.objective,
                "converged": self.converged,
                "n_starts": self.n_starts,
                "huber_delta": self.delta,
                "residual_scale": self.residual_scale,
                "fixed": self.fixed,
                "two_stage": self.stage_one,
                "identification": self.identification,
                "not_identified": self.not_identified,
                "profile_ci": self.profile_ci,
                "profiles": self.profiles,
                "conditioning": self.conditioning,
                "log_params": dict(zip(LOG_NAMES[self.form], self.x.tolist(), strict=True)),
            }
        )
        return out


def _profile_entries(
    runs: Runs,
    form: str,
    point: PointFit,
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    scale: float,
    delta: float,
    jobs: int | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, bool]]:
    """fit.json's ``profiles`` (every free parameter) and whether each is open at a bound."""
    names = PARAM_NAMES[form]
    starts = point.optima[1:BOOTSTRAP_STARTS]
    curves = profiles(runs, form, starts, point.best.x, lo, hi, delta=delta, jobs=jobs)
    cutoff = PROFILE_CUTOFF * scale
    entries: dict[str, dict[str, Any]] = {}
    open_at_bound: dict[str, bool] = {}
    for j, (values, objective, conv) in curves.items():
        name = names[j]
        best = min(point.best.value, float(np.nanmin(np.where(conv, objective, np.nan))))
        lo_v, hi_v, open_lo, open_hi = profile_interval(values, objective, best, cutoff)
        entries[name] = {
            "log_values": values.tolist(),
            "values": [to_natural(name, v) for v in values],
            "delta_objective": (objective - best).tolist(),
            "converged": conv.tolist(),
            "cutoff": cutoff,
            "interval": [to_natural(name, lo_v), to_natural(name, hi_v)],
            "open": [open_lo, open_hi],
            "estimate": to_natural(name, float(point.best.x[j])),
        }
        open_at_bound[name] = bool(open_lo or open_hi)
    return entries, open_at_bound


def _verdicts(
    form: str,
    x: NDArray[np.float64],
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    open_at_bound: Mapping[str, bool],
    boot_x: NDArray[np.float64] | None,
    level: float = CI_LEVEL,
) -> dict[str, dict[str, Any]]:
    """Each parameter's identification verdict and the evidence (module doc of
    :mod:`diver.scaling.identify`)."""
    names = PARAM_NAMES[form]
    at_estimate = on_bound(x, lo, hi)
    share = None
    if boot_x is not None and boot_x.shape[0]:
        share = on_bound(boot_x, lo, hi).mean(axis=0)
    limit = (1.0 - level) / 2.0
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        if hi[j] <= lo[j]:
            out[name] = {"status": VERDICT_FIXED, "reasons": ["held fixed"]}
            continue
        reasons = []
        if at_estimate[j]:
            reasons.append("the estimate is on the search bound")
        frac = None if share is None else float(share[j])
        if frac is not None and frac > limit:
            reasons.append(f"{100 * frac:.1f} % of bootstrap refits on the search bound")
        if open_at_bound.get(name):
            reasons.append("the profile likelihood stays within its 95 % cutoff up to a bound")
        out[name] = {
            "status": VERDICT_NOT if reasons else VERDICT_OK,
            "reasons": reasons,
            "estimate_at_bound": bool(at_estimate[j]),
            "resamples_at_bound": frac,
            "profile_open": bool(open_at_bound.get(name, False)),
        }
    return out


def _bootstrap(
    runs: Runs,
    form: str,
    point: PointFit,
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    *,
    samples: int,
    seed: int,
    jobs: int | None,
    delta: float,
    resample: str,
    groups: NDArray[np.int64] | None,
    fitted: NDArray[np.float64],
    stage_one: StageOne | None,
    n_starts: int,
) -> tuple[Refits, NDArray[np.float64], NDArray[np.float64] | None]:
    """The bootstrap refits (module doc of :mod:`diver.scaling.bootstrap`), with the
    resamples' weights and (residual bootstrap) target log losses."""
    targets = None
    if resample == "residual":
        weights = np.ones((samples, runs.n))
        log_l = np.log(runs.loss)
        targets = residual_targets(fitted, log_l - fitted, samples, seed)
    else:
        weights = bootstrap_weights(runs.n, samples, seed, groups if resample == "run" else None)
    starts = point.optima[:n_starts]
    if stage_one is None:
        refits = refit_multistart(
            starts, runs, form, weights, delta=delta, jobs=jobs, lo=lo, hi=hi, targets=targets
        )
        return refits, weights, targets
    base, mask, lo1, hi1 = stage_one
    first = refit_multistart(
        base.optima[:n_starts],
        runs,
        "chinchilla",
        weights * mask[None, :],
        delta=delta,
        jobs=jobs,
        lo=lo1,
        hi=hi1,
        targets=targets,
    )
    lo_b = np.tile(lo, (samples, 1))
    hi_b = np.tile(hi, (samples, 1))
    lo_b[:, :5] = hi_b[:, :5] = first.x
    second = refit_multistart(
        starts, runs, form, weights, delta=delta, jobs=jobs, lo=lo_b, hi=hi_b, targets=targets
    )
    refits = Refits(second.x, second.value, second.converged & first.ok, second.start)
    return refits, weights, targets


def audit_refits(
    runs: Runs,
    form: str,
    refits: Refits,
    weights: NDArray[np.float64],
    targets: NDArray[np.float64] | None,
    count: int,
    *,
    delta: float,
    fixed: Mapping[int, float],
    extra_starts: int,
    lo: NDArray[np.float64],
    hi: NDArray[np.float64],
    jobs: int | None = 1,
) -> tuple[dict[str, Any], Refits]:
    """Audit the bootstrap refits and, where they missed, restart every resample.

    Round one refits the first ``count`` resamples with the whole multistart procedure
    (:func:`fit_point_full` under the resample's weights) and compares.  A bootstrap
    refit more than :data:`AUDIT_GAP` (relative objective) above it *missed*.  The
    optima the missed resamples found are basins the full-sample starts do not lead
    to, and other resamples are likely to prefer them too (Muennighoff et al.'s 182
    runs with stage one fixed: 6 of 20 missed; 4 of the next 40 before, 1 after), so
    their distinct optima (up to ``_KEEP_OPTIMA``) become extra starts and *every*
    resample is refitted from them, keeping its better optimum.  Round two then audits
    the next ``count`` resamples, which round one did not touch, to measure what is
    left.  Audited refits the full procedure beats are replaced by it.

    Returns fit.json's ``audit`` (round one's ``resamples, missed, worst_gap``, the
    ``added_starts`` and round two as ``after``) and the refits (a new object when
    restarts ran: the ``start`` of a restart's win counts past the original starts).
    """

    def audit(current: Refits, rows: range) -> tuple[int, float, list[NDArray[np.float64]]]:
        """Refit ``rows`` with the whole multistart procedure; replace (in place) the
        refits it beats.  Returns ``(missed, worst gap, the missed optima)``."""
        missed, worst = 0, 0.0
        found: list[NDArray[np.float64]] = []
        for i in rows:
            sample = runs
            if targets is not None:
                sample = Runs(runs.params, runs.tokens, runs.unique_tokens, np.exp(targets[i]))
            full = fit_point_full(
                sample,
                form,
                delta=delta,
                extra_starts=extra_starts,
                fixed=fixed,
                weights=weights[i],
            ).best
            value = float(current.value[i]) if np.isfinite(current.value[i]) else math.inf
            gap = (value - full.value) / max(abs(full.value), 1e-300)
            # An exact fit's objective is ~1e-22: differences far below any residual's
            # Huber loss are rounding, not a missed basin.
            floor = 1e-12 * delta * runs.n
            if gap > AUDIT_GAP and value - full.value > floor:
                missed += 1
                worst = max(worst, gap)
                if full.converged:
                    found.append(full.x)
            if full.value < value and full.converged:
                current.x[i], current.value[i], current.converged[i] = full.x, full.value, True
        return missed, worst, found

    n = weights.shape[0]
    count = min(count, n)
    missed, worst, found = audit(refits, range(count))
    out: dict[str, Any] = {
        "resamples": count,
        "missed": missed,
        "worst_gap": worst,
        "threshold": AUDIT_GAP,
        "added_starts": 0,
        "after": None,
    }
    if not found:
        return out, refits
    # In the order found, distinct by position (their objectives are of different
    # resamples, so not comparable).
    order = np.arange(len(found), dtype=float)
    extra = np.array(distinct_rows(np.array(found), order, _KEEP_OPTIMA, value_tol=0.0))
    again = refit_multistart(
        extra, runs, form, weights, delta=delta, jobs=jobs, lo=lo, hi=hi, targets=targets
    )
    offset = int(refits.start.max()) + 1 if refits.start.size else 0
    better = again.ok & (~refits.ok | (again.value < refits.value))
    merged = Refits(
        np.where(better[:, None], again.x, refits.x),
        np.where(better, again.value, refits.value),
        np.where(better, again.converged, refits.converged),
        np.where(better, again.start + offset, refits.start),
    )
    out["added_starts"] = int(extra.shape[0])
    rows = range(count, min(2 * count, n))
    if len(rows):
        m2, w2, _ = audit(merged, rows)
        out["after"] = {"resamples": len(rows), "missed": m2, "worst_gap": w2}
    return out, merged


def fit_law(
    runs: Runs,
    form: str = "data-constrained",
    *,
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    jobs: int | None = 1,
    extra_starts: int = EXTRA_STARTS,
    delta: float = HUBER_DELTA,
    fixed: Mapping[str, float] | None = None,
    groups: NDArray[np.int64] | None = None,
    resample: str = "run",
    two_stage: bool = False,
    stage_one_rows: NDArray[np.bool_] | None = None,
    profile: bool = True,
    bootstrap_starts: int = BOOTSTRAP_STARTS,
    audit: int = 0,
) -> FitResult:
    """Approach-3 fit of ``form`` to ``runs``: estimate, R^2, held-out error by run,
    identification (bounds, profiles, conditioning) and bootstrap intervals.

    ``bootstrap`` = 0 skips the intervals.  ``fixed``: natural-unit values of
    parameters held fixed.  ``groups``: each point's run (None: every point its own);
    ``resample``: ``run``, ``row`` or ``residual`` (:mod:`diver.scaling.bootstrap`).
    ``two_stage``: Muennighoff et al.'s procedure (module doc), stage one on
    ``stage_one_rows`` (default: the one-epoch points).  ``profile`` = False skips the
    profile likelihoods (then only bounds decide identification).  Reproducible for a
    given ``seed`` whatever ``jobs`` is.  ``audit``: resamples also refitted by the
    whole multistart procedure (:func:`audit_refits`; not in the two-stage procedure,
    whose resamples are two fits).
    """
    form = check_form(form)
    if resample not in RESAMPLE_UNITS:
        raise ScalingFitError(f"resample must be one of {RESAMPLE_UNITS}, got {resample!r}")
    if not (delta > 0 and math.isfinite(delta)):
        raise ScalingFitError(f"the Huber delta must be a positive number, got {delta}")
    fix = fixed_indices(form, fixed)
    group_ids = np.arange(runs.n) if groups is None else np.asarray(groups, dtype=np.int64)
    stage: StageOne | None = None
    stage_info: dict[str, Any] | None = None
    if two_stage:
        if form != "data-constrained":
            raise ScalingFitError("the two-stage procedure fits the data-constrained law")
        mask = one_epoch_rows(runs) if stage_one_rows is None else np.asarray(stage_one_rows)
        if int(mask.sum()) < 6:
            raise ScalingFitError(
                f"{runs.source}: stage one of the two-stage fit has {int(mask.sum())} "
                "point(s); the Chinchilla law's 5 parameters need at least 6"
            )
        fix1 = {i: v for i, v in fix.items() if i < 5}
        # Stage one in the data-constrained law's box (alpha, beta >= 1e-3: its
        # N_opt(U_D) divides by them), user-fixed coordinates held.
        lo1, hi1 = (v[:5] for v in box_arrays(form, fix1))
        base = fit_point_full(subset(runs, mask), "chinchilla", delta=delta, fixed=fix1)
        stage = (base, mask, lo1, hi1)
        fix = {**fix, **{i: float(base.best.x[i]) for i in range(5)}}
        stage_info = {
            "stage_one_points": int(mask.sum()),
            "stage_one_objective": base.best.value,
            "stage_one_converged": base.best.converged,
            "stage_one": LawParams.from_vector(base.best.x).to_dict(),
            "stage_two_free": [
                n for i, n in enumerate(PARAM_NAMES[form]) if i >= 5 and i not in fix
            ],
        }
    point = fit_point_full(runs, form, delta=delta, extra_starts=extra_starts, fixed=fix)
    best = point.best
    lo, hi = box_arrays(form, fix)
    if stage is not None:
        # The stage-one coordinates are estimates, not user-fixed: their verdicts use
        # stage one's box (their own bounds), so only the user's --fix stays "fixed".
        lo_v, hi_v = box_arrays(form, fixed_indices(form, fixed))
    else:
        lo_v, hi_v = lo, hi
    log_n, log_d, log_ud, log_l = runs.logs()
    pred, _ = log_loss(best.x, log_n, log_d, log_ud if form == "data-constrained" else None)
    residuals = log_l - pred
    scale = residual_scale(residuals, delta)
    held_groups, holdout = holdout_groups(group_ids, seed)
    held = held_out_predictions(
        runs,
        form,
        point.optima[:bootstrap_starts],
        held_groups,
        delta=delta,
        jobs=jobs,
        lo=lo,
        hi=hi,
    )
    free = hi > lo
    names = PARAM_NAMES[form]
    result = FitResult(
        form=form,
        params=LawParams.from_vector(best.x),
        x=best.x,
        objective=best.value,
        converged=best.converged,
        n_points=runs.n,
        n_starts=point.n_starts,
        r2_linear=r_squared(runs.loss, np.exp(pred)),
        r2_log=r_squared(log_l, pred),
        loo_rmse_log=float(np.sqrt(np.mean((held - log_l) ** 2))),
        loo_mape=float(np.mean(np.abs(np.exp(held - log_l) - 1.0))),
        holdout=holdout,
        delta=delta,
        fixed={n: float(v) for n, v in (fixed or {}).items()},
        n_runs=int(group_ids.max()) + 1,
        resample_unit=resample,
        residual_scale=scale,
        conditioning=conditioning(runs, form, best.x, free, scale["rms"]),
        optima=point.optima,
        stage_one=stage_info,
        seed=seed,
    )
    result.conditioning["ill_conditioned"] = not (
        result.conditioning["condition_number"] < MAX_CONDITION
    )
    open_at_bound: dict[str, bool] = {}
    if profile:
        result.profiles, open_at_bound = _profile_entries(
            runs, form, point, lo, hi, scale["huber_scale"], delta, jobs
        )
    boot_x = None
    if bootstrap > 0:
        refits, weights, targets = _bootstrap(
            runs,
            form,
            point,
            lo,
            hi,
            samples=bootstrap,
            seed=seed,
            jobs=jobs,
            delta=delta,
            resample=resample,
            groups=group_ids,
            fitted=pred,
            stage_one=stage,
            n_starts=bootstrap_starts,
        )
        added = 0
        if audit > 0 and stage is None:
            result.audit, refits = audit_refits(
                runs,
                form,
                refits,
                weights,
                targets,
                audit,
                delta=delta,
                fixed=fix,
                extra_starts=extra_starts,
                lo=lo,
                hi=hi,
                jobs=jobs,
            )
            added = result.audit["added_starts"]
        ok = refits.ok
        samples = natural(refits.x, form)
        samples[~ok] = np.nan
        boot_x = refits.x[ok]
        result.bootstrap = bootstrap
        result.bootstrap_starts = int(min(bootstrap_starts, point.optima.shape[0])) + added
        result.bootstrap_samples = samples
        result.bootstrap_failed = int((~ok).sum())
        result.bootstrap_converged = ok.copy()
        result.bootstrap_start = refits.start.copy()
    result.identification = _verdicts(form, best.x, lo_v, hi_v, open_at_bound, boot_x)
    if bootstrap > 0:
        ci = percentile_intervals(result.bootstrap_samples, names)
        result.ci = {
            n: band for n, band in ci.items() if result.identification[n]["status"] == VERDICT_OK
        }
    for name in result.not_identified:
        if name in result.profiles:
            result.profile_ci[name] = result.profiles[name]["interval"]
    return result
