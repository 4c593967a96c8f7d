"""PEERS (Penn Electrophysiology of Encoding and Retrieval Study) recordings, end to end.

PEERS recorded with two systems: a BioSemi ActiveTwo 128 cap (BDF, ``A1..D32``, eight
external electrodes ``EXG1..EXG8`` and the ``Status`` trigger channel; 2048 Hz in
the original, 512 Hz here to keep the test small) and, for earlier sessions, an EGI
HydroCel GSN 128 net (``E1..E129``, ``E129`` the vertex reference, 500 Hz).  The
BioSemi session is laid out as the lab's own tree (``LTP331/session_0/eeg/...bdf``,
subject from a pattern); the EGI session as a BIDS tree in EDF
(``sub-LTP093/ses-1/eeg/..._eeg.edf`` with its ``channels.tsv``): BIDS-EEG allows
EDF, BDF, BrainVision and EEGLAB but none of Net Station's formats, so the release
on OpenNeuro holds converted files (which of these formats it uses was not checked
here).  The lab's original EGI files are Net Station simple binary ``.raw``, which
``mne.io.read_raw`` does not dispatch (only ``mne.io.read_raw_egi`` reads them), so
discovery does not list them as recordings: a gap outside the channel rules.

A dataset's config names one montage, so the two systems are two datasets here,
each with its montage (``biosemi128`` / ``GSN-HydroCel-129``); a single dataset with
``biosemi128`` would leave the EGI names with 10-05 fallbacks, i.e. no positions
(checked below).  The BioSemi externals carry no cap position and are hinted out:
``EXG1..EXG4`` as ``eog`` (BioSemi's usual placement around the eyes) and
``EXG5..EXG8`` as ``misc`` (mastoids or unused, varying by session) -- the choice of
the shipped ``peers_biosemi`` preset.  The settings come from the shipped presets
``config/datasets/peers_biosemi.yaml`` / ``peers_egi.yaml`` loaded through
:mod:`diver.config` when they exist, else from :func:`peers_datasets`.

Writers: the BDF with edfio's ``Bdf`` (24-bit, ``\\xffBIOSEMI`` magic; read back
below); the EDF with ``mne.export``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import edfio
import mne
import numpy as np
import pytest

from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.build import build_corpus
from diver.corpus.channels import describe_channels
from diver.corpus.discovery import discover_recordings
from tests.scalp_corpus import (
    amplitudes_uv,
    preset_dataset,
    read_tables,
    read_windows,
    rhythm_amplitude,
    rhythm_uv,
    settings_of,
)

SECONDS = 65.0  # two 30 s windows
BIOSEMI_SFREQ = 512.0
EGI_SFREQ = 500.0
BIOSEMI_NAMES = [f"{bank}{i}" for bank in "ABCD" for i in range(1, 33)]
EXG_NAMES = [f"EXG{i}" for i in range(1, 9)]
GSN_NAMES = [f"E{i}" for i in range(1, 129)] + ["Cz"]
BIOSEMI_SUBJECT, EGI_SUBJECT = "LTP331", "LTP093"
BIOSEMI_RECORDING = f"{BIOSEMI_SUBJECT}/session_0/eeg/{BIOSEMI_SUBJECT}_session_0"
EGI_STEM = f"sub-{EGI_SUBJECT}_ses-1_task-ltpFR"
EGI_RECORDING = f"sub-{EGI_SUBJECT}/ses-1/eeg/{EGI_STEM}_eeg"
EGI_RAW_NAMES = [f"E{i}" for i in range(1, 130)]
SUBJECT_PATTERN = r"(LTP\d+)"
EXG_HINTS = {"EXG[1-4]": "eog", "EXG[5-8]": "misc"}
BIOSEMI_UV_RANGE = (-262144.0, 262143.0)  # BioSemi's: 1/32 µV per 24-bit step


def peers_datasets(biosemi_root: Path, egi_root: Path) -> tuple[DatasetConfig, DatasetConfig]:
    """PEERS's dataset settings, one dataset per recording system."""
    common = {"modality": "eeg", "line_freq": 60.0, "highpass": 0.3}
    biosemi = DatasetConfig(
        name="peers_biosemi",
        inputs=(str(biosemi_root),),
        montage="biosemi128",
        channel_types=EXG_HINTS,
        subject_pattern=SUBJECT_PATTERN,
        **common,  # type: ignore[arg-type]
    )
    egi = DatasetConfig(
        name="peers_egi",
        inputs=(str(egi_root),),
        montage="GSN-HydroCel-129",
        subject_pattern=SUBJECT_PATTERN,
        **common,  # type: ignore[arg-type]
    )
    return biosemi, egi


def write_bdf(path: Path, data_uv: np.ndarray, status: np.ndarray) -> Path:
    """A BioSemi-style BDF: the cap and EXG channels in µV, then the Status channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    signals = [
        edfio.BdfSignal(
            row,
            BIOSEMI_SFREQ,
            label=name,
            transducer_type="Active Electrode",
            physical_dimension="uV",
            physical_range=BIOSEMI_UV_RANGE,
        )
        for name, row in zip(BIOSEMI_NAMES + EXG_NAMES, data_uv, strict=True)
    ]
    signals.append(
        edfio.BdfSignal(
            status,
            BIOSEMI_SFREQ,
            label="Status",
            transducer_type="Triggers and Status",
            physical_dimension="Boo",
            physical_range=(-8388608.0, 8388607.0),
        )
    )
    edfio.Bdf(signals, data_record_duration=1.0).write(path)
    return path


def write_egi_bids(root: Path, data_uv: np.ndarray) -> Path:
    """One EGI session as the BIDS release holds it: EDF plus channels.tsv and eeg.json."""
    eeg_dir = root / f"sub-{EGI_SUBJECT}" / "ses-1" / "eeg"
    eeg_dir.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "PEERS (test)", "BIDSVersion": "1.7.0"})
    )
    rows = [f"{n}\tEEG\tuV" for n in EGI_RAW_NAMES]
    (eeg_dir / f"{EGI_STEM}_channels.tsv").write_text(
        "\n".join(["name\ttype\tunits", *rows]) + "\n"
    )
    (eeg_dir / f"{EGI_STEM}_eeg.json").write_text(
        json.dumps(
            {
                "TaskName": "ltpFR",
                "SamplingFrequency": EGI_SFREQ,
                "PowerLineFrequency": 60,
                "EEGReference": "Cz",
                "CapManufacturer": "EGI",
            }
        )
    )
    info = mne.create_info(EGI_RAW_NAMES, EGI_SFREQ, "eeg")
    raw = mne.io.RawArray(data_uv * 1e-6, info, verbose="error")
    path = eeg_dir / f"{EGI_STEM}_eeg.edf"
    mne.export.export_raw(path, raw, fmt="edf", verbose="error")
    return path


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("peers")
    n_bdf = len(BIOSEMI_NAMES) + len(EXG_NAMES)
    bdf_data = rhythm_uv(n_bdf, BIOSEMI_SFREQ, SECONDS, seed=3)
    status = np.zeros(bdf_data.shape[1])
    status[1000:1010], status[9000:9010] = 1.0, 2.0
    bdf = write_bdf(root / "biosemi" / f"{BIOSEMI_RECORDING}.bdf", bdf_data, status)
    egi_data = rhythm_uv(129, EGI_SFREQ, SECONDS, seed=4)
    egi_data[128] = 0.0  # E129, the vertex reference
    egi = write_egi_bids(root / "egi", egi_data)
    reference = peers_datasets(root / "biosemi", root / "egi")
    datasets = [preset_dataset(ds.name, ds.name, [Path(ds.inputs[0])]) for ds in reference]
    out = root / "out"
    build_corpus(datasets, CorpusConfig(), out, progress=False)
    return {"out": out, "bdf": bdf, "bdf_data": bdf_data, "egi": egi, "egi_data": egi_data}


def test_written_files_read_back_with_mne(peers: dict) -> None:
    bdf = peers["bdf"]
    assert bdf.read_bytes()[:8] == b"\xffBIOSEMI"
    raw = mne.io.read_raw_bdf(bdf, verbose="error")
    assert raw.ch_names == [*BIOSEMI_NAMES, *EXG_NAMES, "Status"]
    assert raw.info["sfreq"] == BIOSEMI_SFREQ
    assert raw.get_channel_types()[-1] == "stim"
    step = (BIOSEMI_UV_RANGE[1] - BIOSEMI_UV_RANGE[0]) / (2**24 - 1)
    np.testing.assert_allclose(raw.get_data()[:-1] * 1e6, peers["bdf_data"], atol=step)
    egi = mne.io.read_raw(peers["egi"], verbose="error")
    assert egi.ch_names == EGI_RAW_NAMES
    assert egi.info["sfreq"] == EGI_SFREQ
    np.testing.assert_allclose(egi.get_data() * 1e6, peers["egi_data"], atol=0.01)


def test_biosemi_recording_types_and_positions(peers: dict) -> None:
    qc, channels = read_tables(peers["out"])
    row = qc.set_index("recording").loc[BIOSEMI_RECORDING]
    assert (row["dataset"], row["status"], row["subject"]) == ("peers_biosemi", "kept", "LTP331")
    assert row["subject_source"] == "pattern"
    assert float(row["sfreq"]) == BIOSEMI_SFREQ
    assert (row["channels_in"], row["channels_kept"]) == (137, 128)
    assert (row["windows_total"], row["windows_kept"]) == (2, 2)
    rows = channels[channels["recording"] == BIOSEMI_RECORDING].set_index("name")
    cap = rows.loc[BIOSEMI_NAMES]
    assert set(cap["type"]) == {"eeg"} and set(cap["status"]) == {"kept"}
    assert set(cap["coord_frame"]) == {"mne_biosemi128"}
    positions = mne.channels.make_standard_montage("biosemi128").get_positions()["ch_pos"]
    expected = np.array([positions[n] for n in BIOSEMI_NAMES]) * 1000.0
    np.testing.assert_allclose(cap[["x", "y", "z"]].astype(float).to_numpy(), expected, atol=1e-6)
    exg = rows.loc[EXG_NAMES]
    assert list(exg["type"]) == ["eog"] * 4 + ["misc"] * 4
    assert list(exg["status"]) == ["non-neural:eog"] * 4 + ["non-neural:misc"] * 4
    assert exg[["x", "y", "z"]].replace("", "nan").astype(float).isna().all().all()
    assert rows.loc["Status", "type"] == "stim"
    assert rows.loc["Status", "status"] == "non-neural:stim"


def test_egi_recording_types_and_positions(peers: dict) -> None:
    qc, channels = read_tables(peers["out"])
    row = qc.set_index("recording").loc[EGI_RECORDING]
    assert (row["dataset"], row["status"], row["subject"]) == ("peers_egi", "kept", "LTP093")
    assert row["subject_source"] == "bids"
    assert float(row["sfreq"]) == EGI_SFREQ
    assert (row["channels_in"], row["channels_kept"]) == (129, 128)  # E129 is flat
    assert (row["windows_total"], row["windows_kept"]) == (2, 2)
    rows = channels[channels["recording"] == EGI_RECORDING]
    assert list(rows["name"]) == GSN_NAMES
    assert rows["name_raw"].iloc[128] == "E129"  # the reference, under its montage name Cz
    assert set(rows["type"]) == {"eeg"}
    assert set(rows["coord_frame"]) == {"mne_GSN-HydroCel-129"}
    assert list(rows["status"]) == ["kept"] * 128 + ["flat"]
    positions = mne.channels.make_standard_montage("GSN-HydroCel-129").get_positions()["ch_pos"]
    expected = np.array([positions[n] for n in GSN_NAMES]) * 1000.0
    xyz = rows[["x", "y", "z"]].astype(float).to_numpy()
    np.testing.assert_allclose(xyz, expected, atol=1e-6)


def test_windows_carry_the_written_signal_at_1_100_uv(peers: dict) -> None:
    windows = read_windows(peers["out"])
    assert len(windows) == 4
    assert set(windows["sfreq"]) == {500.0} and set(windows["n_samples"]) == {15000}
    for _, window in windows.iterrows():
        biosemi = window["recording"] == BIOSEMI_RECORDING
        names = BIOSEMI_NAMES if biosemi else GSN_NAMES[:128]
        assert window["subject"] == (BIOSEMI_SUBJECT if biosemi else EGI_SUBJECT)
        assert window["coord_frame"] == ("mne_biosemi128" if biosemi else "mne_GSN-HydroCel-129")
        assert list(window["channel_names"]) == names
        assert np.isfinite(window["coords"]).all()
        amplitude = rhythm_amplitude(window["signal"], 500.0)
        np.testing.assert_allclose(amplitude, amplitudes_uv(len(names)) / 100.0, rtol=0.02)


def test_one_montage_per_dataset_leaves_the_other_systems_names_unplaced(peers: dict) -> None:
    """Why PEERS is two datasets: under biosemi128, EGI's E1.. have no position."""
    biosemi, _ = peers_datasets(Path(peers["bdf"]).parent, Path(peers["egi"]).parent)
    egi_as_biosemi = replace(biosemi, inputs=(str(peers["egi"]),))
    (source,) = discover_recordings(egi_as_biosemi)
    raw = mne.io.read_raw(peers["egi"], verbose="error")
    infos = describe_channels(raw.ch_names, raw.get_channel_types(), source, egi_as_biosemi)
    e1 = infos[0]
    assert (e1.name, e1.type) == ("E1", "eeg")  # typed by the BIDS channels.tsv
    assert all(math.isnan(v) for v in e1.xyz_mm)


@pytest.mark.parametrize("system", [0, 1], ids=["peers_biosemi", "peers_egi"])
def test_the_shipped_presets_hold_these_settings(tmp_path: Path, system: int) -> None:
    reference = peers_datasets(tmp_path, tmp_path)[system]
    preset = preset_dataset(reference.name, reference.name, [tmp_path])
    expected = settings_of(reference)
    if reference.name == "peers_biosemi":  # the preset also drops BioSemi's sensor inputs
        assert set(EXG_HINTS.items()) <= set(preset.channel_types.items())
        expected["channel_types"] = preset.channel_types
    assert settings_of(preset) == expected
