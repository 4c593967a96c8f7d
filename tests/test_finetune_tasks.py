"""Task files and task sets (SPEC §5): the shipped eegmmidb task built from the real
recordings, event codes from a stim channel, and the errors a user can make."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import mne
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from diver.cli import main
from diver.finetune.tasks import TaskError, load_task, task_from_dict
from diver.finetune.taskset import build_taskset, load_taskset, read_fingerprint
from diver.schemas import load_schema
from tests.conftest import REPO_ROOT

TASKS = REPO_ROOT / "config" / "tasks"


def _schema_keys(schema: dict, prefix: str = "") -> list[tuple[str, dict]]:
    out = []
    for key, sub in schema.get("properties", {}).items():
        out.append((prefix + key, sub))
        out += _schema_keys(sub, prefix + key + ".")
    return out


def test_every_task_key_has_a_description_and_default_and_shipped_files_load() -> None:
    for key, sub in _schema_keys(load_schema("task")):  # $refs carry their target's
        assert sub.get("description") and "default" in sub, key
    files = sorted(TASKS.glob("*.yaml"))
    assert {f.stem for f in files} >= {
        "eegmmidb_mi_left_right", "eegmmidb_me_left_right", "eegmmidb_mi_fists_feet",
        "synth_eeg_oscillation", "synth_ieeg_oscillation",
    }  # fmt: skip
    for path in files:
        task = load_task(path)
        assert task.name == path.stem and len(task.classes) == 2
    ieeg = load_task(TASKS / "synth_ieeg_oscillation.yaml")
    assert ieeg.preprocessing.laplacian and ieeg.recipe == "ieeg"
    assert ieeg.preprocessing.highpass == 0.5  # SPEC §1 iEEG default
    eeg = load_task(TASKS / "eegmmidb_mi_left_right.yaml")
    assert not eeg.preprocessing.laplacian and eeg.recipe == "eeg"


@pytest.fixture(scope="module")
def eegmmidb(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    task = load_task(TASKS / "eegmmidb_mi_left_right.yaml")
    out = tmp_path_factory.mktemp("eegmmidb") / "mi.parquet"
    summary = build_taskset(task, out, shared_data=shared_data)
    assert summary.built
    return out


def test_eegmmidb_imagery_task_has_the_right_trials(eegmmidb: Path, shared_data: Path) -> None:
    ts = load_taskset(eegmmidb)
    assert ts.classes == ("left", "right")
    # Runs 4, 8, 12: 8 + 8 + 7 left (T1) and 7 + 7 + 8 right (T2) imagery trials.
    assert Counter(ts.labels.tolist()) == {0: 23, 1: 22}
    assert Counter(ts.recordings.tolist()) == {"S001R04": 15, "S001R08": 15, "S001R12": 15}
    assert set(ts.subjects) == {"001"}
    assert Counter(zip(ts.recordings, ts.events, strict=True)) == {
        ("S001R04", "T1"): 8, ("S001R04", "T2"): 7, ("S001R08", "T1"): 8,
        ("S001R08", "T2"): 7, ("S001R12", "T1"): 7, ("S001R12", "T2"): 8,
    }  # fmt: skip
    # 4 s at 500 Hz, 64 channels with 10-05 names and positions, scaled and clipped.
    assert ts.n_samples == 2000
    assert all(len(names) == 64 for names in ts.channel_names)
    assert {"FC5", "Cz", "Iz", "C3", "C4"} <= set(ts.layout())
    assert all(np.isfinite(c).all() for c in ts.coords)
    assert all(np.abs(s).max() <= 1.0 for s in ts.signals)
    assert 0.05 < float(np.median([s.std() for s in ts.signals])) < 0.5  # ~10-50 µV / 100
    # Onsets are those of the annotations.
    raw = mne.io.read_raw(shared_data / "eegmmidb_S001" / "S001R04.edf", verbose="error")
    annotated = [
        o for o, d in zip(raw.annotations.onset, raw.annotations.description, strict=True)
        if d in ("T1", "T2")
    ]  # fmt: skip
    assert np.allclose(np.sort(ts.onsets[ts.recordings == "S001R04"]), annotated, atol=1 / 160)


def test_unchanged_task_set_is_not_rebuilt(eegmmidb: Path, shared_data: Path) -> None:
    task = load_task(TASKS / "eegmmidb_mi_left_right.yaml")
    fingerprint = read_fingerprint(eegmmidb)
    mtime = eegmmidb.stat().st_mtime_ns
    again = build_taskset(task, eegmmidb, shared_data=shared_data)
    assert not again.built and again.fingerprint == fingerprint
    assert again.per_class == {"left": 23, "right": 22}
    assert eegmmidb.stat().st_mtime_ns == mtime
    changed = task_from_dict({**yaml.safe_load((TASKS / "eegmmidb_mi_left_right.yaml").read_text()),
                              "tmax": 3.0})  # fmt: skip
    out = build_taskset(changed, eegmmidb.with_name("mi3.parquet"), shared_data=shared_data)
    assert out.fingerprint != fingerprint and load_taskset(out.path).n_samples == 1500


def _task(**changes: object) -> dict:
    raw = yaml.safe_load((TASKS / "eegmmidb_mi_left_right.yaml").read_text())
    raw.update(changes)
    return raw


def test_unknown_event_name_fails_naming_it(shared_data: Path, tmp_path: Path) -> None:
    task = task_from_dict(_task(labels={"T1": "left", "T7": "right"}), source="bad.yaml")
    with pytest.raises(TaskError) as err:
        build_taskset(task, tmp_path / "x.parquet", shared_data=shared_data)
    message = str(err.value)
    assert "bad.yaml" in message and "['T7']" in message and "'T0', 'T1', 'T2'" in message
    assert not (tmp_path / "x.parquet").exists()
    # The same through the command line: exit 2, message on stderr, no traceback.
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_task(labels={"T1": "left", "T7": "right"})))
    code = main(["task", "build", "--task", str(path), "--out", str(tmp_path / "y.parquet"),
                 "--results-dir", str(tmp_path)])  # fmt: skip
    assert code == 2


def test_invalid_task_files_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [
        (_task(labelz={"T1": "a"}), "(top level): unknown keys ['labelz']; known: ["),
        (_task(tmin=2.0, tmax=1.0), "tmax (1.0) must be greater than tmin (2.0)"),
        (_task(labels={"T1": "left", "T2": "left"}, classes=[]), "need at least two classes"),
        (_task(labels={"T1": "left", "T2": "left"}), "classes ['right'] have no event"),
        (_task(classes=["left", "up"]), "classes ['right'] are not in classes"),
        (_task(split={"by": "session"}), "split.by: 'session' is not one of"),
        (_task(events_from="stim"), "needs integer event codes"),
        (_task(split={"folds": 3, "test": ["S001R04"]}), "either test units or folds"),
    ]
    for raw, expected in cases:
        with pytest.raises(TaskError) as err:
            task_from_dict(raw, source="t.yaml")
        assert expected in str(err.value) and "t.yaml" in str(err.value), str(err.value)
    task = task_from_dict(_task(recordings=["{data}/x.edf"]), source="t.yaml")
    with pytest.raises(TaskError, match=r"unknown placeholder\(s\) \['data'\]"):
        build_taskset(task, tmp_path / "t.parquet")
    task = task_from_dict(_task(recordings=[str(tmp_path / "none*.edf")]), source="t.yaml")
    with pytest.raises(TaskError, match="matches nothing"):
        build_taskset(task, tmp_path / "t.parquet")
    with pytest.raises(TaskError, match="task file not found"):
        load_task(tmp_path / "missing.yaml")


def test_stim_channel_event_codes(tmp_path: Path) -> None:
    """Integer codes on a stim channel; a trial running past the end is skipped."""
    sfreq, seconds = 250.0, 40
    rng = np.random.default_rng(0)
    info = mne.create_info(["C3", "Cz", "C4", "STI"], sfreq, ["eeg"] * 3 + ["stim"])
    data = np.zeros((4, int(sfreq * seconds)))
    data[:3] = rng.standard_normal((3, data.shape[1])) * 20e-6
    onsets = [2.0, 8.0, 14.0, 20.0, 26.0, 38.5]
    for k, onset in enumerate(onsets):
        data[3, int(onset * sfreq) : int(onset * sfreq) + 5] = 1 + k % 2
    mne.io.RawArray(data, info, verbose="error").save(tmp_path / "rec_raw.fif", verbose="error")
    task = task_from_dict(
        {"name": "stim", "recordings": [str(tmp_path / "*.fif")], "events_from": "stim",
         "stim_channel": "STI", "labels": {1: "a", 2: "b"}, "tmin": -0.5, "tmax": 2.5}
    )  # fmt: skip
    summary = build_taskset(task, tmp_path / "stim.parquet")
    assert summary.per_class == {"a": 3, "b": 2}  # the 38.5 s trial ends after 40 s
    assert summary.recordings[0]["skipped"] == 1
    ts = load_taskset(summary.path)
    assert ts.n_samples == 1500 and ts.layout() == ["C3", "Cz", "C4"]
    assert np.allclose(ts.onsets, onsets[:5])
    table = pq.read_table(summary.path, columns=["start_seconds", "event"])
    assert np.allclose(table.column("start_seconds").to_numpy(), np.array(onsets[:5]) - 0.5)
    assert table.column("event").to_pylist() == ["1", "2", "1", "2", "1"]
