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

The paper's numbers: a task whose task file carries ``paper`` results (the benchmark
files in ``config/tasks/benchmarks/``) gets one more row per published model, named
``<model> (paper)``, in the paper's metric (no SEM: the paper's summary is what there
is), in the table of the fine-tuning mode the paper used (``paper.mode``), so the
table sets them beside this study's model, the Linear baseline and the from-scratch
model.  They come from the metrics file's own ``paper`` mapping when it has one
(``metric``, ``results``, ``mode``), else from the task file of the same name under
``config/tasks`` of this repository; a task without them gets no such rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diver.errors import DiverError
from diver.study.artifacts import read_json_object

log = logging.getLogger(__name__)

#: Where shipped task files are (their ``paper`` results name the published numbers).
TASK_DIRS: tuple[Path, ...] = (Path(__file__).resolve().parents[2] / "config" / "tasks",)
PAPER_SUFFIX = " (paper)"

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


@dataclass(frozen=True)
class PaperNumbers:
    """Published results of one benchmark: ``model -> value`` in ``metric``."""

    metric: str
    results: Mapping[str, float]
    source: str
    mode: str | None = None  # the fine-tuning mode they are for (None: any)


def _paper_of(block: Any, source: str) -> PaperNumbers | None:
    if not isinstance(block, Mapping):
        return None
    metric, results = block.get("metric"), block.get("results")
    if not isinstance(metric, str) or not isinstance(results, Mapping):
        return None
    values = {
        str(k): float(v)
        for k, v in results.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    mode = block.get("mode")
    if not values:
        return None
    return PaperNumbers(metric, values, source, mode if isinstance(mode, str) else None)


def paper_numbers(task: str, task_dirs: Sequence[Path] = TASK_DIRS) -> PaperNumbers | None:
    """The ``paper`` results of the task file named ``task`` under ``task_dirs`` (any
    depth), or None.  Task files that do not load are skipped with a log line: the
    report does not fail for a file it only looks into."""
    from diver.finetune.tasks import TaskError, load_task

    for folder in task_dirs:
        for path in sorted(Path(folder).rglob("*.yaml")):
            try:
                loaded = load_task(path)
            except TaskError as exc:
                log.info("report: task file %s skipped for paper numbers: %s", path, exc)
                continue
            if loaded.name == task and loaded.paper.metric and loaded.paper.results:
                return PaperNumbers(
                    loaded.paper.metric, dict(loaded.paper.results), str(path), loaded.paper.mode
                )
    return None


def paper_rows(task: str, mode: str, numbers: PaperNumbers | None) -> list[dict[str, Any]]:
    """Report rows of the published numbers (``<model> (paper)``, no SEM); none when
    they were reported for another fine-tuning mode than ``mode``."""
    if numbers is None or (numbers.mode and mode and numbers.mode != mode):
        return []
    return [
        {
            "task": task,
            "mode": mode,
            "pretrained": "",
            "model": model + PAPER_SUFFIX,
            "baseline": is_baseline(model),
            "paper": True,
            "metrics": {numbers.metric: Estimate(value, None, None)},
            "source": numbers.source,
        }
        for model, value in numbers.results.items()
    ]


def read_finetune(path: Path, task_dirs: Sequence[Path] = TASK_DIRS) -> list[dict[str, Any]]:
    """Report rows (task, mode, pretrained, model, baseline, metrics) of one file, then
    the paper's rows for its task (see the module doc)."""
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
    task, mode = _task_name(data, path), str(data.get("mode") or "")
    rows = [
        {
            "task": task,
            "mode": mode,
            "pretrained": pretrained,
            "model": model,
            "baseline": is_baseline(model),
            "paper": False,
            "metrics": metrics,
            "source": str(path),
        }
        for model, metrics in models.items()
    ]
    numbers = _paper_of(data.get("paper"), str(path)) or paper_numbers(task, task_dirs)
    return rows + paper_rows(task, mode, numbers)


def metric_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every metric in the rows, SPEC §5's first."""
    seen = {name for row in rows for name in row["metrics"]}
    return [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER))
