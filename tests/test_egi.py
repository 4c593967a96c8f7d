"""EGI MFF (a folder recording) through the corpus, written here with mffpy.

MNE reads .mff but its exporter writes only *evoked* data to MFF (MNE 1.13), so the
continuous recording is written with mffpy's Writer the same way MNE's evoked
exporter uses it: a HydroCel sensor layout, one binary signal block in µV.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import mffpy
import mne
import numpy as np
import pandas as pd
import pytest

from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.build import build_corpus

SFREQ = 256
SECONDS = 65  # two 30 s windows
DEVICE = "HydroCel GSN 32 1.0"  # 32 electrodes E1..E32 plus the vertex reference


def write_mff(path: Path, seconds: int = SECONDS) -> Path:
    """A continuous 33-channel MFF: 25 µV noise and a 10 Hz rhythm; the reference is zero."""
    writer = mffpy.Writer(str(path))
    writer.addxml("fileInfo", recordTime=datetime.datetime(2024, 1, 2, 3, 4, tzinfo=datetime.UTC))
    writer.add_coordinates_and_sensor_layout(DEVICE)
    rng = np.random.default_rng(0)
    t = np.arange(seconds * SFREQ) / SFREQ
    data = rng.normal(0.0, 25.0, (33, t.size)) + 15.0 * np.sin(2 * np.pi * 10.0 * t)
    data[32] = 0.0  # the vertex reference channel of an average-free recording is flat
    block = mffpy.bin_writer.BinWriter(SFREQ)
    block.add_block(data.astype(np.float32), offset_us=0)
    writer.addbin(block)
    writer.write()
    return path


@pytest.fixture(scope="module")
def egi_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("egi")
    mff = write_mff(root / "rest.mff")
    out = root / "out"
    dataset = DatasetConfig(name="egi", inputs=(str(root),), modality="eeg")
    build_corpus([dataset], CorpusConfig(), out, progress=False)
    return mff, out


def test_written_mff_reads_back_with_mne(egi_corpus: tuple[Path, Path]) -> None:
    mff, _ = egi_corpus
    raw = mne.io.read_raw(mff, preload=False, verbose="error")
    assert raw.info["sfreq"] == SFREQ
    assert raw.n_times == SECONDS * SFREQ
    assert raw.ch_names[:2] == ["E1", "E2"] and len(raw.ch_names) == 33


def test_mff_recording_goes_through_the_corpus(egi_corpus: tuple[Path, Path]) -> None:
    _, out = egi_corpus
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    assert len(qc) == 1
    row = qc.iloc[0]
    assert row["recording"] == "rest"
    assert row["status"] == "kept"
    assert float(row["sfreq"]) == SFREQ
    assert row["windows_total"] == 2 and row["windows_kept"] == 2
    channels = pd.read_csv(out / "channels.csv", keep_default_na=False).set_index("name")
    assert len(channels) == 33
    assert set(channels["type"]) == {"eeg"}
    electrodes = [f"E{i}" for i in range(1, 33)]
    assert set(channels.loc[electrodes, "status"]) == {"kept"}
    assert channels.iloc[32]["status"] == "flat"  # the all-zero reference
    # E1.. are not 10-05 names: scalp EEG takes template positions only, so NaN here
    assert set(channels["coord_frame"]) == {"unknown"}
