"""Array files of benchmark datasets read as MNE recordings (a task file's ``input``).

Benchmarks such as FACED and BrainTreebank (Neuroprobe) do not ship EDF/FIF files but
arrays: FACED one pickled ``(clips, channels, samples)`` array per subject,
BrainTreebank one HDF5 file per recording session with a dataset per electrode.  Each
reader here turns one such file into an :class:`mne.io.RawArray` whose annotations
mark its clips or labelled events, so the task set's one path (channel typing, dead
channels, filters, resampling, re-referencing, event-locked windows or segments,
:mod:`diver.finetune.taskset`) applies unchanged and nothing is special-cased later.

The numbers are put into the RawArray as they are stored: MNE takes them for volts,
and the task's ``preprocessing.units`` says what they really are (FACED's are µV), as
it would for a file whose header lies.

Pickles run code by design: ``pickle.load`` calls whatever callable the file names.
FACED is only distributed as pickles, so they are read with :class:`ArrayUnpickler`,
which resolves only the four globals a numpy array needs and refuses every other one
before it is called; a doctored file fails with :class:`UnsafePickleError` naming it.
"""

from __future__ import annotations

import csv
import json
import pickle
import re
from pathlib import Path
from typing import Any

import mne
import numpy as np
from mne.io.constants import FIFF

from diver.finetune.tasks import InputConfig, TaskError

__all__ = [
    "ALLOWED_GLOBALS",
    "ArrayUnpickler",
    "UnsafePickleError",
    "companion_files",
    "load_array_pickle",
    "read_brain_treebank_h5",
    "read_faced_pickle",
]

#: What unpickling a plain numpy array may look up (numpy 1.x and 2.x spellings):
#: the array reconstructor, the array type and the dtype type.  Nothing else.
ALLOWED_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)
#: Extensions an input folder of each array format is searched for.
EXTENSIONS = {"faced_pickle": (".pkl", ".pickle"), "brain_treebank_h5": (".h5", ".hdf5")}
CLIP = "clip"  # description of each FACED clip's annotation
_ELECTRODE = re.compile(r"^electrode_(\d+)$")
_SUBJECT = re.compile(r"sub_(\d+)")


class UnsafePickleError(TaskError):
    """A pickle names a global other than a numpy array's; it was not loaded."""


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that admits only :data:`ALLOWED_GLOBALS`.

    ``find_class`` is where every global a pickle references (a function to call, a
    class to build) is resolved; refusing there stops ``os.system`` or
    ``builtins.eval`` payloads before they can run.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused global {module}.{name} (only a numpy array's are allowed)"
        )


def load_array_pickle(path: Path | str) -> np.ndarray:
    """The numpy array pickled in ``path``, read without running code from the file.

    Raises UnsafePickleError (naming the file and the refused global) for a pickle
    that references anything but a numpy array's globals, TaskError for one that is
    not an array or not a readable pickle.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            value = ArrayUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        if "refused global" in str(exc):
            raise UnsafePickleError(
                f"{path}: unsafe pickle, not loaded: {exc}; a data file must hold only a "
                "numpy array"
            ) from None
        raise TaskError(f"{path}: not a readable pickle: {exc}") from exc
    except (EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
        raise TaskError(f"{path}: not a readable pickle: {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, np.ndarray):
        raise TaskError(f"{path}: the pickle holds a {type(value).__name__}, not an array")
    return value


def read_faced_pickle(path: Path, spec: InputConfig) -> mne.io.RawArray:
    """A FACED subject file (clips x channels x samples) as one recording.

    The clips are placed back to back, each marked by an annotation ``clip`` spanning
    it, in stored order (the order FACED's label list follows).  With
    ``resample_clips_to`` each clip is first resampled on its own to that many samples
    by the FFT method (``scipy.signal.resample``, the authors' preprocessing script),
    so no filter or resampler later runs across a clip boundary at the stored rate.
    """
    from scipy import signal as sps

    array = load_array_pickle(path)
    if array.ndim != 3:
        raise TaskError(f"{path}: FACED array has shape {array.shape}; expected clips x ch x time")
    clips, channels, samples = array.shape
    if channels != len(spec.channels):
        raise TaskError(
            f"{path}: {channels} channels in the array but input.channels names "
            f"{len(spec.channels)}"
        )
    assert spec.sfreq is not None  # checked with the task file
    sfreq = float(spec.sfreq)
    data = np.asarray(array, dtype=np.float64)
    if spec.resample_clips_to is not None and spec.resample_clips_to != samples:
        data = sps.resample(data, spec.resample_clips_to, axis=2)
        sfreq = sfreq * spec.resample_clips_to / samples
        samples = spec.resample_clips_to
    flat = np.ascontiguousarray(data.transpose(1, 0, 2).reshape(channels, clips * samples))
    info = mne.create_info(list(spec.channels), sfreq, "eeg", verbose="error")
    raw = mne.io.RawArray(flat, info, verbose="error")
    clip_seconds = samples / sfreq
    raw.set_annotations(
        mne.Annotations(
            onset=np.arange(clips) * clip_seconds,
            duration=np.full(clips, clip_seconds),
            description=[CLIP] * clips,
        )
    )
    return raw


def _template(template: str, path: Path, **values: str) -> Path:
    text = template.format(**values)
    out = Path(text)
    return out if out.is_absolute() else path.parent / out


def _clean(label: str) -> str:
    """BrainTreebank marks some electrode names with ``*`` or ``#``; Neuroprobe drops them."""
    return label.replace("*", "").replace("#", "")


def _subject(path: Path) -> str:
    match = _SUBJECT.search(path.name)
    return match.group(1) if match else ""


def _electrode_names(path: Path, spec: InputConfig, keys: list[str]) -> list[str]:
    if spec.electrode_labels:
        labels = _template(spec.electrode_labels, path, subject=_subject(path), stem=path.stem)
        try:
            names = json.loads(labels.read_text())
        except (OSError, ValueError) as exc:
            raise TaskError(f"{path}: electrode labels {labels} unreadable: {exc}") from exc
        numbers = [int(_ELECTRODE.match(k).group(1)) for k in keys]  # type: ignore[union-attr]
        if not isinstance(names, list) or max(numbers) >= len(names):
            raise TaskError(
                f"{path}: electrode labels {labels} name {len(names)} electrodes, the file "
                f"holds electrode_{max(numbers)}"
            )
        return [_clean(str(names[i])) for i in numbers]
    if spec.channels:
        if len(spec.channels) != len(keys):
            raise TaskError(
                f"{path}: {len(keys)} electrodes but input.channels names {len(spec.channels)}"
            )
        return list(spec.channels)
    return keys


def _corrupted(path: Path, spec: InputConfig) -> set[str]:
    if spec.corrupted_electrodes is None:
        return set()
    table = _template(spec.corrupted_electrodes, path, subject=_subject(path), stem=path.stem)
    try:
        listed = json.loads(table.read_text())
    except (OSError, ValueError) as exc:
        raise TaskError(f"{path}: corrupted electrodes {table} unreadable: {exc}") from exc
    if not isinstance(listed, dict):
        raise TaskError(f"{path}: corrupted electrodes {table} is not a mapping sub_N -> names")
    return {_clean(str(e)) for e in listed.get(f"sub_{_subject(path)}", [])}


def _positions(path: Path, spec: InputConfig, names: list[str]) -> dict[str, np.ndarray]:
    """MNI positions (mm) of the named electrodes from BrainTreebank's coordinates CSV."""
    if spec.coordinates is None:
        return {}
    table = _template(spec.coordinates, path, subject=_subject(path), stem=path.stem)
    subject = f"sub_{_subject(path)}"
    wanted = set(names)
    out = {}
    try:
        with table.open(newline="") as f:
            for row in csv.DictReader(f):
                name = _clean(str(row.get("Electrode", "")))
                if row.get("Subject") == subject and name in wanted:
                    out[name] = np.array([float(row[k]) for k in ("X", "Y", "Z")])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise TaskError(
            f"{path}: coordinates {table} unreadable (columns Subject, Electrode, X, Y, Z): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return out


def _events_table(path: Path, spec: InputConfig) -> mne.Annotations:
    if spec.events_csv is None:
        return mne.Annotations([], [], [])
    table = _template(spec.events_csv, path, stem=path.stem)
    try:
        with table.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise TaskError(f"{path}: events table {table} unreadable: {exc}") from exc
    try:
        onsets = [float(r["onset"]) for r in rows]
        durations = [float(r.get("duration") or 0.0) for r in rows]
        labels = [str(r["label"]) for r in rows]
    except (KeyError, ValueError, TypeError) as exc:
        raise TaskError(
            f"{path}: events table {table} needs columns onset (s) and label "
            f"(duration optional): {type(exc).__name__}: {exc}"
        ) from exc
    return mne.Annotations(onsets, durations, labels)


def read_brain_treebank_h5(path: Path, spec: InputConfig) -> mne.io.RawArray:
    """A BrainTreebank session (``data/electrode_<i>`` datasets, one per contact).

    Electrodes are taken in their number order and named from ``electrode_labels``
    (BrainTreebank's ``electrode_labels.json``, index i naming ``electrode_i``) or
    ``input.channels``.  As Neuroprobe's loader: the corrupted electrodes listed for
    the subject are left out, and trigger inputs (names starting DC or TRIG) are typed
    ``stim`` so they are never neural channels.  Positions (MNI mm) come from
    ``coordinates``.  Electrode datasets that differ in length are cut to the
    shortest.  Labelled events come from ``events_csv``: BrainTreebank itself ships
    no per-window labels (see the Neuroprobe task file).
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            group = f.get("data")
            if not isinstance(group, h5py.Group):
                raise TaskError(f"{path}: no 'data' group (BrainTreebank layout)")
            keys = sorted(
                (k for k in group if _ELECTRODE.match(k)),
                key=lambda k: int(_ELECTRODE.match(k).group(1)),  # type: ignore[union-attr]
            )
            if not keys:
                raise TaskError(f"{path}: 'data' holds no electrode_<i> dataset")
            names = _electrode_names(path, spec, keys)
            bad = _corrupted(path, spec)
            chosen = [(k, n) for k, n in zip(keys, names, strict=True) if n not in bad]
            if not chosen:
                raise TaskError(f"{path}: every electrode is listed as corrupted")
            n = min(int(group[k].shape[0]) for k, _ in chosen)
            data = np.empty((len(chosen), n), dtype=np.float64)
            for i, (key, _) in enumerate(chosen):
                data[i] = group[key][:n]
    except OSError as exc:
        raise TaskError(f"{path}: not a readable HDF5 file: {exc}") from exc
    names = [name for _, name in chosen]
    types = ["stim" if name.upper().startswith(("DC", "TRIG")) else "seeg" for name in names]
    assert spec.sfreq is not None  # checked with the task file
    info = mne.create_info(names, float(spec.sfreq), types, verbose="error")
    positions = _positions(path, spec, names)
    for ch in info["chs"]:
        xyz = positions.get(ch["ch_name"])
        if xyz is not None:
            ch["loc"][:3] = xyz / 1000.0  # MNE keeps metres
            ch["coord_frame"] = FIFF.FIFFV_MNE_COORD_MNI_TAL
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_annotations(_events_table(path, spec))
    return raw


READERS = {"faced_pickle": read_faced_pickle, "brain_treebank_h5": read_brain_treebank_h5}


def companion_files(path: Path, spec: InputConfig) -> list[Path]:
    """The files besides ``path`` its recording is read from (labels, events, positions):
    a task set's fingerprint must change when they do."""
    templates = [spec.electrode_labels, spec.events_csv, spec.corrupted_electrodes,
                 spec.coordinates]  # fmt: skip
    out = []
    for template in templates:
        if template is not None:
            found = _template(template, path, subject=_subject(path), stem=path.stem)
            if found.exists():
                out.append(found)
    return out


def read_array_recording(path: Path, spec: InputConfig) -> mne.io.RawArray:
    """The recording in array file ``path`` of format ``spec.format``."""
    return READERS[spec.format](Path(path), spec)
