"""Figures of a scaling-law fit (PNG, matplotlib's Agg renderer).

Figures are built on :class:`matplotlib.figure.Figure` directly, not through
``pyplot``: no global figure state, no GUI backend to select, safe in worker
processes and on headless nodes.  Each is written atomically (a temporary name in
the same folder, then ``os.replace``), so a reader never sees half a PNG.

- ``loss_vs_compute.png``: observed runs at ``C = 6 N D``, coloured by ``N``, with
  the fitted compute-optimal frontier and its bootstrap band;
- ``fitted_vs_observed.png``: predicted against observed loss, with ``y = x`` and R^2;
- ``iso_flop.png``: the law's loss along iso-FLOP curves over ``N`` (``U_D`` fixed
  at the runs' median unique tokens for the data-constrained form), each curve's
  minimum marked;
- ``profiles.png``: each free parameter's profile likelihood (the objective minimised
  over the others, in units of the fitted Huber scale, so the 95 % cutoff is 1.92),
  titled with its identification verdict (:mod:`diver.scaling.identify`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps, colors
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from diver.atomic import replacing
from diver.scaling.frontier import iso_flop
from diver.scaling.identify import PROFILE_CUTOFF
from diver.scaling.laws import LawParams


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def loss_vs_compute(
    path: Path,
    params_col: ArrayLike,
    tokens: ArrayLike,
    loss: ArrayLike,
    frontier: pd.DataFrame,
    *,
    title: str = "",
) -> Path:
    """Observed loss against compute with the fitted frontier (and band if present)."""
    n = np.asarray(params_col, dtype=float)
    c = 6.0 * n * np.asarray(tokens, dtype=float)
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    points = ax.scatter(
        c, loss, c=n, cmap="viridis", norm=colors.LogNorm(), s=22, zorder=3, label="runs"
    )
    fig.colorbar(points, ax=ax, label="parameters N")
    ax.plot(frontier["C"], frontier["loss"], color="crimson", lw=1.6, label="compute-optimal")
    if {"loss_lo", "loss_hi"} <= set(frontier.columns):
        ax.fill_between(
            frontier["C"],
            frontier["loss_lo"],
            frontier["loss_hi"],
            color="crimson",
            alpha=0.18,
            lw=0,
            label="95 % bootstrap band",
        )
    ax.set(xscale="log", yscale="log", xlabel="compute C = 6ND (FLOP)", ylabel="loss")
    ax.set_title(title or "loss vs compute")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def fitted_vs_observed(
    path: Path, observed: ArrayLike, predicted: ArrayLike, *, r2_linear: float, r2_log: float
) -> Path:
    """Predicted against observed loss on log axes, with the identity line."""
    obs = np.asarray(observed, dtype=float)
    pred = np.asarray(predicted, dtype=float)
    lo = min(obs.min(), pred.min()) / 1.05
    hi = max(obs.max(), pred.max()) * 1.05
    fig = Figure(figsize=(4.8, 4.6))
    ax = fig.add_subplot()
    ax.plot([lo, hi], [lo, hi], color="0.5", lw=1, ls="--")
    ax.scatter(obs, pred, s=20, color="tab:blue", zorder=3)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
    ax.set(xlabel="observed loss", ylabel="fitted loss")
    ax.set_title(f"R² linear {r2_linear:.3f}, log {r2_log:.3f}")
    return _save(fig, path)


def iso_flop_curves(
    path: Path,
    params: LawParams,
    budgets: ArrayLike,
    n_range: tuple[float, float],
    *,
    unique_tokens: float | None = None,
) -> Path:
    """Loss over ``N`` at fixed budgets, each minimum marked."""
    c = np.asarray(budgets, dtype=float)
    n_grid = np.logspace(np.log10(n_range[0]), np.log10(n_range[1]), 200)
    curves = iso_flop(params, c, n_grid, unique_tokens)
    fig = Figure(figsize=(6.4, 4.6))
    ax = fig.add_subplot()
    cmap = colormaps["plasma"]
    for i, (budget, curve) in enumerate(zip(c, curves, strict=True)):
        colour = cmap(i / max(1, len(c) - 1))
        ax.plot(n_grid, curve, color=colour, lw=1.3, label=f"C = {budget:.1e}")
        j = int(np.nanargmin(curve))
        ax.plot(n_grid[j], curve[j], "o", color=colour, ms=4)
    where = "fresh data" if unique_tokens is None else f"U_D = {unique_tokens:.3g} tokens"
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="loss")
    ax.set_title(f"iso-FLOP curves ({where})")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def profile_curves(
    path: Path,
    profiles: Mapping[str, Mapping[str, Any]],
    identification: Mapping[str, Mapping[str, Any]],
) -> Path:
    """One panel per profiled parameter: ``Δ objective / s`` against its value, the
    95 % cutoff dashed, the estimate marked; red title when not identified."""
    names = list(profiles)
    cols = min(4, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.7 * rows))
    if not names:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no profiles (every parameter fixed)", ha="center", va="center")
        ax.set_axis_off()
        return _save(fig, path)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        entry = profiles[name]
        values = np.asarray(entry["values"], dtype=float)
        cutoff = float(entry["cutoff"])
        scale = cutoff / PROFILE_CUTOFF if cutoff > 0 else 1.0
        rise = np.asarray(entry["delta_objective"], dtype=float) / scale
        ok = np.isfinite(rise) & np.asarray(entry["converged"], dtype=bool)
        ax.plot(values[ok], np.maximum(rise[ok], 0.0), "o-", ms=3, lw=1.2, color="tab:blue")
        ax.axhline(PROFILE_CUTOFF, color="crimson", ls="--", lw=1)
        ax.axvline(float(entry["estimate"]), color="0.4", lw=0.8)
        verdict = str(identification.get(name, {}).get("status", ""))
        logged = bool(np.all(values > 0)) and (values.max() / values.min() > 100)
        ax.set(xscale="log" if logged else "linear", ylim=(-0.5, 20.0))
        ax.set_xlabel(name)
        ax.set_ylabel("Δ objective / s")
        colour = "crimson" if verdict.startswith("not") else "black"
        ax.set_title(f"{name}: {verdict}", fontsize=8, color=colour)
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)
