"""Channel naming, typing, subtypes and positions on real recordings and real BIDS trees."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import mne
import numpy as np
import pytest

from diver.config import DatasetConfig
from diver.corpus.channels import (
    ChannelInfo,
    describe_channels,
    name_pattern_type,
    normalise_name,
)
from diver.corpus.coordinates import (
    SCALP_FRAME,
    infer_units,
    montage_position_mm,
    read_electrodes,
)
from diver.corpus.discovery import RecordingSource, discover_recordings


def write_edf(path: Path, names: list[str], seconds: float = 2.0) -> Path:
    """A small genuine EDF with the given channel labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = rng.normal(0.0, 20e-6, (len(names), int(seconds * 100)))
    raw = mne.io.RawArray(data, mne.create_info(names, 100.0, "eeg"), verbose="error")
    mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    return path


def write_tsv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def describe(source: RecordingSource, ds: DatasetConfig) -> dict[str, ChannelInfo]:
    """Open the recording as the pipeline does and describe its channels, by raw name."""
    raw = mne.io.read_raw(source.path, verbose="error")
    infos = describe_channels(raw.ch_names, raw.get_channel_types(), source, ds)
    assert [c.name_raw for c in infos] == raw.ch_names
    return {c.name_raw: c for c in infos}


def only_source(ds: DatasetConfig) -> RecordingSource:
    (source,) = discover_recordings(ds)
    return source


def finite(xyz: tuple[float, float, float]) -> bool:
    return all(math.isfinite(v) for v in xyz)


# --- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Fc5.", "FC5"),
        ("Cz..", "Cz"),
        ("T10.", "T10"),
        ("  Iz.. ", "Iz"),
        ("EEG FP1-REF", "Fp1"),
        ("EEG FP1-LE", "Fp1"),
        ("EEG T3-REF", "T7"),
        ("EEG T4-LE", "T8"),
        ("T5", "P7"),
        ("t6", "P8"),
        ("EEG CZ-AVG", "Cz"),
        ("EEG O2-AR", "O2"),
        ("F4-A1", "F4"),
        ("CZ-A2", "Cz"),
        ("C3-M2", "C3"),
        ("FPZ", "Fpz"),
        ("Fp1-F7", "Fp1-F7"),
        ("EEG FP2-F8", "Fp2-F8"),
        ("A1", "A1"),
        ("L'1", "L'1"),
        (" LA1 ", "LA1"),
        ("GRID12", "GRID12"),
        ("EEG EKG1-REF", "EEG EKG1-REF"),
        ("EEG T1-REF", "EEG T1-REF"),
        ("LA1-REF", "LA1-REF"),
    ],
)
def test_normalise_name(raw: str, expected: str) -> None:
    assert normalise_name(raw) == expected


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("EKG1", "ecg"),
        ("EEG EKG1-REF", "ecg"),
        ("ECG EKGR-EKGL", "ecg"),
        ("HEOG", "eog"),
        ("EOG LOC-M2", "eog"),
        ("ROC-A1", "eog"),
        ("E1-M2", "eog"),
        ("EMG Chin1-Chin2", "emg"),
        ("LLeg1", "emg"),
        ("DC04", "dc"),
        ("acc2", "acc"),
        ("ACC_X", "acc"),
        ("Accel", "acc"),
        ("Trigger", "stim"),
        ("STI 014", "stim"),
        ("Status", "stim"),
        ("PHOTIC-REF", "stim"),
        ("Resp Airflow", "resp"),
        ("SpO2", "misc"),
        ("Pulse", "misc"),
        ("EDF Annotations", "misc"),
        ("Fp1", None),
        ("LOC1", None),
        ("E1", None),  # EGI HydroCel electrode 1, not the AASM EOG
        ("ACC7", None),  # an 8-contact shaft, not a 3-axis accelerometer
        ("L'1", None),
        ("Pz", None),
    ],
)
def test_name_patterns(name: str, kind: str | None) -> None:
    assert name_pattern_type(name) == kind


# --- shared real recordings ----------------------------------------------------------------


def test_eegmmidb_all_scalp_with_coordinates(shared_data: Path) -> None:
    ds = DatasetConfig(
        name="eegmmidb", inputs=(str(shared_data / "eegmmidb_S001"),), subject_pattern=r"S(\d{3})R"
    )
    sources = discover_recordings(ds)
    assert len(sources) == 12
    for source in sources:
        infos = describe(source, ds)
        assert len(infos) == 64
        assert all(c.type == "eeg" and c.neural and c.subtype == "" for c in infos.values())
        assert all(finite(c.xyz_mm) and c.coord_frame == SCALP_FRAME for c in infos.values())
        assert not any("." in c.name for c in infos.values())
        assert infos["Fc5."].name == "FC5" and infos["Cz.."].name == "Cz"
        assert infos["Cz.."].xyz_mm == montage_position_mm("Cz")
    # MNE's template is in metres; here it must be mm (Cz sits ~10 cm above the origin).
    assert 80 < montage_position_mm("Cz")[2] < 120  # type: ignore[index]


def test_seeg_with_electrodes_file(shared_data: Path) -> None:
    folder = shared_data / "seeg_mne_misc"
    ds = DatasetConfig(name="seeg", inputs=(str(folder),), coord_frame="MNI152")
    infos = describe(only_source(ds), ds)
    assert len(infos) == 98
    with (folder / "sample_seeg_electrodes.tsv").open() as fh:
        table = {row["name"]: row for row in csv.DictReader(fh, delimiter="\t")}
    contacts = [c for c in infos.values() if "'" in c.name_raw]
    assert len(contacts) == 88
    for c in contacts:
        assert (c.type, c.subtype, c.drop_reason, c.name) == ("seeg", "depth", "", c.name_raw)
        row = table[c.name_raw]
        assert c.xyz_mm == pytest.approx((float(row["x"]), float(row["y"]), float(row["z"])))
        assert c.coord_frame == "MNI152"
    for i in range(1, 9):
        assert infos[f"DC0{i}"].drop_reason == "non-neural:dc"
    for name in ("EKG1", "EKG2"):
        assert infos[name].drop_reason == "non-neural:ecg" and not infos[name].neural
    assert sum(c.neural for c in infos.values()) == 88


def test_seeg_hints_override_type_and_subtype(shared_data: Path) -> None:
    ds = DatasetConfig(
        name="seeg",
        inputs=(str(shared_data / "seeg_mne_misc"),),
        channel_types={r"X'\d+": "ecog", "DC0[12]": "misc"},
        ieeg_subtypes={r"X'\d+": "strip"},
    )
    infos = describe(only_source(ds), ds)
    assert (infos["X'3"].type, infos["X'3"].subtype) == ("ecog", "strip")
    assert finite(infos["X'3"].xyz_mm)
    assert infos["DC01"].drop_reason == "non-neural:misc"
    assert (infos["G'1"].type, infos["G'1"].subtype) == ("seeg", "depth")


@pytest.mark.parametrize(
    ("modality", "ieeg_type", "expected"),
    [
        ("auto", "seeg", "seeg"),
        ("auto", "ecog", "ecog"),
        ("ieeg", "ecog", "ecog"),
        ("eeg", "seeg", "eeg"),
    ],
)
def test_seeg_without_electrodes_follows_modality(
    shared_data: Path, tmp_path: Path, modality: str, ieeg_type: str, expected: str
) -> None:
    (tmp_path / "alone.edf").symlink_to(shared_data / "seeg_mne_misc" / "sample_seeg.edf")
    ds = DatasetConfig(name="x", inputs=(str(tmp_path),), modality=modality, ieeg_type=ieeg_type)
    infos = describe(only_source(ds), ds)
    contact = infos["L'1"]
    assert contact.type == expected and contact.neural
    assert not finite(contact.xyz_mm) and contact.coord_frame == "unknown"
    assert infos["EKG1"].drop_reason == "non-neural:ecg"


def test_eeglab_eog_dropped(shared_data: Path) -> None:
    ds = DatasetConfig(name="eeglab", inputs=(str(shared_data / "eeglab_tutorial"),))
    infos = describe(only_source(ds), ds)
    assert {n: c.drop_reason for n, c in infos.items() if not c.neural} == {
        "EOG1": "non-neural:eog",
        "EOG2": "non-neural:eog",
    }
    assert infos["FPz"].name == "Fpz" and infos["FPz"].type == "eeg"
    assert sum(c.neural and finite(c.xyz_mm) for c in infos.values()) == 30


def test_brainvision_ecg_eog_dropped(shared_data: Path) -> None:
    ds = DatasetConfig(name="bv", inputs=(str(shared_data / "brainvision_bv_dig"),))
    infos = describe(only_source(ds), ds)
    assert {n: c.drop_reason for n, c in infos.items() if not c.neural} == {
        "ECG": "non-neural:ecg",
        "HEOG": "non-neural:eog",
        "VEOG": "non-neural:eog",
    }
    assert sum(c.type == "eeg" and finite(c.xyz_mm) for c in infos.values()) == 64


def test_openbci_bdf_polygraphy_dropped(shared_data: Path) -> None:
    ds = DatasetConfig(name="bdf", inputs=(str(shared_data / "openbci_cosleep_bdf"),))
    infos = describe(only_source(ds), ds)
    assert {n: c.type for n, c in infos.items() if not c.neural} == {
        "EMG": "emg",
        "EOG": "eog",
        "ECG": "ecg",
        "acc1": "acc",
        "acc2": "acc",
        "acc3": "acc",
        "Trigger": "stim",
    }
    scalp = ["A1", "A2", "C3", "C4", "F3", "Fz", "F4", "P3", "Pz", "P4", "O1", "O2"]
    assert sorted(n for n, c in infos.items() if c.neural) == sorted(scalp)
    assert all(infos[n].type == "eeg" and finite(infos[n].xyz_mm) for n in scalp)


def test_fif_referenced_names(shared_data: Path) -> None:
    ds = DatasetConfig(name="yasa", inputs=(str(shared_data / "resting_yasa"),))
    infos = describe(only_source(ds), ds)
    assert {n: c.name for n, c in infos.items()} == {"F4-A1": "F4", "CZ-A2": "Cz"}
    assert infos["F4-A1"].xyz_mm == montage_position_mm("F4")
    assert all(c.type == "eeg" and c.neural for c in infos.values())


# --- BIDS trees written here ---------------------------------------------------------------

IEEG_CHANNELS = [
    # name, channels.tsv type, status, electrodes type, x y z in metres (None: n/a)
    ("G1", "ECOG", "good", "grid", (0.010, 0.020, 0.030)),
    ("G2", "ECOG", "good", "grid", (0.011, 0.021, 0.031)),
    ("S1", "ECOG", "good", "strip", (-0.040, 0.005, 0.050)),
    ("S2", "ECOG", "bad", "strip", (-0.041, 0.006, 0.051)),
    ("LA1", "SEEG", "good", "depth", (-0.025, -0.010, -0.015)),
    ("LA2", "SEEG", "good", "depth", None),
    ("T3", "SEEG", "good", "depth", (-0.030, -0.012, -0.016)),  # a contact, not 10-20 T3
    ("EKG1", "ECG", "good", None, None),
    ("REF1", "REF", "good", None, None),
]


def ieeg_bids_tree(root: Path) -> Path:
    folder = root / "sub-01" / "ses-1" / "ieeg"
    write_edf(folder / "sub-01_ses-1_task-rest_run-1_ieeg.edf", [c[0] for c in IEEG_CHANNELS])
    write_tsv(
        folder / "sub-01_ses-1_task-rest_run-1_channels.tsv",
        ["name", "type", "units", "status"],
        [[n, t, "uV", s] for n, t, s, _, _ in IEEG_CHANNELS],
    )
    write_tsv(
        folder / "sub-01_ses-1_space-ACPC_electrodes.tsv",
        ["name", "x", "y", "z", "size", "type"],
        [
            [n, *(xyz if xyz else ("n/a",) * 3), 4.2, e]
            for n, _, _, e, xyz in IEEG_CHANNELS
            if e is not None
        ],
    )
    (folder / "sub-01_ses-1_space-ACPC_coordsystem.json").write_text(
        json.dumps({"iEEGCoordinateSystem": "ACPC", "iEEGCoordinateUnits": "m"})
    )
    return root


def test_bids_ieeg_types_subtypes_coordinates(tmp_path: Path) -> None:
    root = ieeg_bids_tree(tmp_path / "bids")
    ds = DatasetConfig(name="ieeg", inputs=(str(root),), coord_frame="ignored")
    source = only_source(ds)
    assert (source.subject, source.subject_source, source.bids_datatype) == ("01", "bids", "ieeg")
    infos = describe(source, ds)
    expected = {
        "G1": ("ecog", "grid", ""),
        "G2": ("ecog", "grid", ""),
        "S1": ("ecog", "strip", ""),
        "S2": ("ecog", "strip", "bids-status:bad"),
        "LA1": ("seeg", "depth", ""),
        "LA2": ("seeg", "depth", ""),
        "T3": ("seeg", "depth", ""),
        "EKG1": ("ecg", "", "non-neural:ecg"),
        "REF1": ("misc", "", "non-neural:misc"),
    }
    assert {n: (c.type, c.subtype, c.drop_reason) for n, c in infos.items()} == expected
    assert infos["T3"].name == "T3"  # iEEG contacts keep their label
    for name, _, _, _, xyz in IEEG_CHANNELS:
        c = infos[name]
        if xyz is None:
            assert not finite(c.xyz_mm) and c.coord_frame == "unknown"
        else:
            assert c.xyz_mm == pytest.approx(tuple(v * 1000 for v in xyz))
            assert c.coord_frame == "ACPC"
    assert [n for n, c in infos.items() if c.neural] == ["G1", "G2", "S1", "LA1", "LA2", "T3"]


def test_bids_eeg_folder(tmp_path: Path) -> None:
    folder = tmp_path / "sub-02" / "eeg"
    names = ["EEG FP1-REF", "EEG T3-REF", "Cz", "Pz", "VEOG", "X5", "FP1"]
    write_edf(folder / "sub-02_task-rest_eeg.edf", names)
    write_tsv(
        folder / "sub-02_task-rest_channels.tsv",
        ["name", "type", "units", "status"],
        [
            ["EEG FP1-REF", "EEG", "uV", "good"],
            ["EEG T3-REF", "EEG", "uV", "good"],
            ["Cz", "EEG", "uV", "good"],
            ["Pz", "EEG", "uV", "bad"],
            ["VEOG", "VEOG", "uV", "good"],
            ["X5", "EEG", "uV", "n/a"],
            ["FP1", "EEG", "uV", "good"],
        ],
    )
    # Digitised cap positions in a head frame: scalp channels still use the template.
    write_tsv(
        folder / "sub-02_space-CapTrak_electrodes.tsv",
        ["name", "x", "y", "z"],
        [["Cz", 0.0, 0.0, 0.09], ["X5", 0.05, 0.0, 0.05]],
    )
    ds = DatasetConfig(name="eeg", inputs=(str(tmp_path),))
    source = only_source(ds)
    assert (source.subject, source.bids_datatype) == ("02", "eeg")
    infos = describe(source, ds)
    assert {n: (c.name, c.type, c.drop_reason) for n, c in infos.items()} == {
        "EEG FP1-REF": ("Fp1", "eeg", ""),
        "EEG T3-REF": ("T7", "eeg", ""),
        "Cz": ("Cz", "eeg", ""),
        "Pz": ("Pz", "eeg", "bids-status:bad"),
        "VEOG": ("VEOG", "eog", "non-neural:eog"),
        "X5": ("X5", "eeg", ""),
        "FP1": ("Fp1", "eeg", "duplicate name"),
    }
    assert infos["Cz"].xyz_mm == montage_position_mm("Cz")
    assert infos["Cz"].coord_frame == SCALP_FRAME
    assert not finite(infos["X5"].xyz_mm) and infos["X5"].coord_frame == "unknown"


def test_montage_like_contacts_on_a_shaft(tmp_path: Path) -> None:
    """C1..C6 spell 10-05 sites, but C7..C10 reveal an sEEG shaft in an iEEG dataset."""
    shaft = [f"C{i}" for i in range(1, 11)]
    write_edf(tmp_path / "ieeg" / "pat.edf", [*shaft, "Fz"])
    ds = DatasetConfig(name="ieeg", inputs=(str(tmp_path / "ieeg"),), modality="ieeg")
    infos = describe(only_source(ds), ds)
    assert all(infos[n].type == "seeg" and infos[n].name == n for n in shaft)
    assert infos["Fz"].type == "eeg" and finite(infos["Fz"].xyz_mm)
    # TUEG-style scalp EEG: 'T1' (not a 10-05 site) must not turn T7/T8 intracranial.
    write_edf(
        tmp_path / "eeg" / "tueg.edf", ["EEG T1-REF", "EEG T3-REF", "EEG T4-REF", "EEG CZ-REF"]
    )
    ds = DatasetConfig(name="tueg", inputs=(str(tmp_path / "eeg"),))
    infos = describe(only_source(ds), ds)
    assert {c.name: c.type for c in infos.values()} == {
        "EEG T1-REF": "eeg",
        "T7": "eeg",
        "T8": "eeg",
        "Cz": "eeg",
    }


def test_cingulate_shaft_is_not_an_accelerometer(tmp_path: Path) -> None:
    """ACC1..ACC8 is an anterior-cingulate depth electrode; acc1..acc3 alone would not be."""
    write_edf(tmp_path / "pat.edf", [f"ACC{i}" for i in range(1, 9)])
    ds = DatasetConfig(name="ieeg", inputs=(str(tmp_path),))
    infos = describe(only_source(ds), ds)
    assert {c.type for c in infos.values()} == {"seeg"}
    assert all(c.neural for c in infos.values())


def test_bipolar_scalp_pair_gets_midpoint(tmp_path: Path) -> None:
    write_edf(tmp_path / "bip.edf", ["EEG FP1-F7", "EEG F7-T3"])
    ds = DatasetConfig(name="tuab", inputs=(str(tmp_path),))
    infos = describe(only_source(ds), ds)
    pair = infos["EEG F7-T3"]
    assert (pair.name, pair.type) == ("F7-T7", "eeg")
    f7, t7 = montage_position_mm("F7"), montage_position_mm("T7")
    assert f7 is not None and t7 is not None
    assert pair.xyz_mm == pytest.approx(tuple((a + b) / 2 for a, b in zip(f7, t7, strict=True)))


def test_lengths_must_match(shared_data: Path) -> None:
    ds = DatasetConfig(name="yasa", inputs=(str(shared_data / "resting_yasa"),))
    with pytest.raises(ValueError, match="2 channel names but 1 types"):
        describe_channels(["F4-A1", "CZ-A2"], ["eeg"], only_source(ds), ds)


# --- electrodes files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "units"),
    [
        ([0.05, -0.08, 0.1], "m"),
        ([5.0, -8.0, 10.2], "cm"),
        ([50.0, -80.0, 102.0], "mm"),
        ([], "mm"),
    ],
)
def test_infer_units(values: list[float], units: str) -> None:
    assert infer_units(values) == units


@pytest.mark.parametrize(("declared", "factor"), [("m", 1000.0), ("cm", 10.0), ("mm", 1.0)])
def test_electrodes_units_from_coordsystem(tmp_path: Path, declared: str, factor: float) -> None:
    tsv = write_tsv(tmp_path / "x_electrodes.tsv", ["name", "x", "y", "z"], [["A", 1, 2, "n/a"]])
    json_path = tmp_path / "x_coordsystem.json"
    json_path.write_text(json.dumps({"EEGCoordinateUnits": declared, "EEGCoordinateSystem": "T1w"}))
    table = read_electrodes(tsv, json_path, default_frame="fallback")
    row = table.electrodes["A"]
    assert row.xyz_mm[:2] == (1.0 * factor, 2.0 * factor) and math.isnan(row.xyz_mm[2])
    assert (table.frame, table.units, table.units_inferred) == ("T1w", declared, False)


def test_electrodes_frame_from_space_then_dataset(tmp_path: Path) -> None:
    rows = [["A", 0.01, 0.02, 0.03]]
    spaced = write_tsv(
        tmp_path / "sub-1_space-MNI305_electrodes.tsv", ["name", "x", "y", "z"], rows
    )
    plain = write_tsv(tmp_path / "x_electrodes.tsv", ["name", "x", "y", "z"], rows)
    assert read_electrodes(spaced, None, "fallback").frame == "MNI305"
    table = read_electrodes(plain, None, "fallback")
    assert (table.frame, table.units, table.units_inferred) == ("fallback", "m", True)
    assert table.electrodes["A"].xyz_mm == pytest.approx((10.0, 20.0, 30.0))
    broken = write_tsv(tmp_path / "y_electrodes.tsv", ["name", "x", "y"], rows)
    with pytest.raises(ValueError, match="lacks column"):
        read_electrodes(broken)
