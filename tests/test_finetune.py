"""Fine-tuning end to end (SPEC §5): the synthetic labelled task, a debug model
pretrained on the synthetic corpus (test_pretrain's reference run, built once per
session), ``diver finetune`` outputs checked against scikit-learn and MLflow, and
learning: the Linear baseline and the fully fine-tuned model both separate trials
with and without the injected oscillation on a held-out subject.  Runs use one torch
thread (``--threads 1``): on a busy 2-core machine two threads make these small
matrices up to 100x slower."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from diver.cli import main
from diver.corpus.synth import TASK_CLASSES
from diver.finetune.metrics import classification_metrics
from diver.finetune.tasks import load_task, task_from_dict
from diver.finetune.taskset import build_taskset, load_taskset
from tests.conftest import REPO_ROOT
from tests.test_pretrain import (
    _built_once,
    _make_tracking,
    _shared_root,
    corpus,  # noqa: F401  (fixture that reference needs)
    reference,  # noqa: F401  (fixture: the debug model pretrained on the synthetic corpus)
)

TASKS = REPO_ROOT / "config" / "tasks"
# The oscillation sits over the central electrodes; fine-tuning on those keeps the
# runs small enough for a CPU test (the shipped task uses every channel).
CENTRAL = ["C3", "Cz", "C4", "Pz"]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder holding the synthetic labelled task (``synth_task/``)."""
    with _built_once(tmp_path_factory, "finetune-results") as root:
        if root is not None:  # through the command the DAG runs
            assert main(["task", "synth", "--out", str(root / "synth_task"), "--seed", "0"]) == 0
    return _shared_root(tmp_path_factory, "finetune-results")


def _task_file(folder: Path, name: str, **changes: object) -> Path:
    raw = yaml.safe_load((TASKS / "synth_eeg_oscillation.yaml").read_text())
    raw.update(name=name, **changes)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_synthetic_task_set_has_balanced_trials_and_its_oscillation(results: Path) -> None:
    manifest = json.loads((results / "synth_task" / "manifest.json").read_text())
    task = load_task(TASKS / "synth_eeg_oscillation.yaml")
    summary = build_taskset(task, results / "eeg.parquet", results_dir=results)
    assert summary.per_class == {"absent": 96, "present": 96}
    assert summary.per_class["present"] == manifest["trials"]["eeg"][TASK_CLASSES[1]]
    ts = load_taskset(summary.path)
    assert len(ts.layout()) == 20 and len(set(ts.subjects)) == 4
    # 18 Hz power over Cz is far higher in "present" trials than in "absent" ones.
    cz = ts.layout().index("Cz")
    spectrum = np.abs(np.fft.rfft(np.stack([s[cz] for s in ts.signals]), axis=-1)) ** 2
    freqs = np.fft.rfftfreq(ts.n_samples, 1 / 500)
    band = spectrum[:, (freqs > 16.5) & (freqs < 19.5)].mean(axis=1)
    ratio = np.median(band[ts.labels == 1]) / np.median(band[ts.labels == 0])
    assert ratio > 3.0, ratio


def test_ieeg_task_set_is_laplacian_referenced(results: Path) -> None:
    task = load_task(TASKS / "synth_ieeg_oscillation.yaml")
    plain = task_from_dict(
        {**yaml.safe_load((TASKS / "synth_ieeg_oscillation.yaml").read_text()),
         "preprocessing": {"laplacian": False}}
    )  # fmt: skip
    lap = load_taskset(build_taskset(task, results / "ieeg.parquet", results_dir=results).path)
    raw = load_taskset(build_taskset(plain, results / "ieeg_raw.parquet", results_dir=results).path)
    assert lap.layout() == raw.layout() and len(lap) == len(raw) == 72
    names = lap.layout()
    k = names.index("LA4") if "LA4" in names else 3
    # Contact k minus the mean of its shaft neighbours k - 1 and k + 1 (scaling is linear;
    # compare where neither side was clipped at ±1).
    for trial in range(0, 72, 9):
        x, y = raw.signals[trial], lap.signals[trial]
        expected = x[k] - (x[k - 1] + x[k + 1]) / 2
        ok = (np.abs(x[k - 1 : k + 2]) < 0.99).all(axis=0) & (np.abs(y[k]) < 0.99)
        assert ok.mean() > 0.9
        assert np.allclose(y[k][ok], expected[ok], atol=2e-6)


def test_finetune_cli_outputs_agree_with_sklearn_and_mlflow(
    results: Path,
    reference: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    config, run_file, uri = _make_tracking(tmp_path)
    task = _task_file(
        tmp_path, "osc_small", tmax=2.0,  # 2 patches per trial: a light run
        preprocessing={"channels": CENTRAL},
        split={"by": "subject", "folds": 2, "val_by": "recording"},
    )  # fmt: skip
    out = tmp_path / "ft"
    code = main(
        ["finetune", "--task", str(task), "--pretrained", str(reference / "model.pt"),
         "--mode", "linear-probe", "--epochs", "1", "--seeds", "41", "42", "--batch-size", "16",
         "--threads", "1",
         "--results-dir", str(results), "--out", str(out),
         "--config", str(config), "--parent-run", str(run_file)]
    )  # fmt: skip
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    assert (out / "taskset.parquet").is_file() and (out / "train_log.csv").is_file()
    assert metrics["pretrained_cell"] == "mixed/1s/debug/f1.0_e2"
    assert metrics["mode"] == "linear-probe"
    assert (metrics["channels"], metrics["patches"]) == (4, 2)
    assert metrics["recipe"]["head"] == "mlp" and metrics["recipe"]["seeds"] == [41, 42]
    assert set(metrics["models"]) == {"diver", "scratch", "linear"}
    names = ["auroc", "auc_pr", "balanced_accuracy", "cohen_kappa", "f1_weighted"]
    assert metrics["metrics"] == names
    n_trials = metrics["n_trials"]
    assert n_trials == 192 and len(metrics["folds"]) == 2
    expected_runs = {"diver": 4, "scratch": 4, "linear": 2}  # folds x seeds; linear per fold
    for model, entry in metrics["models"].items():
        runs = entry["runs"]
        assert len(runs) == expected_runs[model]
        for run in runs:
            rows = predictions[predictions["model"] == model]
            rows = rows[rows["fold"] == run["fold"]]
            if run["seed"] is not None:  # the seed column is empty for the linear baseline
                rows = rows[rows["seed"] == run["seed"]]
            proba = rows[["prob_absent", "prob_present"]].to_numpy()
            assert np.allclose(proba.sum(axis=1), 1.0)
            assert len(rows) == metrics["folds"][run["fold"]]["test"]
            again = classification_metrics(rows["label_index"].to_numpy(), proba, 2)
            for name in names:
                assert run[name] == pytest.approx(again[name], nan_ok=True), (model, name)
        # Every trial is tested exactly once per seed (the folds partition the trials).
        tested = predictions[predictions["model"] == model].groupby("seed", dropna=False)
        assert all(sorted(g["trial"]) == sorted(set(g["trial"])) for _, g in tested)
        assert all(len(g) == n_trials for _, g in tested)
        for name in names:
            values = [r[name] for r in runs if r[name] is not None]
            stats = entry["summary"][name]
            assert stats["n"] == len(values)
            assert stats["mean"] == pytest.approx(np.mean(values))
            assert stats["sem"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(len(values)))

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(run_file.read_text().strip())
    (child,) = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    tags = child.data.tags
    assert tags["diver.stage"] == "finetune" and tags["diver.task"] == "osc_small"
    assert tags["diver.pretrained_cell"] == "mixed/1s/debug/f1.0_e2"
    assert tags["diver.finetune_mode"] == "linear-probe"
    assert child.info.status == "FINISHED"
    summary = metrics["models"]["linear"]["summary"]["auroc"]
    assert child.data.metrics["linear.auroc"] == pytest.approx(summary["mean"])
    artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
    assert {"metrics.json", "predictions.csv", "train_log.csv"} <= artifacts


def test_finetune_refuses_a_stale_task_set(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    task = _task_file(tmp_path, "osc", preprocessing={"channels": CENTRAL})
    taskset = tmp_path / "osc.parquet"
    args = ["--task", str(task), "--results-dir", str(results)]
    assert main(["task", "build", *args, "--out", str(taskset)]) == 0
    assert "192 trials {'absent': 96, 'present': 96} (built)" in capsys.readouterr().out
    assert main(["task", "build", *args, "--out", str(taskset)]) == 0
    assert "(up to date)" in capsys.readouterr().out
    _task_file(tmp_path, "osc", preprocessing={"channels": CENTRAL}, tmax=3.0)  # edited
    code = main(["finetune", *args, "--taskset", str(taskset), "--pretrained", "unused.pt",
                 "--out", str(tmp_path / "ft")])  # fmt: skip
    assert code == 2
    assert f"task set {taskset} was not built from the current" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()


def test_finetune_refuses_a_file_that_is_not_a_model(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    fake = tmp_path / "model.pt"
    fake.write_text("not a model")
    task = _task_file(tmp_path, "osc", preprocessing={"channels": CENTRAL})
    code = main(["finetune", "--task", str(task), "--pretrained", str(fake),
                 "--results-dir", str(results), "--out", str(tmp_path / "ft")])  # fmt: skip
    assert code == 2
    assert f"model file {fake} cannot be read" in capsys.readouterr().err


def test_learning_works_end_to_end(
    results: Path,
    reference: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Held-out subject: both the Linear baseline and the pretrained debug model, fully
    fine-tuned, tell oscillation trials from baseline trials (AUROC > 0.9)."""
    task = _task_file(
        tmp_path, "osc_e2e",
        preprocessing={"channels": CENTRAL},
        split={"by": "subject", "test": ["04"], "val_by": "recording"},
    )  # fmt: skip
    out = tmp_path / "ft"
    code = main(
        ["finetune", "--task", str(task), "--pretrained", str(reference / "model.pt"),
         "--mode", "full", "--epochs", "15", "--lr", "1e-3", "--batch-size", "16",
         "--seeds", "41", "42", "--baselines", "linear", "--results-dir", str(results),
         "--threads", "1",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    models = json.loads((out / "metrics.json").read_text())["models"]
    assert set(models) == {"diver", "linear"}
    assert models["linear"]["summary"]["auroc"]["mean"] > 0.9
    assert all(run["auroc"] > 0.9 for run in models["diver"]["runs"]), models["diver"]["runs"]
