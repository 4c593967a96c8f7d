"""``diver compare`` and the study experiment's kind and description, on a real store.

The runs are logged by the test itself through diver's own tracking code
(``diver track init``, :func:`diver.tracking.runs.child_run`) into an SQLite store in
a temporary folder; what ``diver compare`` prints is checked against what
``mlflow.search_runs`` (MLflow's own reader, a different code path) returns for the
same runs.  Nothing is mocked.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from diver.cli import main as diver_main
from diver.config import load_config
from diver.tracking.names import (
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_KIND_TRAINING,
    EXPERIMENT_NOTE_TAG,
    GRID_METRICS,
    GRID_PARAMS,
)
from diver.tracking.note import NOTE_MAX_BYTES, study_note
from diver.tracking.parent import ensure_parent_run
from diver.tracking.runid import read_run_id
from diver.tracking.runs import child_run

STUDY = "cmp-study"
SIZES = ("debug", "debug-2x", "debug-4x")
FRACTIONS = (0.5, 1.0)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A study config, its parent run (``diver track init``), six grid runs with
    irregular numbers, a failed grid run, a fine-tuning run and a run of another study
    sharing the experiment."""
    root = tmp_path_factory.mktemp("compare")
    config = root / "study.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "study": STUDY,
                "results_dir": str(root / "results"),
                "grid": [
                    {
                        "family": "mixed",
                        "patch": "1s",
                        "size": list(SIZES),
                        "fraction": list(FRACTIONS),
                        "epochs": [2],
                    }
                ],
            }
        )
    )
    run_file = root / "parent.txt"
    assert diver_main(["track", "init", "--config", str(config), "--out", str(run_file)]) == 0
    cfg = load_config(config)
    uri, parent = cfg.tracking_uri(), read_run_id(run_file)
    rng = random.Random(7)
    expected: dict[str, dict] = {}
    for size in SIZES:
        for fraction in FRACTIONS:
            cell = f"mixed/1s/{size}/f{fraction}_e2"
            axes = {"family": "mixed", "patch": "1s", "size": size, "data_fraction": fraction,
                    "subjects": "all", "epochs": 2}  # fmt: skip
            results = {name: rng.uniform(0.1, 3.0) * 10 ** rng.randint(0, 9) for name in
                       GRID_METRICS}  # fmt: skip
            with child_run(uri, parent, stage="pretrain", cell=cell) as run:
                run.log_params({**axes, "lr": 0.001})
                # a curve: only the last (highest step) value is the run's val_loss
                run.log_metrics({"val_loss": 99.0}, step=0)
                run.log_metrics(results, step=12)
            expected[run.run_id] = results
    with pytest.raises(RuntimeError), child_run(uri, parent, stage="pretrain", cell="bad") as run:
        run.log_params({"size": "debug", "data_fraction": 0.25})
        failed = run.run_id
        raise RuntimeError("diverged")
    with child_run(uri, parent, stage="finetune", cell="mixed/1s/debug/f1.0_e2") as run:
        run.log_params({"task": "t", "mode": "full", "pretrained_cell": "mixed/1s/debug/f1.0_e2"})
        run.log_metrics({"diver.balanced_accuracy": 0.75, "diver.balanced_accuracy_sem": 0.1})
        finetune = run.run_id
    other = ensure_parent_run(uri, cfg.experiment_name(), "another-study")
    with child_run(uri, other, stage="pretrain", cell="x") as run:
        run.log_metrics({"val_loss": 0.001})
    return {"config": config, "uri": uri, "parent": parent, "expected": expected,
            "failed": failed, "finetune": finetune}  # fmt: skip


def _compare(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    capsys.readouterr()
    assert diver_main(["compare", "--config", str(config), *args]) == 0
    return capsys.readouterr().out


def _search_runs(uri: str, filter_string: str) -> pd.DataFrame:
    """MLflow's own reader (its global tracking URI set for the call, then restored)."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[STUDY], filter_string=filter_string)
    finally:
        mlflow.set_tracking_uri(before)


def test_compare_json_is_what_mlflow_search_runs_returns(
    study: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = json.loads(_compare(capsys, study["config"], "--format", "json"))
    frame = _search_runs(
        study["uri"], f"tags.diver.stage = 'pretrain' and tags.diver.study = '{STUDY}'"
    ).set_index("run_id")
    # every pretraining run of this study, the failed one too, none of the other study's
    assert {r["run_id"] for r in rows} == set(frame.index) == {*study["expected"], study["failed"]}
    for row in rows:
        mlflow_row = frame.loc[row["run_id"]]
        assert row["status"] == mlflow_row["status"]
        assert row["tags.mlflow.runName"] == mlflow_row["tags.mlflow.runName"]
        for name in GRID_PARAMS:
            value = mlflow_row[f"params.{name}"]
            assert row[f"params.{name}"] == (None if pd.isna(value) else value), name
        for name in GRID_METRICS:
            value = mlflow_row[f"metrics.{name}"]
            assert row[f"metrics.{name}"] == (None if math.isnan(value) else value), name
    # the latest value, bit for bit, not the curve's first point nor a rounded number
    by_id = {r["run_id"]: r for r in rows}
    for run_id, results in study["expected"].items():
        assert {n: by_id[run_id][f"metrics.{n}"] for n in GRID_METRICS} == results
    # sorted by val_loss, low first, the failed run (no val_loss) last
    losses = [r["metrics.val_loss"] for r in rows]
    assert losses[:-1] == sorted(losses[:-1]) and losses[-1] is None
    assert rows[-1]["run_id"] == study["failed"] and rows[-1]["status"] == "FAILED"


def test_compare_csv_table_where_and_sort(study: dict, capsys: pytest.CaptureFixture[str]) -> None:
    config = study["config"]
    text = _compare(
        capsys, config, "--format", "csv", "--where", "size=debug-2x", "--sort", "flops",
        "--descending",
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(text)))
    frame = _search_runs(
        study["uri"],
        f"tags.diver.stage = 'pretrain' and tags.diver.study = '{STUDY}' "
        "and params.size = 'debug-2x'",
    ).sort_values("metrics.flops", ascending=False)
    assert [r["run_id"] for r in rows] == list(frame["run_id"]) and len(rows) == 2
    assert [float(r["metrics.flops"]) for r in rows] == list(frame["metrics.flops"])
    assert list(rows[0])[:7] == ["tags.mlflow.runName", *(f"params.{p}" for p in GRID_PARAMS)]

    # the terminal table: one line per run plus header and footer, short names
    table = _compare(capsys, config, "--where", "data_fraction=0.5", "attributes.status=FINISHED")
    lines = table.strip().splitlines()
    assert lines[0].split()[:7] == ["run", *GRID_PARAMS] and len(lines) == 3 + len(SIZES)
    assert "sorted by val_loss (ascending)" in lines[-2]
    assert lines[-1].startswith("in MLflow's UI: http://127.0.0.1:5000/#/experiments/")
    cells = [line.split() for line in lines[1:-2]]
    assert {c[GRID_PARAMS.index("data_fraction") + 1] for c in cells} == {"0.5"}
    assert {c[-2] for c in cells} == {"FINISHED"}
    losses = [float(c[1 + len(GRID_PARAMS)]) for c in cells]
    assert losses == sorted(losses)
    half = [r for i, r in study["expected"].items() if i[:8] in {c[-1] for c in cells}]
    assert sorted(f"{r['val_loss']:.6g}" for r in half) == sorted(
        c[1 + len(GRID_PARAMS)] for c in cells
    )

    # fine-tuning: its params, its metrics without the SEM column, scores high-first
    text = _compare(capsys, config, "--stage", "finetune", "--format", "json")
    (row,) = json.loads(text)
    assert row["run_id"] == study["finetune"]
    assert row["params.pretrained_cell"] == "mixed/1s/debug/f1.0_e2"
    assert row["metrics.diver.balanced_accuracy"] == 0.75
    assert "metrics.diver.balanced_accuracy_sem" not in row


def test_compare_errors_name_what_to_change(
    study: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = study["config"]
    assert diver_main(["compare", "--config", str(config), "--sort", "nope"]) != 0
    assert "no pretrain run has that metric" in capsys.readouterr().err
    assert diver_main(["compare", "--config", str(config), "--where", "size"]) != 0
    assert "KEY=VALUE" in capsys.readouterr().err
    empty = tmp_path / "empty.yaml"  # a study never run, on the same store
    results = load_config(config).results_dir
    empty.write_text(yaml.safe_dump({"study": "never-run", "results_dir": results}))
    assert diver_main(["compare", "--config", str(empty)]) != 0
    assert "no experiment 'never-run'" in capsys.readouterr().err


def test_experiment_is_a_described_training_experiment(study: dict) -> None:
    client = MlflowClient(study["uri"])
    tags = client.get_experiment_by_name(STUDY).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING
    note = tags[EXPERIMENT_NOTE_TAG]
    experiment_id = client.get_experiment_by_name(STUDY).experiment_id
    assert note == study_note(load_config(study["config"]), study["config"], experiment_id)
    link = f"(#/experiments/{experiment_id}/runs?workflowType=machine_learning&searchFilter="
    assert link in note
    assert str(Path(study["config"]).resolve()) in note
    assert "tags.diver.stage = 'pretrain'" in note and "data_fraction" in note
    assert "(6 cells)" in note
    # the filter the note gives finds the grid's runs in MLflow itself
    found = _search_runs(study["uri"], "tags.diver.stage = 'pretrain'")
    assert set(study["expected"]) <= set(found["run_id"])


def test_older_experiments_get_kind_and_note_once_and_edits_are_kept(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    # as an older diver left it: an experiment without kind or note, and its parent run
    experiment_id = client.create_experiment("old")
    parent = client.create_run(
        experiment_id, tags={"diver.study": "old", "diver.role": "parent"}
    ).info.run_id
    assert ensure_parent_run(uri, "old", "old", description="first") == parent
    tags = client.get_experiment_by_name("old").tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING
    assert tags[EXPERIMENT_NOTE_TAG] == "first"
    # a newer description replaces diver's own; one edited in the UI stays
    ensure_parent_run(uri, "old", "old", description="second")
    assert client.get_experiment_by_name("old").tags[EXPERIMENT_NOTE_TAG] == "second"
    client.set_experiment_tag(experiment_id, EXPERIMENT_NOTE_TAG, "my own notes")
    ensure_parent_run(uri, "old", "old", description="third")
    assert client.get_experiment_by_name("old").tags[EXPERIMENT_NOTE_TAG] == "my own notes"
    # a kind someone chose stays; MLflow's guess is replaced
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "genai_development_inferred")
    ensure_parent_run(uri, "old", "old")
    assert client.get_experiment_by_name("old").tags[EXPERIMENT_KIND_TAG] == (
        EXPERIMENT_KIND_TRAINING
    )
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "genai_development")
    ensure_parent_run(uri, "old", "old")
    assert client.get_experiment_by_name("old").tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_note_of_a_huge_grid_fits_an_mlflow_tag(tmp_path: Path) -> None:
    blocks = [{"family": "mixed", "size": ["debug"], "epochs": [e]} for e in range(1, 400)]
    config = tmp_path / "big.yaml"
    config.write_text(yaml.safe_dump({"study": "big", "grid": blocks}))
    note = study_note(load_config(config), config)
    assert len(note.encode()) <= NOTE_MAX_BYTES
    assert "more blocks (see the config)" in note and "diver compare" in note
