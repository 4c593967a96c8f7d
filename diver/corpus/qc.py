"""The paper's QA/QC (SPEC §1, Appendix F.3), vectorised over a block of windows.

Signals arrive in µV, shape ``(n_windows, n_channels, n_samples)``.  Each channel
is divided by its modality's scale (EEG 100 µV, iEEG 200 µV) and clipped to
±``clip``.  Within a window a channel is *compromised* when more than
``max_clipped_fraction`` of its samples had to be clipped, when it holds a NaN, or
when it is flat; a window is dropped when more than ``max_bad_channel_fraction`` of
its channels are compromised, and a kept window keeps only its sound channels.

Thresholds are compared as sample and channel *counts* (``count > fraction * n``)
so the paper's edges hold exactly: with 15,000 samples and 0.0333, 500 clipped
samples drop a channel and 499 keep it; with 4 channels and 0.5, two compromised
channels keep the window and three drop it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diver.config import QCConfig


@dataclass(frozen=True)
class BlockVerdict:
    """QC outcome for a block of windows: arrays per (window, channel) or per window."""

    scaled: np.ndarray  # (W, C, S) float32, scaled and clipped, NaN replaced by 0
    channel_ok: np.ndarray  # (W, C) bool: channel sound in that window
    clipped: np.ndarray  # (W, C) bool: too many clipped samples
    flat: np.ndarray  # (W, C) bool
    has_nan: np.ndarray  # (W, C) bool
    window_ok: np.ndarray  # (W,) bool
    cbramod_ok: np.ndarray  # (W,) bool: CBraMod's "no sample above 100 µV" rule

    @property
    def kept_channels(self) -> np.ndarray:
        """(W, C) bool: the channels written for each kept window."""
        return self.channel_ok & self.window_ok[:, None]


def qc_block(windows_uv: np.ndarray, scale_uv: np.ndarray, qc: QCConfig) -> BlockVerdict:
    """Apply SPEC §1's QA/QC to ``windows_uv`` (µV) with per-channel ``scale_uv``."""
    if windows_uv.ndim != 3:
        raise ValueError(f"windows_uv must be (windows, channels, samples), got {windows_uv.shape}")
    n_windows, n_channels, n_samples = windows_uv.shape
    scale = np.asarray(scale_uv, dtype=np.float64).reshape(1, n_channels, 1)
    x = windows_uv.astype(np.float32, copy=False)

    nan = np.isnan(x)
    has_nan = nan.any(axis=-1)
    scaled = x / scale.astype(np.float32)
    over = np.abs(scaled) > qc.clip  # NaN compares False
    clipped_count = over.sum(axis=-1)
    clipped = clipped_count > qc.max_clipped_fraction * n_samples
    with np.errstate(invalid="ignore"):
        std = np.nanstd(x, axis=-1) if has_nan.any() else x.std(axis=-1)
    flat = ~(std >= qc.flat_std_uv)  # all-NaN std is NaN: flat as well

    compromised = clipped | has_nan | flat
    n_bad = compromised.sum(axis=-1)
    window_ok = (n_bad <= qc.max_bad_channel_fraction * n_channels) & (n_bad < n_channels)

    np.clip(scaled, -qc.clip, qc.clip, out=scaled)
    scaled[nan] = 0.0
    with np.errstate(invalid="ignore"):
        cbramod_ok = ~((np.abs(x) > qc.cbramod_threshold_uv) | nan).reshape(n_windows, -1).any(
            axis=-1
        )
    return BlockVerdict(
        scaled=scaled,
        channel_ok=~compromised,
        clipped=clipped,
        flat=flat & ~has_nan,
        has_nan=has_nan,
        window_ok=window_ok,
        cbramod_ok=cbramod_ok,
    )
