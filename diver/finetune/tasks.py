"""Downstream task files (SPEC §5): YAML -> a validated, frozen :class:`TaskConfig`.

A task names its recordings, maps their events to classes, cuts a window around each
event and says how trials are split into train / validation / test.  Example::

    name: eegmmidb_mi_left_right
    modality: eeg
    recordings: ["{shared_data}/eegmmidb_S001/S001R04.edf", ...]
    labels: {T1: left, T2: right}       # annotation description (or event code) -> class
    tmin: 0.0                           # seconds around each event onset
    tmax: 4.0
    split: {by: recording, folds: 3, val_by: trial}

Besides event-locked windows a task may cut fixed-length ``segment``s (of a whole
recording, its class from the file name, or of each labelled event's span), take
classes from the order of clips (``label_sequence``) or per-recording event maps
(``label_rules``), read array files (``input.format``, see
:mod:`diver.finetune.arrays`), re-reference (``preprocessing.reference``), band-pass,
and split by the authors' fixed ordered lists (``split.train`` / ``val`` / ``test``):
what the benchmark task files in ``config/tasks/benchmarks/`` need to reproduce the
authors' preprocessing scripts.

Every key, its meaning and its default are in ``diver/schemas/task.schema.yaml`` (its
preprocessing keys are a corpus dataset's, from ``config.schema.yaml``); a file is
checked against it (unknown keys, wrong types) before anything is read, and the error
names the file and the key.  Recording entries may be files, folders or globs, with
placeholders ``{shared_data}`` (``$DIVER_SHARED_DATA``, else ``../shared/data``) and
``{results_dir}`` (the study's results folder, ``results`` unless given); relative
paths are taken from the current directory (the repository root under Snakemake).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from diver.config import DatasetConfig
from diver.errors import DiverError
from diver.placeholders import fill_placeholders
from diver.schemas import validate

PLACEHOLDERS = ("shared_data", "results_dir")
# SPEC §1: high-pass 0.5 Hz for (private) iEEG, 0.3 Hz for the others.
DEFAULT_HIGHPASS = {"eeg": 0.3, "ieeg": 0.5}


#: Units: names (glob patterns) or one [start, stop) range of the sorted units.
Units = tuple[str, ...] | tuple[int, int | None]


class TaskError(DiverError, ValueError):
    """A task file or the recordings it names are unusable; the message says which."""


@dataclass(frozen=True)
class SplitConfig:
    """How trials are split (``task.schema.yaml``'s ``split`` describes each field)."""

    by: str = "recording"
    folds: int = 1
    test: Units = ()
    test_fraction: float = 0.2
    val_by: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    train: Units = ()
    val: Units = ()
    shuffle: bool = True

    @property
    def val_unit(self) -> str:
        return self.val_by or self.by

    @property
    def fixed(self) -> bool:
        """A fixed split: train, validation and test units all given (the authors')."""
        return bool(self.train)


def is_range(units: Units) -> bool:
    """Whether ``units`` is an index range [start, stop) rather than names."""
    return len(units) == 2 and isinstance(units[0], int) and not isinstance(units[0], bool)


@dataclass(frozen=True)
class InputConfig:
    """How recording files are read (``task.schema.yaml``'s ``input``)."""

    format: str = "mne"
    sfreq: float | None = None
    channels: tuple[str, ...] = ()
    resample_clips_to: int | None = None
    electrode_labels: str | None = None
    events_csv: str | None = None
    corrupted_electrodes: str | None = None
    coordinates: str | None = None


@dataclass(frozen=True)
class LabelRule:
    """Event -> class map of the recordings whose file name ``match`` is found in."""

    match: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class TaskPreprocessing:
    """Per-recording preprocessing of a task (SPEC §1 as the corpus, plus §5 Laplacian)."""

    highpass: float
    line_freq: float = 60.0
    notch_harmonics: str = "auto"
    laplacian: bool = False
    channels: tuple[str, ...] = ()
    ieeg_type: str = "seeg"
    channel_types: Mapping[str, str] = field(default_factory=dict)
    ieeg_subtypes: Mapping[str, str] = field(default_factory=dict)
    coord_frame: str = "unknown"
    bandpass: tuple[float, float] | None = None
    notch: bool | tuple[float, ...] = True
    sfreq: float = 500.0
    units: str = "auto"
    # Resolved by task_from_dict (none | average | laplacian); None: as laplacian says.
    reference: str | None = None

    @property
    def re_reference(self) -> str:
        """The re-reference applied: none, average or laplacian."""
        if self.reference is not None:
            return self.reference
        return "laplacian" if self.laplacian else "none"


@dataclass(frozen=True)
class SegmentConfig:
    """Fixed-length segments (``task.schema.yaml``'s ``segment``); length None: windows."""

    length: float | None = None


@dataclass(frozen=True)
class PaperResults:
    """What the paper reports on the benchmark (shown beside this study's results)."""

    metric: str | None = None
    setting: str = ""
    results: Mapping[str, float] = field(default_factory=dict)
    mode: str | None = None


@dataclass(frozen=True)
class TaskConfig:
    """A validated task file; ``recordings`` are the entries as written (unexpanded)."""

    name: str
    modality: str
    recordings: tuple[str, ...]
    labels: Mapping[str, str]
    classes: tuple[str, ...]
    tmin: float
    tmax: float
    split: SplitConfig
    preprocessing: TaskPreprocessing
    recipe: str
    events_from: str = "annotations"
    stim_channel: str | None = None
    subject_pattern: str | None = None
    description: str = ""
    source: str = "<task>"
    input: InputConfig = field(default_factory=InputConfig)
    label_rules: tuple[LabelRule, ...] = ()
    label_sequence: tuple[str, ...] = ()
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    paper: PaperResults = field(default_factory=PaperResults)

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def class_index(self, event: str) -> int:
        return self.classes.index(self.labels[event])

    @property
    def segment_length(self) -> float | None:
        return self.segment.length

    @property
    def window_seconds(self) -> float:
        """Length of every trial: the segment length, else tmax - tmin."""
        return self.segment_length if self.segment_length is not None else self.tmax - self.tmin

    def labels_for(self, file_name: str) -> Mapping[str, str]:
        """The event -> class map of a recording: its first matching rule's, else labels."""
        for rule in self.label_rules:
            if re.search(rule.match, file_name):
                return rule.labels
        return self.labels

    def file_class(self, file_name: str) -> str | None:
        """events_from file_name: the class of the first label regex found in the name."""
        for pattern, cls in self.labels.items():
            if re.search(pattern, file_name):
                return cls
        return None

    def dataset(self, inputs: tuple[str, ...]) -> DatasetConfig:
        """The corpus-style dataset settings its recordings are typed and filtered with."""
        pre = self.preprocessing
        return DatasetConfig(
            name=self.name,
            inputs=inputs,
            modality=self.modality,
            ieeg_type=pre.ieeg_type,
            line_freq=pre.line_freq,
            highpass=pre.highpass,
            notch_harmonics=pre.notch_harmonics,
            subject_pattern=self.subject_pattern,
            channel_types=dict(pre.channel_types),
            ieeg_subtypes=dict(pre.ieeg_subtypes),
            coord_frame=pre.coord_frame,
            units=pre.units,
        )

    def fingerprint_payload(self) -> dict[str, Any]:
        """Everything that shapes the task set (for a rebuild check)."""
        pre = self.preprocessing
        return {
            "name": self.name,
            "modality": self.modality,
            "labels": dict(self.labels),
            "classes": list(self.classes),
            "tmin": self.tmin,
            "tmax": self.tmax,
            "events_from": self.events_from,
            "stim_channel": self.stim_channel,
            "subject_pattern": self.subject_pattern,
            "input": {**asdict(self.input), "channels": list(self.input.channels)},
            "label_rules": [{"match": r.match, "labels": dict(r.labels)} for r in self.label_rules],
            "label_sequence": list(self.label_sequence),
            "segment_length": self.segment_length,
            "preprocessing": {
                **{k: getattr(pre, k) for k in ("highpass", "line_freq")},
                "notch_harmonics": pre.notch_harmonics,
                "laplacian": pre.laplacian,
                "reference": pre.re_reference,
                "bandpass": list(pre.bandpass) if pre.bandpass else None,
                "notch": pre.notch if isinstance(pre.notch, bool) else list(pre.notch),
                "sfreq": pre.sfreq,
                "units": pre.units,
                "channels": list(pre.channels),
                "ieeg_type": pre.ieeg_type,
                "channel_types": dict(pre.channel_types),
                "ieeg_subtypes": dict(pre.ieeg_subtypes),
                "coord_frame": pre.coord_frame,
            },
        }


def task_from_dict(raw: Mapping[str, Any], *, source: str = "<task>") -> TaskConfig:
    """Validate ``raw`` (a parsed task file), fill defaults and freeze it."""
    if not isinstance(raw, Mapping):
        raise TaskError(f"task file {source}: the top level must be a mapping")
    # YAML reads ``1: left`` with an integer key; event codes are matched as text.
    rules = raw.get("label_rules")
    if isinstance(rules, list):
        rules = [
            {**r, "labels": _text_keys(r.get("labels"))} if isinstance(r, Mapping) else r
            for r in rules
        ]
    data = validate(
        {
            **raw,
            "labels": _text_keys(raw.get("labels", {})),
            **({"label_rules": rules} if rules is not None else {}),
        },
        "task",
        source=source,
        error=TaskError,
    )
    problems = _label_problems(data)
    classes = _classes(data, problems)
    if data["events_from"] in ("annotations", "stim") and not data["tmax"] > data["tmin"]:
        problems.append(f"tmax ({data['tmax']}) must be greater than tmin ({data['tmin']})")
    problems += _split_problems(data["split"])
    problems += _input_problems(data)
    pre = data["preprocessing"]
    band = pre["bandpass"]
    if band is not None and not band[0] < band[1]:
        problems.append(f"preprocessing.bandpass: low {band[0]} must be below high {band[1]}")
    reference = pre["reference"]
    if reference not in (None, "laplacian") and pre["laplacian"]:
        problems.append(f"preprocessing: laplacian true contradicts reference {reference}")
    if reference == "laplacian" and pre["laplacian"] is False:
        problems.append("preprocessing: laplacian false contradicts reference laplacian")
    if problems:
        raise TaskError(f"invalid task file {source}:\n" + "\n".join(f"  {p}" for p in problems))
    modality = data["modality"]
    highpass = pre["highpass"] if pre["highpass"] is not None else DEFAULT_HIGHPASS[modality]
    if reference is None:
        laplacian = pre["laplacian"] if pre["laplacian"] is not None else modality == "ieeg"
        reference = "laplacian" if laplacian else "none"
    split = data["split"]
    inp = data["input"]
    notch = pre["notch"]
    return TaskConfig(
        name=data["name"],
        modality=modality,
        recordings=tuple(data["recordings"]),
        labels=data["labels"],
        classes=classes,
        tmin=float(data["tmin"]),
        tmax=float(data["tmax"]),
        split=SplitConfig(**{**split, **{k: _units(split[k]) for k in ("train", "val", "test")}}),
        preprocessing=TaskPreprocessing(
            highpass=float(highpass),
            line_freq=float(pre["line_freq"]),
            notch_harmonics=pre["notch_harmonics"],
            laplacian=reference == "laplacian",
            reference=reference,
            channels=tuple(pre["channels"]),
            ieeg_type=pre["ieeg_type"],
            channel_types=dict(pre["channel_types"]),
            ieeg_subtypes=dict(pre["ieeg_subtypes"]),
            coord_frame=pre["coord_frame"],
            bandpass=(float(band[0]), float(band[1])) if band is not None else None,
            notch=notch if isinstance(notch, bool) else tuple(float(f) for f in notch),
            sfreq=float(pre["sfreq"]),
            units=pre["units"],
        ),
        recipe=data["recipe"] or modality,
        events_from=data["events_from"],
        stim_channel=data["stim_channel"],
        subject_pattern=data["subject_pattern"],
        description=data["description"],
        source=source,
        input=InputConfig(
            **{
                **inp,
                "channels": tuple(inp["channels"]),
                "sfreq": float(inp["sfreq"]) if inp["sfreq"] is not None else None,
            }
        ),
        label_rules=tuple(LabelRule(r["match"], dict(r["labels"])) for r in data["label_rules"]),
        label_sequence=tuple(data["label_sequence"]),
        segment=SegmentConfig(
            float(data["segment"]["length"]) if data["segment"]["length"] is not None else None
        ),
        paper=PaperResults(
            metric=data["paper"]["metric"],
            setting=data["paper"]["setting"],
            mode=data["paper"]["mode"],
            results={str(k): float(v) for k, v in data["paper"]["results"].items()},
        ),
    )


def _label_problems(data: dict[str, Any]) -> list[str]:
    """What is wrong with how the file says classes are found (one line each)."""
    problems = []
    source = data["events_from"]
    labels: dict[str, str] = data["labels"]
    if source == "sequence":
        if not data["label_sequence"]:
            problems.append("label_sequence: events_from sequence needs the class list")
        if labels or data["label_rules"]:
            problems.append("labels / label_rules: not used with events_from sequence; remove")
    else:
        if data["label_sequence"]:
            problems.append(f"label_sequence: only for events_from sequence, not {source}")
        if not labels and not data["label_rules"]:
            problems.append(f"labels: events_from {source} needs labels (or label_rules)")
    if source == "stim":
        every = [labels, *(r["labels"] for r in data["label_rules"])]
        bad = [k for m in every for k in m if not k.lstrip("-").isdigit()]
        if bad:
            problems.append(f"labels: events_from stim needs integer event codes, got {bad}")
    patterns = [("label_rules", r["match"]) for r in data["label_rules"]]
    if source == "file_name":
        patterns += [("labels", k) for k in labels]
        if data["label_rules"]:
            problems.append("label_rules: not used with events_from file_name; remove")
        if data["segment"]["length"] is None:
            problems.append("segment.length: events_from file_name cuts segments; give a length")
    for key, pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            problems.append(f"{key}: {pattern!r} is not a regular expression: {exc}")
    return problems


def _classes(data: dict[str, Any], problems: list[str]) -> tuple[str, ...]:
    """The class order: ``classes``, else the first appearance in the label maps."""
    maps = [data["labels"], *(r["labels"] for r in data["label_rules"])]
    named = [c for m in maps for c in m.values()] + list(data["label_sequence"])
    order = list(dict.fromkeys(named))
    classes = tuple(data["classes"]) or tuple(order)
    if data["classes"]:
        unknown = sorted(set(order) - set(classes))
        if unknown:
            problems.append(f"labels: classes {unknown} are not in classes {list(classes)}")
        if len(set(classes)) != len(classes):
            problems.append(f"classes: duplicates in {list(classes)}")
        unused = [c for c in classes if c not in order]
        if unused:
            problems.append(f"classes {unused} have no event in labels")
    if len(set(classes)) < 2:
        problems.append(f"labels: need at least two classes, got {list(classes)}")
    return classes


def _split_problems(split: dict[str, Any]) -> list[str]:
    problems = []
    given = {k: split[k] for k in ("train", "val", "test") if split[k]}
    if split["test"] and split["folds"] > 1:
        problems.append("split: give either test units or folds > 1, not both")
    for key, units in given.items():
        if is_range(tuple(units)):
            start, stop = units
            if stop is not None and not stop > start:
                problems.append(f"split.{key}: range {list(units)} is empty (stop <= start)")
    if not split["shuffle"] and split["folds"] < 2:
        problems.append("split.shuffle: false only orders k-fold splits; give folds > 1")
    if split["train"] or split["val"]:
        missing = [k for k in ("train", "val", "test") if not split[k]]
        if missing:
            problems.append(f"split: a fixed split gives train, val and test; missing {missing}")
        if split["folds"] > 1:
            problems.append("split: a fixed split (train / val / test) has folds 1")
        if split["val_by"] not in (None, split["by"]):
            problems.append(f"split.val_by: a fixed split is by {split['by']} throughout")
        kinds = {is_range(tuple(v)) for v in given.values()}
        if len(kinds) > 1:
            problems.append("split: train, val and test are all names or all index ranges")
    return problems


def _input_problems(data: dict[str, Any]) -> list[str]:
    problems = []
    inp = data["input"]
    fmt = inp["format"]
    if fmt != "mne":
        if inp["sfreq"] is None:
            problems.append(f"input.sfreq: format {fmt} needs the array's sampling rate")
        if data["events_from"] == "stim":
            problems.append(f"events_from: stim is not available for format {fmt}")
    if fmt == "faced_pickle" and not inp["channels"]:
        problems.append("input.channels: format faced_pickle needs the channel names in order")
    for key, allowed in (
        ("resample_clips_to", "faced_pickle"),
        ("electrode_labels", "brain_treebank_h5"),
        ("events_csv", "brain_treebank_h5"),
        ("corrupted_electrodes", "brain_treebank_h5"),
        ("coordinates", "brain_treebank_h5"),
    ):
        if inp[key] is not None and fmt != allowed:
            problems.append(f"input.{key}: only for format {allowed}, not {fmt}")
    if fmt == "mne" and (inp["sfreq"] is not None or inp["channels"]):
        problems.append("input.sfreq / channels: only for array formats (MNE files carry them)")
    return problems


def _units(value: list[Any]) -> Units:
    if is_range(tuple(value)):
        return (int(value[0]), None if value[1] is None else int(value[1]))
    return tuple(str(v) for v in value)


def _text_keys(labels: Any) -> Any:
    if isinstance(labels, Mapping):
        return {str(k): v for k, v in labels.items()}
    return labels


def load_task(path: str | Path) -> TaskConfig:
    """Read and validate a task YAML file (errors name the file and key)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise TaskError(f"task file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise TaskError(f"task file {path} is not valid YAML: {exc}") from exc
    return task_from_dict(raw if raw is not None else {}, source=str(path))


def default_shared_data() -> str:
    """``$DIVER_SHARED_DATA``, else ``../shared/data`` (as tests/conftest.py)."""
    return os.environ.get("DIVER_SHARED_DATA", str(Path("..") / "shared" / "data"))


def resolve_recordings(
    task: TaskConfig,
    *,
    results_dir: str | Path = "results",
    shared_data: str | Path | None = None,
    base_dir: str | Path | None = None,
) -> tuple[str, ...]:
    """The task's recording entries as existing paths: placeholders filled, globs expanded.

    Raises TaskError naming the entry when it uses an unknown placeholder, or when it
    matches nothing.
    """
    values = {
        "results_dir": str(results_dir),
        "shared_data": str(shared_data if shared_data is not None else default_shared_data()),
    }
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    found: list[str] = []
    for entry in task.recordings:
        try:
            text = fill_placeholders(entry, values, PLACEHOLDERS)
        except ValueError as exc:
            raise TaskError(f"task file {task.source}: recordings entry {entry!r} {exc}") from exc
        path = Path(text) if Path(text).is_absolute() else base / text
        if glob.has_magic(str(path)):
            matches = sorted(glob.glob(str(path), recursive=True))
        else:
            matches = [str(path)] if path.exists() else []
        if not matches:
            raise TaskError(
                f"task file {task.source}: recordings entry {entry!r} ({path}) matches nothing"
            )
        found.extend(m for m in matches if m not in found)
    return tuple(found)
