"""Reconstruction targets for masked tokens: time, FFT and STFT (SPEC §2, "Heads").

A token is one channel x one patch at 500 Hz.  The linear heads reconstruct three
targets per masked token, computed here from the raw patches the way the authors' code
computes them (``models/target_representation_functions.py`` with the configurations
its ``Header`` uses), so losses are comparable with theirs:

- ``time``: the raw patch (P = 500 samples for 1 s patches, 50 for 0.1 s).
- ``fft``: ``log1p(|S|)`` of the rFFT with n = 500 (a 0.1 s patch is zero-padded, which
  is what ``rfft(x, n=500)`` does), bins *below* 200 Hz: ``int(200 // (500 / 500))``
  = 200 bins, 0..199 Hz.
- ``stft``: ``log1p(|S|)`` of ``torch.stft`` with a periodic Hann window, ``center=False``
  (frames = (P - n_fft) // hop + 1), ``normalized=True`` (divided by sqrt(n_fft)), bins
  below 200 Hz (``int(200 // (500 / n_fft))``).  Two window sets: ``"code"`` (n_fft
  200 / hop 100: 4 frames x 80 bins, and n_fft 50 / hop 25: 19 x 20 = 700 values) and
  ``"paper"`` (the paper's prose: n_fft 200 and 100).  Only the 1 s family has an STFT
  head (SPEC §2).

``S`` is where the code and a textbook differ: the code casts the complex spectrum to
the real dtype before taking |.|, which keeps the *real part* (``target_spectrum =
"real-part"``, the default); ``"magnitude"`` takes the true |X| the paper's prose
describes.

STFT layout, as the code flattens it: set by set in the order of :data:`STFT_SETS`,
within a set *frequency-major* (``torch.stft``'s (bins, frames) flattened):
``index = offset_set + bin * frames + frame``.  :attr:`TargetSpec.stft_layout` gives
the per-set shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FFT_N_FFT = 500
"""n of the FFT target (SPEC §2): one 1 s patch at 500 Hz, so 1 Hz bins."""

STFT_SETS: dict[str, tuple[tuple[int, int], ...]] = {
    "code": ((200, 100), (50, 25)),
    "paper": ((200, 100), (100, 50)),
}
"""(n_fft, hop) per STFT window set (SPEC §2): ``code`` is the authors' code, ``paper``
the paper's text; both use hop = n_fft / 2 (50 % overlap)."""

SPECTRA = ("real-part", "magnitude")


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


def _bins_below(max_freq: float, n_fft: int, sfreq: float) -> int:
    """rFFT bins below ``max_freq``: the code's ``int(max_freq // (sfreq / n_fft))``,
    at most the n_fft // 2 + 1 bins there are."""
    return min(int(max_freq // (sfreq / n_fft)), n_fft // 2 + 1)


@dataclass(frozen=True)
class TargetSpec:
    """Which targets a patch length gets, and their sizes (SPEC §2, "Heads").

    ``patch_samples`` is 500 (1 s) or 50 (0.1 s) at ``sfreq`` = 500 Hz.  The STFT
    target exists only when every window of ``stft_set`` fits in the patch: the 1 s
    family has it, the 0.1 s family does not.
    """

    patch_samples: int
    stft_set: str = "code"
    spectrum: str = "real-part"
    sfreq: float = 500.0
    max_freq: float = 200.0

    def __post_init__(self) -> None:
        if self.stft_set not in STFT_SETS:
            raise ValueError(f"stft_set must be one of {sorted(STFT_SETS)}, got {self.stft_set!r}")
        if self.spectrum not in SPECTRA:
            raise ValueError(f"spectrum must be one of {SPECTRA}, got {self.spectrum!r}")
        if not 0 < self.patch_samples <= FFT_N_FFT:
            raise ValueError(
                f"patch_samples must be in 1..{FFT_N_FFT} (the FFT target zero-pads to "
                f"n = {FFT_N_FFT}), got {self.patch_samples}"
            )
        if not 0 < self.max_freq <= self.sfreq / 2:
            raise ValueError(
                f"max_freq must be in (0, Nyquist = {self.sfreq / 2}], got {self.max_freq}"
            )

    @property
    def fft_bins(self) -> int:
        """FFT bins kept: 200 at 500 Hz, n = 500, below 200 Hz."""
        return _bins_below(self.max_freq, FFT_N_FFT, self.sfreq)

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
                bins=_bins_below(self.max_freq, n_fft, self.sfreq),
            )
            for n_fft, hop in STFT_SETS[self.stft_set]
        )

    @property
    def sizes(self) -> dict[str, int]:
        """Values per token per target; keys are the targets this patch length has.

        1 s, code set: {"time": 500, "fft": 200, "stft": 4 x 80 + 19 x 20 = 700} (1,400);
        1 s, paper set: {"time": 500, "fft": 200, "stft": 4 x 80 + 9 x 40 = 680};
        0.1 s: {"time": 50, "fft": 200} (250).
        """
        sizes = {"time": self.patch_samples, "fft": self.fft_bins}
        if self.has_stft:
            sizes["stft"] = sum(window.size for window in self.stft_layout)
        return sizes


def _amplitude(spectrum: torch.Tensor, kind: str) -> torch.Tensor:
    """log1p of |Re X| (the code) or |X| (``magnitude``)."""
    values = spectrum.real if kind == "real-part" else spectrum
    return torch.log1p(values.abs())


def compute_targets(patches: torch.Tensor, spec: TargetSpec) -> dict[str, torch.Tensor]:
    """Reconstruction targets of every token in ``patches`` (SPEC §2, "Heads").

    ``patches`` has shape (..., P) with P = ``spec.patch_samples``; any leading shape
    (e.g. batch, channel, patch) works, and all tokens are transformed at once.

    Returns float32 tensors, detached (targets carry no gradient):
    ``{"time": (..., P), "fft": (..., 200), "stft": (..., n)}``, with ``"stft"`` only
    when ``spec.has_stft``; its layout is set by set, frequency-major (see the module
    docstring and :attr:`TargetSpec.stft_layout`).
    """
    if patches.shape[-1:] != (spec.patch_samples,):
        raise ValueError(
            f"patches must end in {spec.patch_samples} samples, got shape {tuple(patches.shape)}"
        )
    if not patches.is_floating_point():
        raise TypeError(f"patches must be a real floating-point tensor, got {patches.dtype}")
    x = patches.detach().to(torch.float32)
    lead = x.shape[:-1]

    fft = torch.fft.rfft(x, n=FFT_N_FFT)[..., : spec.fft_bins]
    targets = {"time": x.clone(), "fft": _amplitude(fft, spec.spectrum)}
    if spec.has_stft:
        flat = x.reshape(-1, spec.patch_samples)
        parts = []
        for window in spec.stft_layout:
            if flat.shape[0] == 0:  # torch.stft refuses an empty batch
                parts.append(x.new_zeros(*lead, window.size))
                continue
            stft = torch.stft(
                flat,
                n_fft=window.n_fft,
                hop_length=window.hop,
                window=torch.hann_window(window.n_fft, dtype=x.dtype, device=x.device),
                center=False,
                normalized=True,
                onesided=True,
                return_complex=True,
            )[:, : window.bins]  # (tokens, bins, frames)
            parts.append(_amplitude(stft, spec.spectrum).reshape(*lead, window.size))
        targets["stft"] = torch.cat(parts, dim=-1)
    return targets
