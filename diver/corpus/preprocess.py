"""Named, serialisable preprocessing steps over MNE Raw objects (SPEC §1).

Each step is a frozen dataclass with an ``apply(raw)`` that works in place on a
preloaded :class:`mne.io.BaseRaw`, and a ``to_dict()`` so that the exact chain used
for a recording can be written next to its output (braindecode's ``Preprocessor``
idea, without the dependency).

The chain filters at the *lower* of the source and target rates: a recording
above 500 Hz is resampled first and then filtered, one below is filtered first and
then resampled.  High-pass, notch and resampling are linear and act on disjoint
bands (<= 0.5 Hz, the line frequency, > 250 Hz), so the order changes nothing
measurable but a 0.3 Hz FIR at 5 kHz costs ten times the taps it costs at 500 Hz.
Notch frequencies above the filtering rate's Nyquist are dropped (the resampler's
anti-alias filter has already removed them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import mne
import numpy as np


class Step(Protocol):
    def apply(self, raw: mne.io.BaseRaw) -> mne.io.BaseRaw: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class HighPass:
    """Zero-phase FIR high-pass (MNE defaults: firwin, Hamming)."""

    l_freq: float

    def apply(self, raw: mne.io.BaseRaw) -> mne.io.BaseRaw:
        return raw.filter(
            l_freq=self.l_freq, h_freq=None, picks="all", phase="zero", verbose="error"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"step": "highpass", **asdict(self)}

    def padding_seconds(self) -> float:
        """Signal needed on each side of a block so its edges filter as in one piece.

        MNE's automatic transition band for a high-pass at ``l`` Hz is
        ``min(max(0.25 l, 2), l)`` and the filter is ``3.3 / band`` seconds long; a
        full filter length of context on each side, plus a second, is plenty.
        """
        band = min(max(0.25 * self.l_freq, 2.0), self.l_freq)
        return 3.3 / band + 1.0


@dataclass(frozen=True)
class Notch:
    """Zero-phase FIR notch at the line frequency (and harmonics, for iEEG)."""

    freqs: tuple[float, ...]

    def apply(self, raw: mne.io.BaseRaw) -> mne.io.BaseRaw:
        return raw.notch_filter(freqs=np.asarray(self.freqs), picks="all", verbose="error")

    def to_dict(self) -> dict[str, Any]:
        return {"step": "notch", "freqs": list(self.freqs)}


@dataclass(frozen=True)
class Resample:
    """Resample to ``sfreq`` (MNE's FFT method handles non-integer ratios like 999.41 Hz)."""

    sfreq: float

    def apply(self, raw: mne.io.BaseRaw) -> mne.io.BaseRaw:
        if raw.info["sfreq"] == self.sfreq:
            return raw
        return raw.resample(self.sfreq, verbose="error")

    def to_dict(self) -> dict[str, Any]:
        return {"step": "resample", **asdict(self)}


def notch_frequencies(line_freq: float, nyquist: float, *, harmonics: bool) -> tuple[float, ...]:
    """The line frequency, and its harmonics when asked, strictly below ``nyquist``."""
    if not harmonics:
        return (line_freq,) if line_freq < nyquist else ()
    return tuple(float(f) for f in np.arange(line_freq, nyquist, line_freq) if f < nyquist)


def build_chain(
    *,
    sfreq_in: float,
    sfreq_out: float,
    highpass: float,
    line_freq: float,
    harmonics: bool,
) -> list[Step]:
    """The chain for one recording: filters run at min(sfreq_in, sfreq_out)."""
    filter_rate = min(sfreq_in, sfreq_out)
    filters: list[Step] = []
    if highpass > 0:
        filters.append(HighPass(highpass))
    freqs = notch_frequencies(line_freq, filter_rate / 2.0, harmonics=harmonics)
    if freqs:
        filters.append(Notch(freqs))
    resample = [] if sfreq_in == sfreq_out else [Resample(sfreq_out)]
    if sfreq_in > sfreq_out:
        return [*resample, *filters]
    return [*filters, *resample]


def apply_chain(raw: mne.io.BaseRaw, chain: list[Step]) -> mne.io.BaseRaw:
    for step in chain:
        raw = step.apply(raw)
    return raw


def padding_seconds(chain: list[Step]) -> float:
    """Context each side of a block so that block-wise output equals whole-signal output."""
    pads = [step.padding_seconds() for step in chain if isinstance(step, HighPass)]
    return max([2.0, *pads])
