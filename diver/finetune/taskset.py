"""A task's recordings -> one Parquet *task set*: a row per labelled trial (SPEC §5).

Each recording goes through the corpus' own steps (SPEC §1) so fine-tuning sees what
pretraining saw: channel typing and positions (``diver.corpus.channels``), the
numbers' unit (``preprocessing.units``, ``diver.corpus.units``: a recording whose
amplitude is implausible under ``auto`` is an error naming it), dead
(all-NaN or flat) channels removed, high-pass (or the task's band-pass) and notch
filters and resampling to 500 Hz (or the task's ``preprocessing.sfreq``;
``diver.corpus.preprocess``), then the task's re-reference (common average, or the
Laplacian, ``diver.finetune.laplacian``, iEEG's default), and the paper's scaling:
1/100 µV for EEG, 1/200 µV for iEEG, clipped to ±1.  Trials are then cut from
``onset + tmin`` to ``onset + tmax``, or as fixed-length segments of the whole
recording or of each labelled event's span (``segment``); a trial reaching outside
the recording is skipped and counted.  Unlike the corpus, no trial or channel is
dropped for clipping: a benchmark's trials stay the benchmark's.

Array files (FACED pickles, BrainTreebank HDF5) are read by
:mod:`diver.finetune.arrays` into recordings with annotations, and then go the same
way.

Recordings are filtered whole (loaded into memory), which suits trial-based tasks of
minutes to an hour; the corpus stage's block-wise reader is for the long recordings
of pretraining.

The file is the corpus' window layout (``diver.corpus.shards``: signal bytes,
``coords_mm`` list, channel names/types/subtypes; ``window_index`` is the trial's
number in its recording, ``start_seconds`` its first sample) plus ``event``,
``label``, ``label_index`` and ``onset_seconds`` columns, one float32 row per trial.
The Parquet footer holds the task's settings (``diver.task``) and a fingerprint of
them, so a fine-tuning run can tell a stale task set from a current one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mne
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diver.atomic import replacing
from diver.config import CorpusConfig, QCConfig
from diver.corpus.channels import IEEG_TYPES, describe_channels
from diver.corpus.discovery import (
    RecordingSource,
    discover_recordings,
    find_subject,
    strip_extension,
)
from diver.corpus.preprocess import HighPass, Notch, Resample, Step, apply_chain, notch_frequencies
from diver.corpus.quarantine import Quarantine
from diver.corpus.recording import channel_health, in_file_positions, read_raw
from diver.corpus.shards import Window, coords_of, signals_of, window_schema, windows_to_table
from diver.corpus.units import calibrate
from diver.finetune.arrays import EXTENSIONS, companion_files, read_array_recording
from diver.finetune.laplacian import laplacian
from diver.finetune.tasks import TaskConfig, TaskError, resolve_recordings

log = logging.getLogger(__name__)

SFREQ = CorpusConfig().sfreq  # SPEC §1: 500 Hz
TASK_METADATA_KEY = b"diver.task"
FINGERPRINT_KEY = b"diver.task_fingerprint"
EXTRA_FIELDS = (
    pa.field("event", pa.string()),
    pa.field("label", pa.string()),
    pa.field("label_index", pa.int32()),
    pa.field("onset_seconds", pa.float64()),
)


def task_fingerprint(task: TaskConfig, recordings: Sequence[str]) -> str:
    """Changes when a setting that shapes the task set, or a recording file, changes."""
    paths = [Path(p) for p in recordings]
    if task.input.format != "mne":  # labels, events and positions in files beside them
        paths += [c for p in list(paths) if p.is_file() for c in companion_files(p, task.input)]
    files = []
    for path in paths:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {"task": task.fingerprint_payload(), "files": files, "sfreq": task_sfreq(task)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def task_sfreq(task: TaskConfig) -> float:
    """The rate of the task's trials (SPEC §1's 500 Hz unless the task says otherwise)."""
    return float(task.preprocessing.sfreq)


@dataclass(frozen=True)
class _Trial:
    window: Window
    event: str
    label: str
    onset: float


@dataclass(frozen=True)
class _Event:
    """A labelled event: onset and duration (s from the first sample), key, class."""

    onset: float
    duration: float
    key: str
    label: str


def _annotation_onsets(raw: mne.io.BaseRaw) -> np.ndarray:
    """Annotation onsets in seconds from the recording's first sample."""
    return np.asarray(raw.annotations.onset, dtype=float) - raw.first_time


def _events(
    raw: mne.io.BaseRaw, task: TaskConfig, source: RecordingSource
) -> tuple[list[_Event], set[str], set[str]]:
    """Labelled events of one recording, the event keys it has, and the keys it was
    expected to have (its label map's), for the 'occurs in no recording' check."""
    sfreq = float(raw.info["sfreq"])
    name = source.path.name
    if task.events_from == "file_name":
        cls = task.file_class(name)
        if cls is None:
            raise TaskError(
                f"task file {task.source}: recording {source.path}: its file name matches "
                f"none of the labels patterns {list(task.labels)}"
            )
        key = next(k for k in task.labels if re.search(k, name))
        return [_Event(0.0, raw.n_times / sfreq, key, cls)], {key}, set(task.labels)
    if task.events_from == "sequence":
        onsets = _annotation_onsets(raw)
        order = np.argsort(onsets, kind="stable")
        if len(order) > len(task.label_sequence):
            raise TaskError(
                f"task file {task.source}: recording {source.path} has {len(order)} "
                f"annotations, label_sequence only {len(task.label_sequence)} classes"
            )
        ann = raw.annotations
        events = [
            _Event(
                float(onsets[i]),
                float(ann.duration[i]),
                f"{ann.description[i]}#{k}",
                task.label_sequence[k],
            )
            for k, i in enumerate(order)
        ]
        return events, {e.key for e in events}, set()
    labels = task.labels_for(name)
    if task.events_from == "annotations":
        ann = raw.annotations
        seen = {str(d) for d in ann.description}
        onsets = _annotation_onsets(raw)
        events = [
            _Event(float(onsets[i]), float(ann.duration[i]), str(d), labels[str(d)])
            for i, d in enumerate(ann.description)
            if str(d) in labels
        ]
        # Events from annotations in time order, as mne.events_from_annotations gives.
        events.sort(key=lambda e: e.onset)
        return events, seen, set(labels)
    try:
        found = mne.find_events(
            raw, stim_channel=task.stim_channel, shortest_event=1, verbose="error"
        )
    except ValueError as exc:
        raise TaskError(f"{source.path}: cannot read stim events: {exc}") from exc
    seen = {str(int(c)) for c in np.unique(found[:, 2])}
    by_code = {int(key): key for key in labels}
    events = [
        _Event(
            (int(sample) - raw.first_samp) / sfreq, 0.0, by_code[int(c)], labels[by_code[int(c)]]
        )
        for sample, _, c in found
        if int(c) in by_code
    ]
    return events, seen, set(labels)


def _starts(
    events: list[_Event], task: TaskConfig, sfreq: float, n_total: int
) -> list[tuple[int, _Event]]:
    """(first sample, event) of every trial: one window per event, or the segments of
    each event's span (a remainder shorter than a segment is dropped)."""
    if task.segment_length is None:
        return [(round((e.onset + task.tmin) * sfreq), e) for e in events]
    n = round(task.segment_length * sfreq)
    out = []
    short = 0
    for e in events:
        first = round(e.onset * sfreq)
        last = min(first + round(e.duration * sfreq), n_total)
        starts = range(first, last - n + 1, n)
        short += not starts
        out += [(start, e) for start in starts]
    if short:
        log.warning(
            "task %s: %d labelled event(s) shorter than one %g s segment give no trial",
            task.name, short, task.segment_length,
        )  # fmt: skip
    return out


@dataclass(frozen=True)
class _BandPass:
    """Zero-phase FIR band-pass (MNE defaults), the task's ``preprocessing.bandpass``."""

    l_freq: float
    h_freq: float

    def apply(self, raw: mne.io.BaseRaw) -> mne.io.BaseRaw:
        return raw.filter(
            l_freq=self.l_freq, h_freq=self.h_freq, picks="all", phase="zero", verbose="error"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"step": "bandpass", "l_freq": self.l_freq, "h_freq": self.h_freq}


def _chain(task: TaskConfig, sfreq_in: float, harmonics: bool) -> list[Step]:
    """The recording's filters and resampling, as the corpus's chain (filters run at the
    lower of the two rates) with the task's band-pass and notch choices."""
    pre = task.preprocessing
    sfreq_out = task_sfreq(task)
    filter_rate = min(sfreq_in, sfreq_out)
    nyquist = filter_rate / 2.0
    filters: list[Step] = []
    if pre.bandpass is not None:
        low, high = pre.bandpass
        if high >= nyquist:
            raise TaskError(
                f"task file {task.source}: preprocessing.bandpass high {high} Hz is not "
                f"below the Nyquist frequency {nyquist} Hz of a {filter_rate} Hz recording"
            )
        filters.append(_BandPass(low, high))
    elif pre.highpass > 0:
        filters.append(HighPass(pre.highpass))
    if pre.notch is True:
        freqs = notch_frequencies(pre.line_freq, nyquist, harmonics=harmonics)
    elif pre.notch is False:
        freqs = ()
    else:
        freqs = tuple(f for f in pre.notch if f < nyquist)
    if freqs:
        filters.append(Notch(tuple(freqs)))
    resample: list[Step] = [] if sfreq_in == sfreq_out else [Resample(sfreq_out)]
    return [*resample, *filters] if sfreq_in > sfreq_out else [*filters, *resample]


def _read(source: RecordingSource, task: TaskConfig) -> mne.io.BaseRaw:
    if task.input.format != "mne":
        return read_array_recording(source.path, task.input)
    try:
        return read_raw(source.path)
    except Quarantine as exc:
        raise TaskError(f"task {task.name}: recording {source.path}: {exc}") from exc


def _unit_factors(
    raw: mne.io.BaseRaw, picks: list[int], task: TaskConfig, source: RecordingSource
) -> np.ndarray:
    """Per picked channel, the factor turning ``raw.get_data(picks)`` into true volts
    under ``preprocessing.units`` (:func:`diver.corpus.units.calibrate`); a recording
    ``auto`` finds implausible is a TaskError naming it and the setting to change."""
    try:
        return calibrate(
            raw,
            np.asarray(picks),
            task.preprocessing.units,
            setting=f"task file {task.source}: preprocessing.units",
        )
    except Quarantine as exc:
        raise TaskError(f"task {task.name}: recording {source.path}: {exc}") from exc


def _recording_trials(
    source: RecordingSource, task: TaskConfig, qc: QCConfig
) -> tuple[list[_Trial], set[str], set[str], dict[str, Any]]:
    """The labelled trials of one recording, the event keys it has, the keys its label
    map expects, and a report row."""
    if source.problem:
        raise TaskError(f"task {task.name}: recording {source.path}: {source.problem}")
    raw = _read(source, task)
    events, seen, expected = _events(raw, task, source)
    report: dict[str, Any] = {"recording": source.recording, "subject": source.subject}
    if not events:
        return [], seen, expected, {**report, "trials": 0, "skipped": 0, "channels": 0}
    dataset = task.dataset((str(source.path),))
    positions_m, frame = in_file_positions(raw, dataset)
    infos = describe_channels(
        raw.ch_names, raw.get_channel_types(), source, dataset,
        positions_m=positions_m, positions_frame=frame,
    )  # fmt: skip
    picks = [i for i, ch in enumerate(infos) if ch.neural]
    if task.preprocessing.channels:
        wanted = set(task.preprocessing.channels)
        picks = [i for i in picks if infos[i].name in wanted]
        missing = sorted(wanted - {infos[i].name for i in picks})
        if missing:
            log.warning("%s: channels %s of task %s are missing", source.path, missing, task.name)
    if not picks:
        raise TaskError(f"task {task.name}: recording {source.path} has no usable neural channel")
    factors = _unit_factors(raw, picks, task, source)
    all_nan, flat = channel_health(raw, np.asarray(picks), qc.flat_std_uv, factors=factors)
    keep = ~(all_nan | flat)
    picks = [i for i, ok in zip(picks, keep, strict=True) if ok]
    factors = factors[keep]
    if not picks:
        raise TaskError(f"task {task.name}: every channel of {source.path} is flat or NaN")
    kept = [infos[i] for i in picks]
    sfreq_in = float(raw.info["sfreq"])
    sfreq = task_sfreq(task)
    data = raw.get_data(picks=picks) * factors[:, None] * 1e6  # µV
    data = np.where(np.isfinite(data), data, 0.0)
    is_ieeg = np.array([ch.type in IEEG_TYPES for ch in kept])
    chain = _chain(task, sfreq_in, dataset.harmonics_for(bool(is_ieeg.any())))
    info = mne.create_info([ch.name for ch in kept], sfreq_in, "eeg", verbose="error")
    signal = apply_chain(mne.io.RawArray(data, info, verbose="error"), chain).get_data()
    coords = np.array([ch.xyz_mm for ch in kept], dtype=np.float32).reshape(-1, 3)
    names = [ch.name for ch in kept]
    types = [ch.type for ch in kept]
    subtypes = [ch.subtype for ch in kept]
    isolated = 0
    reference = task.preprocessing.re_reference
    if reference == "average":
        signal = signal - signal.mean(axis=0, keepdims=True)
    elif reference == "laplacian":
        lap = laplacian(names, types, subtypes, coords)
        signal = lap.apply(signal)
        isolated = len(lap.isolated)
        if isolated:
            log.info(
                "%s: %d contact(s) without neighbours kept unreferenced", source.path, isolated
            )
    scale = np.where(is_ieeg, qc.ieeg_scale_uv, qc.eeg_scale_uv)[:, None]
    scaled = np.clip(signal / scale, -qc.clip, qc.clip).astype(np.float32)
    n = round(task.window_seconds * sfreq)
    modality = "ieeg" if is_ieeg.any() else "eeg"
    frames = sorted({ch.coord_frame for ch in kept if np.isfinite(ch.xyz_mm).all()})
    trials, skipped = [], 0
    for k, (first, event) in enumerate(_starts(events, task, sfreq, scaled.shape[1])):
        if first < 0 or first + n > scaled.shape[1]:
            skipped += 1
            continue
        window = Window(
            dataset=task.name,
            subject=source.subject,
            recording=source.recording,
            window_index=k,
            start_seconds=first / sfreq,
            modality=modality,
            sfreq=sfreq,
            coord_frame="+".join(frames) if frames else "unknown",
            channel_names=names,
            channel_types=types,
            channel_subtypes=subtypes,
            coords_mm=coords,
            signal=scaled[:, first : first + n],
        )
        # A segment's own start is its onset; a window's is its event's.
        onset = event.onset if task.segment_length is None else first / sfreq
        trials.append(_Trial(window, event.key, event.label, onset))
    if skipped:
        log.warning("%s: %d trial(s) reach outside the recording; skipped", source.path, skipped)
    return (
        trials,
        seen,
        expected,
        {
            **report,
            "trials": len(trials),
            "skipped": skipped,
            "channels": len(kept),
            "laplacian_isolated": isolated,
            "sfreq_in": sfreq_in,
        },
    )


def _array_sources(task: TaskConfig, inputs: Sequence[str]) -> list[RecordingSource]:
    """Recordings of an array format: the files given, and the format's files in the
    folders given (recursively), sorted by id (the file name without extension)."""
    suffixes = EXTENSIONS[task.input.format]
    files: list[Path] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
        else:
            files.append(path)
    sources = {}
    for path in files:
        recording = strip_extension(path.name)
        if recording in sources:
            raise TaskError(
                f"task file {task.source}: two recordings named {recording}: "
                f"{sources[recording].path} and {path}"
            )
        subject, how = find_subject(path, path.name, recording, task.subject_pattern)
        sources[recording] = RecordingSource(
            dataset=task.name, path=path, recording=recording, subject=subject,
            subject_source=how, bids_datatype=None, channels_tsv=None,
            electrodes_tsv=None, coordsystem_json=None, problem="",
        )  # fmt: skip
    return [sources[k] for k in sorted(sources)]


@dataclass(frozen=True)
class TaskSetSummary:
    """What ``build_taskset`` wrote."""

    path: Path
    trials: int
    per_class: dict[str, int]
    recordings: list[dict[str, Any]]
    fingerprint: str
    built: bool  # False when an up-to-date task set was already there


def read_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a task set's footer (None when absent or unreadable)."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return None
    value = meta.get(FINGERPRINT_KEY)
    return value.decode() if value else None


def check_taskset(
    task: TaskConfig,
    path: Path | str,
    *,
    results_dir: str | Path = "results",
    shared_data: str | Path | None = None,
    base_dir: str | Path | None = None,
) -> None:
    """Raise TaskError unless ``path`` is the current task set of ``task`` (same
    settings, same recording files): a stale set must be rebuilt, not used."""
    path = Path(path)
    if not path.exists():
        raise TaskError(f"task set {path} does not exist (diver task build --task {task.source})")
    inputs = resolve_recordings(
        task, results_dir=results_dir, shared_data=shared_data, base_dir=base_dir
    )
    if read_fingerprint(path) != task_fingerprint(task, inputs):
        raise TaskError(
            f"task set {path} was not built from the current {task.source} and its "
            f"recordings; rebuild it with diver task build"
        )


def build_taskset(
    task: TaskConfig,
    out: Path | str,
    *,
    results_dir: str | Path = "results",
    shared_data: str | Path | None = None,
    base_dir: str | Path | None = None,
    qc: QCConfig | None = None,
    force: bool = False,
) -> TaskSetSummary:
    """Write the task set of ``task`` to ``out`` (a ``.parquet`` file), atomically.

    Nothing is redone when ``out`` exists with the same fingerprint (same settings,
    same recording files) unless ``force``.  Raises TaskError when a label's event
    occurs in no recording (the message names it and lists the events found), when a
    recording cannot be read, or when no trial is left.
    """
    out = Path(out)
    qc = qc or QCConfig()
    inputs = resolve_recordings(
        task, results_dir=results_dir, shared_data=shared_data, base_dir=base_dir
    )
    fingerprint = task_fingerprint(task, inputs)
    if not force and out.exists() and read_fingerprint(out) == fingerprint:
        meta = json.loads(pq.read_schema(out).metadata[TASK_METADATA_KEY])
        return TaskSetSummary(
            out, meta["trials"], meta["per_class"], meta["recordings"], fingerprint, False
        )
    if task.input.format == "mne":
        try:
            sources = discover_recordings(task.dataset(inputs))
        except ValueError as exc:
            raise TaskError(f"task file {task.source}: {exc}") from exc
    else:
        sources = _array_sources(task, inputs)
    if not sources:
        raise TaskError(f"task file {task.source}: its recordings entries hold no recording")
    trials: list[_Trial] = []
    seen: set[str] = set()
    expected: set[str] = set()
    reports = []
    for source in sources:
        found, keys, wanted, report = _recording_trials(source, task, qc)
        trials += found
        seen |= keys
        expected |= wanted
        reports.append(report)
    order = [*task.labels, *(k for r in task.label_rules for k in r.labels)]
    unknown = [key for key in dict.fromkeys(order) if key in expected and key not in seen]
    if unknown:
        what = {"stim": "event code(s)", "file_name": "file-name pattern(s)"}.get(
            task.events_from, "event name(s)"
        )
        raise TaskError(
            f"task file {task.source}: {what} {unknown} of labels occur in none of its "
            f"{len(sources)} recording(s); events found: {sorted(seen)}"
        )
    if not trials:
        raise TaskError(f"task file {task.source}: no trial fits inside its recordings")
    per_class = Counter(t.label for t in trials)
    summary = {
        "task": task.fingerprint_payload(),
        "trials": len(trials),
        "per_class": {c: per_class.get(c, 0) for c in task.classes},
        "recordings": reports,
    }
    _write(out, trials, task, summary, fingerprint)
    return TaskSetSummary(out, len(trials), summary["per_class"], reports, fingerprint, True)


def _write(
    out: Path, trials: list[_Trial], task: TaskConfig, summary: dict[str, Any], fingerprint: str
) -> None:
    base = window_schema("float32")
    table = windows_to_table([t.window for t in trials], base)
    columns = {
        "event": pa.array([t.event for t in trials], pa.string()),
        "label": pa.array([t.label for t in trials], pa.string()),
        "label_index": pa.array([task.classes.index(t.label) for t in trials], pa.int32()),
        "onset_seconds": pa.array([t.onset for t in trials], pa.float64()),
    }
    for f in EXTRA_FIELDS:
        table = table.append_column(f, columns[f.name])
    metadata = {
        **(base.metadata or {}),
        TASK_METADATA_KEY: json.dumps(summary, allow_nan=True).encode(),
        FINGERPRINT_KEY: fingerprint.encode(),
    }
    table = table.replace_schema_metadata(metadata)
    with replacing(out) as tmp:
        pq.write_table(table, tmp, compression="zstd")


# ------------------------------------------------------------------------ reading


@dataclass(frozen=True)
class TaskSet:
    """A task set in memory: per-trial arrays (signals keep their own channel lists).

    ``layout`` is the union of channel names over trials, in first-seen order of the
    recordings (sorted by id): every trial's channels are placed on it by name, so a
    classifier head and the linear baseline see the same electrode at the same place
    in every trial (a missing channel is masked and zero).
    """

    path: Path
    classes: tuple[str, ...]
    signals: list[np.ndarray]  # (C_i, S) float32
    coords: list[np.ndarray]  # (C_i, 3)
    channel_names: list[list[str]]
    channel_types: list[list[str]]
    channel_subtypes: list[list[str]]
    labels: np.ndarray  # (T,) int
    events: np.ndarray  # (T,) str
    recordings: np.ndarray
    subjects: np.ndarray
    trial_in_recording: np.ndarray
    onsets: np.ndarray
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_samples(self) -> int:
        return int(self.signals[0].shape[1])

    @property
    def sfreq(self) -> float:
        """The trials' sampling rate (500 Hz unless the task file set another)."""
        pre = self.metadata.get("task", {}).get("preprocessing", {})
        return float(pre.get("sfreq", SFREQ))

    @property
    def trial_ids(self) -> list[str]:
        return [
            f"{r}#{int(k)}" for r, k in zip(self.recordings, self.trial_in_recording, strict=True)
        ]

    def units(self, by: str) -> np.ndarray:
        """Split unit of every trial: its recording, subject, or its own id."""
        if by == "recording":
            return self.recordings
        if by == "subject":
            return self.subjects
        if by == "trial":
            return np.asarray(self.trial_ids, dtype=object)
        raise ValueError(f"unknown split unit {by!r}")

    def layout(self) -> list[str]:
        order: dict[str, None] = {}
        for names in self.channel_names:
            order.update(dict.fromkeys(names))
        return list(order)

    def on_layout(
        self, layout: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(signal (T, C, S), channel mask (T, C), coords (T, C, 3), types, subtypes).

        Channels are placed by name on ``layout`` (default :meth:`layout`); absent ones
        are zero, masked, with zero coordinates and type/subtype ``""``.
        """
        layout = list(layout or self.layout())
        where = {name: i for i, name in enumerate(layout)}
        t, c = len(self), len(layout)
        signal = np.zeros((t, c, self.n_samples), dtype=np.float32)
        mask = np.zeros((t, c), dtype=bool)
        coords = np.zeros((t, c, 3), dtype=np.float32)
        types = np.full((t, c), "", dtype=object)
        subtypes = np.full((t, c), "", dtype=object)
        for k in range(t):
            for j, name in enumerate(self.channel_names[k]):
                i = where.get(name)
                if i is None:
                    continue
                signal[k, i] = self.signals[k][j]
                mask[k, i] = True
                coords[k, i] = self.coords[k][j]
                types[k, i] = self.channel_types[k][j]
                subtypes[k, i] = self.channel_subtypes[k][j]
        return signal, mask, coords, types, subtypes


def load_taskset(path: Path | str) -> TaskSet:
    """Read a task set written by :func:`build_taskset`."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise TaskError(f"task set {path} cannot be read: {exc}") from exc
    meta_raw = (table.schema.metadata or {}).get(TASK_METADATA_KEY)
    if meta_raw is None:
        raise TaskError(f"{path} is not a task set (no {TASK_METADATA_KEY.decode()} metadata)")
    metadata = json.loads(meta_raw)
    signals = [np.asarray(s, dtype=np.float32) for s in signals_of(table)]
    lengths = {s.shape[1] for s in signals}
    if len(lengths) != 1:
        raise TaskError(f"task set {path}: trials differ in length {sorted(lengths)}")
    col = table.column
    return TaskSet(
        path=path,
        classes=tuple(metadata["task"]["classes"]),
        signals=signals,
        coords=[np.asarray(c, dtype=np.float32) for c in coords_of(table)],
        channel_names=col("channel_names").to_pylist(),
        channel_types=col("channel_types").to_pylist(),
        channel_subtypes=col("channel_subtypes").to_pylist(),
        labels=col("label_index").to_numpy().astype(np.int64),
        events=np.asarray(col("event").to_pylist(), dtype=object),
        recordings=np.asarray(col("recording").to_pylist(), dtype=object),
        subjects=np.asarray(col("subject").to_pylist(), dtype=object),
        trial_in_recording=col("window_index").to_numpy().astype(np.int64),
        onsets=col("onset_seconds").to_numpy(),
        metadata=metadata,
    )
