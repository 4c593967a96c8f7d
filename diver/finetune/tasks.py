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
from collections.abc import Mapping
from dataclasses import dataclass, field
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


class TaskError(DiverError, ValueError):
    """A task file or the recordings it names are unusable; the message says which."""


@dataclass(frozen=True)
class SplitConfig:
    """How trials are split (``task.schema.yaml``'s ``split`` describes each field)."""

    by: str = "recording"
    folds: int = 1
    test: tuple[str, ...] = ()
    test_fraction: float = 0.2
    val_by: str | None = None
    val_fraction: float = 0.2
    seed: int = 0

    @property
    def val_unit(self) -> str:
        return self.val_by or self.by


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

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def class_index(self, event: str) -> int:
        return self.classes.index(self.labels[event])

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
        )

    def fingerprint_payload(self) -> dict[str, Any]:
        """Everything that shapes the task set (for a rebuild check)."""
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
            "preprocessing": {
                **{k: getattr(self.preprocessing, k) for k in ("highpass", "line_freq")},
                "notch_harmonics": self.preprocessing.notch_harmonics,
                "laplacian": self.preprocessing.laplacian,
                "channels": list(self.preprocessing.channels),
                "ieeg_type": self.preprocessing.ieeg_type,
                "channel_types": dict(self.preprocessing.channel_types),
                "ieeg_subtypes": dict(self.preprocessing.ieeg_subtypes),
                "coord_frame": self.preprocessing.coord_frame,
            },
        }


def task_from_dict(raw: Mapping[str, Any], *, source: str = "<task>") -> TaskConfig:
    """Validate ``raw`` (a parsed task file), fill defaults and freeze it."""
    if not isinstance(raw, Mapping):
        raise TaskError(f"task file {source}: the top level must be a mapping")
    # YAML reads ``1: left`` with an integer key; event codes are matched as text.
    data = validate(
        {**raw, "labels": _text_keys(raw.get("labels"))}, "task", source=source, error=TaskError
    )
    problems = []
    labels: dict[str, str] = data["labels"]
    order = list(dict.fromkeys(labels.values()))
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
    if data["events_from"] == "stim":
        bad = [k for k in labels if not k.lstrip("-").isdigit()]
        if bad:
            problems.append(f"labels: events_from stim needs integer event codes, got {bad}")
    if not data["tmax"] > data["tmin"]:
        problems.append(f"tmax ({data['tmax']}) must be greater than tmin ({data['tmin']})")
    split = data["split"]
    if split["test"] and split["folds"] > 1:
        problems.append("split: give either test units or folds > 1, not both")
    if problems:
        raise TaskError(f"invalid task file {source}:\n" + "\n".join(f"  {p}" for p in problems))
    modality = data["modality"]
    pre = data["preprocessing"]
    highpass = pre["highpass"] if pre["highpass"] is not None else DEFAULT_HIGHPASS[modality]
    laplacian = pre["laplacian"] if pre["laplacian"] is not None else modality == "ieeg"
    return TaskConfig(
        name=data["name"],
        modality=modality,
        recordings=tuple(data["recordings"]),
        labels=labels,
        classes=classes,
        tmin=float(data["tmin"]),
        tmax=float(data["tmax"]),
        split=SplitConfig(**{**split, "test": tuple(split["test"])}),
        preprocessing=TaskPreprocessing(
            highpass=float(highpass),
            line_freq=float(pre["line_freq"]),
            notch_harmonics=pre["notch_harmonics"],
            laplacian=bool(laplacian),
            channels=tuple(pre["channels"]),
            ieeg_type=pre["ieeg_type"],
            channel_types=dict(pre["channel_types"]),
            ieeg_subtypes=dict(pre["ieeg_subtypes"]),
            coord_frame=pre["coord_frame"],
        ),
        recipe=data["recipe"] or modality,
        events_from=data["events_from"],
        stim_channel=data["stim_channel"],
        subject_pattern=data["subject_pattern"],
        description=data["description"],
        source=source,
    )


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
