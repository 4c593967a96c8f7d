"""Recording units: headers MNE cannot read or that lie are caught, never silently rescaled.

The files are written here: a GDF 1.25 file from a minimal writer (a BCI-competition
style recording whose physical dimension MNE's GDF 1 reader does not map, so it assumes
volts), and EDF files whose physical-dimension field says ``V`` over microvolt numbers,
or ``uV`` over volts.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import edfio
import mne
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from diver.config import CorpusConfig, DatasetConfig, load_config
from diver.corpus.build import build_corpus
from diver.corpus.shards import signals_of
from diver.corpus.units import PLAUSIBLE_UV, calibrate, header_scales, robust_amplitude_uv

SFREQ = 256
SECONDS = 180  # six 30 s windows
NAMES = ["C3", "Cz", "C4", "Fz"]
CUES = [(SFREQ * (3 + 4 * i), 769 + i % 2) for i in range(40)]  # 20 left + 20 right hand


def eeg_uv(n_channels: int, seconds: int, sfreq: int, seed: int = 0) -> np.ndarray:
    """Scalp-EEG-like signals in µV: 20 µV noise plus a 10 Hz rhythm."""
    rng = np.random.default_rng(seed)
    t = np.arange(seconds * sfreq) / sfreq
    return rng.normal(0.0, 20.0, (n_channels, t.size)) + 10.0 * np.sin(2 * np.pi * 10.0 * t)


def _text(values: Sequence[str], width: int) -> bytes:
    return b"".join(v.encode("latin-1").ljust(width)[:width] for v in values)


def write_gdf1(
    path: Path,
    data: np.ndarray,
    sfreq: int,
    names: Sequence[str],
    events: Sequence[tuple[int, int]] = (),
    *,
    unit: str = "\u00b5V",
    physical: float = 100.0,
    digital: int = 32767,
) -> Path:
    """A GDF 1.25 file: ``data`` (C, S) in the physical unit ``unit``, int16 samples,
    one-second records, and an event table (mode 1) of (sample, code) pairs.

    The default unit is ``µV`` in Latin-1, as BCI-competition files write it; MNE's
    GDF 1 reader only maps ``uV`` and takes anything else for volts.
    """
    n_ch = len(names)
    n_rec = data.shape[1] // sfreq
    fixed = b"GDF 1.25" + _text(["X X"], 80) + _text(["diver units test"], 80)
    fixed += b"2024010203040500" + struct.pack("<q", 256 * (n_ch + 1))
    fixed += bytes(8 + 8 + 8 + 20)  # equipment, hospital, technician, reserved
    fixed += struct.pack("<q", n_rec) + struct.pack("<II", 1, 1) + struct.pack("<I", n_ch)
    per_channel = _text(names, 16) + _text([""] * n_ch, 80) + _text([unit] * n_ch, 8)
    per_channel += struct.pack(f"<{n_ch}d", *[-physical] * n_ch)
    per_channel += struct.pack(f"<{n_ch}d", *[physical] * n_ch)
    per_channel += struct.pack(f"<{n_ch}q", *[-digital] * n_ch)
    per_channel += struct.pack(f"<{n_ch}q", *[digital] * n_ch)
    per_channel += _text([""] * n_ch, 80)
    per_channel += struct.pack(f"<{n_ch}i", *[sfreq] * n_ch)  # samples per record
    per_channel += struct.pack(f"<{n_ch}i", *[3] * n_ch)  # int16
    per_channel += bytes(32 * n_ch)
    assert len(fixed) == 256 and len(per_channel) == 256 * n_ch
    counts = np.rint(data[:, : n_rec * sfreq] / physical * digital)
    samples = np.clip(counts, -digital, digital).astype("<i2")
    body = samples.reshape(n_ch, n_rec, sfreq).transpose(1, 0, 2).tobytes()
    table = bytes([1]) + sfreq.to_bytes(3, "little") + struct.pack("<I", len(events))
    table += struct.pack(f"<{len(events)}I", *[s + 1 for s, _ in events])
    table += struct.pack(f"<{len(events)}H", *[c for _, c in events])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fixed + per_channel + body + table)
    return path


def write_edf(path: Path, data: np.ndarray, sfreq: int, names: Sequence[str], unit: str) -> Path:
    """An EDF whose physical-dimension field says ``unit`` over the numbers ``data``."""
    span = float(np.abs(data).max()) * 1.1
    signals = [
        edfio.EdfSignal(
            row, sfreq, label=name, physical_dimension=unit, physical_range=(-span, span)
        )
        for row, name in zip(data, names, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    edfio.Edf(signals).write(path)
    return path


def corpus(tmp_path: Path, folder: Path, units: str) -> tuple[pd.DataFrame, Path]:
    """Build a one-dataset corpus from ``folder``; its qc.csv rows and output folder."""
    out = tmp_path / f"out_{units}"
    ds = DatasetConfig(name="units", inputs=(str(folder),), modality="eeg", units=units)
    build_corpus([ds], CorpusConfig(), out, progress=False)
    return pd.read_csv(next(out.rglob("qc.csv"))), out


def window_signals(out: Path) -> np.ndarray:
    tables = [pq.read_table(p) for p in sorted(out.rglob("*.parquet"))]
    return np.stack([np.asarray(s, dtype=np.float32) for t in tables for s in signals_of(t)])


@pytest.fixture(scope="module")
def gdf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("gdf")
    data = eeg_uv(len(NAMES), SECONDS, SFREQ)
    write_gdf1(folder / "B0101T.gdf", data, SFREQ, NAMES, CUES)
    return folder, data


def test_gdf1_writer_reads_back_as_mne_sees_it(gdf: tuple[Path, np.ndarray]) -> None:
    """MNE reads the numbers right but calls them volts: a million times too large."""
    folder, data = gdf
    raw = mne.io.read_raw(folder / "B0101T.gdf", verbose="error")
    assert raw.ch_names == NAMES and raw.info["sfreq"] == SFREQ
    assert raw.n_times == SECONDS * SFREQ
    step = 200.0 / 65534  # the physical range over the digital range
    np.testing.assert_allclose(raw.get_data(), data, atol=step)
    assert header_scales(raw).tolist() == [1.0] * len(NAMES)
    descriptions = [str(d) for d in raw.annotations.description]
    assert descriptions.count("769") == 20 and descriptions.count("770") == 20


def test_gdf1_with_unreadable_units_is_quarantined_with_a_units_reason(
    tmp_path: Path, gdf: tuple[Path, np.ndarray]
) -> None:
    folder, _ = gdf
    qc, out = corpus(tmp_path, folder, "auto")
    row = qc.iloc[0]
    assert row["status"] == "quarantined" and row["windows_kept"] == 0
    reason = row["reason"]
    assert "implausible amplitude" in reason
    # the amplitude found (~2e7 µV: 20 µV numbers read as volts), the likely unit,
    # and the setting to change
    amplitude = float(reason.split("amplitude (1 Hz high-passed) is ")[1].split(" µV")[0])
    assert 1e7 < amplitude < 4e7
    assert "header's unit read as V" in reason
    assert "look like µV" in reason
    assert "set units of dataset 'units' in the config to uV" in reason
    assert not list(out.rglob("*.parquet"))
    channels = pd.read_csv(next(out.rglob("channels.csv")))
    assert channels["name"].tolist() == NAMES  # the channels are still reported


def test_gdf1_with_units_uv_yields_every_window(
    tmp_path: Path, gdf: tuple[Path, np.ndarray]
) -> None:
    folder, _ = gdf
    qc, out = corpus(tmp_path, folder, "uV")
    row = qc.iloc[0]
    assert row["status"] == "kept", row["reason"]
    assert row["windows_kept"] == row["windows_total"] == SECONDS // 30
    windows = window_signals(out)
    assert windows.shape[:2] == (SECONDS // 30, len(NAMES))
    # scaled by 1/100 µV (SPEC §1): the 20 µV noise (+ 7 µV rms rhythm) is ~0.21
    assert 0.15 < float(windows.std()) < 0.3


def test_edf_that_says_volts_over_microvolt_numbers(tmp_path: Path) -> None:
    data = eeg_uv(len(NAMES), 65, SFREQ, seed=1)
    folder = tmp_path / "edf_v"
    write_edf(folder / "rec.edf", data, SFREQ, NAMES, unit="V")
    qc, _ = corpus(tmp_path, folder, "auto")
    assert qc.iloc[0]["status"] == "quarantined"
    assert "read as V" in qc.iloc[0]["reason"] and "to uV" in qc.iloc[0]["reason"]
    qc, _ = corpus(tmp_path, folder, "uV")
    assert qc.iloc[0]["status"] == "kept" and qc.iloc[0]["windows_kept"] == 2


def test_edf_that_says_microvolts_over_volt_numbers(tmp_path: Path) -> None:
    """The other direction: amplitudes of 2e-5 µV suggest the numbers are volts."""
    data = eeg_uv(len(NAMES), 65, SFREQ, seed=2) * 1e-6
    folder = tmp_path / "edf_uv"
    write_edf(folder / "rec.edf", data, SFREQ, NAMES, unit="uV")
    qc, _ = corpus(tmp_path, folder, "auto")
    reason = qc.iloc[0]["reason"]
    assert qc.iloc[0]["status"] == "quarantined"
    assert "read as µV" in reason and "look like V" in reason and "to V" in reason
    qc, _ = corpus(tmp_path, folder, "V")
    assert qc.iloc[0]["status"] == "kept" and qc.iloc[0]["windows_kept"] == 2


def test_units_setting_leaves_files_whose_header_already_says_it(tmp_path: Path) -> None:
    """``units: uV`` over a dataset whose files say uV correctly changes nothing: the
    setting says what the numbers are, not a factor to apply."""
    data = eeg_uv(len(NAMES), 65, SFREQ, seed=3)
    folder = tmp_path / "edf_ok"
    write_edf(folder / "rec.edf", data, SFREQ, NAMES, unit="uV")
    _, auto = corpus(tmp_path, folder, "auto")
    _, given = corpus(tmp_path, folder, "uV")
    np.testing.assert_array_equal(window_signals(auto), window_signals(given))


@pytest.mark.parametrize(
    "name",
    [
        "eegmmidb_S001/S001R04.edf",
        "eeglab_tutorial/eeglab_data.set",
        "resting_yasa/data_resting_EO_200Hz_raw.fif",
        "openbci_cosleep_bdf/multiple_annotation_chans.bdf",
        "brainvision_bv_dig/bv_dig_test.vhdr",
        "seeg_mne_misc/sample_seeg.edf",
    ],
)
def test_real_recordings_are_plausible(shared_data: Path, name: str) -> None:
    """No real recording of the shared data is taken for a unit error."""
    raw = mne.io.read_raw(shared_data / name, verbose="error")
    picks = np.array(
        [i for i, t in enumerate(raw.get_channel_types()) if t in {"eeg", "seeg", "ecog"}]
    )
    factors = calibrate(raw, picks, "auto", setting="units")
    assert factors.tolist() == [1.0] * len(picks)
    low, high = PLAUSIBLE_UV
    assert low < robust_amplitude_uv(raw, picks, factors) < high


def test_units_is_read_from_the_study_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "study: s\ncorpus:\n  datasets:\n"
        "    - {name: bci, inputs: [x], units: uV}\n"
        "    - {name: tueg, inputs: [y]}\n"
        "families: {all: {modalities: [eeg]}}\n"
        "grid: [{family: all, size: debug, epochs: 1}]\n"
    )
    datasets = load_config(config).corpus.datasets
    assert [d.units for d in datasets] == ["uV", "auto"]
    config.write_text(config.read_text().replace("units: uV", "units: microvolts"))
    with pytest.raises(ValueError, match="units"):
        load_config(config)
