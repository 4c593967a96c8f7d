"""Figures the report draws itself (the fit's own figures come from its folder).

Built on :class:`matplotlib.figure.Figure` with the Agg canvas (no ``pyplot`` state,
no display) and returned as PNG bytes, which the page embeds.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class Curve:
    """One cell's logged losses: training (per step) and validation (per evaluation)."""

    label: str
    params: float
    fraction: float
    train: pd.DataFrame  # columns tokens, loss
    val: pd.DataFrame  # columns tokens, val_loss


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def smooth(values: np.ndarray, points: int = 60) -> np.ndarray:
    """Running mean over about ``len / points`` steps (a readable curve, same length)."""
    width = max(1, len(values) // points)
    if width == 1:
        return values
    return pd.Series(values).rolling(width, min_periods=1).mean().to_numpy()


def loss_curves(curves: Sequence[Curve], title: str) -> bytes:
    """Training and validation loss against tokens seen, one line per cell.

    Colour: model size (parameters); line style: data fraction.  Token axes are
    logarithmic (budgets span decades in real grids); the step-0 validation point
    (no tokens yet) is left out for that reason.
    """
    fig = Figure(figsize=(11.5, 4.4))
    ax_train, ax_val = fig.subplots(1, 2)
    sizes = sorted({c.params for c in curves})
    fractions = sorted({c.fraction for c in curves})
    cmap = colormaps["viridis"]
    for curve in curves:
        colour = cmap(sizes.index(curve.params) / max(1, len(sizes) - 1) * 0.85)
        style = _STYLES[fractions.index(curve.fraction) % len(_STYLES)]
        train = curve.train[curve.train["tokens"] > 0]
        if len(train):
            ax_train.plot(
                train["tokens"],
                smooth(train["loss"].to_numpy(float)),
                style,
                color=colour,
                lw=1.1,
                label=curve.label,
            )
        val = curve.val[curve.val["tokens"] > 0]
        if len(val):
            ax_val.plot(
                val["tokens"],
                val["val_loss"],
                style,
                marker="o",
                ms=3,
                color=colour,
                lw=1.1,
                label=curve.label,
            )
    for ax, what in ((ax_train, "training loss (running mean)"), (ax_val, "validation loss")):
        ax.set(xscale="log", yscale="log", xlabel="tokens seen", ylabel=what)
        ax.grid(True, which="both", alpha=0.25)
    ax_train.set_title(f"{title}: training")
    ax_val.set_title(f"{title}: validation (held-out subjects)")
    handles, labels = ax_val.get_legend_handles_labels()
    if not handles:
        handles, labels = ax_train.get_legend_handles_labels()
    if handles:
        fig.legend(
            handles,
            labels,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            fontsize=7,
            ncol=1 if len(labels) <= 24 else 2,
            title="size, fraction, epochs",
        )
    fig.tight_layout()
    return png_bytes(fig)
