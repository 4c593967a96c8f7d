"""Fine-tuning end to end (SPEC §5): the synthetic labelled task, a debug model
pretrained on the synthetic corpus (test_pretrain's reference run, built once per
session), ``diver finetune`` outputs checked against scikit-learn and MLflow, and
learning: the Linear baseline and the fully fine-tuned model both separate trials
with and without the injected oscillation on a held-out subject, and with the EEG
recipe as the DAG runs it (lr 2e-4, batch 64, 5 epochs, every channel) both modes
start at chance-level loss and end well above chance.  The heads are the authors'
(plain ``nn.Linear``, their hidden sizes), on tokens centred on the training trials'
mean token.  Runs use one torch thread (``--threads 1``): on a busy 2-core machine
two threads make these small matrices up to 100x slower."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from diver.cli import main
from diver.corpus.synth.task import TASK_CLASSES
from diver.finetune.fit import fit
from diver.finetune.heads import centred_tokens, make_head, mlp_hidden, token_mean
from diver.finetune.metrics import classification_metrics
from diver.finetune.recipes import recipe
from diver.finetune.splits import Fold
from diver.finetune.tasks import load_task, task_from_dict
from diver.finetune.taskset import build_taskset, load_taskset
from tests.conftest import REPO_ROOT, built_once, shared_dir
from tests.test_pretrain import (
    _make_tracking,
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
    with built_once(tmp_path_factory, "finetune-results") as root:
        if root is not None:  # through the command the DAG runs
            assert main(["task", "synth", "--out", str(root / "synth_task"), "--seed", "0"]) == 0
    return shared_dir(tmp_path_factory, "finetune-results")


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


# ------------------------------------------------------------ heads and the first steps


def test_heads_are_the_authors_plain_linear_layers() -> None:
    """``--ft_mup False``: every head layer is a plain nn.Linear with PyTorch's default
    initialisation (no muP readout, no base shapes); the MLP's hidden sizes are
    [seconds * 200, 200] whatever the width d."""
    torch.manual_seed(0)
    mlp = make_head("mlp", 20, 4, 256, 2, 0.1, seconds=4.0)
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (20 * 4 * 256, 800), (800, 200), (200, 2)
    ]  # fmt: skip
    assert mlp_hidden(4.0) == (800, 200) and mlp_hidden(0.1 * 40) == (800, 200)
    assert make_head("mlp", 3, 2, 64, 4)[1].out_features == 400  # default: 1 s patches
    (linear,) = [m for m in make_head("flatten-linear", 20, 4, 256, 2).modules()
                 if isinstance(m, nn.Linear)]  # fmt: skip
    assert (linear.in_features, linear.out_features) == (20 * 4 * 256, 2)
    for layer in [*linears, linear]:
        assert type(layer) is nn.Linear
        assert not hasattr(layer.weight, "infshape")  # never given muP base shapes
        bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform(a=sqrt(5)) default
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
        assert layer.bias.abs().max() <= bound


def test_token_centring_ignores_and_zeroes_absent_tokens() -> None:
    tokens = torch.randn(4, 3, 2, 5)
    channel_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)
    patch_mask = torch.ones(4, 2, dtype=torch.bool)
    valid = channel_mask[:, :, None] & patch_mask[:, None, :]
    centre = token_mean(tokens, valid)
    assert torch.allclose(centre[2], tokens[[1, 2, 3], 2].mean(0))  # trial 0 lacks channel 2
    out = centred_tokens(tokens, centre, channel_mask, patch_mask)
    assert (out[0, 2] == 0).all() and (out[2, 1] == 0).all()
    assert torch.allclose(out[1], tokens[1] - centre)


def _encoder_like_tokens(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Tokens shaped like the debug-4x encoder's on the synthetic task (20 channels x
    4 patches x d 256, RMS ~1): a trial-independent part (~99 % of the energy) plus a
    small part that differs between trials, and along one direction between classes."""
    g = torch.Generator().manual_seed(seed)
    shape = (20, 4, 256)
    shared = torch.randn(shape, generator=g)
    direction = torch.randn(shape, generator=g)
    labels = np.repeat([0, 1], 96)
    sign = torch.as_tensor(2.0 * labels - 1.0, dtype=torch.float32)[:, None, None, None]
    tokens = shared + 0.08 * torch.randn(192, *shape, generator=g) + 0.03 * sign * direction
    return tokens, labels


def test_adamw_first_steps_saturate_the_head_on_raw_tokens_not_on_centred_ones() -> None:
    """The root cause of the 0.500 balanced accuracy: AdamW moves every weight of the
    head's first layer by about lr in its first step, so on raw tokens (a large part the
    same in every trial) every unit moves by ~lr * sum|x| in the same direction for
    every trial, and all logits jump to one class (first-epoch loss ~4 on 2 classes).
    Centred on the training trials' mean token, the same head and recipe start at
    ln 2 and learn."""
    tokens, labels = _encoder_like_tokens()
    order = np.random.default_rng(0).permutation(192)
    fold = Fold(0, np.sort(order[:120]), np.sort(order[120:144]), np.sort(order[144:]))
    rec = recipe("eeg", epochs=3, seeds=[0])
    valid = torch.ones(192, 20, 4, dtype=torch.bool)
    centred = tokens - token_mean(tokens[fold.train], valid[fold.train])
    results = {}
    for name, x in {"raw": tokens, "centred": centred}.items():
        torch.manual_seed(0)
        head = make_head("mlp", 20, 4, 256, 2, rec.dropout, seconds=4.0)

        def forward(idx: np.ndarray, _h: nn.Module = head, _x: torch.Tensor = x) -> torch.Tensor:
            return _h(_x[torch.as_tensor(idx)])

        batch = fold.train[:64]
        with torch.no_grad():  # a fresh head: chance-level loss either way
            logits = forward(batch)
        first = float(nn.functional.cross_entropy(logits, torch.as_tensor(labels[batch])))
        assert abs(first - math.log(2)) < 0.1, (name, first)
        run = fit(head, forward, labels, fold, rec, 0, 2)
        bacc = classification_metrics(labels[fold.test], run.proba, 2)["balanced_accuracy"]
        results[name] = (run.log[0]["train_loss"], bacc, len(set(run.proba.argmax(1))))
    # Raw: saturated after one step, and every test trial gets the same class.
    assert results["raw"][0] > 1.5 and results["raw"][1:] == (0.5, 1), results
    assert results["centred"][0] < math.log(2) + 0.1, results
    assert results["centred"][1] >= 0.9, results


def test_finetuning_learns_in_both_modes_with_the_dags_settings(
    results: Path,
    reference: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The EEG recipe as the embedded default's DAG runs it (lr 2e-4, batch 64, 5 epochs,
    every channel: C x N x d = 20 x 4 x d flattened): the first epoch's loss is chance
    level (1.6 here, 4.3 with the DAG's debug-4x model, before the tokens were centred)
    and a held-out subject's trials are told apart in both modes (the head used to
    predict one class for every trial: balanced accuracy 0.500)."""
    task = _task_file(
        tmp_path, "osc_dag", split={"by": "subject", "test": ["04"], "val_by": "recording"}
    )
    for mode in ("linear-probe", "full"):
        out = tmp_path / mode
        code = main(
            ["finetune", "--task", str(task), "--pretrained", str(reference / "model.pt"),
             "--mode", mode, "--epochs", "5", "--seeds", "0", "1", "--baselines",
             "--results-dir", str(results), "--threads", "1", "--out", str(out)]
        )  # fmt: skip
        assert code == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["channels"] == 20 and metrics["selection_metric"] == "f1_weighted"
        assert metrics["recipe"]["lr"] == 2e-4 and metrics["recipe"]["batch_size"] == 64
        log = pd.read_csv(out / "train_log.csv")
        first = log.loc[log["epoch"] == 0, "train_loss"]
        assert len(first) == 2 and (abs(first - math.log(2)) < 0.1).all(), (mode, log)
        summary = metrics["models"]["diver"]["summary"]["balanced_accuracy"]
        assert summary["mean"] >= 0.8, (mode, metrics["models"]["diver"]["runs"], log)
