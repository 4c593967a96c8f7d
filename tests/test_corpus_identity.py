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
