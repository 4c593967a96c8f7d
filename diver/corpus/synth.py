"""A realistic synthetic EEG + iEEG corpus, written in the formats real corpora use.

The embedded default config and the scale benchmarks need data that exercises every
path of the corpus stage without shipping gigabytes of real recordings.  So this
module writes files that look like what the pipeline meets in the wild, not clean
arrays:

* ``<out>/eeg/``: a TUEG-like pile of scalp recordings, ``sub-XX_run-YY.edf`` (every
  third recording ``sub-XX_run-YY_eeg.fif`` instead; the ``_eeg.fif`` ending is one
  MNE's naming convention accepts, so neither writing nor reading warns).  Twenty
  10-20 channels spelled the way different systems spell them (``EEG T3-REF``,
  ``Cz..``, ``T3``, ``FP1``) plus one ECG and one EOG channel, 128/160/250/256 Hz by
  subject; 1/f background, occipital alpha, central mu, blinks, ECG, 60 Hz mains.
* ``<out>/ieeg/``: a BIDS-style tree of sEEG (depth shafts ``LA1..LA8``) and ECoG
  (grid ``G1..G16`` + strip ``S1..S6``) subjects, 512/1000/1024/2048 Hz, with
  ``channels.tsv`` / ``electrodes.tsv`` (MNI mm inside the brain) / ``coordsystem.json``
  sidecars and mains noise with harmonics.
* Every recording carries ``left`` / ``right`` annotations (4 s trials every ~10 s)
  with a class-dependent effect a linear model can find: mu desynchronisation over
  the contralateral central electrode (scalp), a high-gamma increase on a few
  contacts (iEEG).
* A known minority of recordings carries the faults the QA/QC rules of SPEC §1 must
  catch.  One scalp and one iEEG recording each hold a flat (constant) channel and a
  channel whose bursts saturate the amplifier for seconds at a time; the iEEG one
  also has a 65 s stretch where every channel reads zero (so whole windows must go).
  One scalp recording is sampled at 64 Hz (below the 100 Hz minimum) and one iEEG
  recording lasts 20 s (shorter than a window): both must be quarantined.

:func:`write_synthetic_task` writes, into a folder of its own, a labelled downstream
task for fine-tuning (SPEC §5): trials annotated ``baseline`` / ``oscillation``, the
latter carrying an injected 18 Hz rhythm on a few channels.

Everything is deterministic by ``(hours, seed)``: the same call writes byte-identical
files on any machine (fixed measurement dates, FIF machine ids zeroed, one random
stream per recording).  ``<out>/manifest.json`` records the ground truth (faults,
responsive channels) and is written last, so its presence means the corpus is
complete.  Each file is written under a temporary name outside the dataset folders
and renamed into place, so a killed run never leaves a half-written recording where
the corpus stage would read it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mne
import numpy as np
import scipy.fft
from scipy.signal import fftconvolve

__all__ = [
    "EEG_FOLDER",
    "IEEG_FOLDER",
    "MANIFEST_NAME",
    "SynthRecording",
    "SynthSummary",
    "SynthTaskSummary",
    "plan_synthetic_corpus",
    "write_synthetic_corpus",
    "write_synthetic_task",
]

EEG_FOLDER = "eeg"
IEEG_FOLDER = "ieeg"
MANIFEST_NAME = "manifest.json"
# Temporary files live beside, not inside, the dataset folders: a leftover from a
# killed run must never match a recording glob of the corpus stage.
_TMP_FOLDER = ".synth-tmp"
_MANIFEST_VERSION = 1

LINE_FREQ = 60.0
EEG_RATES = (128.0, 160.0, 250.0, 256.0)
IEEG_RATES = (512.0, 1000.0, 1024.0, 2048.0)
LOW_RATE = 64.0
MIN_SECONDS, MAX_SECONDS = 120, 300
SHORT_SECONDS = 20
LOW_RATE_SECONDS = 90
# An all-channel dropout long enough to contain at least one whole aligned 30 s window.
DROPOUT_SECONDS = 65
# At least four clean-length recordings per modality: only one of them carries channel
# faults and one short/low-rate recording comes on top, so faulty recordings stay a
# strict minority (2 of 5) even in the smallest corpus.
MIN_CLEAN_RECORDINGS = 4
TRIAL_SECONDS = 4.0
CLASSES = ("left", "right")
# Amplifier input ranges (µV), also the EDF physical range.  ±3200 µV is what Nihon
# Kohden uses for scalp EEG; on 16 bits it resolves 0.1 µV (iEEG: 0.2 µV), far below
# the signal, while saturating bursts hit the rail exactly as a real amplifier does.
EEG_RAIL_UV = 3200.0
IEEG_RAIL_UV = 6400.0
MEAS_DATE = datetime(2020, 1, 6, 9, 0, 0, tzinfo=UTC)
COORD_SYSTEM = "MNI152NLin2009aSym"

# Scalp channels: canonical 10-20 name and a flat head layout (x right, y anterior,
# unit radius), used only to shape spatial correlation and topographies.
_SCALP: tuple[tuple[str, float, float], ...] = (
    ("Fp1", -0.31, 0.95),
    ("Fp2", 0.31, 0.95),
    ("F7", -0.81, 0.59),
    ("F3", -0.39, 0.50),
    ("Fz", 0.0, 0.47),
    ("F4", 0.39, 0.50),
    ("F8", 0.81, 0.59),
    ("T7", -1.0, 0.0),
    ("C3", -0.47, 0.0),
    ("Cz", 0.0, 0.0),
    ("C4", 0.47, 0.0),
    ("T8", 1.0, 0.0),
    ("P7", -0.81, -0.59),
    ("P3", -0.39, -0.50),
    ("Pz", 0.0, -0.47),
    ("P4", 0.39, -0.50),
    ("P8", 0.81, -0.59),
    ("O1", -0.31, -0.95),
    ("Oz", 0.0, -1.0),
    ("O2", 0.31, -0.95),
)
_OLD_NAMES = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
# How different systems label the same electrodes (TUEG, eegmmidb/BCI2000, a plain
# clinical export with old temporal names, an all-caps export), and their ECG / EOG.
_EEG_STYLES = ("tueg", "dots", "plain", "upper")
_STYLE_AUX = {
    "tueg": ("ECG EKG-REF", "EOG LOC-REF"),
    "dots": ("ECG.", "EOG."),
    "plain": ("EKG", "VEOG"),
    "upper": ("ECG", "EOG"),
}
# Channels that may carry a planted fault: not the ones the alpha, blink and class
# checks rely on.
_FAULT_POOL_SCALP = ("F7", "F3", "Fz", "F4", "F8", "T7", "T8", "P7", "P3", "Pz", "P4", "P8")

# sEEG shafts: deepest contact (MNI mm) and the direction the shaft leaves the brain.
_SHAFTS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "LA": ((-22.0, -4.0, -20.0), (-1.0, 0.05, 0.05)),
    "LH": ((-28.0, -22.0, -12.0), (-1.0, -0.10, 0.05)),
    "LI": ((-34.0, 6.0, 4.0), (-1.0, 0.0, 0.10)),
    "LO": ((-18.0, 30.0, -16.0), (-1.0, 0.10, 0.15)),
    "RA": ((22.0, -4.0, -20.0), (1.0, 0.05, 0.05)),
    "RH": ((28.0, -22.0, -12.0), (1.0, -0.10, 0.05)),
    "RI": ((34.0, 6.0, 4.0), (1.0, 0.0, 0.10)),
    "RO": ((18.0, 30.0, -16.0), (1.0, 0.10, 0.15)),
}
_CONTACTS_PER_SHAFT = 8
_CONTACT_SPACING_MM = 3.5
# A crude brain: ellipsoid centre and semi-axes (MNI mm).  ECoG contacts sit at 96 %
# of its surface, i.e. on the cortex and inside the brain.
BRAIN_CENTRE_MM = (0.0, -18.0, 10.0)
BRAIN_AXES_MM = (68.0, 86.0, 70.0)
_ELECTRODE_SIZE_MM2 = {"depth": 5.03, "grid": 4.15, "strip": 4.15}


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SynthRecording:
    """One planned or written recording and its ground truth.

    ``faults`` pairs a fault kind with the channel it affects (``""`` when the whole
    recording is affected): ``flat_channel`` (constant), ``clipping`` (bursts at the
    amplifier rails), ``dropout`` (65 s where every channel reads zero), ``low_rate``
    (64 Hz, below the corpus minimum) and ``short`` (20 s, less than one window).
    ``left_channels`` / ``right_channels`` are the channels whose band power changes
    in ``left`` / ``right`` trials (``effect`` says how).
    """

    path: str
    modality: str
    subject: str
    run: int
    fmt: str
    sfreq: float
    duration_s: int
    channels: tuple[str, ...]
    faults: tuple[tuple[str, str], ...]
    effect: str
    left_channels: tuple[str, ...]
    right_channels: tuple[str, ...]
    sidecars: tuple[str, ...] = ()

    @property
    def is_clean(self) -> bool:
        """Whether no fault was planted in this recording."""
        return not self.faults


@dataclass(frozen=True)
class SynthSummary:
    """What ``write_synthetic_corpus`` wrote.

    ``recordings`` and ``subjects`` are totals (subjects are counted per modality:
    ``eeg`` sub-01 and ``ieeg`` sub-01 are different people); ``hours`` is per
    modality; ``paths`` are the recording files, sorted.
    """

    root: Path
    recordings: int
    subjects: int
    hours: Mapping[str, float]
    paths: tuple[Path, ...]
    manifest: Path
    items: tuple[SynthRecording, ...] = field(repr=False)

    @property
    def total_hours(self) -> float:
        return sum(self.hours.values())

    @property
    def faults(self) -> dict[str, tuple[str, ...]]:
        """Fault kind -> relative paths of the recordings that carry it."""
        found: dict[str, list[str]] = {}
        for item in self.items:
            for kind, _channel in item.faults:
                found.setdefault(kind, []).append(item.path)
        return {kind: tuple(paths) for kind, paths in sorted(found.items())}


@dataclass(frozen=True)
class _Subject:
    """Everything about a subject that stays the same across its runs."""

    modality: str
    index: int
    label: str
    sfreq: float
    kind: str  # EEG spelling style, or "seeg" / "ecog"
    channels: tuple[str, ...]
    ch_types: tuple[str, ...]  # MNE types: eeg/ecg/eog/seeg/ecog
    canonical: tuple[str, ...]  # 10-20 name (scalp) or channel name (iEEG)
    positions: tuple[tuple[float, ...], ...]  # per channel; () for ECG/EOG
    groups: tuple[str, ...]  # shaft/grid/strip name; "" for non-neural
    subtypes: tuple[str, ...]  # depth/grid/strip; "" otherwise
    left_channels: tuple[str, ...]
    right_channels: tuple[str, ...]
    rhythm_hz: tuple[float, ...]  # EEG: alpha, mu; iEEG: theta, beta


@dataclass(frozen=True)
class _Job:
    recording: SynthRecording
    subject: _Subject
    seed: tuple[int, ...]
    meas_date: datetime


def _subject_label(index: int, n_subjects: int) -> str:
    return f"{index + 1:0{max(2, len(str(n_subjects)))}d}"


def _durations(rng: np.random.Generator, remaining: float) -> list[int]:
    """Clean-recording durations summing to ``remaining`` within half a recording."""
    durations: list[int] = []
    total = 0
    while len(durations) < MIN_CLEAN_RECORDINGS or total < remaining:
        d = int(rng.integers(MIN_SECONDS, MAX_SECONDS + 1))
        if len(durations) >= MIN_CLEAN_RECORDINGS and total + d - remaining > remaining - total:
            break
        durations.append(d)
        total += d
    return durations


def _scalp_label(name: str, style: str) -> str:
    if style == "tueg":
        return f"EEG {_OLD_NAMES.get(name, name)}-REF"
    if style == "dots":
        return name.ljust(4, ".")
    if style == "plain":
        return _OLD_NAMES.get(name, name)
    return name.upper()


def _eeg_subject(
    index: int, label: str, rng: np.random.Generator, rates: Sequence[float]
) -> _Subject:
    style = _EEG_STYLES[index % len(_EEG_STYLES)]
    # Offset the rate cycle so spelling style and rate are not locked together.
    sfreq = float(rates[(index + index // len(rates)) % len(rates)])
    names = [_scalp_label(name, style) for name, _, _ in _SCALP]
    ecg, eog = _STYLE_AUX[style]
    label_of = dict(zip([n for n, _, _ in _SCALP], names, strict=True))
    return _Subject(
        modality="eeg",
        index=index,
        label=label,
        sfreq=sfreq,
        kind=style,
        channels=(*names, ecg, eog),
        ch_types=("eeg",) * len(_SCALP) + ("ecg", "eog"),
        canonical=(*(n for n, _, _ in _SCALP), "ECG", "EOG"),
        positions=(*((x, y) for _, x, y in _SCALP), (), ()),
        groups=("",) * (len(_SCALP) + 2),
        subtypes=("",) * (len(_SCALP) + 2),
        # Left-hand trials desynchronise mu over the right hemisphere (C4) and vice versa.
        left_channels=(label_of["C4"],),
        right_channels=(label_of["C3"],),
        rhythm_hz=(float(rng.uniform(9.0, 11.0)), float(rng.uniform(10.5, 12.5))),
    )


def _on_cortex(y: float, z: float, hemisphere: float) -> tuple[float, float, float]:
    """The point of the brain ellipsoid at (y, z) on one side, 4 % inside the surface."""
    cx, cy, cz = BRAIN_CENTRE_MM
    ax, ay, az = BRAIN_AXES_MM
    inside = 1.0 - ((y - cy) / ay) ** 2 - ((z - cz) / az) ** 2
    x = cx + hemisphere * ax * math.sqrt(max(inside, 0.0)) * 0.96
    return (round(x, 2), round(y, 2), round(z, 2))


def _ieeg_subject(
    index: int, label: str, rng: np.random.Generator, rates: Sequence[float]
) -> _Subject:
    kind = "seeg" if index % 2 == 0 else "ecog"
    sfreq = float(rates[(index + index // len(rates)) % len(rates)])
    names: list[str] = []
    positions: list[tuple[float, ...]] = []
    groups: list[str] = []
    subtypes: list[str] = []
    if kind == "seeg":
        shafts = sorted(str(s) for s in rng.choice(sorted(_SHAFTS), size=3, replace=False))
        for shaft in shafts:
            target, direction = _SHAFTS[shaft]
            unit = np.asarray(direction) / np.linalg.norm(direction)
            for k in range(_CONTACTS_PER_SHAFT):
                xyz = np.asarray(target) + k * _CONTACT_SPACING_MM * unit
                names.append(f"{shaft}{k + 1}")
                positions.append(tuple(round(float(v), 2) for v in xyz))
                groups.append(shaft)
                subtypes.append("depth")
        # Mid-shaft contacts of the first two shafts respond to the task.
        left = tuple(f"{shafts[0]}{k}" for k in (3, 4, 5))
        right = tuple(f"{shafts[1]}{k}" for k in (3, 4, 5))
        ch_type = "seeg"
    else:
        side = -1.0 if rng.random() < 0.5 else 1.0
        for row, z in enumerate((35.0, 25.0, 15.0, 5.0)):
            for col, y in enumerate((-35.0, -25.0, -15.0, -5.0)):
                names.append(f"G{row * 4 + col + 1}")
                positions.append(_on_cortex(y, z, side))
                groups.append("G")
                subtypes.append("grid")
        for k, y in enumerate((-55.0, -45.0, -35.0, -25.0, -15.0, -5.0)):
            names.append(f"S{k + 1}")
            positions.append(_on_cortex(y, -25.0, side))
            groups.append("S")
            subtypes.append("strip")
        left = ("G6", "G7")
        right = ("G10", "G11")
        ch_type = "ecog"
    n = len(names)
    return _Subject(
        modality="ieeg",
        index=index,
        label=label,
        sfreq=sfreq,
        kind=kind,
        channels=(*names, "ECG"),
        ch_types=(ch_type,) * n + ("ecg",),
        canonical=(*names, "ECG"),
        positions=(*positions, ()),
        groups=(*groups, ""),
        subtypes=(*subtypes, ""),
        left_channels=left,
        right_channels=right,
        rhythm_hz=(float(rng.uniform(5.0, 8.0)), float(rng.uniform(15.0, 25.0))),
    )


def _plan_modality(modality: str, hours: float, seed: int) -> list[_Job]:
    code = 0 if modality == "eeg" else 1
    rng = np.random.default_rng([seed, code, 0])
    # Recording-level faults come on top of the clean recordings.
    extras = [("low_rate", LOW_RATE_SECONDS) if modality == "eeg" else ("short", SHORT_SECONDS)]
    target = hours * 3600.0 / 2.0
    durations = _durations(rng, target - sum(d for _, d in extras))
    # Several subjects even in a small corpus (spelling styles and rates vary by
    # subject), and every subject has at least one clean recording.
    n_subjects = min(len(durations), max(3, math.ceil(len(durations) / 3)))
    rates = [float(r) for r in rng.permutation(EEG_RATES if modality == "eeg" else IEEG_RATES)]
    make = _eeg_subject if modality == "eeg" else _ieeg_subject
    subjects = [
        make(i, _subject_label(i, n_subjects), np.random.default_rng([seed, code, 1, i]), rates)
        for i in range(n_subjects)
    ]

    # (subject, duration, recording-level fault); clean recordings round-robin.
    per_subject: list[list[tuple[int, str]]] = [[] for _ in subjects]
    for i, d in enumerate(durations):
        per_subject[i % n_subjects].append((d, ""))
    for kind, d in extras:
        per_subject[int(rng.integers(n_subjects))].append((d, kind))
    # Channel faults all go to one clean-length recording, so that faulty recordings
    # stay a minority even in the smallest corpus.
    clean_slots = [
        (s, r) for s, runs in enumerate(per_subject) for r, (_, k) in enumerate(runs) if not k
    ]
    faulty_slot = clean_slots[int(rng.integers(len(clean_slots)))]

    jobs: list[_Job] = []
    position = 0
    for s, runs in enumerate(per_subject):
        subject = subjects[s]
        for r, (duration, kind) in enumerate(runs):
            run = r + 1
            faults: list[tuple[str, str]] = []
            if kind:
                faults.append((kind, ""))
            if (s, r) == faulty_slot:
                if modality == "eeg":
                    label_of = dict(zip(subject.canonical, subject.channels, strict=True))
                    pool = [label_of[n] for n in _FAULT_POOL_SCALP]
                else:
                    task = set(subject.left_channels) | set(subject.right_channels)
                    pool = [
                        c
                        for c, t in zip(subject.channels, subject.ch_types, strict=True)
                        if t != "ecg" and c not in task
                    ]
                flat, clipping = (str(c) for c in rng.choice(pool, size=2, replace=False))
                faults += [("flat_channel", flat), ("clipping", clipping)]
                if modality == "ieeg":
                    faults.append(("dropout", ""))
            sfreq = LOW_RATE if kind == "low_rate" else subject.sfreq
            stem = f"sub-{subject.label}"
            if modality == "eeg":
                fmt = "fif" if position % 3 == 2 else "edf"
                name = f"{stem}_run-{run:02d}" + ("_eeg.fif" if fmt == "fif" else ".edf")
                path = f"{EEG_FOLDER}/{name}"
                sidecars: tuple[str, ...] = ()
                effect = "mu_desynchronisation"
            else:
                fmt = "edf"
                folder = f"{IEEG_FOLDER}/{stem}/ieeg"
                base = f"{folder}/{stem}_task-rest_run-{run:02d}"
                path = f"{base}_ieeg.edf"
                sidecars = (f"{base}_channels.tsv", f"{base}_ieeg.json")
                effect = "high_gamma_increase"
            recording = SynthRecording(
                path=path,
                modality=modality,
                subject=subject.label,
                run=run,
                fmt=fmt,
                sfreq=sfreq,
                duration_s=int(duration),
                channels=subject.channels,
                faults=tuple(faults),
                effect=effect,
                left_channels=subject.left_channels,
                right_channels=subject.right_channels,
                sidecars=sidecars,
            )
            jobs.append(
                _Job(
                    recording=recording,
                    subject=subject,
                    seed=(seed, code, 2, s, run),
                    meas_date=MEAS_DATE + timedelta(days=s, hours=r, minutes=30 * code),
                )
            )
            position += 1
    return jobs


def _plan(hours: float, seed: int) -> list[_Job]:
    if not (isinstance(hours, int | float) and math.isfinite(hours) and hours > 0):
        raise ValueError(f"hours must be a positive number, got {hours!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return _plan_modality("eeg", hours, seed) + _plan_modality("ieeg", hours, seed)


def plan_synthetic_corpus(*, hours: float, seed: int) -> tuple[SynthRecording, ...]:
    """The recordings ``write_synthetic_corpus`` would write, without writing them.

    Cheap at any ``hours``: scale benchmarks and tests use it to know the corpus
    size and ground truth up front.
    """
    return tuple(job.recording for job in _plan(hours, seed))


# --------------------------------------------------------------------------- signals


def _unit_gain(gain: np.ndarray, n: int) -> np.ndarray:
    """Scale a spectral gain (last axis: rfft bins of ``n`` samples) to unit output std.

    Unit-variance white noise filtered by ``g`` has variance
    ``(g_0^2 + 2 sum g_k^2 + g_nyq^2) / n`` (Parseval), so normalising the gain rather
    than the output lets several rhythms share one FFT with exact amplitudes.
    """
    power = 2.0 * np.sum(gain**2, axis=-1, keepdims=True) - gain[..., :1] ** 2
    if n % 2 == 0:
        power -= gain[..., -1:] ** 2
    power[power == 0] = 1.0
    return gain / np.sqrt(power / n)


def _freqs(n: int, sfreq: float) -> np.ndarray:
    """rfft bin frequencies for the FFT length ``_shaped_noise`` uses for ``n`` samples."""
    return scipy.fft.rfftfreq(scipy.fft.next_fast_len(n, real=True), 1.0 / sfreq)


def _shaped_noise(
    rng: np.random.Generator,
    n_rows: int,
    n: int,
    sfreq: float,
    gain: Callable[[np.ndarray], np.ndarray] | np.ndarray,
) -> np.ndarray:
    """White noise shaped in the frequency domain, unit std per row (in expectation).

    Shaping the spectrum directly gives exact 1/f slopes and narrow-band rhythms
    whose amplitude waxes and wanes on its own, like real oscillations.  ``gain`` is
    a function of frequency, or an array over ``_freqs(n, sfreq)`` (one row per output
    row for channel-specific spectra).  The FFT runs on a fast length and is cut to
    ``n``: recording lengths like 359 s x 1000 Hz have large prime factors.
    """
    if n_rows == 0:
        return np.zeros((0, n), dtype=np.float32)
    m = scipy.fft.next_fast_len(n, real=True)
    g = gain(_freqs(n, sfreq)) if callable(gain) else gain
    g = _unit_gain(np.asarray(g, dtype=np.float64), m).astype(np.float32)
    spec = scipy.fft.rfft(rng.standard_normal((n_rows, m), dtype=np.float32), axis=1)
    spec *= g
    return scipy.fft.irfft(spec, n=m, axis=1)[:, :n]


def _aperiodic(exponent: float, knee: float) -> Callable[[np.ndarray], np.ndarray]:
    """Amplitude gain for a PSD of 1 / (knee + f^exponent), no DC."""

    def gain(f: np.ndarray) -> np.ndarray:
        g = 1.0 / np.sqrt(knee + f**exponent)
        g[f == 0] = 0.0
        return g

    return gain


def _bump(f0: float, width: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda f: np.exp(-0.5 * ((f - f0) / width) ** 2)


def _band(lo: float, hi: float, taper: float = 5.0) -> Callable[[np.ndarray], np.ndarray]:
    def gain(f: np.ndarray) -> np.ndarray:
        rise = np.clip((f - (lo - taper)) / taper, 0.0, 1.0)
        fall = np.clip(((hi + taper) - f) / taper, 0.0, 1.0)
        return np.sin(0.5 * np.pi * np.minimum(rise, fall)) ** 2

    return gain


def _correlated(
    rng: np.random.Generator,
    positions: np.ndarray,
    length: float,
    n: int,
    sfreq: float,
    gain: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Shaped noise whose channels correlate with distance (volume conduction)."""
    dist = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    cov = 0.7 * np.exp(-dist / length) + 0.3 * np.eye(len(positions))
    mix = np.linalg.cholesky(cov).astype(np.float32)
    return mix @ _shaped_noise(rng, len(positions), n, sfreq, gain)


def _trials(
    rng: np.random.Generator,
    duration: float,
    *,
    first: tuple[float, float] = (3.0, 6.0),
    gap: tuple[float, float] = (9.0, 11.0),
    classes: Sequence[str] = CLASSES,
) -> tuple[list[float], list[str]]:
    """Trial onsets (the first in ``first`` s, then every ``gap`` s: ~10 s for the
    corpus), the two classes balanced and shuffled."""
    onsets: list[float] = []
    t = float(rng.uniform(*first))
    while t + TRIAL_SECONDS < duration - 1.0:
        onsets.append(round(t, 3))
        t += float(rng.uniform(*gap))
    labels = [classes[i % 2] for i in range(len(onsets))]
    order = rng.permutation(len(labels))
    return onsets, [labels[i] for i in order]


def _trial_mask(n: int, sfreq: float, onsets: Sequence[float]) -> np.ndarray:
    """1 inside the given trials, 0 outside, with 0.25 s raised-cosine edges."""
    mask = np.zeros(n, dtype=np.float32)
    ramp = max(1, round(0.25 * sfreq))
    edge = np.sin(0.5 * np.pi * np.arange(ramp) / ramp) ** 2
    for onset in onsets:
        a, b = round(onset * sfreq), min(n, round((onset + TRIAL_SECONDS) * sfreq))
        mask[a:b] = 1.0
        mask[a : min(b, a + ramp)] = edge[: min(b, a + ramp) - a]
        mask[max(a, b - ramp) : b] = edge[::-1][-(b - max(a, b - ramp)) :]
    return mask


def _events(
    rng: np.random.Generator,
    n: int,
    sfreq: float,
    rate_hz: float,
    amplitude: tuple[float, float],
    kernel: np.ndarray,
    regular: bool = False,
) -> np.ndarray:
    """A train of ``kernel`` waveforms (blinks, heartbeats) at a given mean rate."""
    train = np.zeros(n, dtype=np.float32)
    t = float(rng.uniform(0.0, 1.0 / rate_hz))
    while t < n / sfreq:
        train[min(n - 1, round(t * sfreq))] = rng.uniform(*amplitude)
        period = 1.0 / rate_hz
        t += float(rng.normal(period, 0.05 * period)) if regular else float(rng.exponential(period))
    return fftconvolve(train, kernel, mode="full")[len(kernel) // 2 : len(kernel) // 2 + n].astype(
        np.float32
    )


def _blink_kernel(sfreq: float) -> np.ndarray:
    t = np.arange(-0.4, 0.6, 1.0 / sfreq)
    return np.where(t < 0, np.exp(-0.5 * (t / 0.05) ** 2), np.exp(-0.5 * (t / 0.10) ** 2))


def _qrs_kernel(sfreq: float) -> np.ndarray:
    t = np.arange(-0.3, 0.5, 1.0 / sfreq)

    def g(centre: float, width: float) -> np.ndarray:
        return np.exp(-0.5 * ((t - centre) / width) ** 2)

    return -0.12 * g(-0.025, 0.008) + g(0.0, 0.010) - 0.25 * g(0.025, 0.010) + 0.3 * g(0.25, 0.045)


def _line_noise(
    rng: np.random.Generator,
    n_rows: int,
    n: int,
    sfreq: float,
    amplitudes: Sequence[float],
    scale: tuple[float, float],
) -> np.ndarray:
    """Mains at 60 Hz (and harmonics) with a per-channel amplitude and phase.

    Built as (rows x 2H coefficients) @ (2H sines/cosines x time): one matrix product
    instead of a sine per sample per channel.
    """
    t = np.arange(n) / sfreq
    per_channel = rng.uniform(*scale, size=n_rows)
    coefs: list[np.ndarray] = []
    basis: list[np.ndarray] = []
    for k, amp in enumerate(amplitudes, start=1):
        phase = rng.uniform(0, 2 * np.pi, size=n_rows)
        if k * LINE_FREQ < sfreq / 2 - 2.0:
            coefs += [amp * per_channel * np.cos(phase), amp * per_channel * np.sin(phase)]
            basis += [np.sin(2 * np.pi * k * LINE_FREQ * t), np.cos(2 * np.pi * k * LINE_FREQ * t)]
    if not coefs:
        return np.zeros((n_rows, n), dtype=np.float32)
    return (np.stack(coefs, axis=1) @ np.stack(basis)).astype(np.float32)


def _eeg_data(
    job: _Job, rng: np.random.Generator, n: int, onsets: Sequence[float], labels: Sequence[str]
) -> np.ndarray:
    """Scalp EEG in µV: 1/f background, alpha, mu with ERD, blinks, ECG, mains."""
    subject, sfreq = job.subject, job.recording.sfreq
    n_scalp = len(_SCALP)
    pos = np.array([p for p in subject.positions[:n_scalp]], dtype=float)
    x, y = pos[:, 0], pos[:, 1]
    data = np.zeros((n_scalp + 2, n), dtype=np.float32)

    background = _correlated(rng, pos, 0.6, n, sfreq, _aperiodic(1.2, 1.0))
    data[:n_scalp] = background * rng.uniform(10.0, 16.0, size=(n_scalp, 1))

    # Alpha: one posterior generator plus local variation, strongest occipitally.
    alpha_hz, mu_hz = subject.rhythm_hz
    common = _shaped_noise(rng, 1, n, sfreq, _bump(alpha_hz, 0.7))
    local = _shaped_noise(rng, n_scalp, n, sfreq, _bump(alpha_hz, 0.7))
    weight = np.clip((0.2 - y) / 1.2, 0.05, 1.0)
    data[:n_scalp] += (
        (18.0 * rng.uniform(0.8, 1.3)) * weight[:, None] * (0.8 * common + 0.6 * local)
    )

    # Mu over C3 and C4, desynchronised by contralateral trials (the class effect).
    mu = _shaped_noise(rng, 2, n, sfreq, _bump(mu_hz, 0.8))
    left_mask = _trial_mask(
        n, sfreq, [o for o, c in zip(onsets, labels, strict=True) if c == "left"]
    )
    right_mask = _trial_mask(
        n, sfreq, [o for o, c in zip(onsets, labels, strict=True) if c == "right"]
    )
    for source, (cx, gate) in enumerate(((-0.47, right_mask), (0.47, left_mask))):
        spread = np.exp(-((x - cx) ** 2 + y**2) / (2 * 0.22**2))
        data[:n_scalp] += 11.0 * spread[:, None] * (mu[source] * (1.0 - 0.7 * gate))

    # Blinks: frontal, decaying backwards; the EOG channel sees them largest.
    blinks = _events(rng, n, sfreq, rng.uniform(0.2, 0.33), (60.0, 110.0), _blink_kernel(sfreq))
    data[:n_scalp] += np.exp(-(0.95 - y) / 0.35)[:, None] * blinks
    data[n_scalp + 1] = (
        1.8 * blinks + 15.0 * _shaped_noise(rng, 1, n, sfreq, _aperiodic(1.5, 0.5))[0]
    )

    # Heart: a proper ECG channel, and a few µV of it everywhere on the scalp.
    ecg = _events(
        rng, n, sfreq, rng.uniform(1.0, 1.3), (0.9, 1.1), _qrs_kernel(sfreq), regular=True
    )
    data[n_scalp] = 900.0 * ecg + 10.0 * _shaped_noise(rng, 1, n, sfreq, _aperiodic(1.0, 1.0))[0]
    data[:n_scalp] += rng.uniform(-2.0, 2.0, size=(n_scalp, 1)) * ecg

    data += _line_noise(rng, n_scalp + 2, n, sfreq, (1.0,), (1.0, 5.0))
    return data


def _ieeg_data(
    job: _Job, rng: np.random.Generator, n: int, onsets: Sequence[float], labels: Sequence[str]
) -> np.ndarray:
    """iEEG in µV: steep 1/f, theta and beta on some contacts, task high gamma, mains."""
    subject, sfreq = job.subject, job.recording.sfreq
    n_c = len(subject.channels) - 1
    pos = np.array(subject.positions[:n_c], dtype=float)
    data = np.zeros((n_c + 1, n), dtype=np.float32)

    background = _correlated(rng, pos, 10.0, n, sfreq, _aperiodic(2.0, 4.0))
    # Broadband amplitude: after the 0.5 Hz high-pass, most contacts sit well inside
    # the paper's 200 µV iEEG scale, as clinical recordings mostly do.
    data[:n_c] = background * rng.uniform(25.0, 50.0, size=(n_c, 1))
    theta_hz, beta_hz = subject.rhythm_hz
    # Theta on ~40 % of contacts, beta on ~30 %, a little high gamma (70-110 Hz)
    # everywhere: one FFT with a spectrum per contact.
    freqs = _freqs(n, sfreq)
    m = scipy.fft.next_fast_len(n, real=True)
    theta = (rng.random(n_c) < 0.4) * rng.uniform(30.0, 60.0, n_c)
    beta = (rng.random(n_c) < 0.3) * rng.uniform(10.0, 25.0, n_c)
    spectra = (
        theta[:, None] * _unit_gain(_bump(theta_hz, 1.0)(freqs), m)
        + beta[:, None] * _unit_gain(_bump(beta_hz, 2.0)(freqs), m)
        + 4.0 * _unit_gain(_band(70.0, 110.0)(freqs), m)
    )
    rhythms = _shaped_noise(rng, n_c, n, sfreq, spectra)
    data[:n_c] += rhythms * np.sqrt(theta**2 + beta**2 + 16.0)[:, None]

    # Task contacts: high gamma rises to 3.5x in trials of their class.
    task = [
        (cls, name)
        for cls, names in (("left", subject.left_channels), ("right", subject.right_channels))
        for name in names
    ]
    extra = _shaped_noise(rng, len(task), n, sfreq, _band(70.0, 110.0))
    masks = {
        cls: _trial_mask(n, sfreq, [o for o, c in zip(onsets, labels, strict=True) if c == cls])
        for cls in CLASSES
    }
    for row, (cls, name) in enumerate(task):
        data[subject.channels.index(name)] += 10.0 * masks[cls] * extra[row]

    ecg = _events(
        rng, n, sfreq, rng.uniform(1.0, 1.3), (0.9, 1.1), _qrs_kernel(sfreq), regular=True
    )
    data[n_c] = 900.0 * ecg + 10.0 * _shaped_noise(rng, 1, n, sfreq, _aperiodic(1.0, 1.0))[0]
    data[:n_c] += rng.uniform(0.0, 5.0, size=(n_c, 1)) * ecg

    data += _line_noise(rng, n_c + 1, n, sfreq, (10.0, 4.0, 2.0, 1.0), (0.5, 2.0))
    return data


def _plant_faults(job: _Job, rng: np.random.Generator, data: np.ndarray, rail: float) -> None:
    """Write the planned channel and stretch faults into ``data`` (µV) in place."""
    sfreq, channels = job.recording.sfreq, job.recording.channels
    n = data.shape[1]
    kinds = dict(job.recording.faults)
    duration = n / sfreq
    # Lead-off / paused acquisition near the end (applied last): every channel reads 0.
    usable = duration
    if "dropout" in kinds:
        usable = duration - DROPOUT_SECONDS - float(rng.uniform(2.0, 8.0))
    if "flat_channel" in kinds:
        # A disconnected input: a constant DC level, no signal at all.
        data[channels.index(kinds["flat_channel"])] = round(float(rng.uniform(-40.0, 40.0)), 1)
    if "clipping" in kinds:
        # Electrode pops / movement: slow swings several times the input range that
        # hold the amplifier at its rails for 3-6 s at a time (before any dropout).
        row = channels.index(kinds["clipping"])
        n_bursts = max(2, int(usable // 60))
        slot = usable / n_bursts
        for k in range(n_bursts):
            start = k * slot + float(rng.uniform(1.0, max(1.5, slot - 7.0)))
            length = float(rng.uniform(3.0, 6.0))
            a, b = round(start * sfreq), min(n, round((start + length) * sfreq))
            t = np.arange(b - a) / sfreq
            freq, phase = rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi)
            swing = rng.uniform(2.0, 4.0) * rail * np.sin(2 * np.pi * freq * t + phase)
            data[row, a:b] += swing.astype(np.float32)
    if "dropout" in kinds:
        data[:, round(usable * sfreq) : round((usable + DROPOUT_SECONDS) * sfreq)] = 0.0


# --------------------------------------------------------------------------- writers


def _atomic_text(path: Path, tmp_dir: Path, text: str) -> None:
    tmp = tmp_dir / path.name
    tmp.write_text(text, encoding="utf-8", newline="\n")
    os.replace(tmp, path)


def _tsv(rows: Sequence[Sequence[object]]) -> str:
    return "".join("\t".join(str(v) for v in row) + "\n" for row in rows)


def _json(obj: object) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _zero_fif_machine_ids(path: Path) -> None:
    """Zero the machine id MNE stamps into every FIF id tag.

    MNE writes ``uuid.getnode()`` (the MAC address) into the file and block ids, so
    the same data saved on two hosts differs by those bytes.  A FIF file is a flat
    sequence of tags (kind, type, size, next, payload); an id tag has type 31 and a
    20-byte payload (version, machid[2], secs, usecs).
    """
    buf = bytearray(path.read_bytes())
    pos = 0
    while pos + 16 <= len(buf):
        _kind, typ, size, _next = struct.unpack_from(">iiii", buf, pos)
        if size < 0 or pos + 16 + size > len(buf):
            raise ValueError(f"{path}: unexpected FIF layout at byte {pos}")
        if typ == 31 and size == 20:
            buf[pos + 20 : pos + 28] = bytes(8)
        pos += 16 + size
    if pos != len(buf):
        raise ValueError(f"{path}: trailing bytes after the last FIF tag")
    path.write_bytes(bytes(buf))


def _write_dataset_description(out: Path, tmp_dir: Path, name: str) -> None:
    """The BIDS ``dataset_description.json`` of the iEEG tree."""
    _atomic_text(
        out / IEEG_FOLDER / "dataset_description.json",
        tmp_dir,
        _json(
            {
                "Name": name,
                "BIDSVersion": "1.9.0",
                "DatasetType": "raw",
                "GeneratedBy": [{"Name": "diver.corpus.synth"}],
            }
        ),
    )


def _clipped_raw(
    job: _Job, data: np.ndarray, rail: float, onsets: list[float], labels: list[str]
) -> mne.io.RawArray:
    """The recording as an MNE Raw (volts), clipped a hair inside the amplifier's input
    range so V -> µV round-off in the exporter never reads as "beyond the physical
    range", with its trials annotated."""
    rec, subject = job.recording, job.subject
    limit = rail * (1.0 - 1e-9)
    np.clip(data, -limit, limit, out=data)
    info = mne.create_info(list(rec.channels), rec.sfreq, list(subject.ch_types), verbose="error")
    info.set_meas_date(job.meas_date)
    info["line_freq"] = LINE_FREQ
    info["subject_info"] = {"his_id": f"sub-{subject.label}"}
    raw = mne.io.RawArray(data.astype(np.float64) * 1e-6, info, verbose="error")
    raw.set_annotations(
        mne.Annotations(onsets, [TRIAL_SECONDS] * len(onsets), labels, orig_time=job.meas_date)
    )
    return raw


def _write_recording(job: _Job, out: Path, tmp_dir: Path) -> None:
    """Synthesise one recording and write it (and its sidecars) atomically."""
    rec = job.recording
    rng = np.random.default_rng(list(job.seed))
    n = round(rec.duration_s * rec.sfreq)
    onsets, labels = _trials(rng, rec.duration_s)
    if rec.modality == "eeg":
        data, rail = _eeg_data(job, rng, n, onsets, labels), EEG_RAIL_UV
    else:
        data, rail = _ieeg_data(job, rng, n, onsets, labels), IEEG_RAIL_UV
    _plant_faults(job, rng, data, rail)
    raw = _clipped_raw(job, data, rail, onsets, labels)

    target = out / rec.path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / target.name
    if rec.fmt == "edf":
        mne.export.export_raw(
            tmp, raw, fmt="edf", physical_range=(-rail, rail), overwrite=True, verbose="error"
        )
    else:
        raw.save(tmp, fmt="single", overwrite=True, verbose="error")
        _zero_fif_machine_ids(tmp)
    os.replace(tmp, target)

    if rec.modality == "ieeg":
        _write_ieeg_run_sidecars(job, out, tmp_dir)


def _write_ieeg_run_sidecars(job: _Job, out: Path, tmp_dir: Path) -> None:
    """The per-run BIDS sidecars: channel table (types, status) and ieeg.json."""
    rec, subject = job.recording, job.subject
    channels_tsv, ieeg_json = (out / p for p in rec.sidecars)
    flat = {ch for kind, ch in rec.faults if kind == "flat_channel"}
    rows: list[list[object]] = [
        [
            "name",
            "type",
            "units",
            "low_cutoff",
            "high_cutoff",
            "sampling_frequency",
            "status",
            "status_description",
        ]
    ]
    for name, ch_type in zip(subject.channels, subject.ch_types, strict=True):
        # The flat contact was noticed and marked bad; the clipping one was not, so
        # the QA/QC rules still have to find it.
        status, why = ("bad", "flat signal") if name in flat else ("good", "n/a")
        rows.append([name, ch_type.upper(), "µV", "n/a", "n/a", f"{rec.sfreq:g}", status, why])
    _atomic_text(channels_tsv, tmp_dir, _tsv(rows))
    counts = {t: subject.ch_types.count(t) for t in ("seeg", "ecog", "ecg")}
    _atomic_text(
        ieeg_json,
        tmp_dir,
        _json(
            {
                "TaskName": "rest",
                "SamplingFrequency": rec.sfreq,
                "PowerLineFrequency": LINE_FREQ,
                "SoftwareFilters": "n/a",
                "iEEGReference": "n/a",
                "RecordingDuration": rec.duration_s,
                "SEEGChannelCount": counts["seeg"],
                "ECOGChannelCount": counts["ecog"],
                "ECGChannelCount": counts["ecg"],
            }
        ),
    )


def _write_ieeg_subject_sidecars(subject: _Subject, out: Path, tmp_dir: Path) -> None:
    """The per-subject BIDS sidecars: electrode positions and their coordinate system."""
    folder = f"{IEEG_FOLDER}/sub-{subject.label}/ieeg"
    (out / folder).mkdir(parents=True, exist_ok=True)
    electrodes = f"{folder}/sub-{subject.label}_electrodes.tsv"
    coordsystem = f"{folder}/sub-{subject.label}_coordsystem.json"
    rows: list[list[object]] = [["name", "x", "y", "z", "size", "type", "group"]]
    for name, xyz, group, sub in zip(
        subject.channels, subject.positions, subject.groups, subject.subtypes, strict=True
    ):
        if xyz:
            rows.append(
                [name, *(f"{v:.2f}" for v in xyz), f"{_ELECTRODE_SIZE_MM2[sub]:g}", sub, group]
            )
    _atomic_text(out / electrodes, tmp_dir, _tsv(rows))
    _atomic_text(
        out / coordsystem,
        tmp_dir,
        _json(
            {
                "iEEGCoordinateSystem": COORD_SYSTEM,
                "iEEGCoordinateUnits": "mm",
                "iEEGCoordinateProcessingDescription": "synthetic positions (diver.corpus.synth)",
            }
        ),
    )


def _run_jobs(jobs: Sequence[_Job], out: Path, tmp_dir: Path, n_jobs: int) -> None:
    if n_jobs <= 1 or len(jobs) <= 1:
        for job in jobs:
            _write_recording(job, out, tmp_dir)
        return
    with ProcessPoolExecutor(max_workers=min(n_jobs, len(jobs))) as pool:
        for future in [pool.submit(_write_recording, job, out, tmp_dir) for job in jobs]:
            future.result()


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete files an earlier corpus in ``out`` listed that this one does not write."""
    manifest = out / MANIFEST_NAME
    if not manifest.exists():
        return
    try:
        previous = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError):
        previous = []
    manifest.unlink()
    for rel in sorted(set(previous) - keep):
        path = (out / rel).resolve()
        if out.resolve() in path.parents and path.is_file():
            path.unlink()
            parent = path.parent
            while parent != out.resolve() and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


def write_synthetic_corpus(out: Path, *, hours: float, seed: int, jobs: int = 1) -> SynthSummary:
    """Write a synthetic scalp-EEG + iEEG corpus of about ``hours`` hours into ``out``.

    Half the hours go to each modality; clean recordings are 2-5 min long and their
    number is chosen so each modality's total is within one recording of its share
    (at least four per modality, so small ``hours`` round up: 0.5 h is about the floor).
    The planted faults (see ``SynthSummary.faults``) come on top.  ``jobs`` writes
    recordings in parallel processes; the bytes do not depend on it.
    """
    out = Path(out)
    plan = _plan(hours, seed)
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = out / _TMP_FOLDER
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()

    subjects = {job.subject.label: job.subject for job in plan if job.subject.modality == "ieeg"}
    files = sorted(
        [job.recording.path for job in plan]
        + [s for job in plan for s in job.recording.sidecars]
        + [f"{IEEG_FOLDER}/dataset_description.json"]
        + [
            f"{IEEG_FOLDER}/sub-{label}/ieeg/sub-{label}_{suffix}"
            for label in subjects
            for suffix in ("electrodes.tsv", "coordsystem.json")
        ]
    )
    _remove_stale(out, set(files))
    (out / EEG_FOLDER).mkdir(exist_ok=True)
    (out / IEEG_FOLDER).mkdir(exist_ok=True)

    _write_dataset_description(out, tmp_dir, "diver synthetic iEEG")
    for label in sorted(subjects):
        _write_ieeg_subject_sidecars(subjects[label], out, tmp_dir)
    _run_jobs(plan, out, tmp_dir, jobs)

    items = tuple(job.recording for job in plan)
    hours_by = {
        m: sum(r.duration_s for r in items if r.modality == m) / 3600.0 for m in ("eeg", "ieeg")
    }
    n_subjects = len({(r.modality, r.subject) for r in items})
    _atomic_text(
        out / MANIFEST_NAME,
        tmp_dir,
        _json(
            {
                "version": _MANIFEST_VERSION,
                "hours_requested": hours,
                "seed": seed,
                "line_freq": LINE_FREQ,
                "hours": hours_by,
                "subjects": n_subjects,
                "files": files,
                "recordings": [
                    {
                        "path": r.path,
                        "modality": r.modality,
                        "subject": r.subject,
                        "run": r.run,
                        "format": r.fmt,
                        "sfreq": r.sfreq,
                        "duration_s": r.duration_s,
                        "channels": list(r.channels),
                        "faults": [{"kind": k, "channel": c} for k, c in r.faults],
                        "effect": r.effect,
                        "left_channels": list(r.left_channels),
                        "right_channels": list(r.right_channels),
                    }
                    for r in items
                ],
            }
        ),
    )
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return SynthSummary(
        root=out,
        recordings=len(items),
        subjects=n_subjects,
        hours=hours_by,
        paths=tuple(sorted(out / r.path for r in items)),
        manifest=out / MANIFEST_NAME,
        items=items,
    )


# --------------------------------------------------------------------- labelled task

TASK_CLASSES = ("baseline", "oscillation")  # annotation descriptions of the two trial kinds
TASK_OSCILLATION_HZ = 18.0
TASK_SECONDS = 150
TASK_EEG_SUBJECTS = 4
TASK_EEG_RUNS = 2
TASK_IEEG_RUNS = 3
# Amplitude (µV, std of the narrow-band burst) of the injected oscillation at its centre:
# about twice the broadband background there, strong enough that the small debug models
# of the embedded default learn it from ~100 trials, while channels away from the
# centre see little of it.
TASK_EEG_OSC_UV = 30.0
TASK_IEEG_OSC_UV = 50.0
_TASK_MANIFEST_VERSION = 1


@dataclass(frozen=True)
class SynthTaskSummary:
    """What ``write_synthetic_task`` wrote: recordings, trials per class, ground truth."""

    root: Path
    paths: tuple[Path, ...]
    trials: Mapping[str, Mapping[str, int]]  # modality -> annotation description -> count
    manifest: Path
    items: tuple[SynthRecording, ...] = field(repr=False)


def _task_plan(seed: int, seconds: int) -> list[_Job]:
    """Scalp subjects (several, one montage) and one sEEG subject, several runs each."""
    jobs: list[_Job] = []
    for modality, n_subjects, n_runs in (
        ("eeg", TASK_EEG_SUBJECTS, TASK_EEG_RUNS),
        ("ieeg", 1, TASK_IEEG_RUNS),
    ):
        code = 10 if modality == "eeg" else 11
        make = _eeg_subject if modality == "eeg" else _ieeg_subject
        rates = EEG_RATES if modality == "eeg" else IEEG_RATES
        for s in range(n_subjects):
            # Index 0 is an sEEG subject for iEEG (shafts: adjacent-contact Laplacian).
            subject = make(
                s, _subject_label(s, n_subjects), np.random.default_rng([seed, code, 1, s]), rates
            )
            if modality == "eeg":
                label_of = dict(zip(subject.canonical, subject.channels, strict=True))
                responsive: tuple[str, ...] = tuple(label_of[c] for c in ("C3", "Cz", "C4", "Pz"))
            else:
                responsive = subject.left_channels  # three mid-shaft contacts of one shaft
            for r in range(n_runs):
                run = r + 1
                stem = f"sub-{subject.label}"
                if modality == "eeg":
                    path = f"{EEG_FOLDER}/{stem}_task-osc_run-{run:02d}.edf"
                    sidecars: tuple[str, ...] = ()
                else:
                    base = f"{IEEG_FOLDER}/{stem}/ieeg/{stem}_task-osc_run-{run:02d}"
                    path = f"{base}_ieeg.edf"
                    sidecars = (f"{base}_channels.tsv", f"{base}_ieeg.json")
                recording = SynthRecording(
                    path=path,
                    modality=modality,
                    subject=subject.label,
                    run=run,
                    fmt="edf",
                    sfreq=subject.sfreq,
                    duration_s=seconds,
                    channels=subject.channels,
                    faults=(),
                    effect=f"oscillation_{TASK_OSCILLATION_HZ:g}hz",
                    left_channels=(),
                    right_channels=responsive,
                    sidecars=sidecars,
                )
                jobs.append(
                    _Job(
                        recording=recording,
                        subject=subject,
                        seed=(seed, code, 2, s, run),
                        meas_date=MEAS_DATE + timedelta(days=s, hours=r, minutes=30 * code),
                    )
                )
    return jobs


def _oscillation_weights(job: _Job) -> np.ndarray:
    """Per-channel amplitude (µV) of the injected oscillation.

    Scalp: a central source (Gaussian fall-off around Cz, the way volume conduction
    spreads it).  sEEG: three adjacent contacts of one shaft, (0.5, 1, 0.5) x the peak,
    a local field the adjacent-contact Laplacian keeps rather than cancels.
    """
    subject = job.subject
    weights = np.zeros(len(subject.channels), dtype=np.float32)
    if subject.modality == "eeg":
        for i, xy in enumerate(subject.positions[: len(_SCALP)]):
            weights[i] = TASK_EEG_OSC_UV * math.exp(-(xy[0] ** 2 + xy[1] ** 2) / (2 * 0.35**2))
    else:
        for name, w in zip(job.recording.right_channels, (0.5, 1.0, 0.5), strict=True):
            weights[subject.channels.index(name)] = TASK_IEEG_OSC_UV * w
    return weights


def _write_task_recording(job: _Job, out: Path, tmp_dir: Path) -> dict[str, int]:
    """One labelled recording: the corpus' background plus the oscillation in its trials."""
    rec = job.recording
    rng = np.random.default_rng(list(job.seed))
    n = round(rec.duration_s * rec.sfreq)
    # 4 s trials every 5.5-6.5 s
    onsets, labels = _trials(
        rng, rec.duration_s, first=(2.0, 3.0), gap=(5.5, 6.5), classes=TASK_CLASSES
    )
    # The corpus generators' own class effects key on left/right trials; these labels
    # are neither, so the background carries no class information.
    if rec.modality == "eeg":
        data, rail = _eeg_data(job, rng, n, onsets, labels), EEG_RAIL_UV
    else:
        data, rail = _ieeg_data(job, rng, n, onsets, labels), IEEG_RAIL_UV
    present = [o for o, c in zip(onsets, labels, strict=True) if c == TASK_CLASSES[1]]
    burst = _shaped_noise(rng, 1, n, rec.sfreq, _bump(TASK_OSCILLATION_HZ, 0.5))[0]
    data += _oscillation_weights(job)[:, None] * (_trial_mask(n, rec.sfreq, present) * burst)
    raw = _clipped_raw(job, data, rail, onsets, labels)
    target = out / rec.path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / target.name
    mne.export.export_raw(
        tmp, raw, fmt="edf", physical_range=(-rail, rail), overwrite=True, verbose="error"
    )
    os.replace(tmp, target)
    if rec.modality == "ieeg":
        _write_ieeg_run_sidecars(job, out, tmp_dir)
    return {c: labels.count(c) for c in TASK_CLASSES}


def write_synthetic_task(
    out: Path, *, seed: int = 0, seconds: int = TASK_SECONDS
) -> SynthTaskSummary:
    """Write a labelled downstream task (SPEC §5) into ``out``, in real file formats.

    ``out/eeg/``: four scalp subjects x two runs (EDF, the corpus' four spelling styles
    and sampling rates); ``out/ieeg/``: one sEEG subject x three runs in a BIDS tree
    with electrodes.  Every recording carries 4 s trials annotated ``baseline`` or
    ``oscillation`` (balanced); in ``oscillation`` trials an 18 Hz rhythm, waxing and
    waning like a real one, is added on a few channels (:func:`_oscillation_weights`)
    on top of the same realistic background as the pretraining corpus.  The task
    files ``config/tasks/synth_*_oscillation.yaml`` read it.  Deterministic in
    ``seed``; ``out/manifest.json`` (ground truth) is written last.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(seconds, int) or seconds < 2 * TRIAL_SECONDS + 10:
        raise ValueError(f"seconds must be an integer of at least 18, got {seconds!r}")
    out = Path(out)
    plan = _task_plan(seed, seconds)
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = out / _TMP_FOLDER
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    subjects = {job.subject.label: job.subject for job in plan if job.subject.modality == "ieeg"}
    (out / IEEG_FOLDER).mkdir(exist_ok=True)
    _write_dataset_description(out, tmp_dir, "diver synthetic labelled iEEG task")
    for label in sorted(subjects):
        _write_ieeg_subject_sidecars(subjects[label], out, tmp_dir)
    counts = [_write_task_recording(job, out, tmp_dir) for job in plan]
    trials: dict[str, dict[str, int]] = {}
    for job, count in zip(plan, counts, strict=True):
        per = trials.setdefault(job.recording.modality, dict.fromkeys(TASK_CLASSES, 0))
        for c, k in count.items():
            per[c] += k
    items = tuple(job.recording for job in plan)
    _atomic_text(
        out / MANIFEST_NAME,
        tmp_dir,
        _json(
            {
                "version": _TASK_MANIFEST_VERSION,
                "seed": seed,
                "oscillation_hz": TASK_OSCILLATION_HZ,
                "classes": list(TASK_CLASSES),
                "trials": trials,
                "recordings": [
                    {
                        "path": r.path,
                        "modality": r.modality,
                        "subject": r.subject,
                        "run": r.run,
                        "sfreq": r.sfreq,
                        "duration_s": r.duration_s,
                        "channels": list(r.channels),
                        "oscillation_channels": list(r.right_channels),
                        "trials": count,
                    }
                    for r, count in zip(items, counts, strict=True)
                ],
            }
        ),
    )
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return SynthTaskSummary(
        root=out,
        paths=tuple(sorted(out / r.path for r in items)),
        trials=trials,
        manifest=out / MANIFEST_NAME,
        items=items,
    )
