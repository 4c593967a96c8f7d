"""HBN (Healthy Brain Network) recordings through the corpus, end to end.

HBN records with an EGI HydroCel GSN 128 net at 500 Hz: electrodes ``E1..E128`` plus
the vertex reference, which the BIDS release's EEGLAB files call ``Cz`` and MNE's MFF
reader calls ``VREF``.  Two small recordings are written here:

* a BIDS tree ``sub-NDARAB123XYZ/eeg/..._task-RestingState_eeg.set`` (+ ``.fdt``) with
  its ``channels.tsv``, ``eeg.json`` and ``dataset_description.json``.  The ``.set``
  is the MATLAB struct MNE's EEGLAB reader expects, written with scipy (``eeglabio``,
  which ``mne.export`` needs for EEGLAB, is not a dependency); its ``Cz`` carries
  signal, as after re-referencing, so all 129 channels are kept;
* an ``.mff`` folder, written with mffpy as in ``tests/test_egi.py`` but with the
  HydroCel GSN 128 layout; its reference is all zeros, as recorded, and is dropped
  as flat.

Both go through :func:`diver.corpus.build.build_corpus` with HBN's settings -- the
shipped preset ``config/datasets/hbn.yaml`` loaded through :mod:`diver.config` when
it exists, else :func:`hbn_dataset` -- and the tests check typing, names, GSN
positions, subjects, rate, windows and amplitudes.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import mffpy
import mne
import numpy as np
import pytest
import scipy.io

from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.build import build_corpus
from tests.scalp_corpus import (
    amplitudes_uv,
    preset_dataset,
    read_tables,
    read_windows,
    rhythm_amplitude,
    rhythm_uv,
    settings_of,
)

SFREQ = 500.0
SECONDS = 65.0  # two 30 s windows
MONTAGE = "GSN-HydroCel-129"
FRAME = "mne_GSN-HydroCel-129"
GSN_NAMES = [f"E{i}" for i in range(1, 129)] + ["Cz"]
BIDS_SUBJECT = "NDARAB123XYZ"
MFF_SUBJECT = "NDARCD456UVW"
BIDS_STEM = f"sub-{BIDS_SUBJECT}_task-RestingState"
BIDS_RECORDING = f"sub-{BIDS_SUBJECT}/eeg/{BIDS_STEM}_eeg"
MFF_RECORDING = f"{MFF_SUBJECT}/EEG/raw/mff/RestingState"


def hbn_dataset(inputs: tuple[str, ...]) -> DatasetConfig:
    """HBN's dataset settings (what a preset for it should hold).

    Subjects: from BIDS names in the BIDS release; the original release's folders are
    named by NDAR GUID (``NDARAB123XYZ/EEG/raw/...``), hence the pattern.
    """
    return DatasetConfig(
        name="hbn",
        inputs=inputs,
        modality="eeg",
        line_freq=60.0,
        highpass=0.3,
        montage=MONTAGE,
        subject_pattern=r"(NDAR[A-Z0-9]{8})",
    )


def write_eeglab_set(path: Path, names: list[str], data_uv: np.ndarray, sfreq: float) -> Path:
    """An EEGLAB dataset: the ``EEG`` struct in ``path`` (.set), float32 samples in .fdt.

    EEGLAB keeps ``EEG.data`` as an (nbchan, pnts) single-precision MATLAB matrix; in
    a separate ``.fdt`` it is that matrix column-major, i.e. sample by sample.  Values
    are in µV, as EEGLAB stores them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fdt = path.with_suffix(".fdt")
    np.ascontiguousarray(data_uv.T, dtype="<f4").tofile(fdt)
    chanlocs = np.array([(n, "EEG") for n in names], dtype=[("labels", "O"), ("type", "O")])
    n_times = data_uv.shape[1]
    eeg = {
        "setname": path.stem,
        "filename": path.name,
        "filepath": "",
        "nbchan": float(len(names)),
        "trials": 1.0,
        "pnts": float(n_times),
        "srate": float(sfreq),
        "xmin": 0.0,
        "xmax": (n_times - 1) / sfreq,
        "times": np.array([]),
        "data": fdt.name,
        "chanlocs": chanlocs,
        "event": np.array([]),
        "ref": "Cz",
        "icawinv": np.array([]),
        "icasphere": np.array([]),
        "icaweights": np.array([]),
        "icaact": np.array([]),
    }
    scipy.io.savemat(path, {"EEG": eeg}, appendmat=False, oned_as="row")
    return path


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def write_bids(root: Path, data_uv: np.ndarray) -> Path:
    """The BIDS release's layout for one resting-state run."""
    eeg_dir = root / f"sub-{BIDS_SUBJECT}" / "eeg"
    eeg_dir.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "HBN (test)", "BIDSVersion": "1.8.0", "DatasetType": "raw"})
    )
    write_tsv(root / "participants.tsv", ["participant_id"], [[f"sub-{BIDS_SUBJECT}"]])
    write_tsv(
        eeg_dir / f"{BIDS_STEM}_channels.tsv",
        ["name", "type", "units", "status"],
        [[n, "EEG", "uV", "good"] for n in GSN_NAMES],
    )
    (eeg_dir / f"{BIDS_STEM}_eeg.json").write_text(
        json.dumps(
            {
                "TaskName": "RestingState",
                "SamplingFrequency": SFREQ,
                "PowerLineFrequency": 60,
                "EEGReference": "Cz",
                "EEGChannelCount": 129,
                "CapManufacturer": "EGI",
                "CapManufacturersModelName": "HydroCel GSN 128",
                "SoftwareFilters": "n/a",
                "RecordingDuration": SECONDS,
            }
        )
    )
    return write_eeglab_set(eeg_dir / f"{BIDS_STEM}_eeg.set", GSN_NAMES, data_uv, SFREQ)


def write_mff(path: Path, data_uv: np.ndarray) -> Path:
    """A continuous HydroCel GSN 128 MFF (E1..E128 + the vertex reference), in µV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = mffpy.Writer(str(path))
    writer.addxml("fileInfo", recordTime=datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.UTC))
    writer.add_coordinates_and_sensor_layout("HydroCel GSN 128 1.0")
    block = mffpy.bin_writer.BinWriter(int(SFREQ))
    block.add_block(data_uv.astype(np.float32), offset_us=0)
    writer.addbin(block)
    writer.write()
    return path


def gsn_mm() -> np.ndarray:
    positions = mne.channels.make_standard_montage(MONTAGE).get_positions()["ch_pos"]
    return np.array([positions[n] for n in GSN_NAMES]) * 1000.0


@pytest.fixture(scope="module")
def hbn(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("hbn")
    set_data = rhythm_uv(129, SFREQ, SECONDS, seed=1)
    mff_data = rhythm_uv(129, SFREQ, SECONDS, seed=2)
    mff_data[128] = 0.0  # the vertex reference, as recorded against itself
    set_path = write_bids(root / "bids", set_data)
    mff_path = write_mff(root / "release" / f"{MFF_RECORDING}.mff", mff_data)
    out = root / "out"
    inputs = (root / "bids", root / "release")
    dataset = preset_dataset("hbn", "hbn", inputs)
    build_corpus([dataset], CorpusConfig(), out, progress=False)
    return {"out": out, "set": set_path, "set_data": set_data, "mff": mff_path}


def test_written_recordings_read_back_with_mne(hbn: dict) -> None:
    raw = mne.io.read_raw(hbn["set"], verbose="error")
    assert raw.ch_names == GSN_NAMES
    assert raw.info["sfreq"] == SFREQ and raw.n_times == SECONDS * SFREQ
    np.testing.assert_allclose(raw.get_data() * 1e6, hbn["set_data"], atol=1e-4)
    mff = mne.io.read_raw(hbn["mff"], verbose="error")
    assert mff.ch_names == [*GSN_NAMES[:-1], "VREF"]
    assert mff.info["sfreq"] == SFREQ


def test_both_recordings_are_kept_with_their_subjects(hbn: dict) -> None:
    qc, _ = read_tables(hbn["out"])
    rows = qc.set_index("recording")
    assert sorted(rows.index) == sorted([BIDS_RECORDING, MFF_RECORDING])
    assert set(rows["status"]) == {"kept"}
    assert rows.loc[BIDS_RECORDING, "subject"] == BIDS_SUBJECT
    assert rows.loc[BIDS_RECORDING, "subject_source"] == "bids"
    assert rows.loc[MFF_RECORDING, "subject"] == MFF_SUBJECT
    assert rows.loc[MFF_RECORDING, "subject_source"] == "pattern"
    assert set(rows["sfreq"].astype(float)) == {SFREQ}
    assert set(rows["channels_in"]) == {129}
    assert rows.loc[BIDS_RECORDING, "channels_kept"] == 129
    assert rows.loc[MFF_RECORDING, "channels_kept"] == 128  # the flat reference goes
    assert set(rows["windows_total"]) == {2} and set(rows["windows_kept"]) == {2}


def test_channels_are_gsn_electrodes_at_their_gsn_positions(hbn: dict) -> None:
    _, channels = read_tables(hbn["out"])
    expected = gsn_mm()
    for recording, reference_raw in ((BIDS_RECORDING, "Cz"), (MFF_RECORDING, "VREF")):
        rows = channels[channels["recording"] == recording]
        assert list(rows["name"]) == GSN_NAMES
        assert rows["name_raw"].iloc[-1] == reference_raw
        assert set(rows["type"]) == {"eeg"}
        assert set(rows["coord_frame"]) == {FRAME}
        xyz = rows[["x", "y", "z"]].astype(float).to_numpy()
        np.testing.assert_allclose(xyz, expected, rtol=0, atol=1e-6)
    status = channels.set_index(["recording", "name"])["status"]
    assert set(status[BIDS_RECORDING]) == {"kept"}
    assert status[(MFF_RECORDING, "Cz")] == "flat"
    assert set(status[MFF_RECORDING].drop("Cz")) == {"kept"}


def test_windows_carry_the_written_signal_at_1_100_uv(hbn: dict) -> None:
    windows = read_windows(hbn["out"])
    assert len(windows) == 4
    assert set(windows["sfreq"]) == {500.0} and set(windows["n_samples"]) == {15000}
    assert set(windows["modality"]) == {"eeg"}
    assert set(windows["coord_frame"]) == {FRAME}
    expected_mm = gsn_mm()
    for _, window in windows.iterrows():
        n = 129 if window["recording"] == BIDS_RECORDING else 128
        subject = BIDS_SUBJECT if window["recording"] == BIDS_RECORDING else MFF_SUBJECT
        assert window["subject"] == subject
        assert list(window["channel_names"]) == GSN_NAMES[:n]
        assert set(window["channel_types"]) == {"eeg"}
        np.testing.assert_allclose(window["coords"], expected_mm[:n], atol=1e-3)
        # EEG is stored as µV / 100: a 20 µV rhythm is 0.2 in the window
        amplitude = rhythm_amplitude(window["signal"], 500.0)
        np.testing.assert_allclose(amplitude, amplitudes_uv(129)[:n] / 100.0, rtol=0.02)
        assert np.abs(window["signal"]).max() < 1.0


def test_the_shipped_preset_holds_these_settings(tmp_path: Path) -> None:
    preset = preset_dataset("hbn", "hbn", [tmp_path])
    assert settings_of(preset) == settings_of(hbn_dataset((str(tmp_path),)))
