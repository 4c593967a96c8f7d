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

Every key, its meaning and its default are in :data:`TASK_SCHEMA`; a file is checked
against it (unknown keys, wrong types) before anything is read, and the error names the
file and the key.  Recording entries may be files, folders or globs, with placeholders
``{shared_data}`` (``$DIVER_SHARED_DATA``, else ``../shared/data``) and
``{results_dir}`` (the study's results folder, ``results`` unless given); relative
paths are taken from the current directory (the repository root under Snakemake).
"""

from __future__ import annotations

import glob
import json
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from diver.config import DatasetConfig, fill_defaults
from diver.errors import DiverError

MODALITIES = ("eeg", "ieeg")
SPLIT_UNITS = ("trial", "recording", "subject")
PLACEHOLDERS = ("shared_data", "results_dir")
# SPEC §1: high-pass 0.5 Hz for (private) iEEG, 0.3 Hz for the others.
DEFAULT_HIGHPASS = {"eeg": 0.3, "ieeg": 0.5}


class TaskError(DiverError, ValueError):
    """A task file or the recordings it names are unusable; the message says which."""


_STR_LIST = {"type": "array", "items": {"type": "string"}}
TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "recordings", "labels"],
    "properties": {
        "name": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
            "description": "task name (letters, digits, _ . -): keys outputs and MLflow runs",
            "default": "task",
        },
        "description": {"type": "string", "description": "free text", "default": ""},
        "modality": {
            "enum": list(MODALITIES),
            "description": "eeg or ieeg: channel typing, default recipe, Laplacian default",
            "default": "eeg",
        },
        "recordings": {
            **_STR_LIST,
            "minItems": 1,
            "description": "recording files, folders or globs ({shared_data}, {results_dir})",
            "default": [],
        },
        "subject_pattern": {
            "type": ["string", "null"],
            "description": "regex giving the subject from the path (group 1); BIDS names win",
            "default": None,
        },
        "events_from": {
            "enum": ["annotations", "stim"],
            "description": "annotations (label keys are descriptions) or a stim channel "
            "(label keys are integer event codes)",
            "default": "annotations",
        },
        "stim_channel": {
            "type": ["string", "null"],
            "description": "stim channel for events_from: stim (null: MNE's default search)",
            "default": None,
        },
        "labels": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {"type": "string", "minLength": 1},
            "description": "event (annotation description or code) -> class name; events "
            "not listed are ignored, several events may share a class",
            "default": {},
        },
        "classes": {
            **_STR_LIST,
            "description": "class order (index 1 is the positive class of binary metrics); "
            "empty: order of first appearance in labels",
            "default": [],
        },
        "tmin": {
            "type": "number",
            "description": "window start relative to each event onset (s)",
            "default": 0.0,
        },
        "tmax": {
            "type": "number",
            "description": "window end relative to each event onset (s)",
            "default": 4.0,
        },
        "recipe": {
            "enum": [None, *MODALITIES],
            "description": "fine-tuning preset of SPEC §5 (null: the task's modality)",
            "default": None,
        },
        "split": {
            "type": "object",
            "additionalProperties": False,
            "description": "how trials become train / validation / test",
            "default": {},
            "properties": {
                "by": {
                    "enum": list(SPLIT_UNITS),
                    "description": "unit kept whole in the test split",
                    "default": "recording",
                },
                "folds": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "k-fold cross-validation over test units (1: one split)",
                    "default": 1,
                },
                "test": {
                    **_STR_LIST,
                    "description": "test units by name (glob patterns), folds 1 only "
                    "(empty: a seeded random test_fraction)",
                    "default": [],
                },
                "test_fraction": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "exclusiveMaximum": 1,
                    "description": "share of units held out for test when folds is 1",
                    "default": 0.2,
                },
                "val_by": {
                    "enum": [None, *SPLIT_UNITS],
                    "description": "unit of the validation split, drawn from the training "
                    "side (null: same as by)",
                    "default": None,
                },
                "val_fraction": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "exclusiveMaximum": 1,
                    "description": "share of the training side used for validation",
                    "default": 0.2,
                },
                "seed": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "seed of the random split (not of training)",
                    "default": 0,
                },
            },
        },
        "preprocessing": {
            "type": "object",
            "additionalProperties": False,
            "description": "as the corpus (SPEC §1): 500 Hz, filters, scaling; plus Laplacian",
            "default": {},
            "properties": {
                "highpass": {
                    "type": ["number", "null"],
                    "minimum": 0,
                    "description": "high-pass (Hz); null: 0.3 EEG, 0.5 iEEG (SPEC §1)",
                    "default": None,
                },
                "line_freq": {
                    "enum": [50, 60],
                    "description": "mains frequency notched (Hz)",
                    "default": 60,
                },
                "notch_harmonics": {
                    "enum": ["auto", "yes", "no"],
                    "description": "notch harmonics too (auto: for iEEG)",
                    "default": "auto",
                },
                "laplacian": {
                    "type": ["boolean", "null"],
                    "description": "Laplacian re-reference (null: for iEEG, SPEC §5)",
                    "default": None,
                },
                "channels": {
                    **_STR_LIST,
                    "description": "keep only these channels (normalised names; empty: all "
                    "neural channels)",
                    "default": [],
                },
                "ieeg_type": {
                    "enum": ["seeg", "ecog"],
                    "description": "iEEG type of contacts no sidecar types",
                    "default": "seeg",
                },
                "channel_types": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "description": "regex of a channel name -> type (as corpus datasets)",
                    "default": {},
                },
                "ieeg_subtypes": {
                    "type": "object",
                    "additionalProperties": {"enum": ["grid", "strip", "depth"]},
                    "description": "regex of an ECoG contact name -> grid / strip",
                    "default": {},
                },
                "coord_frame": {
                    "type": "string",
                    "description": "frame of positions stored without one",
                    "default": "unknown",
                },
            },
        },
    },
}


@dataclass(frozen=True)
class SplitConfig:
    """How trials are split (see :data:`TASK_SCHEMA` for each field)."""

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


def _validator() -> Any:
    """A schema validator that fills defaults into the instance as it validates."""
    base = jsonschema.validators.validator_for(TASK_SCHEMA)
    return fill_defaults(base)(TASK_SCHEMA)


def task_from_dict(raw: Mapping[str, Any], *, source: str = "<task>") -> TaskConfig:
    """Validate ``raw`` (a parsed task file), fill defaults and freeze it."""
    if not isinstance(raw, Mapping):
        raise TaskError(f"task file {source}: the top level must be a mapping")
    # YAML reads ``1: left`` with an integer key; event codes are matched as text.
    data = json.loads(json.dumps({**raw, "labels": _text_keys(raw.get("labels"))}))
    errors = sorted(_validator().iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [
            f"  {'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
            for e in errors
        ]
        raise TaskError(f"invalid task file {source}:\n" + "\n".join(lines))
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
        fields = {f for _, f, _, _ in string.Formatter().parse(entry) if f is not None}
        unknown = sorted(fields - set(PLACEHOLDERS))
        if unknown:
            raise TaskError(
                f"task file {task.source}: recordings entry {entry!r} uses unknown "
                f"placeholder(s) {unknown}; known: {list(PLACEHOLDERS)}"
            )
        text = entry.format(**values)
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
