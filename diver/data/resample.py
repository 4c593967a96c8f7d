"""Spatio-temporal resampling (STR, SPEC §2): which channels and patches a window gives.

At training time each 30 s window of ``C`` channels x ``N`` patches (``N = 30`` for
1 s patches, 300 for 0.1 s) is cut to ``C'`` distinct channels and a contiguous run
of ``N'`` patches, with

    C' = clamp(rounding(u * min(C, 32)), 1, min(C, 32)),  u ~ Beta(3, 1)
    N' = clamp(rounding(v * min(N, 30)), 1, min(N, 30)),  v ~ Beta(3, 1)

Beta(3, 1) has mean 0.75, which is where the corpus token count comes from
(U_D = windows x 32 x 30 x 0.75 x 0.75 = windows x 540, SPEC §1).  How the scaled draw
becomes an integer changes that mean slightly, so it is an option:

- ``"round"`` (default): E[C'] = 0.75 K + 1/(8K) (+ a negligible clamp at 1), which
  matches the 540 of the token count within 0.1 %, so the tokens the model sees are
  the tokens the scaling law counts.
- ``"ceil"``: never zero, and every size 1..K has positive probability.  For K slots,
  E[C'] = K - (K - 1)^2 / (4K): 24.49 of 32 channels (0.765 K) and 22.99 of 30
  patches, so E[C' N'] = 563 tokens against the 540 the scaling law counts (+4 %).

The evaluation crop (``enabled=False``) is deterministic: ``min(C, 32)`` channels and
the first ``min(N, 30)`` patches.  Its channels are spread evenly over the montage by
default (``eval_channels="spread"``): recordings list channels electrode by electrode,
so the first 32 of an 80-contact sEEG montage are often two or three shafts in one
region, while an even spread samples every shaft.  ``"first"`` takes the first 32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from diver.study.budget import MAX_CHANNELS, MAX_PATCHES


@dataclass(frozen=True)
class ResampleConfig:
    """How windows are cut into at most ``max_channels`` x ``max_patches`` tokens.

    ``enabled=False`` selects the deterministic evaluation crop described in the
    module docstring; ``alpha``/``beta`` parameterise the Beta draw of the fraction.
    """

    enabled: bool = True
    max_channels: int = MAX_CHANNELS
    max_patches: int = MAX_PATCHES
    alpha: float = 3.0
    beta: float = 1.0
    rounding: Literal["ceil", "round"] = "round"
    eval_channels: Literal["spread", "first"] = "spread"

    def __post_init__(self) -> None:
        if self.max_channels < 1 or self.max_patches < 1:
            raise ValueError("max_channels and max_patches must be at least 1")
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError("alpha and beta of the Beta draw must be positive")
        if self.rounding not in ("ceil", "round"):
            raise ValueError(f"rounding must be 'ceil' or 'round', got {self.rounding!r}")
        if self.eval_channels not in ("spread", "first"):
            raise ValueError(
                f"eval_channels must be 'spread' or 'first', got {self.eval_channels!r}"
            )


@dataclass(frozen=True)
class Crop:
    """The part of a window that becomes tokens.

    ``channels`` are distinct source channel indices, increasing (a uniformly random
    subset kept in montage order; the model is permutation-equivariant across
    channels, so the order carries no information); patches ``patch_start`` to
    ``patch_start + n_patches - 1`` are kept.
    """

    channels: np.ndarray
    patch_start: int
    n_patches: int


def scaled_draw(limit: int, rng: np.random.Generator, config: ResampleConfig) -> int:
    """An integer in ``[1, limit]``: ``limit`` scaled by a Beta(alpha, beta) fraction."""
    u = rng.beta(config.alpha, config.beta)
    scaled = u * limit
    k = math.ceil(scaled) if config.rounding == "ceil" else math.floor(scaled + 0.5)
    return min(max(k, 1), limit)


def draw_crop(
    n_channels: int, n_patches: int, rng: np.random.Generator, config: ResampleConfig
) -> Crop:
    """A training crop: random ``C'`` distinct channels, ``N'`` contiguous patches."""
    _check_shape(n_channels, n_patches)
    c_prime = scaled_draw(min(n_channels, config.max_channels), rng, config)
    channels = np.sort(rng.choice(n_channels, size=c_prime, replace=False))
    n_prime = scaled_draw(min(n_patches, config.max_patches), rng, config)
    start = int(rng.integers(0, n_patches - n_prime + 1))
    return Crop(channels=channels.astype(np.int64), patch_start=start, n_patches=n_prime)


def eval_crop(n_channels: int, n_patches: int, config: ResampleConfig) -> Crop:
    """The deterministic evaluation crop (module docstring explains the channel choice)."""
    _check_shape(n_channels, n_patches)
    k = min(n_channels, config.max_channels)
    if config.eval_channels == "first" or k == n_channels:
        channels = np.arange(k, dtype=np.int64)
    else:
        # floor((i * C + C // 2) / k) is strictly increasing for k <= C: distinct, spread.
        channels = (np.arange(k, dtype=np.int64) * n_channels + n_channels // 2) // k
    return Crop(channels=channels, patch_start=0, n_patches=min(n_patches, config.max_patches))


def choose_crop(
    n_channels: int, n_patches: int, rng: np.random.Generator | None, config: ResampleConfig
) -> Crop:
    """``draw_crop`` when resampling is enabled, else ``eval_crop`` (``rng`` unused)."""
    if not config.enabled:
        return eval_crop(n_channels, n_patches, config)
    if rng is None:
        raise ValueError("a numpy Generator is needed when resampling is enabled")
    return draw_crop(n_channels, n_patches, rng, config)


def apply_crop(signal: np.ndarray, crop: Crop, patch_samples: int) -> np.ndarray:
    """``signal[channels, patches]`` as a new float32 ``(C', N' * patch_samples)`` array.

    Only the kept channels are gathered and converted (from the float16 of the shard),
    so an 80-channel window costs no more than its crop.
    """
    start = crop.patch_start * patch_samples
    stop = start + crop.n_patches * patch_samples
    if stop > signal.shape[1]:
        raise ValueError(f"crop ends at sample {stop}, the window has {signal.shape[1]}")
    kept = np.ascontiguousarray(signal[crop.channels, start:stop])
    # float16 -> float32 through torch: numpy's conversion is ~15x slower
    return torch.from_numpy(kept).float().numpy()


def _check_shape(n_channels: int, n_patches: int) -> None:
    if n_channels < 1 or n_patches < 1:
        raise ValueError(f"cannot crop a window of {n_channels} channels x {n_patches} patches")
