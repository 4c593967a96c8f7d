"""The corpus stage touches only the datasets it builds (issue 13, item 3)."""

from __future__ import annotations

import fcntl
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest

from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.build import CorpusError, build_corpus

CORPUS = CorpusConfig(jobs=1)


@pytest.fixture()
def inputs(shared_data: Path, tmp_path: Path) -> dict[str, Path]:
    """Two small datasets of real recordings: ``a`` with two, ``b`` with one."""
    a, b = tmp_path / "in" / "a", tmp_path / "in" / "b"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    shutil.copy(shared_data / "resting_yasa" / "data_resting_EO_200Hz_raw.fif", a / "rest.fif")
    shutil.copy(
        shared_data / "eegmmidb_128hz_run" / "test_edf_overlapping_annotations.edf",
        a / "run.edf",
    )
    for name in ("eeglab_data.set", "eeglab_data.fdt"):  # different bytes (not a duplicate)
        shutil.copy(shared_data / "eeglab_tutorial" / name, b / name)
    return {"a": a, "b": b}


def _ds(name: str, folder: Path) -> DatasetConfig:
    return DatasetConfig(name=name, inputs=(str(folder),))


def _files(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".parquet", ".json")
    }


def test_building_one_dataset_keeps_the_others(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    build_corpus([_ds("a", inputs["a"]), _ds("b", inputs["b"])], CORPUS, out, progress=False)
    b_files = {k: v for k, v in _files(out).items() if "/b/" in k}
    assert any(k.startswith("windows/b/") for k in b_files)
    build_corpus([_ds("a", inputs["a"])], CORPUS, out, progress=False)  # `--dataset a`
    assert {k: v for k, v in _files(out).items() if "/b/" in k} == b_files
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest["dataset"]) == ["a", "b"]
    qc = pd.read_csv(out / "qc.csv")
    assert sorted(set(qc["dataset"])) == ["a", "b"] and len(qc) == 3


def test_files_of_removed_recordings_go_only_with_prune(
    inputs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "corpus"
    build_corpus([_ds("a", inputs["a"])], CORPUS, out, progress=False)
    shard = out / "windows" / "a" / "rest.parquet"
    assert shard.exists()
    (inputs["a"] / "rest.fif").unlink()
    before = _files(out)
    with pytest.raises(CorpusError, match="--prune") as err:
        build_corpus([_ds("a", inputs["a"])], CORPUS, out, progress=False)
    assert "windows/a/rest.parquet" in str(err.value)
    assert _files(out) == before  # nothing deleted
    with caplog.at_level(logging.WARNING, logger="diver.corpus.build"):
        build_corpus([_ds("a", inputs["a"])], CORPUS, out, progress=False, prune=True)
    assert not shard.exists() and not (out / "receipts" / "a" / "rest.json").exists()
    assert str(shard) in caplog.text
    assert list(pd.read_csv(out / "qc.csv")["recording"]) == ["run"]


def test_a_second_run_over_the_same_dataset_is_refused(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "corpus"
    (out / ".locks").mkdir(parents=True)
    with (out / ".locks" / "a.lock").open("w") as held:  # a run over `a` in progress
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(CorpusError, match="another `diver corpus` is building dataset 'a'"):
            build_corpus([_ds("a", inputs["a"])], CORPUS, out, progress=False)
        # a run over another dataset of the same folder goes on meanwhile
        result = build_corpus([_ds("b", inputs["b"])], CORPUS, out, progress=False)
        assert result.recordings == 1
    assert not (out / "windows" / "a").exists()


def test_strict_counts_a_recording_with_no_window_left(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every window of this run fails QC: it is `qc_rejected`, not `kept` (issue 13)."""
    from diver.cli import main

    run = shared_data / "eegmmidb_128hz_run" / "test_edf_overlapping_annotations.edf"
    out = tmp_path / "corpus"
    code = main(["corpus", "--out", str(out), "--input", f"r={run}", "--strict", "--quiet"])
    assert code == 3
    assert "1 with no window passing QC" in capsys.readouterr().err
    qc = pd.read_csv(out / "qc.csv")
    assert list(qc["status"]) == ["qc_rejected"]
    assert list(qc["reason"]) == ["every window failed QC"]
