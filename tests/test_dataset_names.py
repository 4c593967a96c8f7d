"""Dataset names cannot lead out of the corpus folder (issue 13, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diver.cli import main
from diver.config import ConfigError, DatasetConfig, config_from_dict
from diver.corpus.shards import shard_path


@pytest.mark.parametrize("name", ["..", ".", "../../escaped", "/abs", "a/b", ""])
def test_unsafe_names_are_refused_by_the_config_and_the_dataclass(name: str) -> None:
    raw = {"corpus": {"datasets": [{"name": name, "inputs": ["x"]}]}}
    with pytest.raises(ConfigError, match="name"):
        config_from_dict(raw, source="study.yaml")
    with pytest.raises(ConfigError, match="not allowed"):
        DatasetConfig(name=name, inputs=("x",))


def test_safe_names_pass() -> None:
    for name in ("tuh_eeg", "mayo.v2", "a-b", "..."):
        assert DatasetConfig(name=name, inputs=("x",)).name == name


@pytest.mark.parametrize("spec", ["../../escaped={}", "/tmp/escaped-abs={}", "..={}"])
def test_corpus_input_names_cannot_escape_the_output(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recordings = tmp_path / "in"
    recordings.mkdir()
    (recordings / "a.edf").write_bytes(b"")
    work = tmp_path / "work"
    (work / "out").mkdir(parents=True)
    before = set(tmp_path.rglob("*"))
    code = main(["corpus", "--out", str(work / "out"), "--input", spec.format(recordings)])
    assert code == 2
    assert "not allowed" in capsys.readouterr().err
    assert set(tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not Path("/tmp/escaped-abs").exists()


def test_shard_paths_stay_inside_the_corpus(tmp_path: Path) -> None:
    windows = tmp_path / "windows"
    assert shard_path(tmp_path, "ds", "sub-01/run") == windows / "ds" / "sub-01__run.parquet"
    assert shard_path(tmp_path, "ds", "..").parent == windows / "ds"
    for dataset, recording in (("..", "x"), ("/abs", "x"), ("ds/../..", "x"), ("", "x")):
        with pytest.raises(ValueError, match="leaves"):
            shard_path(tmp_path, dataset, recording)
