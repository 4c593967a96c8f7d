"""The results layout (``diver.study.layout``) spells the paths the rule files use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from diver.study.cells import CELL_PATTERN, Cell
from diver.study.layout import StudyLayout
from tests.conftest import REPO_ROOT


def test_cell_paths_and_patterns_agree() -> None:
    layout = StudyLayout("results")
    cell = Cell("mixed", "1s", "debug", 0.5, 2, subjects=4)
    assert cell.key == "mixed/1s/debug/s4_f0.5_e2"
    assert layout.cell_metrics(cell.key) == Path(
        "results/pretrain/mixed/1s/debug/s4_f0.5_e2/metrics.json"
    )
    # The wildcard pattern formats into the same path the cell's key gives.
    pattern = str(layout.cell_model(CELL_PATTERN))
    assert pattern.format(**cell.wildcards()) == str(layout.cell_model(cell.key))
    assert layout.finetune_metrics("tuab", "linear", cell.key) == Path(
        "results/finetune/tuab/linear/mixed/1s/debug/s4_f0.5_e2/metrics.json"
    )


def test_logs_are_flat_per_stage() -> None:
    layout = StudyLayout("r")
    assert layout.log("corpus") == Path("r/logs/corpus.log")
    assert layout.log("pretrain", "mixed/1s/debug/f1.0_e2") == Path(
        "r/logs/pretrain/mixed_1s_debug_f1.0_e2.log"
    )
    assert str(layout.log("finetune", "{task}/{mode}/" + CELL_PATTERN)) == (
        "r/logs/finetune/{task}_{mode}_{family}_{patch}_{size}_{data}_e{epochs}.log"
    )


def test_fit_summaries_lists_what_exists(tmp_path: Path) -> None:
    layout = StudyLayout(tmp_path)
    assert layout.fit_summaries() == []
    for family, patch in (("mixed", "1s"), ("eeg", "0.1s")):
        path = layout.fit_summary(family, patch)
        path.parent.mkdir(parents=True)
        path.write_text("{}")
    assert layout.fit_summaries() == [
        tmp_path / "scaling/eeg/0.1s/fit.json",
        tmp_path / "scaling/mixed/1s/fit.json",
    ]


def _diver_config(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "diver", "config", *args],
        input=stdin, capture_output=True, text=True, check=False,
    )


def test_config_write_fills_defaults_and_leaves_an_unchanged_file_alone(tmp_path: Path) -> None:
    """How the workflow's onstart handler writes results/config/study.yaml."""
    out = tmp_path / "config" / "study.yaml"
    text = (REPO_ROOT / "config" / "config.yaml").read_text()
    proc = _diver_config("-", "--write", str(out), stdin=text)
    assert proc.returncode == 0, proc.stderr
    written = yaml.safe_load(out.read_text())
    assert written["study"] == yaml.safe_load(text)["study"]
    assert "bootstrap" in written["scaling"]  # a default the file did not set
    before = out.stat().st_mtime_ns
    assert _diver_config("-", "--write", str(out), stdin=text).returncode == 0
    assert out.stat().st_mtime_ns == before

    bad = _diver_config("-", "--write", str(out), stdin="study: [unclosed")
    assert bad.returncode != 0
    assert "config - is not valid YAML" in bad.stderr
    assert yaml.safe_load(out.read_text()) == written  # the previous file is intact
