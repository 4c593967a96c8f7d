"""Downstream metrics (SPEC §5), computed with scikit-learn, and their mean ± SEM.

Per run (one seed of one fold): balanced accuracy, Cohen's kappa and weighted F1
always; for two classes also AUROC and AUC-PR (average precision) of the positive
class, the class with index 1.  A score that is undefined on a split (AUROC when the
test trials hold one class only) is NaN and left out of the summary, which reports
for each metric the mean, the standard error of the mean over runs
(``SEM = s / sqrt(n)``, ``s`` the sample standard deviation, ddof 1; undefined, so
null, for a single run) and ``n``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

BINARY_METRICS = ("auroc", "auc_pr")
ALWAYS_METRICS = ("balanced_accuracy", "cohen_kappa", "f1_weighted")


def metric_names_for_classes(n_classes: int) -> tuple[str, ...]:
    """The metrics scored for a task of ``n_classes`` classes (``diver.report`` has its
    own ``metric_names``: the ones found in written results)."""
    return (*BINARY_METRICS, *ALWAYS_METRICS) if n_classes == 2 else ALWAYS_METRICS


SELECTABLE = (*BINARY_METRICS, *ALWAYS_METRICS)


def selection_metric(n_classes: int, preferred: str | None = None) -> str:
    """What model selection (early stopping) maximises on validation: ``preferred`` (a
    recipe's ``select``: weighted F1 for the EEG recipe, the authors' ``val_f1``) when
    it is defined for ``n_classes``; else AUROC for two classes (SPEC §5, iEEG recipe)
    and Cohen's kappa otherwise (CBraMod's choice)."""
    if preferred is not None:
        if preferred not in SELECTABLE:
            raise ValueError(f"selection metric must be one of {list(SELECTABLE)}: {preferred!r}")
        if preferred in metric_names_for_classes(n_classes):
            return preferred
    return "auroc" if n_classes == 2 else "cohen_kappa"


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, proba: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Metrics of class probabilities ``proba`` (n, n_classes) against ``y_true``."""
    # imported here: the CLI's parser reads SELECTABLE, and sklearn costs a second
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        f1_score,
        roc_auc_score,
    )

    y = np.asarray(y_true, dtype=int)
    proba = np.asarray(proba, dtype=float)
    if proba.shape != (len(y), n_classes):
        raise ValueError(f"proba must be ({len(y)}, {n_classes}), got {proba.shape}")
    pred = proba.argmax(axis=1)
    labels = list(range(n_classes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined scores come back as NaN
        out = {
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "cohen_kappa": float(cohen_kappa_score(y, pred, labels=labels)),
            "f1_weighted": float(
                f1_score(y, pred, labels=labels, average="weighted", zero_division=0)
            ),
        }
        if n_classes == 2:
            both = len(np.unique(y)) == 2
            out["auroc"] = float(roc_auc_score(y, proba[:, 1])) if both else math.nan
            out["auc_pr"] = float(average_precision_score(y, proba[:, 1])) if both else math.nan
    return {k: out[k] for k in metric_names_for_classes(n_classes)}


def mean_sem(values: Iterable[float]) -> dict[str, float | int | None]:
    """Mean, SEM (ddof 1) and count of the finite ``values``; None where undefined."""
    finite = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(finite)
    mean = float(finite.mean()) if n else None
    sem = float(finite.std(ddof=1) / math.sqrt(n)) if n >= 2 else None
    return {"mean": mean, "sem": sem, "n": n}


def summarise(runs: Sequence[Mapping[str, float]], names: Sequence[str]) -> dict[str, dict]:
    """``{metric: {mean, sem, n}}`` over runs."""
    return {name: mean_sem(run.get(name, math.nan) for run in runs) for name in names}


def json_number(value: float | None) -> float | None:
    """JSON has no NaN: an undefined number is written as null."""
    return None if value is None or not math.isfinite(value) else float(value)
