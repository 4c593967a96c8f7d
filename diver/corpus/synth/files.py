"""Writing the synthetic recordings in the formats real corpora use.

EDF and FIF recordings (through MNE, with trials as annotations), and the BIDS
sidecars of the iEEG tree (``channels.tsv``, ``ieeg.json``, ``electrodes.tsv``,
``coordsystem.json``, ``dataset_description.json``).  Every file goes through
:func:`diver.atomic.replacing` with its temporary file in :data:`TMP_FOLDER`, beside
and not inside the dataset folders, so a killed run never leaves a half-written
recording, nor a temporary that a recording glob of the corpus stage would match.
Byte-identical output given the data: fixed measurement dates, FIF machine ids
zeroed, JSON with sorted keys.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import mne
import numpy as np

from diver.atomic import replacing
from diver.corpus.synth.subjects import (
    COORD_SYSTEM,
    ELECTRODE_SIZE_MM2,
    IEEG_FOLDER,
    LINE_FREQ,
    TRIAL_SECONDS,
    Job,
    Subject,
)

# Temporary files live beside, not inside, the dataset folders: a leftover from a
# killed run must never match a recording glob of the corpus stage.
TMP_FOLDER = ".synth-tmp"


def write_text(path: Path, tmp_dir: Path, text: str) -> None:
    """Write UTF-8 text with ``\n`` line ends, through a temporary file in ``tmp_dir``."""
    with replacing(path, directory=tmp_dir) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def tsv_text(rows: Sequence[Sequence[object]]) -> str:
    return "".join("\t".join(str(v) for v in row) + "\n" for row in rows)


def json_text(obj: object) -> str:
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


def write_dataset_description(out: Path, tmp_dir: Path, name: str) -> None:
    """The BIDS ``dataset_description.json`` of the iEEG tree."""
    write_text(
        out / IEEG_FOLDER / "dataset_description.json",
        tmp_dir,
        json_text(
            {
                "Name": name,
                "BIDSVersion": "1.9.0",
                "DatasetType": "raw",
                "GeneratedBy": [{"Name": "diver.corpus.synth"}],
            }
        ),
    )


def clipped_raw(
    job: Job, data: np.ndarray, rail: float, onsets: list[float], labels: list[str]
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


def write_ieeg_run_sidecars(job: Job, out: Path, tmp_dir: Path) -> None:
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
    write_text(channels_tsv, tmp_dir, tsv_text(rows))
    counts = {t: subject.ch_types.count(t) for t in ("seeg", "ecog", "ecg")}
    write_text(
        ieeg_json,
        tmp_dir,
        json_text(
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


def write_ieeg_subject_sidecars(subject: Subject, out: Path, tmp_dir: Path) -> None:
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
                [name, *(f"{v:.2f}" for v in xyz), f"{ELECTRODE_SIZE_MM2[sub]:g}", sub, group]
            )
    write_text(out / electrodes, tmp_dir, tsv_text(rows))
    write_text(
        out / coordsystem,
        tmp_dir,
        json_text(
            {
                "iEEGCoordinateSystem": COORD_SYSTEM,
                "iEEGCoordinateUnits": "mm",
                "iEEGCoordinateProcessingDescription": "synthetic positions (diver.corpus.synth)",
            }
        ),
    )


def write_raw(raw: mne.io.BaseRaw, target: Path, tmp_dir: Path, fmt: str, rail: float) -> None:
    """Write ``raw`` to ``target`` through a temporary file in ``tmp_dir``: EDF with the
    amplifier's physical range (``±rail`` µV), or single-precision FIF with the machine
    ids zeroed (:func:`_zero_fif_machine_ids`), so the bytes do not depend on the host.

    The temporary name ends with the target's own name, so MNE sees the ending it
    expects (``_eeg.fif``).
    """
    with replacing(target, directory=tmp_dir, suffix=f"-{target.name}") as tmp:
        if fmt == "edf":
            mne.export.export_raw(
                tmp, raw, fmt="edf", physical_range=(-rail, rail), overwrite=True, verbose="error"
            )
        else:
            raw.save(tmp, fmt="single", overwrite=True, verbose="error")
            _zero_fif_machine_ids(tmp)
