"""What unit a recording's numbers are really in: a per-dataset setting and a check.

MNE returns volts, converting each channel with the unit its reader understood from
the header.  Headers are not always honest or readable: a GDF 1.x file whose physical
dimension is written ``µV`` in Latin-1 is read as volts (MNE's GDF 1 reader knows only
``uV``), and some EDF writers put ``V`` in the physical-dimension field of microvolt
numbers.  Either way every sample comes out a million times too large, every window
fails QC, and nothing says why.

So, per dataset (and per task), ``units`` is either

* ``auto`` (default): the header is trusted, and each recording's amplitude is checked
  against the range of physiological EEG/iEEG (:data:`PLAUSIBLE_UV`).  A recording far
  outside it is quarantined with a reason that gives the amplitude found, the unit
  that would make it physiological and the setting to change -- never silently
  rescaled, since a wrong guess would corrupt a corpus without trace; or
* the unit the numbers in the files are really in (``uV``, ``mV``, ``V``, ``nV``):
  each channel is rescaled from the unit its reader assumed to that one.  A file whose
  header already says that unit is left as it is, so the setting can be given for a
  whole dataset in which only some files are mislabelled.
"""

from __future__ import annotations

import math
import warnings

import mne
import numpy as np
from scipy.signal import butter, sosfiltfilt

from diver.corpus.quarantine import Quarantine

# The setting's values: volts per unit of the file's numbers.
UNIT_SCALE = {"V": 1.0, "mV": 1e-3, "uV": 1e-6, "nV": 1e-9}
UNIT_TEXT = {"V": "V", "mV": "mV", "uV": "µV", "nV": "nV"}

# Header unit strings as readers write them (µ in its several code points).
_HEADER_UNITS = {
    "v": 1.0,
    "mv": 1e-3,
    "uv": 1e-6,
    "\u00b5v": 1e-6,
    "\u03bcv": 1e-6,
    "nv": 1e-9,
}

# Readers that convert with a fixed unit rather than a per-channel header field:
# EEGLAB and EGI store microvolts by convention and MNE scales them by 1e-6.
_READER_SCALE = {"RawEEGLAB": 1e-6, "RawMff": 1e-6, "RawEGI": 1e-6}
# Readers whose per-channel conversion factors (what was applied) MNE keeps in
# ``_raw_extras[i]["units"]``: exactly the factors used, unknown units included.
_EXTRAS_READERS = frozenset({"RawEDF", "RawBDF", "RawGDF"})

# The robust amplitude (1.4826 x median absolute deviation, after a 1 Hz high-pass)
# of physiological EEG and iEEG, median over a recording's channels: a few µV for
# quiet scalp EEG up to a few hundred µV for ECoG and sEEG; no amplifier's noise floor
# is below ~0.5 µV.  The bounds sit a decade beyond those ends, so only a unit error
# (a factor of 1,000 or more) falls outside; the paper's own QC scale (SPEC §1:
# 100 µV EEG, 200 µV iEEG) sits in the middle.
PLAUSIBLE_UV = (0.05, 2000.0)
# Where a plausible recording's amplitude typically sits (log-centre of 5-200 µV):
# the unit suggested is the one that brings the amplitude nearest to it.
TYPICAL_UV = 30.0
CONSTANT_RELATIVE = 1e-9  # amplitude / peak below which a channel is constant
HIGHPASS_HZ = 1.0  # removes DC offsets and drifts, which say nothing of the unit
SEGMENT_SECONDS = 20.0
SEGMENT_AT = (0.1, 0.5, 0.9)  # fractions of the recording where segments are read


class UnitsError(Quarantine):
    """The recording's numbers are not in the unit its header says (it is quarantined)."""


def header_scales(raw: mne.io.BaseRaw) -> np.ndarray:
    """Volts per number that the reader applied to each channel (1.0 where it assumed V).

    EDF, BDF and GDF: the factors MNE used (its ``_raw_extras``, which also records
    the volts it assumed for a unit it could not read).  Readers with a fixed unit
    (EEGLAB, EGI): that unit.  Others: the header's unit strings MNE kept
    (``_orig_units``, e.g. BrainVision), else volts (FIF, NWB store physical volts).
    """
    n = len(raw.ch_names)
    kind = type(raw).__name__
    if kind in _EXTRAS_READERS:
        extras = getattr(raw, "_raw_extras", None) or [{}]
        units = np.asarray(extras[0].get("units", []), dtype=float)
        if units.shape == (n,):
            return units
    if kind in _READER_SCALE:
        return np.full(n, _READER_SCALE[kind])
    orig = getattr(raw, "_orig_units", None) or {}
    return np.array(
        [
            _HEADER_UNITS.get(str(orig.get(name, "V")).strip().casefold(), 1.0)
            for name in raw.ch_names
        ]
    )


def _unit_of(scale: float) -> str | None:
    for unit, value in UNIT_SCALE.items():
        if math.isclose(scale, value, rel_tol=1e-6):
            return unit
    return None


def _segments(n_times: int, sfreq: float) -> list[tuple[int, int]]:
    length = min(n_times, max(1, round(SEGMENT_SECONDS * sfreq)))
    starts = sorted(
        {min(n_times - length, max(0, round(f * n_times) - length // 2)) for f in SEGMENT_AT}
    )
    return [(s, s + length) for s in starts]


def robust_amplitude_uv(raw: mne.io.BaseRaw, picks: np.ndarray, factors: np.ndarray) -> float:
    """Median over ``picks`` of each channel's robust amplitude (µV), high-passed at 1 Hz.

    Read from a few short segments spread over the recording (a unit error affects
    every sample, so a minute of signal shows it).  Channels that are constant or
    all-NaN are left out (flat-channel QC handles them); NaN when none is left.
    """
    sfreq = float(raw.info["sfreq"])
    sos = butter(4, HIGHPASS_HZ, btype="highpass", fs=sfreq, output="sos")
    per_segment = []
    for start, stop in _segments(raw.n_times, sfreq):
        try:
            data = raw.get_data(picks=picks, start=start, stop=stop) * factors[:, None] * 1e6
        except Exception as exc:  # readers raise many types for damaged data
            raise Quarantine(f"unreadable data: {type(exc).__name__}: {exc}") from exc
        finite = np.isfinite(data)
        data = np.where(finite, data, 0.0)
        peak = np.abs(data).max(axis=1)
        if data.shape[1] > 3 * (2 * len(sos) + 1):  # sosfiltfilt's default padding
            data = sosfiltfilt(sos, data, axis=1)
        data = np.where(finite, data, np.nan)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN channels
            centre = np.nanmedian(data, axis=1, keepdims=True)
            amplitude = 1.4826 * np.nanmedian(np.abs(data - centre), axis=1)
        # a constant channel leaves only the filter's rounding (~1e-15 of its level):
        # that is a flat channel, for flat-channel QC, not a unit
        per_segment.append(np.where(amplitude > CONSTANT_RELATIVE * peak, amplitude, np.nan))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # channels NaN in every segment
        amplitude = np.nanmedian(np.vstack(per_segment), axis=0)
    usable = amplitude[np.isfinite(amplitude) & (amplitude > 0)]
    return float(np.median(usable)) if usable.size else math.nan


def calibrate(raw: mne.io.BaseRaw, picks: np.ndarray, units: str, *, setting: str) -> np.ndarray:
    """Per picked channel, the factor turning ``raw.get_data(picks=picks)`` into true
    volts; raise UnitsError (a Quarantine) when ``auto`` finds an amplitude no
    EEG/iEEG has.

    ``setting`` names where the user changes the unit (``units of dataset 'x' in the
    config``), for the error message.
    """
    picks = np.asarray(picks, dtype=int)
    assumed = header_scales(raw)[picks]
    if units != "auto":
        if units not in UNIT_SCALE:
            raise ValueError(f"units {units!r} is not auto or one of {sorted(UNIT_SCALE)}")
        factors = UNIT_SCALE[units] / np.where(assumed > 0, assumed, 1.0)
        return factors
    factors = np.ones(len(picks))
    amplitude = robust_amplitude_uv(raw, picks, factors)
    low, high = PLAUSIBLE_UV
    if not math.isfinite(amplitude) or low <= amplitude <= high:
        return factors
    read_as = float(np.median(assumed))
    read_unit = _unit_of(read_as)
    read_text = UNIT_TEXT[read_unit] if read_unit else f"{read_as:g} V"
    advice = ""
    for exponent in sorted(
        range(-9, 10, 3), key=lambda e: abs(math.log10(amplitude) + e - math.log10(TYPICAL_UV))
    ):
        likely = _unit_of(read_as * 10.0**exponent)
        if exponent and likely is not None:
            fixed = amplitude * 10.0**exponent
            advice = (
                f"; the numbers look like {UNIT_TEXT[likely]} (which gives {fixed:.3g} µV): "
                f"if they are, set {setting} to {likely}"
            )
            break
    raise UnitsError(
        f"implausible amplitude: the neural channels' median robust amplitude "
        f"(1 Hz high-passed) is {amplitude:.3g} µV with the header's unit read as "
        f"{read_text}, outside physiological EEG/iEEG ({low:g}-{high:g} µV){advice}"
    )
