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
        "mlflow", "ui", "--app-name", "diver", "--backend-store-uri", where["mlflow"],
        "--host", "127.0.0.1",
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


def test_where_links_the_grid_runs_once_the_store_exists(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    """MLflow 3.17 opens an experiment on its GenAI view: the printed address opens the
    training runs, filtered to the grid; before the store exists nothing is created."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "study.yaml"
    config.write_text(
        "study: s\ncorpus: {datasets: [{name: a, inputs: [x]}]}\n"
        "families: {all: {modalities: [eeg]}}\n"
        "grid: [{family: all, size: debug, epochs: 1}]\n"
    )
    assert main(["where", "--config", str(config), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["grid_runs"] == ""
    assert not (tmp_path / "results" / "mlflow.db").exists()

    from mlflow.tracking import MlflowClient

    (tmp_path / "results").mkdir()
    uri = f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    experiment_id = MlflowClient(uri).create_experiment("s")
    assert main(["where", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    page = f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    assert f"grid runs   {page}&searchFilter=tags.diver.stage%20%3D%20%27pretrain%27" in out
