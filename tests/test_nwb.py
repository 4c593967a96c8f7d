"""NWB recordings (AJILE12's format), written here with pynwb, through the lazy reader and
the corpus; and recordings' own electrode positions (NWB, FIF) reaching channels.csv.

No real NWB sample exists on this machine (shared/data/SOURCES.md), so the files are
real NWB 2.x files written by pynwb the way AJILE12's converter writes them: int16
counts with ``conversion = 1e-6`` (µV), electrode groups described as "ECoG grid" or
"... depth", x/y/z in atlas mm, subject folders ``sub-XX/sub-XX_ses-N_ecephys.nwb``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pynwb import NWBHDF5IO, NWBFile
from pynwb.ecephys import ElectricalSeries
from pynwb.file import Subject

import diver.corpus.nwb as nwb
from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.build import build_corpus
from diver.corpus.channels import describe_channels
from diver.corpus.discovery import RecordingSource
from diver.corpus.nwb import electrode_type, position_units, read_raw_nwb
from diver.corpus.recording import Quarantine, read_raw
from diver.corpus.shards import coords_of, shard_path

SFREQ = 1000.0
SECONDS = 70.0  # two 30 s windows
FRAME = "MNI152NLin2009aSym"
# label, group, location, x, y, z (mm; NaN = unknown), channel_conversion
ELECTRODES = [
    ("G1", "GRID", "precentral gyrus", -42.5, -12.0, 55.25, 1.0),
    ("G2", "GRID", "precentral gyrus", -47.0, -12.0, 50.0, 1.0),
    ("G3", "GRID", "postcentral gyrus", -51.5, -22.0, 45.0, 1.0),
    ("G4", "GRID", "postcentral gyrus", -55.0, -22.0, 40.5, 1.0),
    ("LHD1", "LHD", "left hippocampus", -24.0, -20.0, -12.0, 0.5),
    ("LHD2", "LHD", "left hippocampus", -28.0, -19.5, -12.5, 0.5),
    ("LHD3", "LHD", "left temporal white matter", -32.0, -19.0, -13.0, 0.5),
    ("AUX1", "AUX", "ECG", math.nan, math.nan, math.nan, 1.0),
]
GROUPS = {
    "GRID": ("ECoG grid", "left sensorimotor cortex"),
    "LHD": ("left hippocampal depth", "left mesial temporal"),
    "AUX": ("auxiliary input", "chest"),
}
CONVERSION = 1e-6
OFFSET = 3e-6


def counts(n_times: int, n_channels: int, seed: int = 0) -> np.ndarray:
    """int16 samples in µV: 30 µV noise plus a 10 Hz rhythm (like AJILE12's stored µV)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_times) / SFREQ
    rhythm = 20.0 * np.sin(2 * np.pi * 10.0 * t)
    return np.rint(rng.normal(0.0, 30.0, (n_times, n_channels)) + rhythm[:, None]).astype(np.int16)


def write_nwb(
    path: Path,
    data: np.ndarray,
    *,
    labels: bool = True,
    timestamps: np.ndarray | None = None,
    subject: str = "01",
) -> Path:
    """A real NWB file: the electrodes table, groups and one ElectricalSeries (µV counts)."""
    nwbfile = NWBFile(
        session_description="written by diver's tests",
        identifier=f"diver-test-{path.stem}",
        session_start_time=datetime(2021, 6, 9, 12, 0, tzinfo=UTC),
        subject=Subject(subject_id=subject, species="Homo sapiens"),
    )
    device = nwbfile.create_device(name="amplifier")
    groups = {
        name: nwbfile.create_electrode_group(
            name=name, description=description, location=location, device=device
        )
        for name, (description, location) in GROUPS.items()
    }
    if labels:
        nwbfile.add_electrode_column(name="label", description="contact label")
    for label, group, location, x, y, z, _ in ELECTRODES:
        extra = {"label": label} if labels else {}
        nwbfile.add_electrode(x=x, y=y, z=z, location=location, group=groups[group], **extra)
    region = nwbfile.create_electrode_table_region(list(range(len(ELECTRODES))), "all")
    timing = {"timestamps": timestamps} if timestamps is not None else {"rate": SFREQ}
    nwbfile.add_acquisition(
        ElectricalSeries(
            name="ElectricalSeries",
            data=data,
            electrodes=region,
            conversion=CONVERSION,
            offset=OFFSET,
            channel_conversion=[e[6] for e in ELECTRODES],
            **timing,
        )
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def volts(data: np.ndarray) -> np.ndarray:
    """What the file's data mean in volts, channels first (the NWB scaling rule)."""
    channel_conversion = np.array([e[6] for e in ELECTRODES])
    return (data.astype(np.float64) * CONVERSION * channel_conversion + OFFSET).T


@pytest.fixture(scope="module")
def nwb_data() -> np.ndarray:
    return counts(int(SECONDS * SFREQ), len(ELECTRODES))


@pytest.fixture(scope="module")
def nwb_file(tmp_path_factory: pytest.TempPathFactory, nwb_data: np.ndarray) -> Path:
    root = tmp_path_factory.mktemp("nwb")
    return write_nwb(root / "sub-01" / "sub-01_ses-1_ecephys.nwb", nwb_data)


# --- the reader ------------------------------------------------------------------------


def test_reader_gives_names_rate_types_and_lazy_volts(nwb_file: Path, nwb_data: np.ndarray) -> None:
    raw = read_raw_nwb(nwb_file)
    assert isinstance(raw, mne.io.BaseRaw)
    assert raw.preload is False
    assert raw.ch_names == [e[0] for e in ELECTRODES]
    assert raw.info["sfreq"] == SFREQ
    assert raw.n_times == nwb_data.shape[0]
    assert raw.get_channel_types() == ["ecog"] * 4 + ["seeg"] * 3 + ["ecg"]
    start, stop = 12_345, 15_432
    got = raw.get_data(start=start, stop=stop)
    np.testing.assert_allclose(got, volts(nwb_data[start:stop]), rtol=1e-12, atol=1e-15)
    picked = raw.get_data(picks=[6, 1], start=start, stop=stop)
    np.testing.assert_allclose(picked, volts(nwb_data[start:stop])[[6, 1]], rtol=1e-12)
    assert raw.preload is False  # reading a span did not load the file


def test_reader_splits_large_requests_into_blocks(
    nwb_file: Path, nwb_data: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nwb, "READ_BLOCK_VALUES", 1000)  # 125 samples per HDF5 read
    raw = read_raw_nwb(nwb_file)
    got = raw.get_data(picks=[2, 3, 4], start=999, stop=5_001)
    np.testing.assert_allclose(got, volts(nwb_data[999:5_001])[[2, 3, 4]], rtol=1e-12)


def test_reader_puts_positions_in_metres_into_the_raw(nwb_file: Path) -> None:
    raw = read_raw_nwb(nwb_file)
    for ch, (_, _, _, x, y, z, _) in zip(raw.info["chs"], ELECTRODES, strict=True):
        np.testing.assert_allclose(ch["loc"][:3], np.array([x, y, z]) / 1000.0, rtol=1e-6)
    assert raw.electrode_kinds[0].startswith("GRID ECoG grid")
    assert raw.copy().pick(["LHD2"]).electrode_kinds == (raw.electrode_kinds[5],)
    assert raw.electrode_kinds[5].startswith("LHD left hippocampal depth")


def test_names_fall_back_to_group_and_index(tmp_path: Path) -> None:
    path = write_nwb(tmp_path / "nolabel.nwb", counts(500, len(ELECTRODES)), labels=False)
    raw = read_raw_nwb(path)
    assert raw.ch_names == ["GRID1", "GRID2", "GRID3", "GRID4", "LHD1", "LHD2", "LHD3", "AUX1"]


def test_rate_from_regular_timestamps(tmp_path: Path) -> None:
    rate = 999.41  # a real non-integer rate, timestamps rounded to µs as loggers do
    n = 3_000
    stamps = np.round(100.0 + np.arange(n) / rate, 6)
    raw = read_raw_nwb(write_nwb(tmp_path / "ts.nwb", counts(n, 8), timestamps=stamps))
    assert raw.info["sfreq"] == pytest.approx(rate, rel=1e-6)


def test_irregular_timestamps_raise_a_clear_error(tmp_path: Path) -> None:
    n = 3_000
    stamps = np.arange(n) / SFREQ
    stamps[1500:] += 0.25  # a 250 ms recording gap
    path = write_nwb(tmp_path / "gap.nwb", counts(n, 8), timestamps=stamps)
    with pytest.raises(ValueError, match="irregular timestamps"):
        read_raw_nwb(path)
    with pytest.raises(Quarantine, match="irregular timestamps"):
        read_raw(path)


@pytest.mark.parametrize(
    ("values", "units"),
    [
        ([-42_500.0, 12_000.0, 55_250.0], "um"),  # the NWB schema's microns
        ([-42.5, 12.0, 55.25], "mm"),  # AJILE12 practice: MNI mm
        ([-0.0425, 0.012, 0.05525], "m"),
    ],
)
def test_position_units_are_inferred(values: list[float], units: str) -> None:
    found, to_mm = position_units([*values, math.nan])
    assert found == units
    assert values[0] * to_mm == pytest.approx(-42.5)


def test_electrode_type_words() -> None:
    assert electrode_type("GRID ECoG grid left frontal") == "ecog"
    assert electrode_type("LID left insular depth") == "seeg"
    assert electrode_type("ECG electrocardiogram") == "ecg"
    assert electrode_type("AUX auxiliary ECG") == "ecg"
    assert electrode_type("GRID ECoG grid EKG1") == "ecg"  # a cardiac lead wins
    assert electrode_type("LAT left anterior temporal unknown") == "eeg"  # left to diver


# --- through the corpus ------------------------------------------------------------------


@pytest.fixture(scope="module")
def nwb_corpus(
    nwb_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """sub-01 good, sub-02 with a timestamp gap, sub-03 not an NWB file at all."""
    root = nwb_file.parent.parent
    stamps = np.arange(40_000) / SFREQ
    stamps[20_000:] += 1.0
    write_nwb(root / "sub-02" / "sub-02_ses-1_ecephys.nwb", counts(40_000, 8), timestamps=stamps)
    garbage = root / "sub-03" / "sub-03_ses-1_ecephys.nwb"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not an HDF5 file\n" * 100)
    out = tmp_path_factory.mktemp("nwb-corpus")
    dataset = DatasetConfig(name="ajile", inputs=(str(root),), coord_frame=FRAME)
    build_corpus([dataset], CorpusConfig(), out, progress=False)
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False, dtype={"subject": str})
    qc = qc.set_index("subject")
    channels = pd.read_csv(out / "channels.csv", keep_default_na=False)
    return out, qc, channels


def test_nwb_recording_is_kept_with_windows_and_subject(
    nwb_corpus: tuple[Path, pd.DataFrame, pd.DataFrame],
) -> None:
    _, qc, _ = nwb_corpus
    good = qc.loc["01"]
    assert good["status"] == "kept"
    assert good["subject_source"] == "bids"
    assert float(good["sfreq"]) == SFREQ
    assert good["windows_total"] == 2 and good["windows_kept"] == 2
    assert good["channels_in"] == 8 and good["channels_neural"] == 7


def test_nwb_channels_typed_with_file_positions(
    nwb_corpus: tuple[Path, pd.DataFrame, pd.DataFrame],
) -> None:
    out, _, channels = nwb_corpus
    rec = channels[channels["recording"] == "sub-01/sub-01_ses-1_ecephys"].set_index("name")
    assert list(rec.index) == [e[0] for e in ELECTRODES]
    assert list(rec["type"]) == ["ecog"] * 4 + ["seeg"] * 3 + ["ecg"]
    assert list(rec["subtype"]) == ["grid"] * 4 + ["depth"] * 3 + [""]
    assert rec.loc["AUX1", "status"] == "non-neural:ecg"
    neural = [e for e in ELECTRODES if e[0] != "AUX1"]
    written = np.array([e[3:6] for e in neural])
    found = rec.loc[[e[0] for e in neural], ["x", "y", "z"]].astype(float).to_numpy()
    np.testing.assert_allclose(found, written, atol=1e-4)
    assert set(rec.loc[[e[0] for e in neural], "coord_frame"]) == {FRAME}

    table = pq.read_table(shard_path(out, "ajile", "sub-01/sub-01_ses-1_ecephys"))
    assert table.num_rows == 2
    assert set(table.column("modality").to_pylist()) == {"ieeg"}
    assert set(table.column("coord_frame").to_pylist()) == {FRAME}
    names_per_window = table.column("channel_names").to_pylist()
    for coords, names in zip(coords_of(table), names_per_window, strict=True):
        expected = np.array([next(e[3:6] for e in neural if e[0] == n) for n in names])
        np.testing.assert_allclose(coords, expected, atol=1e-4)


def test_bad_nwb_files_are_quarantined_with_reasons(
    nwb_corpus: tuple[Path, pd.DataFrame, pd.DataFrame],
) -> None:
    _, qc, _ = nwb_corpus
    assert qc.loc["02", "status"] == "quarantined"
    assert "irregular timestamps" in qc.loc["02", "reason"]
    assert qc.loc["03", "status"] == "quarantined"
    assert qc.loc["03", "reason"].startswith("unreadable:")


# --- a recording's own positions, for any reader -------------------------------------------


def test_fif_ieeg_positions_come_from_the_file_and_scalp_keeps_the_template(
    tmp_path: Path,
) -> None:
    """An sEEG FIF with a montage: contacts take the file's positions, Cz the 10-05 one."""
    names = ["LA1", "LA2", "LA3", "Cz"]
    info = mne.create_info(names, 250.0, ["seeg", "seeg", "seeg", "eeg"])
    data = np.random.default_rng(1).normal(0.0, 30e-6, (4, 1250))
    raw = mne.io.RawArray(data, info, verbose="error")
    where_m = {"LA1": (0.030, 0.010, 0.020), "LA2": (0.035, 0.010, 0.020)}  # LA3 unknown
    where_m["Cz"] = (0.0, 0.0, 0.09)
    montage = mne.channels.make_dig_montage(ch_pos=where_m, coord_frame="head")
    raw.set_montage(montage, on_missing="ignore", verbose="error")
    path = tmp_path / "rec_raw.fif"
    raw.save(path, verbose="error")

    out = tmp_path / "out"
    build_corpus(
        [DatasetConfig(name="fif", inputs=(str(path),))], CorpusConfig(), out, progress=False
    )
    channels = pd.read_csv(out / "channels.csv", keep_default_na=False).set_index("name")
    xyz = channels[["x", "y", "z"]].replace("", "nan").astype(float)
    np.testing.assert_allclose(xyz.loc["LA1"], [30.0, 10.0, 20.0], atol=1e-4)
    np.testing.assert_allclose(xyz.loc["LA2"], [35.0, 10.0, 20.0], atol=1e-4)
    assert channels.loc["LA1", "coord_frame"] == "mne_head"
    assert np.isnan(xyz.loc["LA3"]).all() and channels.loc["LA3", "coord_frame"] == "unknown"
    assert channels.loc["Cz", "coord_frame"] == "mne_standard_1005"
    assert not np.allclose(xyz.loc["Cz"], [0.0, 0.0, 90.0])


def test_describe_channels_positions_keyword() -> None:
    """Direct use: in-file positions only for iEEG, zeros mean unknown, kinds give subtypes."""
    source = RecordingSource(
        dataset="d",
        path=Path("rec.nwb"),
        recording="rec",
        subject="rec",
        subject_source="recording",
        bids_datatype=None,
        channels_tsv=None,
        electrodes_tsv=None,
        coordsystem_json=None,
    )
    infos = describe_channels(
        ["A1", "A2", "Cz"],
        ["ecog", "ecog", "eeg"],
        source,
        DatasetConfig(name="d", inputs=(), coord_frame="ACPC"),
        positions_m=[(0.01, 0.02, 0.03), (0.0, 0.0, 0.0), (0.0, 0.0, 0.1)],
        positions_frame=None,
        electrode_kinds=["ECoG strip", "ECoG grid", ""],
    )
    assert infos[0].xyz_mm == pytest.approx((10.0, 20.0, 30.0))
    assert infos[0].coord_frame == "ACPC" and infos[0].subtype == "strip"
    assert all(math.isnan(v) for v in infos[1].xyz_mm) and infos[1].subtype == "grid"
    assert infos[2].coord_frame == "mne_standard_1005"
    with pytest.raises(ValueError, match="positions_m"):
        describe_channels(
            ["A1"], ["ecog"], source, DatasetConfig(name="d", inputs=()), positions_m=[]
        )
