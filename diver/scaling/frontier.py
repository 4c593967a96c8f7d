"""Compute-optimal frontier, iso-FLOP and iso-loss curves, and budget plans.

Two notions of "compute-optimal", kept apart on purpose:

- :func:`diver.scaling.laws.compute_optimal` is SPEC §4's closed form
  (``N_opt = G (C/6)^(beta/(alpha+beta))``): the allocation when data is unlimited
  (every token fresh).  The frontier (``frontier.csv``) is this allocation and the
  loss the law predicts there; for the data-constrained law that loss equals the
  Chinchilla law's, because at that point ``U_D = D`` and ``U_N = N`` (laws.py).
- :func:`constrained_optimum` minimises the data-constrained law over ``N`` at a fixed
  budget *and* a fixed unique-token count ``U_D`` (``D = C / 6N``, repeated
  ``D / U_D`` times): the allocation DIVER-1's headline claim is about ("smaller models
  trained for more epochs", SPEC §4), found numerically.

Every function takes :class:`~diver.scaling.laws.LawParams`; the interval versions
take the bootstrap's parameter samples (rows of natural parameters, as in
``bootstrap.csv``) and report percentile intervals of the derived quantity.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from diver.scaling.laws import (
    LawParams,
    compute_optimal,
    log_loss,
    predict,
)

#: Percentile interval of the reported bands (matches the fit's CI level).
CI_LEVEL = 0.95


def flop_range(
    flops: ArrayLike, *, beyond: float = 2.0, points_per_decade: int = 8
) -> NDArray[np.float64]:
    """Log-spaced budgets from ``beyond`` decades under the data's least compute to
    ``beyond`` decades over its most (the fit's interpolation and extrapolation)."""
    c = np.asarray(flops, dtype=float)
    lo = math.floor(math.log10(c.min()) - beyond)
    hi = math.ceil(math.log10(c.max()) + beyond)
    return np.logspace(lo, hi, (hi - lo) * points_per_decade + 1)


def samples_to_vectors(samples: NDArray[np.float64], form: str) -> NDArray[np.float64]:
    """Natural-parameter rows (``bootstrap.csv``) -> log-space rows (finite rows only)."""
    rows = np.asarray(samples, dtype=float)
    rows = rows[np.all(np.isfinite(rows), axis=1)]
    x = rows.copy()
    x[:, :3] = np.log(rows[:, :3])
    if form == "data-constrained":
        x[:, 5:] = np.log(rows[:, 5:])
    return x


def _g_rows(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """``log G`` for log-space rows: ``(log alpha + a - log beta - b) / (alpha + beta)``."""
    a, b, alpha, beta = x[:, 0], x[:, 1], x[:, 3], x[:, 4]
    return (np.log(alpha) + a - np.log(beta) - b) / (alpha + beta)


def compute_optimal_rows(
    x: NDArray[np.float64], flops: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """SPEC §4's ``(N_opt, D_opt)`` for each log-space row and budget: ``(m, c)`` each."""
    log_c6 = np.log(np.asarray(flops, dtype=float) / 6.0)[None, :]
    alpha, beta = x[:, 3:4], x[:, 4:5]
    log_g = _g_rows(x)[:, None]
    s = alpha + beta
    log_n = log_g + beta / s * log_c6
    log_d = alpha / s * log_c6 - log_g
    return np.exp(log_n), np.exp(log_d)


def _loss_rows(
    x: NDArray[np.float64],
    n: NDArray[np.float64],
    d: NDArray[np.float64],
    unique_tokens: float | NDArray[np.float64] | None,
) -> NDArray[np.float64]:
    """Predicted loss for parameter row ``i`` at ``(n[i, j], d[i, j])``."""
    log_ud = None
    if x.shape[1] == 7:
        log_ud = np.log(d if unique_tokens is None else np.broadcast_to(unique_tokens, d.shape))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        out, _ = log_loss(x, np.log(n), np.log(d), log_ud)
    return np.exp(out)


def _interval(values: NDArray[np.float64], level: float = CI_LEVEL) -> NDArray[np.float64]:
    """Percentile band over rows: ``(2, columns)``, NaN where no row is finite."""
    tail = 100.0 * (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanpercentile(values, [tail, 100.0 - tail], axis=0)


def frontier_table(
    params: LawParams,
    flops: ArrayLike,
    samples: NDArray[np.float64] | None = None,
) -> pd.DataFrame:
    """``C, N_opt, D_opt, loss`` (fresh data) per budget, with ``*_lo``/``*_hi`` bands
    from the bootstrap ``samples`` when given."""
    c = np.asarray(flops, dtype=float)
    n_opt, d_opt = compute_optimal(params, c)
    table = pd.DataFrame(
        {"C": c, "N_opt": n_opt, "D_opt": d_opt, "loss": predict(params, n_opt, d_opt)}
    )
    if samples is not None and len(samples):
        x = samples_to_vectors(samples, params.form)
        n_s, d_s = compute_optimal_rows(x, c)
        loss_s = _loss_rows(x, n_s, d_s, None)
        for name, values in (("N_opt", n_s), ("D_opt", d_s), ("loss", loss_s)):
            lo, hi = _interval(values)
            table[f"{name}_lo"] = lo
            table[f"{name}_hi"] = hi
    return table


def iso_flop(
    params: LawParams,
    flops: ArrayLike,
    n_grid: ArrayLike,
    unique_tokens: float | None = None,
) -> NDArray[np.float64]:
    """Loss along iso-FLOP curves: row ``i`` is ``L(N, C_i / 6N)`` over ``n_grid``.

    ``unique_tokens`` fixes ``U_D`` (data-constrained form); ``None`` is fresh data.
    """
    c = np.asarray(flops, dtype=float)[:, None]
    n = np.broadcast_to(np.asarray(n_grid, dtype=float)[None, :], (c.shape[0], np.size(n_grid)))
    return predict(params, n, c / (6.0 * n), unique_tokens)


def iso_loss(
    params: LawParams,
    loss: float,
    n_grid: ArrayLike,
    unique_tokens: float | None = None,
    *,
    max_log_tokens: float = 120.0,
) -> NDArray[np.float64]:
    """Tokens ``D`` that reach ``loss`` with ``N`` parameters, over ``n_grid``.

    NaN where ``loss`` is out of reach at any ``D`` (below the ``N``-limited floor, or,
    with ``U_D`` fixed, below what infinitely repeated data can give).  Chinchilla:
    closed form ``D = (B / (L - E - A / N^alpha))^(1/beta)``.  Data-constrained: the
    loss falls monotonically with ``D`` (``D'`` grows, and so does ``U_N`` while
    ``D < U_D``), so the crossing is found by bisection on ``log D``.
    """
    n = np.asarray(n_grid, dtype=float)
    if params.form == "chinchilla":
        rest = loss - params.E - params.A / n**params.alpha
        with np.errstate(invalid="ignore", divide="ignore"):
            d = (params.B / rest) ** (1.0 / params.beta)
        return np.where(rest > 0, d, np.nan)
    lo = np.zeros_like(n)
    hi = np.full_like(n, max_log_tokens)
    reachable = predict(params, n, np.exp(hi), unique_tokens) < loss
    reachable &= predict(params, n, np.exp(lo), unique_tokens) >= loss
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        above = predict(params, n, np.exp(mid), unique_tokens) > loss
        lo = np.where(above, mid, lo)
        hi = np.where(above, hi, mid)
    return np.where(reachable, np.exp(0.5 * (lo + hi)), np.nan)


def _constrained_rows(
    x: NDArray[np.float64], flops: float, unique_tokens: float, *, chunk: int = 256
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """:func:`_constrained_chunk` over chunks of rows (bounded memory)."""
    parts = [
        _constrained_chunk(x[i : i + chunk], flops, unique_tokens)
        for i in range(0, x.shape[0], chunk)
    ]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _constrained_chunk(
    x: NDArray[np.float64], flops: float, unique_tokens: float, *, span: float = 8.0
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per row: ``(N, loss)`` minimising the law at budget ``flops`` with ``U_D`` fixed.

    A grid over ``log N`` (``span`` either side of the unconstrained ``N_opt``, step
    0.05) finds the basin - the loss has kinks where ``U_N`` switches, so a local
    method alone could stop in the wrong one - then golden-section search refines it.
    """
    n0, _ = compute_optimal_rows(x, [flops])
    centre = np.log(n0[:, 0])
    steps = np.arange(-span, span + 1e-9, 0.05)
    log_n = centre[:, None] + steps[None, :]
    log_c6 = np.log(flops / 6.0)

    def losses(ln: NDArray[np.float64]) -> NDArray[np.float64]:
        n = np.exp(ln)
        return _loss_rows(x, n, np.exp(log_c6 - ln), unique_tokens)

    grid_loss = losses(log_n)
    grid_loss = np.where(np.isfinite(grid_loss), grid_loss, np.inf)
    best = np.argmin(grid_loss, axis=1)
    rows = np.arange(x.shape[0])
    a = log_n[rows, np.maximum(best - 1, 0)]
    b = log_n[rows, np.minimum(best + 1, steps.size - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c = b - ratio * (b - a)
    d = a + ratio * (b - a)
    fc = losses(c[:, None])[:, 0]
    fd = losses(d[:, None])[:, 0]
    for _ in range(60):  # the bracket shrinks by 0.618 per step: 0.1 -> 1e-13
        left = fc < fd
        a, b = np.where(left, a, c), np.where(left, d, b)
        c, d = np.where(left, b - ratio * (b - a), d), np.where(left, c, a + ratio * (b - a))
        f_new = losses(np.where(left, c, d)[:, None])[:, 0]
        fc, fd = np.where(left, f_new, fd), np.where(left, fc, f_new)
    ln_best = 0.5 * (a + b)
    return np.exp(ln_best), losses(ln_best[:, None])[:, 0]


def constrained_optimum(
    params: LawParams, flops: float, unique_tokens: float
) -> tuple[float, float, float]:
    """``(N, D, loss)`` minimising the law at budget ``flops`` with ``U_D`` fixed.

    For the Chinchilla form (which ignores repetition) this is SPEC §4's allocation.
    """
    if params.form == "chinchilla":
        n, d = compute_optimal(params, flops)
        return float(n), float(d), float(predict(params, n, d))
    n, loss = _constrained_rows(params.to_vector()[None, :], float(flops), float(unique_tokens))
    return float(n[0]), float(flops / (6.0 * n[0])), float(loss[0])


def plan(
    params: LawParams,
    flops: float,
    unique_tokens: float | None = None,
    samples: NDArray[np.float64] | None = None,
) -> dict[str, Any]:
    """What to train for a budget: SPEC §4's ``N_opt, D_opt`` and predicted loss,
    ``epochs = D / U_D`` and (data-constrained) the ``U_D``-aware optimum.

    Values are ``{"value": v, "ci": [lo, hi]}`` (``ci`` only with bootstrap
    ``samples``).  With ``unique_tokens`` the loss at ``(N_opt, D_opt)`` counts the
    repetition (data-constrained form); without, it assumes fresh data.
    """
    if flops <= 0 or not np.isfinite(flops):
        raise ValueError(f"the compute budget must be a positive FLOP count, got {flops}")
    if unique_tokens is not None and (unique_tokens <= 0 or not np.isfinite(unique_tokens)):
        raise ValueError(f"unique tokens must be a positive count, got {unique_tokens}")
    n_opt, d_opt = (float(v) for v in compute_optimal(params, flops))
    loss = float(predict(params, n_opt, d_opt, unique_tokens))
    out: dict[str, Any] = {
        "form": params.form,
        "flops": float(flops),
        "unique_tokens": unique_tokens,
        "N_opt": {"value": n_opt},
        "D_opt": {"value": d_opt},
        "loss": {"value": loss},
    }
    if unique_tokens is not None:
        out["epochs"] = {"value": d_opt / unique_tokens}
    constrained = params.form == "data-constrained" and unique_tokens is not None
    if constrained:
        assert unique_tokens is not None
        n_c, d_c, loss_c = constrained_optimum(params, flops, unique_tokens)
        out["constrained"] = {
            "N": {"value": n_c},
            "D": {"value": d_c},
            "epochs": {"value": d_c / unique_tokens},
            "loss": {"value": loss_c},
        }
    if samples is None or not len(samples):
        return out

    x = samples_to_vectors(samples, params.form)
    n_s, d_s = compute_optimal_rows(x, [flops])
    loss_s = _loss_rows(x, n_s, d_s, unique_tokens)
    bands = {"N_opt": n_s[:, 0], "D_opt": d_s[:, 0], "loss": loss_s[:, 0]}
    if unique_tokens is not None:
        bands["epochs"] = d_s[:, 0] / unique_tokens
    for key, values in bands.items():
        out[key]["ci"] = _interval(values[:, None])[:, 0].tolist()
    if constrained:
        assert unique_tokens is not None
        n_c_s, loss_c_s = _constrained_rows(x, float(flops), float(unique_tokens))
        d_c_s = flops / (6.0 * n_c_s)
        for key, values in (
            ("N", n_c_s),
            ("D", d_c_s),
            ("epochs", d_c_s / unique_tokens),
            ("loss", loss_c_s),
        ):
            out["constrained"][key]["ci"] = _interval(values[:, None])[:, 0].tolist()
    out["bootstrap_samples"] = int(x.shape[0])
    return out
