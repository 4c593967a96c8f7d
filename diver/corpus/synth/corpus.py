"""The synthetic pretraining corpus: its plan, and writing it.

The plan (:func:`plan_synthetic_corpus`) is cheap at any size, so scale benchmarks
and tests know the corpus and its ground truth up front: clean recordings of 2-5 min
spread round-robin over several subjects per modality, plus a known minority carrying
the faults of SPEC §1 (one recording per modality with a flat and a clipping channel,
the iEEG one also with an all-channel dropout; one scalp recording at 64 Hz and one
iEEG recording of 20 s, both to be quarantined).  :func:`write_synthetic_corpus`
synthesises each planned recording (:mod:`~diver.corpus.synth.signals`), writes it
(:mod:`~diver.corpus.synth.files`) and writes ``manifest.json`` last, so its presence
means the corpus is complete.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np

from diver.corpus.synth.files import (
    TMP_FOLDER,
    clipped_raw,
    json_text,
    write_dataset_description,
    write_ieeg_run_sidecars,
    write_ieeg_subject_sidecars,
    write_raw,
    write_text,
)
from diver.corpus.synth.signals import eeg_data, ieeg_data, plant_faults, trial_onsets
from diver.corpus.synth.subjects import (
    EEG_FOLDER,
    EEG_RAIL_UV,
    EEG_RATES,
    IEEG_FOLDER,
    IEEG_RAIL_UV,
    IEEG_RATES,
    LINE_FREQ,
    LOW_RATE,
    LOW_RATE_SECONDS,
    MANIFEST_NAME,
    MAX_SECONDS,
    MEAS_DATE,
    MIN_CLEAN_RECORDINGS,
    MIN_SECONDS,
    SHORT_SECONDS,
    Job,
    SynthRecording,
    eeg_subject,
    ieeg_subject,
    subject_label,
)

__all__ = ["SynthSummary", "plan_synthetic_corpus", "write_synthetic_corpus"]

_MANIFEST_VERSION = 1
# Channels that may carry a planted fault: not the ones the alpha, blink and class
# checks rely on.
_FAULT_POOL_SCALP = ("F7", "F3", "Fz", "F4", "F8", "T7", "T8", "P7", "P3", "Pz", "P4", "P8")


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


def _plan_modality(modality: str, hours: float, seed: int) -> list[Job]:
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
    make = eeg_subject if modality == "eeg" else ieeg_subject
    subjects = [
        make(i, subject_label(i, n_subjects), np.random.default_rng([seed, code, 1, i]), rates)
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

    jobs: list[Job] = []
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
                Job(
                    recording=recording,
                    subject=subject,
                    seed=(seed, code, 2, s, run),
                    meas_date=MEAS_DATE + timedelta(days=s, hours=r, minutes=30 * code),
                )
            )
            position += 1
    return jobs


def _plan(hours: float, seed: int) -> list[Job]:
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


def _write_recording(job: Job, out: Path, tmp_dir: Path) -> None:
    """Synthesise one recording and write it (and its sidecars) atomically."""
    rec = job.recording
    rng = np.random.default_rng(list(job.seed))
    n = round(rec.duration_s * rec.sfreq)
    onsets, labels = trial_onsets(rng, rec.duration_s)
    if rec.modality == "eeg":
        data, rail = eeg_data(job, rng, n, onsets, labels), EEG_RAIL_UV
    else:
        data, rail = ieeg_data(job, rng, n, onsets, labels), IEEG_RAIL_UV
    plant_faults(job, rng, data, rail)
    raw = clipped_raw(job, data, rail, onsets, labels)

    write_raw(raw, out / rec.path, tmp_dir, rec.fmt, rail)

    if rec.modality == "ieeg":
        write_ieeg_run_sidecars(job, out, tmp_dir)


def _run_jobs(jobs: Sequence[Job], out: Path, tmp_dir: Path, n_jobs: int) -> None:
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
    tmp_dir = out / TMP_FOLDER
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

    write_dataset_description(out, tmp_dir, "diver synthetic iEEG")
    for label in sorted(subjects):
        write_ieeg_subject_sidecars(subjects[label], out, tmp_dir)
    _run_jobs(plan, out, tmp_dir, jobs)

    items = tuple(job.recording for job in plan)
    hours_by = {
        m: sum(r.duration_s for r in items if r.modality == m) / 3600.0 for m in ("eeg", "ieeg")
    }
    n_subjects = len({(r.modality, r.subject) for r in items})
    write_text(
        out / MANIFEST_NAME,
        tmp_dir,
        json_text(
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
