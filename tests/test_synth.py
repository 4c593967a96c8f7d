"""The synthetic corpus: real files, read back with MNE, with the properties promised.

One corpus (0.5 h, seed 0) is written per module and checked as the corpus stage
will see it: through ``mne.io.read_raw`` and the BIDS sidecars, never through the
generator's arrays.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import mne
import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt, welch

from diver.atomic import replacing
from diver.corpus.synth.corpus import SynthSummary, plan_synthetic_corpus, write_synthetic_corpus
from diver.corpus.synth.subjects import (
    BRAIN_AXES_MM,
    BRAIN_CENTRE_MM,
    EEG_RAIL_UV,
    EEG_RATES,
    IEEG_RAIL_UV,
    IEEG_RATES,
    MANIFEST_NAME,
    MAX_SECONDS,
    SynthRecording,
)

HOURS, SEED = 0.5, 0
SUBJECT_PATTERN = re.compile(r"sub-(\d+)_")
OLD_TO_NEW = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> SynthSummary:
    return write_synthetic_corpus(tmp_path_factory.mktemp("synth"), hours=HOURS, seed=SEED)


@pytest.fixture(scope="module")
def signals(corpus: SynthSummary) -> dict[str, tuple[mne.io.BaseRaw, np.ndarray]]:
    """Every recording read back with MNE, data in µV."""
    out = {}
    for item in corpus.items:
        raw = mne.io.read_raw(corpus.root / item.path, preload=True, verbose="error")
        out[item.path] = (raw, raw.get_data() * 1e6)
    return out


def _canonical(label: str) -> str:
    """10-20 name of a scalp label however it is spelled (``EEG T3-REF``, ``Cz..``)."""
    name = label.upper().removeprefix("EEG ").removesuffix("-REF").rstrip(".")
    return OLD_TO_NEW.get(name, name)


def _clean(corpus: SynthSummary, modality: str) -> list[SynthRecording]:
    return [r for r in corpus.items if r.modality == modality and r.is_clean]


def _faulty(corpus: SynthSummary, kind: str) -> list[SynthRecording]:
    return [r for r in corpus.items if kind in dict(r.faults)]


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


# --------------------------------------------------------------------------- plan


def test_plan_matches_hours_and_keeps_faults_a_minority() -> None:
    for hours, seed in [(1.0, 3), (3.0, 4), (20.0, 5)] + [(0.05, s) for s in range(8)]:
        plan = plan_synthetic_corpus(hours=hours, seed=seed)
        for modality in ("eeg", "ieeg"):
            items = [r for r in plan if r.modality == modality]
            seconds = sum(r.duration_s for r in items)
            if hours >= 1.0:  # within one recording of the share of the hours
                assert abs(seconds - hours * 3600 / 2) <= MAX_SECONDS, (hours, modality)
            else:  # tiny requests round up to the smallest corpus
                assert sum(r.is_clean for r in items) >= 3
            faulty = [r for r in items if not r.is_clean]
            assert len(faulty) == 2  # the channel-fault recording, low-rate or short
            assert len(faulty) < len(items) / 2
        assert plan == plan_synthetic_corpus(hours=hours, seed=seed)
    assert plan_synthetic_corpus(hours=2.0, seed=1) != plan_synthetic_corpus(hours=2.0, seed=2)


@pytest.mark.parametrize(("hours", "seed"), [(0.0, 0), (-1.0, 0), (float("nan"), 0), (1.0, -1)])
def test_invalid_arguments_are_refused(tmp_path: Path, hours: float, seed: int) -> None:
    with pytest.raises(ValueError):
        write_synthetic_corpus(tmp_path, hours=hours, seed=seed)
    assert not any(tmp_path.iterdir())


# --------------------------------------------------------------------------- layout


def test_layout_and_subject_names(corpus: SynthSummary) -> None:
    root = corpus.root
    assert sorted(p.name for p in root.iterdir()) == ["eeg", "ieeg", MANIFEST_NAME]
    eeg = sorted(p.name for p in (root / "eeg").iterdir())
    assert eeg and all(re.fullmatch(r"sub-\d\d_run-\d\d(\.edf|_eeg\.fif)", n) for n in eeg)
    # Every third scalp recording is FIF, the rest EDF.
    assert [n.endswith(".fif") for n in eeg] == [i % 3 == 2 for i in range(len(eeg))]
    ieeg = sorted(p.relative_to(root / "ieeg").as_posix() for p in (root / "ieeg").rglob("*.edf"))
    assert ieeg and all(
        re.fullmatch(r"sub-(\d\d)/ieeg/sub-\1_task-rest_run-\d\d_ieeg\.edf", p) for p in ieeg
    )
    assert sorted(corpus.paths) == sorted(
        [root / "eeg" / n for n in eeg] + [root / "ieeg" / p for p in ieeg]
    )
    assert corpus.recordings == len(corpus.paths) == len(corpus.items)
    # The subject pattern of the default config recovers each recording's subject.
    for item in corpus.items:
        match = SUBJECT_PATTERN.search(Path(item.path).name)
        assert match is not None and match.group(1) == item.subject
    subjects = {(r.modality, r.subject) for r in corpus.items}
    assert corpus.subjects == len(subjects)
    assert {m for m, _ in subjects} == {"eeg", "ieeg"}
    assert sum(m == "eeg" for m, _ in subjects) >= 3
    for modality in ("eeg", "ieeg"):
        seconds = sum(r.duration_s for r in corpus.items if r.modality == modality)
        assert corpus.hours[modality] == pytest.approx(seconds / 3600)
        assert seconds >= HOURS * 3600 / 2 - MAX_SECONDS
    manifest = json.loads(corpus.manifest.read_text(encoding="utf-8"))
    assert manifest["seed"] == SEED and len(manifest["recordings"]) == corpus.recordings
    assert all((root / f).is_file() for f in manifest["files"])


def test_files_read_back_with_intended_rates_and_channels(
    corpus: SynthSummary, signals: dict[str, tuple[mne.io.BaseRaw, np.ndarray]]
) -> None:
    spellings = set()
    for item in corpus.items:
        raw, _ = signals[item.path]
        assert raw.ch_names == list(item.channels)
        assert raw.info["sfreq"] == item.sfreq
        assert raw.n_times == round(item.duration_s * item.sfreq)
        if "low_rate" not in dict(item.faults):
            assert item.sfreq in (EEG_RATES if item.modality == "eeg" else IEEG_RATES)
        if item.modality == "eeg":
            scalp = [_canonical(c) for c in item.channels[:-2]]
            assert len(scalp) == 20 and {"FP1", "CZ", "O1", "O2", "C3", "C4", "T7"} <= set(scalp)
            ecg, eog = item.channels[-2:]
            assert re.search("ECG|EKG", ecg) and "EOG" in eog
            spellings.add(item.channels[0])
    # Channel names are spelled differently across subjects (``EEG Fp1-REF``, ``Fp1.``...).
    assert len(spellings) >= 3
    eeg_rates = {r.sfreq for r in _clean(corpus, "eeg")}
    assert len(eeg_rates) >= 2


def test_realistic_amplitudes(signals: dict, corpus: SynthSummary) -> None:
    for modality, (low, high) in (("eeg", (5.0, 50.0)), ("ieeg", (40.0, 300.0))):
        for item in _clean(corpus, modality):
            _, data = signals[item.path]
            n_aux = 2 if modality == "eeg" else 1  # ECG (+ EOG) come last
            median = float(np.median(data[:-n_aux].std(axis=1)))
            assert low < median < high, (item.path, median)


def test_alpha_is_occipital_and_mains_is_at_60_hz(signals: dict, corpus: SynthSummary) -> None:
    for item in _clean(corpus, "eeg"):
        _, data = signals[item.path]
        freqs, psd = welch(data, fs=item.sfreq, nperseg=int(4 * item.sfreq))
        by_name = {_canonical(c): i for i, c in enumerate(item.channels)}
        alpha = (freqs >= 8) & (freqs <= 12)
        flanks = ((freqs >= 5) & (freqs < 7)) | ((freqs > 14) & (freqs <= 16))
        ratio = {
            c: psd[by_name[c], alpha].mean() / psd[by_name[c], flanks].mean()
            for c in ("O1", "O2", "FZ", "FP1")
        }
        assert min(ratio["O1"], ratio["O2"]) > 5.0, (item.path, ratio)
        assert ratio["O1"] > 5 * ratio["FZ"], (item.path, ratio)
        search = (freqs > 3) & (freqs < 30)
        assert 8.0 <= freqs[search][np.argmax(psd[by_name["O1"], search])] <= 12.0
    for item in _clean(corpus, "eeg") + _clean(corpus, "ieeg"):
        _, data = signals[item.path]
        freqs, psd = welch(data, fs=item.sfreq, nperseg=int(4 * item.sfreq))
        harmonics = (60.0, 120.0) if item.modality == "ieeg" else (60.0,)
        for line in harmonics:
            peak = psd[:, np.argmin(np.abs(freqs - line))]
            floor = np.median(psd[:, (freqs >= line - 8) & (freqs <= line - 3)], axis=1)
            assert np.median(peak / floor) > 10.0, (item.path, line)


# --------------------------------------------------------------------------- faults


def test_planted_faults_are_in_the_files(signals: dict, corpus: SynthSummary) -> None:
    assert set(corpus.faults) == {"flat_channel", "clipping", "dropout", "low_rate", "short"}
    assert 0 < sum(not r.is_clean for r in corpus.items) < corpus.recordings / 2

    for item in _faulty(corpus, "flat_channel"):
        raw, data = signals[item.path]
        flat = raw.ch_names.index(dict(item.faults)["flat_channel"])
        others = np.delete(data, flat, axis=0)
        assert np.all(others.std(axis=1) > 1.0)
        alive = np.any(others != 0, axis=0)  # outside a dropout, if any
        assert np.ptp(data[flat, alive]) < 1e-6

    for item in _faulty(corpus, "clipping"):
        raw, data = signals[item.path]
        row = data[raw.ch_names.index(dict(item.faults)["clipping"])]
        rail, scale = (EEG_RAIL_UV, 100.0) if item.modality == "eeg" else (IEEG_RAIL_UV, 200.0)
        assert np.abs(row).max() == pytest.approx(rail, rel=1e-6)  # saturated at the rail
        window = round(30 * item.sfreq)
        clipped = [
            np.mean(np.abs(row[a : a + window]) > scale)
            for a in range(0, len(row) - window + 1, window)
        ]
        assert max(clipped) > 0.0333  # the QA/QC rule drops it from some window
        assert min(clipped) < 0.0333  # ... but not from every window

    (dropout,) = _faulty(corpus, "dropout")
    _, data = signals[dropout.path]
    window = round(30 * dropout.sfreq)
    dead = [np.all(data[:, a : a + window] == 0) for a in range(0, data.shape[1], window)]
    assert any(dead) and not all(dead)

    (low,) = _faulty(corpus, "low_rate")
    assert signals[low.path][0].info["sfreq"] < 100
    (short,) = _faulty(corpus, "short")
    raw, _ = signals[short.path]
    assert raw.n_times / raw.info["sfreq"] < 30


# --------------------------------------------------------------------------- sidecars


def test_bids_sidecars_agree_with_the_edf_files(signals: dict, corpus: SynthSummary) -> None:
    root = corpus.root / "ieeg"
    assert json.loads((root / "dataset_description.json").read_text())["BIDSVersion"]
    kinds = set()
    for item in (r for r in corpus.items if r.modality == "ieeg"):
        raw, _ = signals[item.path]
        folder = (corpus.root / item.path).parent
        stem = f"sub-{item.subject}"
        channels = _read_tsv(folder / Path(item.path).name.replace("_ieeg.edf", "_channels.tsv"))
        assert [c["name"] for c in channels] == raw.ch_names
        assert {c["type"] for c in channels} <= {"SEEG", "ECOG", "ECG"}
        assert all(float(c["sampling_frequency"]) == raw.info["sfreq"] for c in channels)
        assert {c["status"] for c in channels} <= {"good", "bad"}
        flat = dict(item.faults).get("flat_channel")
        assert [c["name"] for c in channels if c["status"] == "bad"] == ([flat] if flat else [])

        electrodes = _read_tsv(folder / f"{stem}_electrodes.tsv")
        contacts = [c["name"] for c in channels if c["type"] != "ECG"]
        assert [e["name"] for e in electrodes] == contacts
        xyz = np.array([[float(e[k]) for k in "xyz"] for e in electrodes])
        inside = (((xyz - BRAIN_CENTRE_MM) / BRAIN_AXES_MM) ** 2).sum(axis=1)
        assert np.all(inside < 1.0)
        assert np.all(np.abs(xyz[:, 0]) < 75) and np.all(np.abs(xyz[:, 0]) > 10)
        types = {e["type"] for e in electrodes}
        assert types in ({"depth"}, {"grid", "strip"})
        assert (types == {"depth"}) == ({c["type"] for c in channels} == {"SEEG", "ECG"})
        kinds.add(frozenset(types))
        if types == {"depth"}:
            assert re.fullmatch(r"[LR][A-Z]\d", contacts[0])
        else:
            assert {f"G{k}" for k in range(1, 17)} | {f"S{k}" for k in range(1, 7)} == set(contacts)
        assert all(float(e["size"]) > 0 for e in electrodes)
        coords = json.loads((folder / f"{stem}_coordsystem.json").read_text())
        assert coords["iEEGCoordinateSystem"] == "MNI152NLin2009aSym"
        assert coords["iEEGCoordinateUnits"] == "mm"
    assert len(kinds) == 2  # both sEEG and ECoG subjects


# --------------------------------------------------------------------------- labels


def test_events_have_both_classes(signals: dict, corpus: SynthSummary) -> None:
    for item in corpus.items:
        raw, _ = signals[item.path]
        ann = raw.annotations
        assert len(ann) >= 1 and set(ann.description) <= {"left", "right"}
        assert np.allclose(ann.duration, 4.0)
        assert np.all(ann.onset + ann.duration <= item.duration_s)
        if item.duration_s >= 60:
            counts = [int(np.sum(ann.description == c)) for c in ("left", "right")]
            assert min(counts) >= 2 and abs(counts[0] - counts[1]) <= 1
            assert np.all(np.diff(np.sort(ann.onset)) >= 8.9)


@pytest.mark.parametrize("modality", ["eeg", "ieeg"])
def test_class_effect_on_the_responsive_channels(
    signals: dict, corpus: SynthSummary, modality: str
) -> None:
    """Band power of the responsive channels separates ``left`` from ``right`` trials."""
    index = {"left": [], "right": []}
    for item in _clean(corpus, modality):
        raw, data = signals[item.path]
        band = (8.0, 13.0) if modality == "eeg" else (70.0, 110.0)
        sos = butter(4, band, btype="bandpass", fs=item.sfreq, output="sos")
        left = [raw.ch_names.index(c) for c in item.left_channels]
        right = [raw.ch_names.index(c) for c in item.right_channels]
        filtered = sosfiltfilt(sos, data[left + right], axis=1)
        for onset, label in zip(raw.annotations.onset, raw.annotations.description, strict=True):
            a = round(onset * item.sfreq)
            power = np.log(np.mean(filtered[:, a : a + round(4 * item.sfreq)] ** 2, axis=1))
            index[label].append(power[: len(left)].mean() - power[len(left) :].mean())
    left_trials, right_trials = np.array(index["left"]), np.array(index["right"])
    assert len(left_trials) >= 10 and len(right_trials) >= 10
    # Mu desynchronises on ``left_channels`` in left trials; high gamma rises there.
    sign = -1.0 if modality == "eeg" else 1.0
    auc = np.mean(sign * left_trials[:, None] > sign * right_trials[None, :])
    assert auc > 0.9, auc


# --------------------------------------------------------------------------- determinism


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_deterministic_bytes_and_stale_files_removed(corpus: SynthSummary, tmp_path: Path) -> None:
    reference = _tree(corpus.root)
    other = write_synthetic_corpus(tmp_path, hours=HOURS, seed=SEED + 1)
    changed = _tree(tmp_path)
    assert any(reference.get(k) != v for k, v in changed.items())
    assert other.items != corpus.items
    # Rewriting the same directory with the reference settings (in parallel this time)
    # gives the reference bytes, and removes what the other seed wrote.
    again = write_synthetic_corpus(tmp_path, hours=HOURS, seed=SEED, jobs=2)
    assert _tree(tmp_path) == reference
    assert again.items == corpus.items
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eeg", "ieeg", MANIFEST_NAME]


def test_a_failed_write_leaves_no_temporary_in_the_dataset_folder(tmp_path: Path) -> None:
    """The synthetic tree's temporaries live in a folder of their own (diver.atomic's
    ``directory``): a write that fails leaves neither the target nor a leftover that a
    recording glob of the corpus stage could match."""
    target, scratch = tmp_path / "eeg" / "sub-01_run-01.edf", tmp_path / ".synth-tmp"
    scratch.mkdir()
    with pytest.raises(RuntimeError), replacing(target, directory=scratch) as tmp:
        assert tmp.parent == scratch
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert not target.exists() and list(scratch.iterdir()) == []
    with replacing(target, directory=scratch, suffix=f"-{target.name}") as tmp:
        assert tmp.name.endswith(target.name)
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert list(scratch.iterdir()) == [] and list(target.parent.iterdir()) == [target]
