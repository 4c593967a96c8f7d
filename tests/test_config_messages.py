"""Small config mistakes get a message naming the dataset or key, not a traceback
(issue 13, item 10)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from diver.cli import main


def _corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["corpus", "--out", str(tmp_path / "out"), "--quiet", *args])
    assert code == 2  # a clean error, not an uncaught exception
    return capsys.readouterr().err


def _config(tmp_path: Path, dataset: dict) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"corpus": {"datasets": [dataset]}}))
    return str(path)


def test_clashing_recording_ids_name_the_dataset(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for parent in ("p", "q"):  # two input folders named `data`, each with r.fif
        folder = tmp_path / parent / "data"
        folder.mkdir(parents=True)
        recording = shared_data / "resting_yasa" / "data_resting_EO_200Hz_raw.fif"
        shutil.copy(recording, folder / "r.fif")
    err = _corpus(tmp_path, capsys, "--input", f"ds={tmp_path / 'p/data'}",
                  "--input", f"ds={tmp_path / 'q/data'}")  # fmt: skip
    assert "dataset 'ds': recording ids clash" in err and "Traceback" not in err


def test_a_bad_subject_pattern_names_the_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in").mkdir()
    config = _config(tmp_path, {"name": "a", "inputs": [str(tmp_path / "in")],
                                "subject_pattern": "sub-(\\d+"})  # fmt: skip
    err = _corpus(tmp_path, capsys, "--config", config)
    assert "dataset 'a': subject_pattern" in err and "not a regular expression" in err


@pytest.mark.parametrize(("entry", "says"), [
    ("{nope}/in", "unknown placeholder(s) ['nope']"),
    ("{results_dir/in", "literal braces"),
])  # fmt: skip
def test_a_bad_placeholder_in_inputs_names_the_dataset(
    entry: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _corpus(tmp_path, capsys, "--config", _config(tmp_path, {"name": "a", "inputs": [entry]}))
    assert "dataset 'a'" in err and says in err


def test_non_finite_numbers_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("corpus:\n  sfreq: .nan\n")
    assert main(["config", str(path)]) == 2
    assert "corpus.sfreq: nan is not a finite number" in capsys.readouterr().err
