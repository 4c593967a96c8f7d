"""Downstream metrics, recipes and splits: scores against hand counts and scikit-learn,
mean ± SEM, recipe presets and overrides, and folds that never leak a unit."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    roc_auc_score,
)

from diver.finetune.metrics import (
    classification_metrics,
    mean_sem,
    metric_names_for_classes,
    selection_metric,
    summarise,
)
from diver.finetune.recipes import PRESETS, RecipeError, recipe
from diver.finetune.splits import make_folds
from diver.finetune.tasks import SplitConfig, TaskError

# Eight hand-made binary predictions: p(class 1) per trial.
Y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
P1 = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.3, 0.9, 0.6])


def test_binary_metrics_by_hand_and_against_sklearn() -> None:
    proba = np.stack([1 - P1, P1], axis=1)
    scores = classification_metrics(Y, proba, 2)
    assert list(scores) == ["auroc", "auc_pr", "balanced_accuracy", "cohen_kappa", "f1_weighted"]
    # AUROC by counting positive/negative pairs ranked correctly: 13 of 16.
    pairs = [(p, n) for p in P1[Y == 1] for n in P1[Y == 0]]
    assert scores["auroc"] == pytest.approx(sum(p > n for p, n in pairs) / len(pairs)) == 13 / 16
    # Predictions at 0.5: [0,0,0,1,1,0,1,1] -> recall 3/4 on both classes.
    assert scores["balanced_accuracy"] == pytest.approx(0.75)
    # Kappa: observed agreement 6/8, chance agreement 0.5 -> (0.75 - 0.5) / 0.5.
    assert scores["cohen_kappa"] == pytest.approx(0.5)
    # Average precision: precision at each positive in rank order 0.9, 0.8, 0.7, 0.3.
    ap = (1 / 1 + 2 / 2 + 3 / 3 + 4 / 7) / 4
    assert scores["auc_pr"] == pytest.approx(ap)
    pred = (P1 > 0.5).astype(int)
    assert scores["auroc"] == pytest.approx(roc_auc_score(Y, P1))
    assert scores["auc_pr"] == pytest.approx(average_precision_score(Y, P1))
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y, pred))
    assert scores["cohen_kappa"] == pytest.approx(cohen_kappa_score(Y, pred))
    assert scores["f1_weighted"] == pytest.approx(f1_score(Y, pred, average="weighted"))


def test_multiclass_metrics_and_undefined_auroc() -> None:
    y = np.array([0, 1, 2, 2, 1, 0, 2])
    proba = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4],
         [0.3, 0.4, 0.3], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]]
    )  # fmt: skip
    scores = classification_metrics(y, proba, 3)
    pred = proba.argmax(1)
    assert list(scores) == list(metric_names_for_classes(3))
    assert list(scores) == ["balanced_accuracy", "cohen_kappa", "f1_weighted"]
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert scores["cohen_kappa"] == pytest.approx(cohen_kappa_score(y, pred))
    assert scores["f1_weighted"] == pytest.approx(f1_score(y, pred, average="weighted"))
    # One class only in the test trials: AUROC / AUC-PR are undefined (NaN), not an error.
    one = classification_metrics(np.zeros(3, int), np.full((3, 2), 0.5), 2)
    assert math.isnan(one["auroc"]) and math.isnan(one["auc_pr"])
    with pytest.raises(ValueError, match=r"proba must be \(3, 2\)"):
        classification_metrics(np.zeros(3, int), np.zeros((3, 3)), 2)


def test_mean_and_sem_over_seeds() -> None:
    stats = mean_sem([0.8, 0.9, 0.7])
    assert stats["mean"] == pytest.approx(0.8)
    assert stats["sem"] == pytest.approx(0.1 / math.sqrt(3))  # sample sd 0.1, n 3
    assert stats["n"] == 3
    values = [0.61, 0.70, 0.66, 0.58, 0.73]
    assert mean_sem(values)["sem"] == pytest.approx(np.std(values, ddof=1) / math.sqrt(5))
    # Undefined runs are left out; one run has no SEM; none has no mean.
    partial = mean_sem([0.5, float("nan"), 0.7])
    assert partial == {"mean": pytest.approx(0.6), "sem": pytest.approx(0.1), "n": 2}
    assert mean_sem([0.5]) == {"mean": 0.5, "sem": None, "n": 1}
    assert mean_sem([]) == {"mean": None, "sem": None, "n": 0}
    runs = [{"auroc": 0.9, "cohen_kappa": 0.5}, {"auroc": 0.8, "cohen_kappa": 0.3}]
    summary = summarise(runs, ["auroc", "cohen_kappa"])
    assert summary["auroc"]["mean"] == pytest.approx(0.85)
    assert summary["cohen_kappa"]["sem"] == pytest.approx(0.1)


def test_recipe_presets_are_spec_section_5_and_overridable() -> None:
    ieeg, eeg = PRESETS["ieeg"], PRESETS["eeg"]
    fields = ("head", "lr", "weight_decay", "batch_size", "epochs", "patience")
    assert [getattr(ieeg, f) for f in fields] == ["flatten-linear", 2e-3, 1e-2, 32, 40, 10]
    assert [getattr(eeg, f) for f in fields] == ["mlp", 2e-4, 0.3, 64, 50, None]
    assert (ieeg.label_smoothing, eeg.label_smoothing, eeg.grad_clip, eeg.dropout) == (
        0.1, 0.1, 1.0, 0.1
    )  # fmt: skip
    assert eeg.seeds == (41, 42, 43, 44, 45)
    # The authors' early-stopping criteria: val_f1 (EEG scripts), val_auroc (Neuroprobe);
    # both heads on centred tokens unless switched off.
    assert (eeg.select, ieeg.select, eeg.centre, ieeg.centre) == (
        "f1_weighted", "auroc", True, True
    )  # fmt: skip
    assert selection_metric(2, "f1_weighted") == "f1_weighted"
    assert selection_metric(4, "auroc") == "cohen_kappa"  # AUROC: two classes only
    assert selection_metric(2) == "auroc" and selection_metric(3, None) == "cohen_kappa"
    assert recipe("eeg", centre=False, select="cohen_kappa").to_dict()["centre"] is False
    with pytest.raises(RecipeError, match="select must be one of"):
        recipe("eeg", select="accuracy")
    custom = recipe("eeg", epochs=3, seeds=[1, 2], lr=None, patience=0, grad_clip=0)
    assert (custom.epochs, custom.seeds, custom.lr) == (3, (1, 2), 2e-4)
    assert custom.patience is None and custom.grad_clip is None
    with pytest.raises(RecipeError, match="lr must be positive"):
        recipe("ieeg", lr=-1.0)
    with pytest.raises(RecipeError, match="unknown recipe 'x'"):
        recipe("x")
    with pytest.raises(RecipeError, match="seeds repeat"):
        recipe("eeg", seeds=[3, 3])


def _units(n_rec: int, per: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    recordings = np.repeat([f"run{r}" for r in range(n_rec)], per).astype(object)
    trials = np.array([f"{r}#{i}" for i, r in enumerate(recordings)], dtype=object)
    labels = np.tile(np.arange(per) % 2, n_rec)
    return recordings, trials, labels


def test_k_fold_by_recording_holds_out_whole_runs() -> None:
    recordings, trials, labels = _units(3, 10)
    split = SplitConfig(by="recording", folds=3, val_by="trial", val_fraction=0.2, seed=4)
    folds = make_folds(recordings, trials, labels, split)
    assert len(folds) == 3
    tested = np.concatenate([f.test for f in folds])
    assert sorted(tested) == list(range(30))  # every trial tested exactly once
    for fold in folds:
        assert len(set(recordings[fold.test])) == 1  # one whole run
        assert not set(recordings[fold.test]) & set(recordings[fold.train])
        parts = [set(fold.train), set(fold.val), set(fold.test)]
        assert sum(map(len, parts)) == 30 and not (parts[0] & parts[1])
        assert len(fold.val) == 4 and sorted(np.bincount(labels[fold.val])) == [2, 2]
    again = make_folds(recordings, trials, labels, split)
    assert all(np.array_equal(a.val, b.val) for a, b in zip(folds, again, strict=True))


def test_single_split_by_name_and_errors() -> None:
    recordings, _, labels = _units(4, 6)
    split = SplitConfig(by="recording", test=("run3",), val_by="recording", val_fraction=0.3)
    (fold,) = make_folds(recordings, recordings, labels, split)
    assert set(recordings[fold.test]) == {"run3"}
    assert len(set(recordings[fold.val])) == 1 and len(set(recordings[fold.train])) == 2
    with pytest.raises(TaskError, match=r"patterns \['run9'\] match no recording"):
        make_folds(recordings, recordings, labels, SplitConfig(test=("run9",)))
    with pytest.raises(TaskError, match="folds 5 exceeds the 4 recording"):
        make_folds(recordings, recordings, labels, SplitConfig(folds=5))
    # Two runs, one tested: the single training run cannot give a validation run.
    two, _, labels2 = _units(2, 6)
    with pytest.raises(TaskError, match=r"finer split\.val_by"):
        make_folds(two, two, labels2, SplitConfig(folds=2))
