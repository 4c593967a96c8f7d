"""Discovery on the shared real recordings and on folder trees written here.

Recordings written by these tests are real EDF files (``mne.export.export_raw``), so
anything that later opens them reads a genuine file.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest

from diver.config import DatasetConfig
from diver.corpus.discovery import (
    RecordingSource,
    bids_entities,
    discover_recordings,
    strip_extension,
)
from tests.conftest import unprivileged


def write_edf(path: Path, names: list[str], seconds: float = 2.0) -> Path:
    """A small genuine EDF with the given channel labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sfreq = 100.0
    data = rng.normal(0.0, 20e-6, (len(names), int(seconds * sfreq)))
    raw = mne.io.RawArray(data, mne.create_info(names, sfreq, "eeg"), verbose="error")
    mne.export.export_raw(path, raw, fmt="edf", overwrite=True, verbose="error")
    return path


def dataset(*inputs: Path | str, **kwargs: object) -> DatasetConfig:
    return DatasetConfig(name="test", inputs=tuple(str(p) for p in inputs), **kwargs)  # type: ignore[arg-type]


def by_id(sources: list[RecordingSource]) -> dict[str, RecordingSource]:
    return {s.recording: s for s in sources}


# --- shared real data --------------------------------------------------------------------


def test_eegmmidb_twelve_runs_one_subject(shared_data: Path) -> None:
    ds = dataset(shared_data / "eegmmidb_S001", subject_pattern=r"S(\d{3})R")
    sources = discover_recordings(ds)
    assert [s.recording for s in sources] == [f"S001R{r:02d}" for r in range(3, 15)]
    assert {s.subject for s in sources} == {"001"}
    assert {s.subject_source for s in sources} == {"pattern"}
    assert all(s.problem == "" and s.dataset == "test" for s in sources)
    assert all(s.path.suffix == ".edf" and s.path.is_file() for s in sources)
    assert all(s.bids_datatype is None and s.electrodes_tsv is None for s in sources)


def test_shared_folder_lists_recordings_not_companions(shared_data: Path) -> None:
    sources = by_id(discover_recordings(dataset(shared_data)))
    assert set(sources) == {
        "brainvision_bv_dig/bv_dig_test",
        "eeglab_tutorial/eeglab_data",
        "eegmmidb_128hz_run/test_edf_overlapping_annotations",
        *(f"eegmmidb_S001/S001R{r:02d}" for r in range(3, 15)),
        "openbci_cosleep_bdf/multiple_annotation_chans",
        "resting_yasa/data_resting_EO_200Hz_raw",
        "seeg_mne_misc/sample_seeg",
    }
    assert sources["brainvision_bv_dig/bv_dig_test"].path.name == "bv_dig_test.vhdr"
    assert sources["eeglab_tutorial/eeglab_data"].path.name == "eeglab_data.set"
    assert all(s.problem == "" for s in sources.values())


def test_seeg_electrodes_paired_by_stem(shared_data: Path) -> None:
    (source,) = discover_recordings(dataset(shared_data / "seeg_mne_misc"))
    assert source.electrodes_tsv == shared_data / "seeg_mne_misc" / "sample_seeg_electrodes.tsv"
    assert source.channels_tsv is None and source.coordsystem_json is None
    assert source.bids_datatype is None


def test_subject_falls_back_to_recording_id_with_warning(
    shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="diver.corpus.discovery"):
        (source,) = discover_recordings(dataset(shared_data / "resting_yasa"))
    assert source.recording == "data_resting_EO_200Hz_raw"
    assert (source.subject, source.subject_source) == (source.recording, "recording")
    assert "1 of 1 recordings have no BIDS subject" in caplog.text
    assert "its own subject" in caplog.text


def test_single_file_input_and_overlap_listed_once(shared_data: Path) -> None:
    folder = shared_data / "eegmmidb_S001"
    sources = discover_recordings(
        dataset(folder / "S001R05.edf", folder, subject_pattern="S(\\d+)R")
    )
    assert len(sources) == 12
    assert by_id(sources)["S001R05"].path == folder / "S001R05.edf"


# --- problems and companions -------------------------------------------------------------


def test_missing_input_names_path_and_dataset(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        discover_recordings(DatasetConfig(name="tueg-part", inputs=(str(missing),)))
    assert "tueg-part" in str(info.value)


def test_unknown_extension_and_empty_file_get_problems(tmp_path: Path) -> None:
    write_edf(tmp_path / "good.edf", ["Cz"])
    (tmp_path / "weird.xyz").write_bytes(b"\x00\x01")
    (tmp_path / "empty.edf").write_bytes(b"")
    (tmp_path / "noext").write_bytes(b"data")
    for companion in ("notes.txt", "good_channels.tsv", "README", "info.json", "scan.nii.gz"):
        (tmp_path / companion).write_text("x")
    (tmp_path / ".hidden.edf").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "blob.edf").write_bytes(b"x")
    sources = by_id(discover_recordings(dataset(tmp_path)))
    assert {k: v.problem for k, v in sources.items()} == {
        "good": "",
        "weird": "unknown extension '.xyz'",
        "empty": "empty file (0 bytes)",
        "noext": "no file extension",
    }


def test_broken_symlink_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "annexed.edf").symlink_to(tmp_path / "not-fetched")
    (source,) = discover_recordings(dataset(tmp_path))
    assert source.recording == "annexed"
    assert source.problem.startswith("broken link")


def test_brainvision_data_file_is_not_a_recording(shared_data: Path, tmp_path: Path) -> None:
    for name in ("bv_dig_test.vhdr", "bv_dig_test.vmrk", "bv_dig_test.eeg"):
        shutil.copy(shared_data / "brainvision_bv_dig" / name, tmp_path / name)
    # A header whose DataFile names a binary with another stem.
    (tmp_path / "renamed.vhdr").write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n[Common Infos]\n"
        "DataFile=payload.eeg\nMarkerFile=renamed.vmrk\n"
    )
    (tmp_path / "payload.eeg").write_bytes(b"\x00" * 16)
    # A .eeg with no header anywhere is a Nihon Kohden recording.
    (tmp_path / "nihon.eeg").write_bytes(b"\x00" * 16)
    sources = by_id(discover_recordings(dataset(tmp_path)))
    assert set(sources) == {"bv_dig_test", "renamed", "nihon"}
    assert sources["bv_dig_test"].path.suffix == ".vhdr"
    assert sources["nihon"].path.suffix == ".eeg"


def test_folder_recordings_and_dat_files(tmp_path: Path) -> None:
    mff = tmp_path / "night.mff"
    mff.mkdir()
    (mff / "info.xml").write_text("<x/>")
    (mff / "signal1.bin").write_bytes(b"\x00" * 8)
    (tmp_path / "blank.mff").mkdir()
    (tmp_path / "bci.dat").write_bytes(b"HeaderLen=1234 SourceCh=64\r\n")
    (tmp_path / "table.dat").write_bytes(b"1 2 3\n")
    sources = by_id(discover_recordings(dataset(tmp_path)))
    assert set(sources) == {"night", "blank", "bci"}
    assert sources["night"].path == mff and sources["night"].problem == ""
    assert sources["blank"].problem == "empty folder"


def test_same_id_from_two_inputs_is_disambiguated(tmp_path: Path) -> None:
    write_edf(tmp_path / "site_a" / "rec.edf", ["Cz"])
    write_edf(tmp_path / "site_b" / "rec.edf", ["Cz"])
    sources = discover_recordings(dataset(tmp_path / "site_a", tmp_path / "site_b"))
    assert [s.recording for s in sources] == ["site_a/rec", "site_b/rec"]


@pytest.mark.parametrize(
    ("name", "stem"),
    [("a.fif.gz", "a"), ("sub-01_task-x_eeg.vhdr", "sub-01_task-x_eeg"), ("x.cdt.dpa", "x")],
)
def test_strip_extension(name: str, stem: str) -> None:
    assert strip_extension(name) == stem


def test_bids_entities() -> None:
    assert bids_entities("sub-01_ses-1_task-rest_run-2_ieeg.edf") == (
        {"sub": "01", "ses": "1", "task": "rest", "run": "2"},
        "ieeg",
    )
    assert bids_entities("S001R03.edf") is None
    assert bids_entities("sub-01.edf") is None


# --- BIDS ----------------------------------------------------------------------------------


def test_bids_subject_datatype_and_sidecars(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    (root / "dataset_description.json").parent.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    folder = root / "sub-01" / "ses-1" / "ieeg"
    prefix = "sub-01_ses-1_task-rest_acq-clin"
    rec = write_edf(folder / f"{prefix}_run-1_ieeg.edf", ["LA1", "LA2"])
    write_edf(folder / f"{prefix}_run-2_ieeg.edf", ["LA1", "LA2"])
    for name in (
        f"{prefix}_run-1_channels.tsv",  # most specific for run 1
        "sub-01_ses-1_task-rest_channels.tsv",  # inherited by run 2
        "sub-01_ses-1_acq-clin_space-ACPC_electrodes.tsv",
        "sub-01_ses-1_acq-clin_space-MNI152NLin2009bAsym_electrodes.tsv",
        "sub-01_ses-1_acq-research_space-MNI305_electrodes.tsv",  # contradicts acq
        "sub-01_ses-1_acq-clin_space-ACPC_coordsystem.json",
        "sub-01_ses-1_acq-clin_space-MNI152NLin2009bAsym_coordsystem.json",
        f"{prefix}_run-1_events.tsv",
        "sub-01_ses-1_scans.tsv",
    ):
        (folder / name).write_text("name\n")
    # Copies in derivatives/ must not be counted twice.
    write_edf(root / "derivatives" / "clean" / "sub-01" / "ieeg" / rec.name, ["LA1"])
    sources = discover_recordings(dataset(root, subject_pattern=r"(\d+)"))
    assert [s.recording for s in sources] == [
        f"sub-01/ses-1/ieeg/{prefix}_run-1_ieeg",
        f"sub-01/ses-1/ieeg/{prefix}_run-2_ieeg",
    ]
    run1, run2 = sources
    assert (run1.subject, run1.subject_source, run1.bids_datatype) == ("01", "bids", "ieeg")
    assert run1.channels_tsv == folder / f"{prefix}_run-1_channels.tsv"
    assert run2.channels_tsv == folder / "sub-01_ses-1_task-rest_channels.tsv"
    mni = "sub-01_ses-1_acq-clin_space-MNI152NLin2009bAsym"
    for source in sources:
        assert source.electrodes_tsv == folder / f"{mni}_electrodes.tsv"
        assert source.coordsystem_json == folder / f"{mni}_coordsystem.json"


def test_bids_eeg_folder_and_subject_from_folder(tmp_path: Path) -> None:
    folder = tmp_path / "sub-A7" / "eeg"
    write_edf(folder / "sub-A7_task-sleep_eeg.edf", ["Cz"])
    write_edf(tmp_path / "sub-A7" / "extra" / "night2.edf", ["Cz"])
    sources = by_id(discover_recordings(dataset(tmp_path)))
    bids = sources["sub-A7/eeg/sub-A7_task-sleep_eeg"]
    assert (bids.subject, bids.subject_source, bids.bids_datatype) == ("A7", "bids", "eeg")
    assert bids.channels_tsv is None and bids.electrodes_tsv is None
    loose = sources["sub-A7/extra/night2"]
    assert (loose.subject, loose.subject_source, loose.bids_datatype) == ("A7", "bids", None)


def test_pattern_without_group_and_on_configured_path(tmp_path: Path) -> None:
    write_edf(tmp_path / "patient07" / "day1.edf", ["Cz"])
    (source,) = discover_recordings(dataset(tmp_path / "patient07", subject_pattern=r"patient\d+"))
    assert (source.recording, source.subject, source.subject_source) == (
        "day1",
        "patient07",
        "pattern",
    )


def test_same_stem_in_one_folder_keeps_both(tmp_path: Path) -> None:
    """x.edf beside x.gdf: both are listed, told apart by their extension."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "x.edf").write_bytes(b"\x01" * 64)
    (folder / "x.gdf").write_bytes(b"\x01" * 64)
    (folder / "y.edf").write_bytes(b"\x01" * 64)
    sources = discover_recordings(DatasetConfig(name="d", inputs=(str(folder),)))
    assert [s.recording for s in sources] == ["in/x_edf", "in/x_gdf", "y"]
    assert {s.path.name for s in sources} == {"x.edf", "x.gdf", "y.edf"}


# --- unreadable folders and symlinks (issue 13, items 4 and 5) -------------------------


def _recording(shared_data: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shared_data / "resting_yasa" / "data_resting_EO_200Hz_raw.fif", path)


def test_symlinked_folders_are_followed_once_and_link_loops_are_rows(
    shared_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    _recording(shared_data, root / "sub" / "r.fif")
    (root / "sub" / "up").symlink_to("..")  # a folder loop back up the tree
    (root / "alias").symlink_to(root / "sub")  # the same folder under a second name
    (root / "a.edf").symlink_to("b.edf")  # a file loop
    (root / "b.edf").symlink_to("a.edf")
    outside = tmp_path / "elsewhere"
    _recording(shared_data, outside / "x.fif")
    (root / "linked").symlink_to(outside)  # a symlinked subject folder
    found = {s.recording: s.problem for s in discover_recordings(dataset(root))}
    assert found == {
        "sub/r": "",
        "linked/x": "",
        "a": "symlink loop",
        "b": "symlink loop",
    }


def _as_unprivileged(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        unprivileged([sys.executable, "-c", code]),
        cwd=cwd, capture_output=True, text=True, check=False,
    )  # fmt: skip


def test_an_unreadable_folder_is_a_quarantined_row_and_strict_counts_it(
    shared_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ds"
    _recording(shared_data, root / "ok.fif")
    (root / "locked").mkdir()
    for name in ("eeglab_data.set", "eeglab_data.fdt"):  # another recording's bytes
        shutil.copy(shared_data / "eeglab_tutorial" / name, root / "locked" / name)
    out = tmp_path / "corpus"
    code = (
        "import sys\n"
        "from diver.cli import main\n"
        f"sys.exit(main(['corpus', '--out', {str(out)!r}, '--input', 'ds={root}', "
        "'--strict', '--quiet']))\n"
    )
    first = _as_unprivileged(code, tmp_path)  # readable: both recordings kept
    assert first.returncode == 0, first.stderr[-3000:]
    shard = out / "windows" / "ds" / "locked__eeglab_data.parquet"
    assert shard.exists()
    (root / "locked").chmod(0)
    try:
        second = _as_unprivileged(code, tmp_path)
    finally:
        (root / "locked").chmod(0o755)
    assert second.returncode == 3, second.stderr[-3000:]  # --strict: a quarantined row
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False).set_index("recording")
    assert qc.loc["locked", "status"] == "quarantined"
    assert "unreadable folder" in qc.loc["locked", "reason"]
    assert shard.exists()  # its shards are kept: the folder may still hold them
