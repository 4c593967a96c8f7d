"""The authors' downstream protocols as task files (config/tasks/benchmarks/), each
built end to end -- task file -> build_taskset -> load_taskset -> split -- on files in
that dataset's real layout and naming: the real eegmmidb S001 runs for PhysioNet-MI,
small written files for Mental Arithmetic (EDF), FACED (pickles) and BrainTreebank
(HDF5).  Also: the restricted unpickler refuses a pickle that would run code."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path

import h5py
import mne
import numpy as np
import pytest
import yaml
from scipy import signal as sps

from diver.cli import main
from diver.finetune.arrays import UnsafePickleError, load_array_pickle
from diver.finetune.baselines import linear_baseline, stft_features
from diver.finetune.splits import make_folds
from diver.finetune.tasks import TaskError, load_task, task_from_dict
from diver.finetune.taskset import build_taskset, load_taskset
from diver.schemas import load_schema
from tests.conftest import REPO_ROOT
from tests.test_pretrain import (
    corpus,  # noqa: F401  (fixture that reference needs)
    reference,  # noqa: F401  (fixture: the debug model pretrained on the synthetic corpus)
)

BENCHMARKS = REPO_ROOT / "config" / "tasks" / "benchmarks"
RUNS = ("04", "06", "08", "10", "12", "14")


def _raw(name: str) -> dict:
    return yaml.safe_load((BENCHMARKS / f"{name}.yaml").read_text())


def _folds(ts, task):  # type: ignore[no-untyped-def]
    split = task.split
    return make_folds(
        ts.units(split.by), ts.units(split.val_unit), ts.labels, split, source=task.source
    )


def test_benchmark_files_carry_the_authors_choices_and_the_papers_numbers() -> None:
    tasks = {p.stem: load_task(p) for p in sorted(BENCHMARKS.glob("*.yaml"))}
    assert set(tasks) == {
        "physionet_mi", "mental_arithmetic", "faced_authors", "faced_diver", "neuroprobe_speech",
    }  # fmt: skip
    for name, task in tasks.items():
        assert task.name == name
    mi = tasks["physionet_mi"]
    assert mi.split.fixed and (mi.split.train, mi.split.val, mi.split.test) == (
        (0, 70), (70, 89), (89, 109),
    )  # fmt: skip
    assert mi.preprocessing.re_reference == "average" and mi.preprocessing.bandpass == (4.0, 40.0)
    assert mi.paper.metric == "balanced_accuracy" and mi.paper.mode == "full"
    assert mi.paper.results == {"DIVER-1": 0.676, "CBraMod": 0.642, "LaBraM": 0.617}
    ma = tasks["mental_arithmetic"]
    assert (ma.split.train, ma.split.val, ma.split.test) == ((0, 56), (56, 64), (64, None))
    assert ma.segment_length == 5.0 and len(ma.preprocessing.channels) == 19
    assert ma.paper.results == {}  # no number given in SPEC §5 or the authors' README
    authors, ours = tasks["faced_authors"], tasks["faced_diver"]
    assert authors.preprocessing.sfreq == 200 and authors.input.resample_clips_to == 6000
    assert ours.preprocessing.sfreq == 500 and ours.input.resample_clips_to == 15000
    codes = [authors.classes.index(c) for c in authors.label_sequence]
    assert codes == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7,
                     8, 8, 8]  # fmt: skip
    assert authors.paper.results == {"DIVER-1": 0.601}
    npb = tasks["neuroprobe_speech"]
    assert npb.preprocessing.laplacian and npb.preprocessing.notch == (60.0, 120.0, 180.0)
    assert npb.paper.metric == "auroc" and npb.paper.mode == "linear-probe"  # "frozen"
    assert npb.paper.results == {"DIVER-1": 0.676, "Linear": 0.660, "BrainBERT": 0.586,
                                 "PopT": 0.545}  # fmt: skip


def test_task_units_are_the_corpus_datasets() -> None:
    """preprocessing.units is the dataset's units setting (a $ref), and reaches the
    task's dataset settings."""
    task = load_schema("task")["properties"]["preprocessing"]["properties"]["units"]
    assert task["$ref"] == "config.schema.yaml#/$defs/dataset/properties/units"
    assert task_from_dict({**_raw("faced_diver")}).dataset(("x",)).units == "uV"


def test_fixed_split_by_sorted_index_ranges() -> None:
    """PhysioNet-MI's 109 subjects: 70 / 19 / 20 in sorted order, as the authors'."""
    task = load_task(BENCHMARKS / "physionet_mi.yaml")
    subjects = np.array([f"{s:03d}" for s in range(109, 0, -1) for _ in range(3)], dtype=object)
    labels = np.arange(len(subjects)) % 4
    (fold,) = make_folds(subjects, subjects, labels, task.split)
    parts = [sorted(set(subjects[getattr(fold, k)])) for k in ("train", "val", "test")]
    assert [len(p) for p in parts] == [70, 19, 20]
    assert parts[0][0] == "001" and parts[0][-1] == "070" and parts[1][0] == "071"
    assert parts[2] == [f"{s:03d}" for s in range(90, 110)]
    # Too few units for a range, overlapping names: errors that say so.
    with pytest.raises(TaskError, match=r"split.train \[0, 70\] reaches past the 3 subject"):
        make_folds(subjects[:9], subjects[:9], labels[:9], task.split)
    bad = task_from_dict(
        {**_raw("physionet_mi"), "split": {"by": "subject", "train": ["00*"], "val": ["001"],
                                           "test": ["1*"]}}, source="s.yaml",
    )  # fmt: skip
    with pytest.raises(TaskError, match=r"s.yaml: split.train and split.val share"):
        make_folds(subjects, subjects, labels, bad.split, source=bad.source)


def test_invalid_benchmark_keys_name_the_file_and_key() -> None:
    cases = [
        ({"split": {"train": [0, 70], "test": [70, 80]}}, "missing ['val']"),
        ({"split": {"train": [0, 70], "val": ["S0*"], "test": [80, 90]}}, "all names or all"),
        ({"split": {"train": [5, 2], "val": [5, 6], "test": [6, 7]}}, "split.train: range"),
        ({"preprocessing": {"bandpass": [40, 4]}}, "bandpass: low 40"),
        ({"preprocessing": {"reference": "average", "laplacian": True}}, "contradicts"),
        ({"events_from": "sequence"}, "label_sequence: events_from sequence needs"),
        ({"label_rules": [{"match": "R(04", "labels": {"T1": "a"}}]}, "not a regular expr"),
        ({"input": {"format": "faced_pickle"}}, "input.sfreq: format faced_pickle needs"),
        ({"input": {"resample_clips_to": 10}}, "input.resample_clips_to: only for"),
        ({"preprocessing": {"units": "kV"}}, "preprocessing.units: 'kV' is not one of"),
        ({"split": {"shuffle": False}}, "split.shuffle: false only orders k-fold"),
    ]
    for change, expected in cases:
        with pytest.raises(TaskError) as err:
            task_from_dict({**_raw("physionet_mi"), **change}, source="b.yaml")
        assert expected in str(err.value) and "b.yaml" in str(err.value), str(err.value)


# --------------------------------------------------------------- PhysioNet-MI (real)


@pytest.fixture(scope="module")
def physionet_layout(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real S001 runs in PhysioNet's layout (data/raw/eegmmidb/S001/S001Rrr.edf)."""
    root = tmp_path_factory.mktemp("physionet")
    folder = root / "data" / "raw" / "eegmmidb" / "S001"
    folder.mkdir(parents=True)
    for run in ("03", *RUNS):  # run 3 (executed movement) must not be read
        (folder / f"S001R{run}.edf").symlink_to(shared_data / "eegmmidb_S001" / f"S001R{run}.edf")
    return root


def test_physionet_mi_on_the_real_s001_runs(physionet_layout: Path, tmp_path: Path) -> None:
    task = load_task(BENCHMARKS / "physionet_mi.yaml")
    # The task file as shipped: its recordings resolve, but one subject cannot be
    # split 70 / 19 / 20 -- the split is checked against the units found.
    summary = build_taskset(task, tmp_path / "mi.parquet", base_dir=physionet_layout)
    ts = load_taskset(summary.path)
    with pytest.raises(TaskError, match=r"split.train \[0, 70\] reaches past the 1 subject"):
        _folds(ts, task)
    # T1 / T2 mean different movements in runs 4, 8, 12 and in runs 6, 10, 14.
    assert summary.per_class == {
        "left_fist": 23, "right_fist": 22, "both_fists": 21, "both_feet": 24,
    }  # fmt: skip
    assert Counter(ts.recordings.tolist()) == {f"S001R{r}": 15 for r in RUNS}
    pairs = Counter(zip(ts.recordings, ts.events, ts.labels.tolist(), strict=True))
    assert pairs[("S001R04", "T1", 0)] == 8 and pairs[("S001R04", "T2", 1)] == 7
    assert pairs[("S001R06", "T1", 2)] == 7 and pairs[("S001R06", "T2", 3)] == 8
    assert not {e for e in ts.events if e == "T0"}  # rest is not a class
    # 64 channels, 4 s at 500 Hz, average-referenced (channels sum to ~0 where nothing
    # was clipped at +-1).
    assert ts.n_samples == 2000 and ts.sfreq == 500.0
    assert {len(names) for names in ts.channel_names} == {64}
    signals = np.stack(ts.signals)
    unclipped = np.abs(signals).max(axis=(1, 2)) < 1.0
    assert unclipped.sum() >= 10
    assert np.abs(signals[unclipped].sum(axis=1)).max() < 1e-4
    assert np.abs(signals.sum(axis=1)).mean() < 0.05 * np.abs(signals).sum(axis=1).mean()
    # The 4-40 Hz band-pass: next to no power below 2 Hz.
    spectrum = np.abs(np.fft.rfft(signals[unclipped], axis=-1)) ** 2
    freqs = np.fft.rfftfreq(2000, 1 / 500)
    assert (
        spectrum[..., (freqs > 0) & (freqs < 2)].sum()
        < 0.01 * spectrum[..., (freqs > 6) & (freqs < 30)].sum()
    )
    # A one-subject split of its own (a test override): by run, fixed names.
    raw = _raw("physionet_mi")
    raw["split"] = {"by": "recording", "train": ["*R04", "*R06", "*R08", "*R10"],
                    "val": ["*R12"], "test": ["*R14"]}  # fmt: skip
    one = task_from_dict(raw, source="one-subject.yaml")
    (fold,) = _folds(ts, one)
    assert (len(fold.train), len(fold.val), len(fold.test)) == (60, 15, 15)
    assert set(ts.recordings[fold.test]) == {"S001R14"}


# ------------------------------------------------------------ Mental Arithmetic


MA_CHANNELS = ["Fp1", "Fp2", "F3", "F4", "F7", "F8", "T3", "T4", "C3", "C4", "T5", "T6",
               "P3", "P4", "O1", "O2", "Fz", "Cz", "Pz"]  # fmt: skip


def _write_eegmat(folder: Path, subjects: int, seconds: float) -> None:
    """EDFs named and laid out as PhysioNet's eegmat: SubjectNN_1/2.edf, 500 Hz, 19 'EEG
    X' scalp channels plus 'EEG A2-A1' and 'ECG ECG'."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"EEG {c}" for c in MA_CHANNELS] + ["EEG A2-A1", "ECG ECG"]
    types = ["eeg"] * 20 + ["ecg"]
    n = int(seconds * 500)
    for s in range(subjects):
        for part in (1, 2):
            data = rng.standard_normal((len(names), n)) * 15e-6
            info = mne.create_info(names, 500.0, types)
            raw = mne.io.RawArray(data, info, verbose="error")
            path = folder / f"Subject{s:02d}_{part}.edf"
            mne.export.export_raw(path, raw, fmt="edf", verbose="error")


def test_mental_arithmetic_labels_from_file_names_and_5s_segments(tmp_path: Path) -> None:
    root = tmp_path / "data" / "raw" / "eegmat"
    _write_eegmat(root, subjects=36, seconds=12.4)  # 72 files, two whole 5 s segments each
    task = load_task(BENCHMARKS / "mental_arithmetic.yaml")
    summary = build_taskset(task, tmp_path / "ma.parquet", base_dir=tmp_path)
    ts = load_taskset(summary.path)
    assert summary.per_class == {"rest": 72, "task": 72}
    assert ts.n_samples == 2500 and {len(n) for n in ts.channel_names} == {19}
    # diver's 10-05 names for the files' T3, T4, T5, T6, in the files' order.
    renamed = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
    assert ts.layout() == [renamed.get(c, c) for c in MA_CHANNELS]
    # Segments tile each file from its first sample; the 2.4 s remainder is dropped.
    assert Counter(ts.onsets.round(3).tolist()) == {0.0: 72, 5.0: 72}
    first = ts.recordings == "Subject00_1"
    assert set(ts.labels[first]) == {0} and set(ts.labels[ts.recordings == "Subject00_2"]) == {1}
    (fold,) = _folds(ts, task)
    sides = [sorted(set(ts.recordings[getattr(fold, k)])) for k in ("train", "val", "test")]
    assert [len(s) for s in sides] == [56, 8, 8]
    assert sides[0][-1] == "Subject27_2" and sides[1][0] == "Subject28_1"
    assert sides[2] == [f"Subject{s:02d}_{p}" for s in range(32, 36) for p in (1, 2)]
    # A file no label pattern matches is an error naming it.
    shutil.copy(root / "Subject00_1.edf", root / "Subject99_3.edf")
    with pytest.raises(TaskError, match=r"Subject99_3.edf: its file name matches none"):
        build_taskset(task, tmp_path / "bad.parquet", base_dir=tmp_path)


# ------------------------------------------------------------------------ FACED


FACED_SFREQ = 250.0


def _faced_subject(seed: int) -> np.ndarray:
    """28 clips x 32 channels x 7500 samples (30 s at 250 Hz), µV: a 10 Hz rhythm whose
    amplitude codes the clip, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(7500) / FACED_SFREQ
    clips = 5.0 + np.arange(28)[:, None, None]
    return clips * np.sin(2 * np.pi * 10 * t) + rng.standard_normal((28, 32, 7500)) * 2.0


@pytest.fixture(scope="module")
def faced_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faced")
    folder = root / "data" / "raw" / "faced"
    folder.mkdir(parents=True)
    for s in range(3):
        with (folder / f"sub{s:03d}.pkl").open("wb") as f:
            pickle.dump(_faced_subject(s), f)
    return root


def _faced(name: str) -> object:
    raw = _raw(name)
    raw["split"] = {"by": "subject", "train": ["000"], "val": ["001"], "test": ["002"]}
    return task_from_dict(raw, source=f"{name}.yaml (3 subjects)")


@pytest.mark.parametrize(("name", "sfreq"), [("faced_authors", 200.0), ("faced_diver", 500.0)])
def test_faced_both_protocols(faced_root: Path, tmp_path: Path, name: str, sfreq: float) -> None:
    task = _faced(name)
    summary = build_taskset(task, tmp_path / f"{name}.parquet", base_dir=faced_root)  # type: ignore[arg-type]
    ts = load_taskset(summary.path)
    assert len(ts) == 3 * 28 * 3  # three 10 s pieces of each of 28 clips per subject
    assert summary.per_class["neutral"] == 3 * 4 * 3 and summary.per_class["anger"] == 27
    assert ts.sfreq == sfreq and ts.n_samples == round(10 * sfreq)
    assert {len(n) for n in ts.channel_names} == {32}
    sub = ts.recordings == "sub000"
    clip_of = np.array([int(e.split("#")[1]) for e in ts.events])
    assert Counter(clip_of[sub].tolist()) == {k: 3 for k in range(28)}
    codes = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8]
    assert (ts.labels == np.array(codes)[clip_of]).all()
    (fold,) = _folds(ts, task)
    assert [len(getattr(fold, k)) for k in ("train", "val", "test")] == [84, 84, 84]
    # Each clip FFT-resampled on its own (at 200 Hz the authors' numbers exactly), cut
    # in three (µV / 100, SPEC §1's EEG scale; nothing here reaches the +-1 clip).
    array = _faced_subject(0)
    n = round(10 * sfreq)
    for clip, piece in ((0, 0), (13, 2), (27, 1)):
        expected = sps.resample(array[clip], 3 * n, axis=1)[:, n * piece : n * (piece + 1)]
        k = np.flatnonzero(sub & (clip_of == clip))[piece]
        assert np.allclose(ts.signals[k], expected / 100.0, atol=1e-5)


def test_faced_authors_protocol_finetunes_at_its_own_rate(
    faced_root: Path,
    reference: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The authors' FACED trials are 2,000 samples at 200 Hz: fine-tuning sizes the EEG
    recipe's MLP head for 10 s trials and reads the Linear baseline's STFT at 200 Hz
    (at diver's 500 Hz the same samples would be a 4 s trial)."""
    raw = _raw("faced_authors")
    raw["split"] = {"by": "subject", "train": ["000"], "val": ["001"], "test": ["002"]}
    task = tmp_path / "faced_authors.yaml"
    task.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(faced_root)  # the task's recordings are relative to the root
    out = tmp_path / "ft"
    code = main(
        ["finetune", "--task", str(task), "--pretrained", str(reference / "model.pt"),
         "--mode", "linear-probe", "--epochs", "1", "--seeds", "0", "--baselines", "linear",
         "--threads", "1", "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sfreq"] == 200.0 and metrics["trial_seconds"] == 10.0
    assert metrics["patches"] == 4 and metrics["n_trials"] == 3 * 28 * 3
    assert set(metrics["models"]) == {"diver", "linear"}


def test_faced_numbers_read_as_volts_are_refused_under_auto(
    faced_root: Path, tmp_path: Path
) -> None:
    """FACED's µV arrays have no header: under units auto they read as volts, an
    amplitude no EEG has; the error names the file and the setting to change."""
    raw = _raw("faced_diver")
    raw["preprocessing"] = {**raw["preprocessing"], "units": "auto"}
    task = task_from_dict(raw, source="faced-auto.yaml")
    with pytest.raises(TaskError) as err:
        build_taskset(task, tmp_path / "x.parquet", base_dir=faced_root)
    message = str(err.value)
    assert "sub000.pkl" in message and "implausible amplitude" in message
    assert "set task file faced-auto.yaml: preprocessing.units to uV" in message


class _Payload:
    def __init__(self, call: object, arg: str) -> None:
        self.call, self.arg = call, arg

    def __reduce__(self) -> tuple:
        return (self.call, (self.arg,))


def test_pickles_that_would_run_code_are_refused(faced_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = {
        "system.pkl": _Payload(os.system, f"touch {marker}"),
        "eval.pkl": _Payload(eval, f"open({str(marker)!r}, 'w').write('x')"),
    }
    for name, payload in evil.items():
        path = tmp_path / name
        path.write_bytes(pickle.dumps(payload))
        with pytest.raises(UnsafePickleError) as err:
            load_array_pickle(path)
        assert str(path) in str(err.value) and "refused global" in str(err.value)
        assert ("posix.system" in str(err.value)) or ("builtins.eval" in str(err.value))
        assert not marker.exists()
    # A plain array loads; a pickled dict of arrays is not an array.
    good = tmp_path / "ok.pkl"
    good.write_bytes(pickle.dumps(np.arange(6.0).reshape(2, 3)))
    assert load_array_pickle(good).shape == (2, 3)
    other = tmp_path / "dict.pkl"
    other.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(TaskError, match="holds a dict, not an array"):
        load_array_pickle(other)
    # Through a task: the doctored file among the subjects stops the build, named.
    folder = tmp_path / "data" / "raw" / "faced"
    folder.mkdir(parents=True)
    (folder / "sub000.pkl").symlink_to(faced_root / "data" / "raw" / "faced" / "sub000.pkl")
    (folder / "sub001.pkl").write_bytes(pickle.dumps(evil["system.pkl"]))
    with pytest.raises(UnsafePickleError, match=r"sub001.pkl: unsafe pickle, not loaded"):
        build_taskset(_faced("faced_diver"), tmp_path / "x.parquet", base_dir=tmp_path)  # type: ignore[arg-type]
    assert not marker.exists() and not (tmp_path / "x.parquet").exists()


# ------------------------------------------------------- Neuroprobe (BrainTreebank)


BTB_LABELS = ["T1b1", "T1b2", "T1b3", "T1b4", "F3aOFa2*", "F3aOFa3", "F3aOFa4", "F3aOFa5",
              "DC10", "O1aIb7"]  # fmt: skip


@pytest.fixture(scope="module")
def braintreebank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BrainTreebank root: sub_1_trial001.h5 (data/electrode_i at 2048 Hz), electrode
    labels, corrupted electrodes, MNI coordinates, and an exported Neuroprobe events
    table (speech windows carry a 40 Hz local rhythm)."""
    root = tmp_path_factory.mktemp("btb")
    folder = root / "data" / "raw" / "braintreebank"
    (folder / "electrode_labels" / "sub_1").mkdir(parents=True)
    (folder / "localization").mkdir()
    (folder / "neuroprobe_events" / "speech").mkdir(parents=True)
    sfreq, seconds = 2048, 64
    t = np.arange(sfreq * seconds) / sfreq
    rng = np.random.default_rng(1)
    common = 300.0 * np.sin(2 * np.pi * 3 * t)  # shared by every contact (a reference)
    data = common + rng.standard_normal((len(BTB_LABELS), len(t))) * 10.0
    onsets = np.arange(1.0, seconds - 2, 1.5)
    speech = np.arange(len(onsets)) % 2 == 1
    for onset in onsets[speech]:
        span = (t >= onset) & (t < onset + 1)
        data[2, span] += 40.0 * np.sin(2 * np.pi * 40 * t[span])  # T1b3 only
    with h5py.File(folder / "sub_1_trial001.h5", "w") as f:
        group = f.create_group("data")
        for i, row in enumerate(data):
            group.create_dataset(f"electrode_{i}", data=row.astype(np.float32))
    labels = folder / "electrode_labels" / "sub_1" / "electrode_labels.json"
    labels.write_text(json.dumps(BTB_LABELS))
    (folder / "corrupted_elec.json").write_text(json.dumps({"sub_1": ["O1aIb7"], "sub_2": []}))
    rows = ["Subject,Electrode,X,Y,Z"] + [
        f"sub_1,{name},{-30 - i},{10 + 2 * i},{5 + i}" for i, name in enumerate(BTB_LABELS)
    ]
    (folder / "localization" / "elec_coords_full.csv").write_text("\n".join(rows) + "\n")
    events = ["onset,label"] + [f"{o:.3f},{int(s)}" for o, s in zip(onsets, speech, strict=True)]
    (folder / "neuroprobe_events" / "speech" / "sub_1_trial001.csv").write_text(
        "\n".join(events) + "\n"
    )
    return root


def test_neuroprobe_laplacian_task_set_and_linear_baseline(
    braintreebank: Path, tmp_path: Path
) -> None:
    task = load_task(BENCHMARKS / "neuroprobe_speech.yaml")
    summary = build_taskset(task, tmp_path / "np.parquet", base_dir=braintreebank)
    ts = load_taskset(summary.path)
    n_events = len(np.arange(1.0, 62, 1.5))
    assert len(ts) == n_events and summary.per_class == {
        "non_speech": (n_events + 1) // 2, "speech": n_events // 2,
    }  # fmt: skip
    # The corrupted contact and the DC trigger input are gone; '*' is cleaned off.
    assert ts.layout() == ["T1b1", "T1b2", "T1b3", "T1b4", "F3aOFa2", "F3aOFa3", "F3aOFa4",
                           "F3aOFa5"]  # fmt: skip
    assert set(ts.subjects) == {"1"} and ts.n_samples == 500 and ts.sfreq == 500.0
    assert np.allclose(ts.coords[0][0], [-30, 10, 5])  # MNI mm from the coordinates file
    # The Laplacian removed the 300 µV rhythm every contact shares: what is left is
    # the 10 µV noise (1/200 µV scale: ~0.05 per unit), never clipped.
    signals = np.stack(ts.signals)
    assert np.abs(signals).max() < 1.0
    assert float(signals[:, [1, 5, 6]].std()) < 0.15
    # Two folds over trials, the Linear baseline (Laplacian STFT) finds the rhythm.
    # Neuroprobe's unshuffled 2-fold: the first half of the session's windows in time
    # order, then the second, each the test set once.
    folds = _folds(ts, task)
    assert len(folds) == 2
    order = np.argsort(ts.onsets)
    half = (len(ts) + 1) // 2
    assert sorted(folds[0].test) == sorted(order[:half])
    assert sorted(folds[1].test) == sorted(order[half:])
    fold = folds[0]
    assert len(fold.test) + len(fold.train) + len(fold.val) == len(ts)
    assert len(fold.val) == round(0.1 * (len(ts) - half))
    result = linear_baseline(
        stft_features(signals, sfreq=ts.sfreq), ts.labels, fold.train, fold.val, fold.test,
        2, "auroc",
    )  # fmt: skip
    predicted = result.proba.argmax(axis=1)
    assert (predicted == ts.labels[fold.test]).mean() > 0.9
    # The events table is part of the task set: editing it means a rebuild.
    again = build_taskset(task, summary.path, base_dir=braintreebank)
    assert not again.built
    table = braintreebank / "data/raw/braintreebank/neuroprobe_events/speech/sub_1_trial001.csv"
    rows = table.read_text().splitlines()
    table.write_text("\n".join(rows[:-2]) + "\n")
    assert build_taskset(task, summary.path, base_dir=braintreebank).trials == n_events - 2
