"""Fine-tuning results (``diver finetune``'s ``metrics.json``) as report rows.

One file is one (task, mode, pretrained model) with its metrics per model and per
baseline (SPEC §5: the Linear baseline is always reported, and the same architecture
trained from scratch).  What is read, so the report does not depend on one layout:

- the task from ``task`` (a string, or a mapping with ``name``), else the folder name;
  ``mode`` and the pretrained cell (``pretrained_cell``, ``cell`` or ``pretrained``)
  when present;
- the models from the first of ``models``, ``results``, ``per_model`` that maps names
  to metrics, else from the top-level entries that do;
- a metric is a number, a list of per-seed values (mean and SEM computed here), or a
  mapping with ``mean`` (and ``sem``, ``n``) or with per-seed ``values`` / ``per_seed``;
  a model's mapping may nest its metrics under ``summary`` (``diver finetune``'s layout:
  ``{"models": {"diver": {"summary": {"auroc": {"mean", "sem", "n"}}, "runs": [...]}}}``)
  or ``metrics``.

SEM is the sample standard deviation (``ddof = 1``) over ``sqrt(n)``, SPEC §5's
"mean +- SEM over seeds/folds".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diver.errors import DiverError
from diver.study.artifacts import read_json_object

#: Metric names in report order (SPEC §5); others follow alphabetically.
METRIC_ORDER = (
    "auroc",
    "auc_pr",
    "balanced_accuracy",
    "cohen_kappa",
    "f1_weighted",
    "weighted_f1",
)
_MODEL_KEYS = ("models", "results", "per_model")
_BASELINE_WORDS = ("linear", "scratch", "baseline", "random")


class FinetuneReportError(DiverError, ValueError):
    """A fine-tuning metrics file the report cannot read; the message names it."""


@dataclass(frozen=True)
class Estimate:
    """Mean +- SEM of one metric over ``n`` seeds/folds (``sem`` None when unknown)."""

    mean: float
    sem: float | None
    n: int | None

    def text(self) -> str:
        body = f"{self.mean:.3f}"
        if self.sem is not None and math.isfinite(self.sem):
            body += f" ± {self.sem:.3f}"
        if self.n:
            body += f" (n={self.n})"
        return body


def sem(values: Sequence[float]) -> float | None:
    """Standard error of the mean (None for fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def _numbers(values: Any) -> list[float] | None:
    if (
        isinstance(values, list)
        and values
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        return [float(v) for v in values]
    return None


def estimate(value: Any) -> Estimate | None:
    """An :class:`Estimate` from one metric entry (see the module doc), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Estimate(float(value), None, None)
    seeds = _numbers(value)
    if seeds is not None:
        return Estimate(sum(seeds) / len(seeds), sem(seeds), len(seeds))
    if isinstance(value, Mapping):
        for key in ("values", "per_seed", "seeds"):
            seeds = _numbers(value.get(key))
            if seeds is not None:
                return Estimate(sum(seeds) / len(seeds), sem(seeds), len(seeds))
        mean = value.get("mean")
        if isinstance(mean, int | float) and not isinstance(mean, bool):
            s = value.get("sem")
            n = value.get("n")
            return Estimate(
                float(mean),
                float(s) if isinstance(s, int | float) else None,
                int(n) if isinstance(n, int) else None,
            )
    return None


def _metrics_of(entry: Any) -> dict[str, Estimate]:
    if not isinstance(entry, Mapping):
        return {}
    for key in ("summary", "metrics"):
        if isinstance(entry.get(key), Mapping):
            entry = entry[key]
            break
    out = {}
    for name, value in entry.items():
        est = estimate(value)
        if est is not None:
            out[str(name)] = est
    return out


def _models(data: Mapping[str, Any]) -> dict[str, dict[str, Estimate]]:
    for key in _MODEL_KEYS:
        block = data.get(key)
        if isinstance(block, Mapping):
            models = {str(k): _metrics_of(v) for k, v in block.items()}
            return {k: v for k, v in models.items() if v}
    models = {str(k): _metrics_of(v) for k, v in data.items() if isinstance(v, Mapping)}
    return {k: v for k, v in models.items() if v}


def _task_name(data: Mapping[str, Any], path: Path) -> str:
    task = data.get("task")
    if isinstance(task, Mapping):
        task = task.get("name")
    return str(task) if task else path.parent.name


def is_baseline(model: str) -> bool:
    return any(word in model.lower() for word in _BASELINE_WORDS)


def read_finetune(path: Path) -> list[dict[str, Any]]:
    """Report rows (task, mode, pretrained, model, baseline, metrics) of one file."""
    path = Path(path)
    data = read_json_object(path, what="fine-tuning metrics file")
    models = _models(data)
    if not models:
        raise FinetuneReportError(
            f"{path}: no per-model metrics found (expected e.g. "
            '{"models": {"<model>": {"auroc": {"mean": ..., "sem": ...}}}})'
        )
    pretrained = next(
        (str(data[k]) for k in ("pretrained_cell", "cell", "pretrained") if data.get(k)), ""
    )
    return [
        {
            "task": _task_name(data, path),
            "mode": str(data.get("mode") or ""),
            "pretrained": pretrained,
            "model": model,
            "baseline": is_baseline(model),
            "metrics": metrics,
            "source": str(path),
        }
        for model, metrics in models.items()
    ]


def metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every metric in the rows, SPEC §5's first."""
    seen = {name for row in rows for name in row["metrics"]}
    return [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER))
