"""A recording is its bytes (issue 13, item 10): duplicates are kept once, and a receipt
notices a permission fix or a same-size, same-time rewrite."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.build import build_corpus
from diver.data.index import CorpusIndex
from tests.conftest import unprivileged

CORPUS = CorpusConfig(jobs=1)
REST = ("resting_yasa", "data_resting_EO_200Hz_raw.fif")


def _qc(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "qc.csv", keep_default_na=False).set_index("recording")


def test_byte_identical_recordings_are_kept_once(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("sub-01_rest.fif", "sub-02_rest.fif"):  # one recording under two names
        shutil.copy(shared_data.joinpath(*REST), folder / name)
    out = tmp_path / "corpus"
    ds = DatasetConfig(name="ds", inputs=(str(folder),), subject_pattern=r"sub-(\d+)_")
    build_corpus([ds], CORPUS, out, progress=False)
    qc = _qc(out)
    assert qc.loc["sub-01_rest", "status"] == "kept"
    assert qc.loc["sub-02_rest", "status"] == "quarantined"
    assert qc.loc["sub-02_rest", "reason"] == "duplicate of ds/sub-01_rest (same bytes)"
    assert [p.name for p in (out / "windows" / "ds").iterdir()] == ["sub-01_rest.parquet"]


def test_a_duplicate_across_separately_built_datasets_is_kept_once(
    shared_data: Path, tmp_path: Path
) -> None:
    """Datasets built by separate runs into one folder (chunks of one corpus) meet only
    in the merge step: there the same bytes under two datasets are kept once, by the
    same rule as one run over both (first by dataset, then recording), so the tables and
    the windows the loader sees do not depend on how the corpus was split.  Nothing of
    the other run is deleted: the duplicate's shard stays but is not in the corpus."""
    datasets = []
    for name in ("zeta", "alpha"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(shared_data.joinpath(*REST), folder / f"{name}_rest.fif")
        datasets.append(DatasetConfig(name=name, inputs=(str(folder),)))
    split, whole = tmp_path / "split", tmp_path / "whole"
    for ds in datasets:  # zeta first: its copy is already in the folder when alpha comes
        build_corpus([ds], CORPUS, split, progress=False)
    build_corpus(datasets, CORPUS, whole, progress=False)
    qc = _qc(split)
    assert qc.loc["alpha_rest", "status"] == "kept"
    assert qc.loc["zeta_rest", "status"] == "quarantined"
    assert qc.loc["zeta_rest", "reason"] == "duplicate of alpha/alpha_rest (same bytes)"
    assert (split / "qc.csv").read_text() == (whole / "qc.csv").read_text()
    manifests = [pd.read_csv(out / "manifest.csv").sort_values("dataset") for out in (split, whole)]
    assert manifests[0].reset_index(drop=True).equals(manifests[1].reset_index(drop=True))
    assert (split / "windows" / "zeta" / "zeta_rest.parquet").exists()  # not deleted
    index = CorpusIndex.from_dir(split).frame
    assert set(index["dataset"]) == {"alpha"}
    assert index.equals(CorpusIndex.from_dir(whole).frame)


def test_a_same_size_same_time_rewrite_is_noticed(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "rest.fif"
    shutil.copy(shared_data.joinpath(*REST), path)
    out = tmp_path / "corpus"
    ds = DatasetConfig(name="ds", inputs=(str(folder),))
    build_corpus([ds], CORPUS, out, progress=False)
    receipt = out / "receipts" / "ds" / "rest.json"
    first = json.loads(receipt.read_text())["content"]["sha256"]
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the same size, one byte different
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the same mtime
    result = build_corpus([ds], CORPUS, out, progress=False)
    assert result.processed == 1
    assert json.loads(receipt.read_text())["content"]["sha256"] != first
    assert build_corpus([ds], CORPUS, out, progress=False).processed == 0  # cached again


def test_a_quarantine_for_unreadability_lifts_once_the_file_can_be_read(
    shared_data: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "rest.fif"
    shutil.copy(shared_data.joinpath(*REST), path)
    out = tmp_path / "corpus"
    code = (
        "from diver.cli import main\n"
        f"raise SystemExit(main(['corpus', '--out', {str(out)!r}, '--input', "
        f"'ds={folder}', '--quiet']))\n"
    )
    command = unprivileged([sys.executable, "-c", code])
    path.chmod(0)
    try:
        first = subprocess.run(command, capture_output=True, text=True, check=False)
    finally:
        path.chmod(0o644)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _qc(out).loc["rest", "status"] == "quarantined"
    second = subprocess.run(command, capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stderr[-3000:]
    assert _qc(out).loc["rest", "status"] == "kept"
