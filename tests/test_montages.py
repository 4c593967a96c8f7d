"""A dataset's named MNE montage (``DatasetConfig.montage``): typing, names, positions.

The expected positions are MNE's own (``make_standard_montage(kind)``, metres) times
1000, so these tests check the plumbing, not MNE's numbers.
"""

from __future__ import annotations

import math
from pathlib import Path

import mne
import numpy as np
import pytest

from diver.config import ConfigError, DatasetConfig
from diver.corpus.channels import (
    ChannelInfo,
    MontageMatch,
    dataset_montage_name,
    describe_channels,
)
from diver.corpus.coordinates import (
    SCALP_FRAME,
    UNKNOWN_FRAME,
    montage_position_mm,
    named_montage,
    named_montage_frame,
)
from diver.corpus.discovery import RecordingSource

GSN = "GSN-HydroCel-129"
GSN_NAMES = [f"E{i}" for i in range(1, 129)] + ["Cz"]
BIOSEMI = "biosemi128"
BIOSEMI_NAMES = [f"{bank}{i}" for bank in "ABCD" for i in range(1, 33)]


def mne_mm(kind: str) -> dict[str, np.ndarray]:
    """MNE's positions of montage ``kind`` in millimetres."""
    positions = mne.channels.make_standard_montage(kind).get_positions()["ch_pos"]
    return {name: np.asarray(xyz) * 1000.0 for name, xyz in positions.items()}


def source(tmp_path: Path, *, bids_datatype: str | None = None, channels_tsv: Path | None = None):
    return RecordingSource(
        dataset="ds",
        path=tmp_path / "rec.edf",
        recording="rec",
        subject="s1",
        subject_source="recording",
        bids_datatype=bids_datatype,
        channels_tsv=channels_tsv,
        electrodes_tsv=None,
        coordsystem_json=None,
    )


def describe(
    names: list[str],
    tmp_path: Path,
    *,
    types: list[str] | None = None,
    bids_datatype: str | None = None,
    channels_tsv: Path | None = None,
    **dataset: object,
) -> dict[str, ChannelInfo]:
    ds = DatasetConfig(name="ds", inputs=(str(tmp_path),), **dataset)  # type: ignore[arg-type]
    src = source(tmp_path, bids_datatype=bids_datatype, channels_tsv=channels_tsv)
    infos = describe_channels(names, types or ["eeg"] * len(names), src, ds)
    return {info.name_raw: info for info in infos}


def test_egi_129_names_take_the_gsn_positions(tmp_path: Path) -> None:
    infos = describe(GSN_NAMES, tmp_path, modality="eeg", montage=GSN)
    expected = mne_mm(GSN)
    assert len(expected) == 129
    for name in GSN_NAMES:
        info = infos[name]
        assert (info.type, info.name, info.drop_reason) == ("eeg", name, "")
        np.testing.assert_allclose(info.xyz_mm, expected[name], rtol=0, atol=1e-9)
        assert info.coord_frame == "mne_GSN-HydroCel-129"
    # GSN's Cz is the net's vertex reference, not the 10-05 template's Cz
    assert not np.allclose(infos["Cz"].xyz_mm, montage_position_mm("Cz"), atol=1.0)


def test_montage_names_match_case_insensitively_and_keep_the_montage_spelling(
    tmp_path: Path,
) -> None:
    infos = describe(["e1", " E2. ", "EEG E3", "CZ"], tmp_path, modality="eeg", montage=GSN)
    assert [infos[n].name for n in ["e1", " E2. ", "EEG E3", "CZ"]] == ["E1", "E2", "E3", "Cz"]
    np.testing.assert_allclose(infos["e1"].xyz_mm, mne_mm(GSN)["E1"])


@pytest.mark.parametrize("label", ["VREF", "E129"])
def test_the_gsn_vertex_reference_answers_to_its_other_labels(tmp_path: Path, label: str) -> None:
    """MNE's MFF reader calls the reference VREF; other exports call it E129."""
    info = describe(["E1", label], tmp_path, modality="eeg", montage=GSN)[label]
    assert (info.type, info.name) == ("eeg", "Cz")
    np.testing.assert_allclose(info.xyz_mm, mne_mm(GSN)["Cz"])


def test_biosemi_128_names_take_the_biosemi_positions(tmp_path: Path) -> None:
    infos = describe(BIOSEMI_NAMES, tmp_path, modality="eeg", montage=BIOSEMI)
    expected = mne_mm(BIOSEMI)
    for name in BIOSEMI_NAMES:
        info = infos[name]
        assert (info.type, info.name, info.drop_reason) == ("eeg", name, "")
        np.testing.assert_allclose(info.xyz_mm, expected[name], rtol=0, atol=1e-9)
        assert info.coord_frame == "mne_biosemi128"


def test_biosemi_c1_and_a1_are_biosemi_electrodes_not_10_05_sites(tmp_path: Path) -> None:
    names = ["C1", "A1", "A2-A1", "D5-A1"]
    infos = describe(names, tmp_path, modality="eeg", montage=BIOSEMI)
    biosemi = mne_mm(BIOSEMI)
    for name in ("C1", "A1"):
        assert infos[name].name == name
        np.testing.assert_allclose(infos[name].xyz_mm, biosemi[name])
        assert not np.allclose(infos[name].xyz_mm, montage_position_mm(name), atol=1.0)
    # BioSemi A1 is near the vertex, so it is not a reference suffix to strip either
    # (without the montage, "A2-A1" would be the 10-05 ear site A2): a pair of BioSemi
    # electrodes is a bipolar derivation placed at their midpoint.
    for pair in ("A2-A1", "D5-A1"):
        left, right = pair.split("-")
        assert infos[pair].name == pair
        np.testing.assert_allclose(infos[pair].xyz_mm, (biosemi[left] + biosemi[right]) / 2)
        assert infos[pair].coord_frame == "mne_biosemi128"


def test_without_a_montage_the_same_names_follow_the_10_05_rules(tmp_path: Path) -> None:
    infos = describe(["C1", "A1", "E1", "F4-A1", "A2-A1"], tmp_path, modality="eeg")
    np.testing.assert_allclose(infos["C1"].xyz_mm, montage_position_mm("C1"))
    assert infos["C1"].coord_frame == SCALP_FRAME
    np.testing.assert_allclose(infos["A1"].xyz_mm, montage_position_mm("A1"))
    assert infos["F4-A1"].name == "F4"  # the ear reference suffix goes, as before
    assert infos["A2-A1"].name == "A2"
    assert infos["E1"].type == "eeg"
    assert all(math.isnan(v) for v in infos["E1"].xyz_mm)
    assert infos["E1"].coord_frame == UNKNOWN_FRAME


def test_a_10_05_name_absent_from_the_montage_still_gets_10_05(tmp_path: Path) -> None:
    names = ["A1", "FP1", "EEG T3-REF", "X9", "B7-REF", "C3-A1"]
    infos = describe(names, tmp_path, modality="eeg", montage=BIOSEMI)
    assert infos["FP1"].name == "Fp1"
    np.testing.assert_allclose(infos["FP1"].xyz_mm, montage_position_mm("Fp1"))
    assert infos["FP1"].coord_frame == SCALP_FRAME
    assert infos["EEG T3-REF"].name == "T7"
    np.testing.assert_allclose(infos["EEG T3-REF"].xyz_mm, montage_position_mm("T7"))
    assert infos["X9"].type == "eeg"  # the declared modality, as before
    assert infos["X9"].coord_frame == UNKNOWN_FRAME
    assert infos["A1"].coord_frame == "mne_biosemi128"
    assert infos["B7-REF"].name == "B7"  # a montage name with a reference suffix
    np.testing.assert_allclose(infos["B7-REF"].xyz_mm, mne_mm(BIOSEMI)["B7"])
    assert infos["C3-A1"].name == "C3-A1"  # both BioSemi: a pair, not C3 over an ear


def test_earlier_rules_still_win_over_the_montage(tmp_path: Path) -> None:
    tsv = tmp_path / "channels.tsv"
    tsv.write_text("name\ttype\nE126\tEOG\nE127\tEOG\n")
    names = ["E1", "E126", "E127", "E8", "E25", "Status", "ECG"]
    infos = describe(
        names,
        tmp_path,
        types=["eeg", "eeg", "eeg", "eeg", "eeg", "stim", "eeg"],
        channels_tsv=tsv,
        modality="eeg",
        montage=GSN,
        channel_types={"E8|E25": "misc"},
    )
    assert infos["E1"].neural
    assert (infos["E126"].type, infos["E126"].name) == ("eog", "E126")  # channels.tsv
    assert infos["E8"].type == infos["E25"].type == "misc"  # the dataset's hints
    assert infos["Status"].type == "stim"  # the reader's type
    assert infos["ECG"].type == "ecg"  # the non-neural name pattern
    for name in ("E126", "E8", "Status", "ECG"):
        assert not infos[name].neural
        assert all(math.isnan(v) for v in infos[name].xyz_mm)


def test_montage_names_make_an_auto_dataset_scalp(tmp_path: Path) -> None:
    """In an 'auto' dataset, montage names count as scalp names for the majority rule."""
    names = [f"E{i}" for i in range(1, 11)] + ["X1"]
    infos = describe(names, tmp_path, modality="auto", montage=GSN)
    assert {info.type for info in infos.values()} == {"eeg"}
    without = describe(names, tmp_path, modality="auto")
    assert {info.type for info in without.values()} == {"seeg"}


def test_a_bids_ieeg_recording_ignores_the_scalp_montage(tmp_path: Path) -> None:
    infos = describe(["B1", "B2", "B12"], tmp_path, bids_datatype="ieeg", montage=BIOSEMI)
    assert {info.type for info in infos.values()} == {"seeg"}
    assert infos["B1"].name == "B1"
    assert all(info.coord_frame != "mne_biosemi128" for info in infos.values())


def test_a_montage_in_the_templates_space_shares_its_frame(tmp_path: Path) -> None:
    """colin27_1020 is MNE's template space (coord_frame 'mri'): one frame label."""
    info = describe(["Cz"], tmp_path, modality="eeg", montage="colin27_1020")["Cz"]
    assert info.coord_frame == SCALP_FRAME
    np.testing.assert_allclose(info.xyz_mm, montage_position_mm("Cz"), atol=1e-6)
    assert named_montage_frame(GSN, "unknown") == "mne_GSN-HydroCel-129"


def test_spherical_montages_are_not_in_the_templates_space() -> None:
    """What the coordinates module documents: EGI/BioSemi are MNE 'unknown' frame."""
    for kind in (GSN, BIOSEMI):
        assert mne.channels.make_standard_montage(kind).get_positions()["coord_frame"] != "mri"
        assert named_montage(kind).frame == f"mne_{kind}"


def test_a_montage_is_read_once() -> None:
    assert named_montage(GSN) is named_montage(GSN)


def test_a_label_is_looked_up_in_each_named_montage_in_turn() -> None:
    """One name, or several for a dataset recorded with several systems (PEERS)."""
    assert dataset_montage_name("e5", GSN, None) == MontageMatch(GSN, ("E5",))
    assert dataset_montage_name("e5", None, None) is None
    both = (BIOSEMI, GSN)
    assert dataset_montage_name("E5", both, None) == MontageMatch(GSN, ("E5",))
    assert dataset_montage_name("D32", both, None) == MontageMatch(BIOSEMI, ("D32",))
    assert dataset_montage_name("Cz", both, None) == MontageMatch(GSN, ("Cz",))
    assert dataset_montage_name("A1-E5", both, None) is None  # a pair is one montage's
    assert dataset_montage_name("Fp1", both, None) is None


def test_an_unknown_montage_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not one of MNE's built-in montages"):
        DatasetConfig(name="ds", inputs=(str(tmp_path),), montage="GSN-HydroCel-999")
