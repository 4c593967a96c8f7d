"""Reconstruction targets for masked tokens: time, FFT and STFT (SPEC §2, "Heads").

A token is one channel x one patch at 500 Hz.  The linear heads reconstruct three
targets per masked token, and this module computes them from the raw patches:

- ``time``: the raw patch (P = 500 samples for 1 s patches, 50 for 0.1 s).
- ``fft``: ``log1p(|rFFT|)`` with n_fft = 500.  At 500 Hz that is a 1 Hz bin spacing,
  so the cut "<= 200 Hz" keeps 201 bins (0..200 Hz).  A 0.1 s patch (50 samples) is
  zero-padded to 500, which is what ``rfft(x, n=500)`` does.
- ``stft``: ``log1p(|STFT|)`` with Hann windows, 50 % overlap (hop = n_fft / 2),
  ``center=False`` (no padding: frames = (P - n_fft) // hop + 1), bins <= 200 Hz.  Two
  window sets: ``"code"`` (the authors' code: n_fft 200/hop 100 and n_fft 50/hop 25)
  and ``"paper"`` (the paper's prose: n_fft 200 and 100).  Only the 1 s family has an
  STFT head (SPEC §2: STFT weight 0 for 0.1 s patches).

The parameter check in SPEC §2 fixes the sizes: a 1 s token with the code set has
500 + 201 + 4 x 81 + 19 x 21 = 1,424 target values; a 0.1 s token 50 + 201 = 251.

Hann window: *periodic* (``torch.hann_window`` default, the window ``torch.stft`` users
pass, and ``scipy.signal.get_window("hann")``'s default), i.e.
``w[n] = 0.5 - 0.5 cos(2 pi n / N)``.  With it, the 50 % overlapped windows sum to a
constant, and a sinusoid with a whole number of cycles per window leaks only into its
two neighbouring bins.  Magnitudes are unnormalised (``torch.stft``'s
``normalized=False``), as in the FFT target.

STFT layout: values are flattened *set by set* in the order listed in
:data:`STFT_SETS` (largest n_fft first), and within a set *frame-major*:
``index = offset_set + frame * n_bins + bin``.  :attr:`TargetSpec.stft_layout` gives
the per-set shapes, so a head's output can be reshaped back to (frames, bins).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FFT_N_FFT = 500
"""n_fft of the FFT target (SPEC §2): one 1 s patch at 500 Hz, so 1 Hz bins."""

STFT_SETS: dict[str, tuple[tuple[int, int], ...]] = {
    "code": ((200, 100), (50, 25)),
    "paper": ((200, 100), (100, 50)),
}
"""(n_fft, hop) per STFT window set (SPEC §2): ``code`` is the authors' released code,
``paper`` the paper's text; both use hop = n_fft / 2 (50 % overlap)."""


@dataclass(frozen=True)
class StftWindow:
    """Shape of one STFT window set's target on one patch."""

    n_fft: int
    hop: int
    frames: int
    bins: int

    @property
    def size(self) -> int:
        return self.frames * self.bins


def _bins_up_to(max_freq: float, n_fft: int, sfreq: float) -> int:
    """Number of rFFT bins with frequency <= ``max_freq`` (inclusive, SPEC §2 "cut at 200 Hz").

    Bin k sits at k * sfreq / n_fft.  A small tolerance keeps an exact boundary bin
    (200 Hz at 1, 2.5 or 10 Hz spacing) despite floating-point rounding.
    """
    last = math.floor(max_freq * n_fft / sfreq + 1e-9)
    return min(last, n_fft // 2) + 1


@dataclass(frozen=True)
class TargetSpec:
    """Which targets a patch length gets, and their sizes (SPEC §2, "Heads").

    ``patch_samples`` is 500 (1 s) or 50 (0.1 s) at ``sfreq`` = 500 Hz.  The STFT
    target exists only when every window of ``stft_set`` fits in the patch, which for
    SPEC patches means the 1 s family has it and the 0.1 s family (STFT weight 0)
    does not.
    """

    patch_samples: int
    stft_set: str = "code"
    sfreq: float = 500.0
    max_freq: float = 200.0

    def __post_init__(self) -> None:
        if self.stft_set not in STFT_SETS:
            raise ValueError(f"stft_set must be one of {sorted(STFT_SETS)}, got {self.stft_set!r}")
        if not 0 < self.patch_samples <= FFT_N_FFT:
            raise ValueError(
                f"patch_samples must be in 1..{FFT_N_FFT} (the FFT target zero-pads to "
                f"n_fft = {FFT_N_FFT}), got {self.patch_samples}"
            )
        if not 0 < self.max_freq <= self.sfreq / 2:
            raise ValueError(
                f"max_freq must be in (0, Nyquist = {self.sfreq / 2}], got {self.max_freq}"
            )

    @property
    def fft_bins(self) -> int:
        """FFT bins kept: 201 at 500 Hz, n_fft 500, <= 200 Hz."""
        return _bins_up_to(self.max_freq, FFT_N_FFT, self.sfreq)

    @property
    def has_stft(self) -> bool:
        """Whether the patch is long enough for every STFT window (the 1 s family)."""
        return all(n_fft <= self.patch_samples for n_fft, _ in STFT_SETS[self.stft_set])

    @property
    def stft_layout(self) -> tuple[StftWindow, ...]:
        """Per-set (n_fft, hop, frames, bins), in flattening order; empty without STFT."""
        if not self.has_stft:
            return ()
        return tuple(
            StftWindow(
                n_fft=n_fft,
                hop=hop,
                frames=(self.patch_samples - n_fft) // hop + 1,  # center=False
                bins=_bins_up_to(self.max_freq, n_fft, self.sfreq),
            )
            for n_fft, hop in STFT_SETS[self.stft_set]
        )

    @property
    def sizes(self) -> dict[str, int]:
        """Values per token per target; keys are the targets this patch length has.

        1 s, code set: {"time": 500, "fft": 201, "stft": 4 x 81 + 19 x 21 = 723} (1,424);
        1 s, paper set: {"time": 500, "fft": 201, "stft": 4 x 81 + 9 x 41 = 693};
        0.1 s: {"time": 50, "fft": 201} (251).
        """
        sizes = {"time": self.patch_samples, "fft": self.fft_bins}
        if self.has_stft:
            sizes["stft"] = sum(window.size for window in self.stft_layout)
        return sizes


def _log_magnitude(spectrum: torch.Tensor, bins: int) -> torch.Tensor:
    return torch.log1p(spectrum[..., :bins].abs())


def compute_targets(patches: torch.Tensor, spec: TargetSpec) -> dict[str, torch.Tensor]:
    """Reconstruction targets of every token in ``patches`` (SPEC §2, "Heads").

    ``patches`` has shape (..., P) with P = ``spec.patch_samples``; any leading shape
    (e.g. batch, channel, patch) works, and all tokens are transformed at once by
    batched ``torch.fft.rfft`` over ``unfold``-ed frames (no loops over tokens).

    Returns float32 tensors, detached (targets carry no gradient):
    ``{"time": (..., P), "fft": (..., 201), "stft": (..., n)}``, with ``"stft"`` only
    when ``spec.has_stft``; its layout is set by set, frame-major (see the module
    docstring and :attr:`TargetSpec.stft_layout`).
    """
    if patches.shape[-1:] != (spec.patch_samples,):
        raise ValueError(
            f"patches must end in {spec.patch_samples} samples, got shape {tuple(patches.shape)}"
        )
    if not patches.is_floating_point():
        raise TypeError(f"patches must be a real floating-point tensor, got {patches.dtype}")
    x = patches.detach().to(torch.float32)

    targets = {
        "time": x.clone(),
        "fft": _log_magnitude(torch.fft.rfft(x, n=FFT_N_FFT), spec.fft_bins),
    }
    if spec.has_stft:
        parts = []
        for window in spec.stft_layout:
            hann = torch.hann_window(window.n_fft, periodic=True, dtype=x.dtype, device=x.device)
            frames = x.unfold(-1, window.n_fft, window.hop)  # (..., frames, n_fft)
            spectrum = torch.fft.rfft(frames * hann, dim=-1)  # (..., frames, n_fft//2+1)
            parts.append(_log_magnitude(spectrum, window.bins).flatten(-2))
        targets["stft"] = torch.cat(parts, dim=-1)
    return targets
