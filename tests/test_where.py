"""`diver where`: a study's locations, and an `mlflow ui` command safe to paste."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from diver.cli import main


def test_where_names_the_results_and_a_quoted_mlflow_command(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "study.yaml"
    config.write_text(
        'study: s\nresults_dir: "my results; $(touch pwned)"\n'
        "corpus: {datasets: [{name: a, inputs: [x]}]}\n"
        "families: {all: {modalities: [eeg]}}\n"
        "grid: [{family: all, size: debug, epochs: 1}]\n"
    )
    assert main(["where", "--config", str(config), "--format", "json"]) == 0
    where = json.loads(capsys.readouterr().out)
    results = tmp_path / "my results; $(touch pwned)"
    assert where["results"] == str(results)
    assert where["report"] == str(results / "report" / "index.html")
    assert where["mlflow"] == f"sqlite:///{results}/mlflow.db"
    # the command is one shell word per argument, and binds the UI to loopback
    assert shlex.split(where["browse"]) == [
        "mlflow", "ui", "--backend-store-uri", where["mlflow"], "--host", "127.0.0.1"
    ]  # fmt: skip
    assert main(["where", "--config", str(config)]) == 0
    assert f"report      {results / 'report' / 'index.html'}" in capsys.readouterr().out


def test_where_with_a_tracking_server_gives_its_address(tmp_path: Path, capsys) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(
        "study: s\ntracking: {uri: 'http://127.0.0.1:5000'}\n"
        "corpus: {datasets: [{name: a, inputs: [x]}]}\n"
        "families: {all: {modalities: [eeg]}}\n"
        "grid: [{family: all, size: debug, epochs: 1}]\n"
    )
    assert main(["where", "--config", str(config), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["browse"] == "http://127.0.0.1:5000"
