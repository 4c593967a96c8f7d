"""Fine-tuning a pretrained DIVER-1 encoder on a task, with its baselines (SPEC §5).

One call of :func:`finetune` is one job of the DAG: (pretrained cell x task x mode).
For every fold of the task's split and every seed of the recipe it trains

* ``diver``: the pretrained encoder plus a fresh head (``diver.finetune.heads``: the
  authors' plain-``nn.Linear`` heads on the flattened tokens, centred on the fold's
  training trials' mean token); ``linear-probe`` freezes the encoder (its tokens are
  computed once, in eval mode, and only the head trains), ``full`` trains everything;
* ``scratch``: the same architecture from a fresh muP initialisation, trained fully
  with the same recipe (what pretraining buys);

and once per fold (it is deterministic) the ``linear`` STFT + logistic-regression
baseline (``diver.finetune.baselines``).  Training is plain PyTorch on one device:
the models fine-tuned are at most a few hundred million parameters and the task sets
fit in memory, so DeepSpeed would add nothing but start-up time.

Each run is :func:`diver.finetune.fit.fit` (AdamW, the cosine schedule, the best
validation epoch kept by the recipe's selection metric); the task set becomes encoder
inputs in :mod:`diver.finetune.inputs`.  The Linear baseline picks its regularisation
on the same selection metric.

This module is the job: the loop over folds, seeds and models, the outputs, and the
MLflow child run (:func:`diver.tracking.stage_run`).  Outputs in ``out``:
``metrics.json`` (per model: every run's test metrics and the mean ± SEM over runs),
``predictions.csv`` (one row per test trial, model, fold and seed, with class
probabilities) and ``train_log.csv`` (per epoch: training loss, validation loss and
score, learning rate).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from diver.atomic import write_csv_atomic, write_text_atomic
from diver.finetune.baselines import linear_baseline, stft_features
from diver.finetune.fit import fit
from diver.finetune.heads import DiverClassifier, centred_tokens, make_head, token_mean
from diver.finetune.inputs import encode_all, task_inputs, trial_batch
from diver.finetune.metrics import (
    classification_metrics,
    json_number,
    metric_names_for_classes,
    selection_metric,
    summarise,
)
from diver.finetune.recipes import MODES, Recipe
from diver.finetune.splits import Fold, make_folds
from diver.finetune.tasks import TaskConfig, TaskError
from diver.finetune.taskset import load_taskset
from diver.model.config import ModelConfig
from diver.model.encoder import DiverEncoder
from diver.model.load import load_checkpoint, load_encoder
from diver.study.artifacts import cell_of_model
from diver.tracking import TrackingTarget, stage_run

if TYPE_CHECKING:
    from diver.tracking.runs import RunLogger

log = logging.getLogger(__name__)

BASELINES = ("linear", "scratch")
MODEL_NAMES = ("diver", "scratch", "linear")


@dataclass(frozen=True)
class FinetuneSettings:
    """One fine-tuning job."""

    task: TaskConfig
    taskset: Path
    pretrained: Path
    mode: str
    recipe: Recipe
    out: Path
    baselines: tuple[str, ...] = BASELINES
    device: str = "cpu"
    cell: str | None = None
    eval_batch: int = 64

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TaskError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise TaskError(f"unknown baselines {unknown}; baselines: {list(BASELINES)}")


# ------------------------------------------------------------------------ the job


def _fresh_encoder(config: ModelConfig, seed: int) -> DiverEncoder:
    from diver.model.mup_setup import build_model

    torch.manual_seed(seed)
    return build_model(config).encoder


def finetune(settings: FinetuneSettings, tracking: TrackingTarget | None = None) -> dict:
    """Run the job described by ``settings`` (see the module docstring); return metrics.

    With ``tracking``, the job is one MLflow child run of its parent (stage
    ``finetune``, the pretrained model's cell), holding the params, the summary
    metrics and the three output files.
    """
    cell = settings.cell or cell_of_model(settings.pretrained)
    with stage_run(
        tracking,
        stage="finetune",
        cell=cell,
        name=f"finetune:{settings.task.name}:{settings.mode}:{cell}",
        tags={
            "diver.pretrained_cell": cell,
            "diver.task": settings.task.name,
            "diver.finetune_mode": settings.mode,
            "diver.head": settings.recipe.head,
        },
    ) as run:
        metrics = _finetune(settings, cell)
        if run is not None:
            _log_run(run, settings, metrics)
    return metrics


def _finetune(settings: FinetuneSettings, cell: str) -> dict:
    s, recipe, device = settings, settings.recipe, settings.device
    started = time.perf_counter()
    taskset = load_taskset(s.taskset)
    if tuple(taskset.classes) != tuple(s.task.classes):
        raise TaskError(
            f"task set {s.taskset} has classes {list(taskset.classes)}, the task file "
            f"{s.task.source} {list(s.task.classes)}: rebuild the task set"
        )
    n_classes = len(taskset.classes)
    labels = taskset.labels
    config, _, _ = load_checkpoint(s.pretrained)
    pretrained = load_encoder(s.pretrained, device=device)
    inputs = task_inputs(taskset, config.patch_samples)
    _, n_channels, n_patches, _ = inputs.patches.shape
    # sizes the mlp head: the trial's length at the task set's rate (500 Hz unless the
    # task resamples elsewhere, as the authors' FACED protocol does)
    seconds = n_patches * config.patch_samples / taskset.sfreq
    metric = selection_metric(n_classes, recipe.select)
    split = s.task.split
    folds = make_folds(
        taskset.units(split.by), taskset.units(split.val_unit), labels, split, source=s.task.source
    )
    names = metric_names_for_classes(n_classes)
    runs: dict[str, list[dict[str, Any]]] = {}
    predictions: list[pd.DataFrame] = []
    train_log: list[dict[str, Any]] = []
    features = stft = None
    if "linear" in s.baselines:
        stft = stft_features(
            inputs.patches.reshape(*inputs.patches.shape[:2], -1).numpy(), taskset.sfreq
        )
    if s.mode == "linear-probe" or recipe.centre:
        # The pretrained encoder's tokens of every trial, once: what a linear probe
        # trains on, and where every fold's centre for the pretrained model comes from.
        features = encode_all(pretrained, inputs, s.eval_batch, device)

    def valid_of(idx: np.ndarray) -> torch.Tensor:
        """(T, C, N) present tokens of the trials at ``idx``."""
        return inputs.select(torch.as_tensor(idx)).valid_tokens()

    def centre_of(encoder: DiverEncoder, fold: Fold) -> torch.Tensor | None:
        """Mean token of the fold's training trials under a fresh ``encoder`` (None: no
        centring)."""
        if not recipe.centre:
            return None
        tokens = encode_all(encoder, inputs, s.eval_batch, device, fold.train)
        return token_mean(tokens, valid_of(fold.train)).to(device)

    def record(model: str, fold: Fold, seed: int | None, proba: np.ndarray, extra: dict) -> None:
        scores = classification_metrics(labels[fold.test], proba, n_classes)
        runs.setdefault(model, []).append({"fold": fold.index, "seed": seed, **extra, **scores})
        frame = pd.DataFrame(
            {
                "model": model,
                "fold": fold.index,
                "seed": seed if seed is not None else "",
                "trial": np.asarray(taskset.trial_ids, dtype=object)[fold.test],
                "recording": taskset.recordings[fold.test],
                "subject": taskset.subjects[fold.test],
                "event": taskset.events[fold.test],
                "label": [taskset.classes[k] for k in labels[fold.test]],
                "label_index": labels[fold.test],
                "predicted": [taskset.classes[k] for k in proba.argmax(axis=1)],
            }
        )
        for k, name in enumerate(taskset.classes):
            frame[f"prob_{name}"] = proba[:, k]
        predictions.append(frame)

    for fold in folds:
        log.info(
            "fold %d: %d train, %d val, %d test trials",
            fold.index, len(fold.train), len(fold.val), len(fold.test),
        )  # fmt: skip
        # The pretrained encoder's centre is the same for every seed of the fold.
        pretrained_centre = probe_features = None
        if recipe.centre:
            assert features is not None
            pretrained_centre = token_mean(features[fold.train], valid_of(fold.train))
        if s.mode == "linear-probe":
            probe_features = features
            if pretrained_centre is not None:
                probe_features = centred_tokens(
                    features, pretrained_centre, inputs.channel_mask, inputs.patch_mask
                )
        for seed in recipe.seeds:
            kinds = ["diver"] + (["scratch"] if "scratch" in s.baselines else [])
            for kind in kinds:
                torch.manual_seed(seed)
                head = make_head(
                    recipe.head, n_channels, n_patches, config.d_model, n_classes,
                    recipe.dropout, seconds=seconds,
                ).to(device)  # fmt: skip
                if kind == "diver" and probe_features is not None:
                    module: nn.Module = head

                    def forward(
                        idx: np.ndarray, _h: nn.Module = head, _x: torch.Tensor = probe_features
                    ) -> torch.Tensor:
                        return _h(_x[torch.as_tensor(idx)].to(device))
                else:
                    if kind == "diver":
                        encoder = copy.deepcopy(pretrained).to(device)
                        centre = None if pretrained_centre is None else pretrained_centre.to(device)
                    else:
                        encoder = _fresh_encoder(config, seed).to(device)
                        centre = centre_of(encoder, fold)
                    torch.manual_seed(seed)
                    module = DiverClassifier(encoder, head, centre)

                    def forward(idx: np.ndarray, _m: nn.Module = module) -> torch.Tensor:
                        return _m(trial_batch(inputs, idx, device))

                result = fit(
                    module, forward, labels, fold, recipe, seed, n_classes,
                    eval_batch=s.eval_batch, device=device,
                )  # fmt: skip
                record(
                    kind, fold, seed, result.proba,
                    {"best_epoch": result.best_epoch, "val_score": json_number(result.val_score)},
                )  # fmt: skip
                for row in result.log:
                    train_log.append({"model": kind, "fold": fold.index, "seed": seed, **row})
                log.info(
                    "fold %d seed %d %s: best epoch %d, test %s",
                    fold.index, seed, kind, result.best_epoch,
                    {k: round(v, 3) for k, v in runs[kind][-1].items() if k in names},
                )  # fmt: skip
        if stft is not None:
            linear = linear_baseline(
                stft, labels, fold.train, fold.val, fold.test, n_classes, metric,
            )  # fmt: skip
            record("linear", fold, None, linear.proba,
                   {"c": linear.c, "val_score": json_number(linear.val_score)})  # fmt: skip

    models = {}
    for model in MODEL_NAMES:
        if model in runs:
            summary = summarise(runs[model], names)
            models[model] = {
                "summary": summary,
                "runs": [{k: _jsonable(v) for k, v in r.items()} for r in runs[model]],
            }
    metrics = {
        "task": s.task.name,
        "task_file": s.task.source,
        "taskset": str(s.taskset),
        "classes": list(taskset.classes),
        "n_trials": len(taskset),
        "per_class": {c: int((labels == i).sum()) for i, c in enumerate(taskset.classes)},
        "channels": n_channels,
        "patches": n_patches,
        "sfreq": taskset.sfreq,
        "trial_seconds": seconds,
        "pretrained": str(s.pretrained),
        "pretrained_cell": cell,
        "d_model": config.d_model,
        "patch": config.patch,
        "mode": s.mode,
        "recipe": recipe.to_dict(),
        "selection_metric": metric,
        "metrics": list(names),
        "split": asdict(split) | {"test": list(split.test)},
        "folds": [
            {"fold": f.index, "train": len(f.train), "val": len(f.val), "test": len(f.test)}
            for f in folds
        ],
        "models": models,
        "elapsed_s": time.perf_counter() - started,
        # Where the encoder's weights actually were (not the flag): a check of a GPU
        # job can tell it from one that ran on the CPU.
        "device": str(next(pretrained.parameters()).device),
    }
    s.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(s.out / "predictions.csv", pd.concat(predictions, ignore_index=True))
    write_csv_atomic(s.out / "train_log.csv", pd.DataFrame(train_log))
    write_text_atomic(s.out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def _log_run(run: RunLogger, settings: FinetuneSettings, metrics: dict) -> None:
    params = {
        "task": settings.task.name,
        "mode": settings.mode,
        "pretrained": str(Path(settings.pretrained).resolve()),
        "pretrained_cell": metrics["pretrained_cell"],
        "n_trials": metrics["n_trials"],
        "channels": metrics["channels"],
        "patches": metrics["patches"],
        "folds": len(metrics["folds"]),
        **{f"recipe.{k}": v for k, v in settings.recipe.to_dict().items()},
    }
    run.log_params(params)
    values = {}
    for model, entry in metrics["models"].items():
        for name, stats in entry["summary"].items():
            if stats["mean"] is not None:
                values[f"{model}.{name}"] = stats["mean"]
            if stats["sem"] is not None:
                values[f"{model}.{name}_sem"] = stats["sem"]
    run.log_metrics(values)
    for name in ("metrics.json", "predictions.csv", "train_log.csv"):
        run.log_artifact(settings.out / name)
