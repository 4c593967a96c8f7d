"""The synthetic world: montages, electrodes, subjects, and what a recording is.

Everything the planner, the signal generators and the file writers share lives here:
the fixed constants (folders, sampling rates, amplifier ranges, trial length, the
measurement date), the scalp layout and sEEG/ECoG electrode geometry, the per-subject
facts that stay the same across runs (:class:`Subject`), and one planned recording
with its ground truth (:class:`SynthRecording`, wrapped with its subject and random
stream in a :class:`Job`).  Keeping them in one place is what lets the corpus and the
labelled task draw the same subjects from the same seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

EEG_FOLDER = "eeg"
IEEG_FOLDER = "ieeg"
MANIFEST_NAME = "manifest.json"

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
SCALP: tuple[tuple[str, float, float], ...] = (
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
ELECTRODE_SIZE_MM2 = {"depth": 5.03, "grid": 4.15, "strip": 4.15}


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
class Subject:
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
class Job:
    recording: SynthRecording
    subject: Subject
    seed: tuple[int, ...]
    meas_date: datetime


def subject_label(index: int, n_subjects: int) -> str:
    return f"{index + 1:0{max(2, len(str(n_subjects)))}d}"


def _scalp_label(name: str, style: str) -> str:
    if style == "tueg":
        return f"EEG {_OLD_NAMES.get(name, name)}-REF"
    if style == "dots":
        return name.ljust(4, ".")
    if style == "plain":
        return _OLD_NAMES.get(name, name)
    return name.upper()


def eeg_subject(
    index: int, label: str, rng: np.random.Generator, rates: Sequence[float]
) -> Subject:
    style = _EEG_STYLES[index % len(_EEG_STYLES)]
    # Offset the rate cycle so spelling style and rate are not locked together.
    sfreq = float(rates[(index + index // len(rates)) % len(rates)])
    names = [_scalp_label(name, style) for name, _, _ in SCALP]
    ecg, eog = _STYLE_AUX[style]
    label_of = dict(zip([n for n, _, _ in SCALP], names, strict=True))
    return Subject(
        modality="eeg",
        index=index,
        label=label,
        sfreq=sfreq,
        kind=style,
        channels=(*names, ecg, eog),
        ch_types=("eeg",) * len(SCALP) + ("ecg", "eog"),
        canonical=(*(n for n, _, _ in SCALP), "ECG", "EOG"),
        positions=(*((x, y) for _, x, y in SCALP), (), ()),
        groups=("",) * (len(SCALP) + 2),
        subtypes=("",) * (len(SCALP) + 2),
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


def ieeg_subject(
    index: int, label: str, rng: np.random.Generator, rates: Sequence[float]
) -> Subject:
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
    return Subject(
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
