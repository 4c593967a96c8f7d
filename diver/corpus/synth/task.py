"""A labelled downstream task for fine-tuning (SPEC §5), in real file formats.

Trials annotated ``baseline`` / ``oscillation``, the latter carrying an injected 18 Hz
rhythm on a few channels, on top of the same realistic background as the pretraining
corpus (the same subjects, generators and writers), so the embedded default study
can fine-tune and evaluate end to end on data whose answer is known.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
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
from diver.corpus.synth.signals import (
    bump,
    eeg_data,
    ieeg_data,
    shaped_noise,
    trial_mask,
    trial_onsets,
)
from diver.corpus.synth.subjects import (
    EEG_FOLDER,
    EEG_RAIL_UV,
    EEG_RATES,
    IEEG_FOLDER,
    IEEG_RAIL_UV,
    IEEG_RATES,
    MANIFEST_NAME,
    MEAS_DATE,
    SCALP,
    TRIAL_SECONDS,
    Job,
    SynthRecording,
    eeg_subject,
    ieeg_subject,
    subject_label,
)

__all__ = ["TASK_CLASSES", "SynthTaskSummary", "write_synthetic_task"]

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


def _task_plan(seed: int, seconds: int) -> list[Job]:
    """Scalp subjects (several, one montage) and one sEEG subject, several runs each."""
    jobs: list[Job] = []
    for modality, n_subjects, n_runs in (
        ("eeg", TASK_EEG_SUBJECTS, TASK_EEG_RUNS),
        ("ieeg", 1, TASK_IEEG_RUNS),
    ):
        code = 10 if modality == "eeg" else 11
        make = eeg_subject if modality == "eeg" else ieeg_subject
        rates = EEG_RATES if modality == "eeg" else IEEG_RATES
        for s in range(n_subjects):
            # Index 0 is an sEEG subject for iEEG (shafts: adjacent-contact Laplacian).
            subject = make(
                s, subject_label(s, n_subjects), np.random.default_rng([seed, code, 1, s]), rates
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
                    Job(
                        recording=recording,
                        subject=subject,
                        seed=(seed, code, 2, s, run),
                        meas_date=MEAS_DATE + timedelta(days=s, hours=r, minutes=30 * code),
                    )
                )
    return jobs


def _oscillation_weights(job: Job) -> np.ndarray:
    """Per-channel amplitude (µV) of the injected oscillation.

    Scalp: a central source (Gaussian fall-off around Cz, the way volume conduction
    spreads it).  sEEG: three adjacent contacts of one shaft, (0.5, 1, 0.5) x the peak,
    a local field the adjacent-contact Laplacian keeps rather than cancels.
    """
    subject = job.subject
    weights = np.zeros(len(subject.channels), dtype=np.float32)
    if subject.modality == "eeg":
        for i, xy in enumerate(subject.positions[: len(SCALP)]):
            weights[i] = TASK_EEG_OSC_UV * math.exp(-(xy[0] ** 2 + xy[1] ** 2) / (2 * 0.35**2))
    else:
        for name, w in zip(job.recording.right_channels, (0.5, 1.0, 0.5), strict=True):
            weights[subject.channels.index(name)] = TASK_IEEG_OSC_UV * w
    return weights


def _write_task_recording(job: Job, out: Path, tmp_dir: Path) -> dict[str, int]:
    """One labelled recording: the corpus' background plus the oscillation in its trials."""
    rec = job.recording
    rng = np.random.default_rng(list(job.seed))
    n = round(rec.duration_s * rec.sfreq)
    # 4 s trials every 5.5-6.5 s
    onsets, labels = trial_onsets(
        rng, rec.duration_s, first=(2.0, 3.0), gap=(5.5, 6.5), classes=TASK_CLASSES
    )
    # The corpus generators' own class effects key on left/right trials; these labels
    # are neither, so the background carries no class information.
    if rec.modality == "eeg":
        data, rail = eeg_data(job, rng, n, onsets, labels), EEG_RAIL_UV
    else:
        data, rail = ieeg_data(job, rng, n, onsets, labels), IEEG_RAIL_UV
    present = [o for o, c in zip(onsets, labels, strict=True) if c == TASK_CLASSES[1]]
    burst = shaped_noise(rng, 1, n, rec.sfreq, bump(TASK_OSCILLATION_HZ, 0.5))[0]
    data += _oscillation_weights(job)[:, None] * (trial_mask(n, rec.sfreq, present) * burst)
    raw = clipped_raw(job, data, rail, onsets, labels)
    write_raw(raw, out / rec.path, tmp_dir, "edf", rail)
    if rec.modality == "ieeg":
        write_ieeg_run_sidecars(job, out, tmp_dir)
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
    tmp_dir = out / TMP_FOLDER
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    subjects = {job.subject.label: job.subject for job in plan if job.subject.modality == "ieeg"}
    (out / IEEG_FOLDER).mkdir(exist_ok=True)
    write_dataset_description(out, tmp_dir, "diver synthetic labelled iEEG task")
    for label in sorted(subjects):
        write_ieeg_subject_sidecars(subjects[label], out, tmp_dir)
    counts = [_write_task_recording(job, out, tmp_dir) for job in plan]
    trials: dict[str, dict[str, int]] = {}
    for job, count in zip(plan, counts, strict=True):
        per = trials.setdefault(job.recording.modality, dict.fromkeys(TASK_CLASSES, 0))
        for c, k in count.items():
            per[c] += k
    items = tuple(job.recording for job in plan)
    write_text(
        out / MANIFEST_NAME,
        tmp_dir,
        json_text(
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
