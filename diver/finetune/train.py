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

Each run: AdamW (``recipe.lr``, ``weight_decay``), the cosine schedule of pretraining
over all steps (``diver.train.schedule``), cross-entropy with label smoothing,
optional gradient clipping.  After every epoch the validation split is scored with
the recipe's selection metric (``Recipe.select``: weighted F1 for the EEG recipe,
AUROC for the iEEG recipe; ties broken by the lower validation loss); the best epoch's
weights are kept, training stops after ``patience`` epochs without improvement, and
the kept weights score the test split.  The Linear baseline picks its regularisation
on the same metric.

Outputs in ``out``: ``metrics.json`` (per model: every run's test metrics and the
mean ± SEM over runs), ``predictions.csv`` (one row per test trial, model, fold and
seed, with class probabilities) and ``train_log.csv`` (per epoch: training loss,
validation loss and score, learning rate).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from diver.atomic import write_csv_atomic, write_text_atomic
from diver.data.dataset import PAD_ID, channel_subtype_id, channel_type_id
from diver.finetune.baselines import linear_baseline, stft_features
from diver.finetune.heads import (
    DiverClassifier,
    centred_tokens,
    make_head,
    masked_tokens,
    token_mean,
    valid_tokens,
)
from diver.finetune.metrics import (
    classification_metrics,
    json_number,
    metric_names,
    selection_metric,
    summarise,
)
from diver.finetune.recipes import MODES, Recipe
from diver.finetune.splits import Fold, make_folds
from diver.finetune.tasks import TaskConfig, TaskError
from diver.finetune.taskset import SFREQ, TaskSet, load_taskset
from diver.model.config import ModelConfig
from diver.model.encoder import DiverEncoder
from diver.model.load import load_checkpoint, load_encoder
from diver.study.cells import cell_of_model
from diver.train.schedule import cosine_schedule

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


@dataclass(frozen=True)
class TrackingTarget:
    """Where the job's MLflow child run goes."""

    uri: str
    parent_run_id: str


# ------------------------------------------------------------------------ inputs


@dataclass
class ModelInputs:
    """Every trial as encoder inputs on the task's channel layout (held in memory)."""

    patches: torch.Tensor  # (T, C, N, P)
    coords: torch.Tensor
    type_ids: torch.Tensor
    subtype_ids: torch.Tensor
    channel_mask: torch.Tensor
    patch_mask: torch.Tensor

    @classmethod
    def build(cls, taskset: TaskSet, patch_samples: int) -> ModelInputs:
        signal, mask, coords, types, subtypes = taskset.on_layout()
        n_patches = signal.shape[-1] // patch_samples
        if n_patches < 1:
            raise TaskError(
                f"task set {taskset.path}: trials of {signal.shape[-1]} samples are shorter "
                f"than one {patch_samples}-sample patch"
            )
        if signal.shape[-1] % patch_samples:
            log.warning(
                "trials of %d samples: the last %d are not a whole patch and are dropped",
                signal.shape[-1],
                signal.shape[-1] % patch_samples,
            )
        t, c = mask.shape
        patches = signal[..., : n_patches * patch_samples].reshape(t, c, n_patches, patch_samples)
        type_ids = np.vectorize(channel_type_id, otypes=[np.int64])(types)
        subtype_ids = np.vectorize(channel_subtype_id, otypes=[np.int64])(subtypes)
        type_ids[~mask] = PAD_ID
        subtype_ids[~mask] = PAD_ID
        return cls(
            patches=torch.from_numpy(np.ascontiguousarray(patches)),
            coords=torch.from_numpy(np.where(mask[..., None], coords, 0.0).astype(np.float32)),
            type_ids=torch.from_numpy(type_ids),
            subtype_ids=torch.from_numpy(subtype_ids),
            channel_mask=torch.from_numpy(mask),
            patch_mask=torch.ones(t, n_patches, dtype=torch.bool),
        )

    def batch(self, idx: np.ndarray, device: str) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return {
            "patches": self.patches[index].to(device),
            "coords_mm": self.coords[index].to(device),
            "type_ids": self.type_ids[index].to(device),
            "subtype_ids": self.subtype_ids[index].to(device),
            "channel_mask": self.channel_mask[index].to(device),
            "patch_mask": self.patch_mask[index].to(device),
        }

    @property
    def shape(self) -> tuple[int, int]:
        """(channels, patches) of the layout."""
        return int(self.patches.shape[1]), int(self.patches.shape[2])

    def valid(self, idx: np.ndarray | None = None) -> torch.Tensor:
        """(T, C, N) bool: present tokens of the trials at ``idx`` (default all)."""
        if idx is None:
            return valid_tokens(self.channel_mask, self.patch_mask)
        index = torch.as_tensor(idx, dtype=torch.long)
        return valid_tokens(self.channel_mask[index], self.patch_mask[index])


@torch.no_grad()
def encode_all(
    encoder: DiverEncoder,
    inputs: ModelInputs,
    batch: int,
    device: str,
    trials: np.ndarray | None = None,
) -> torch.Tensor:
    """Masked encoder tokens of every trial, or of those at ``trials`` (eval mode): what
    a linear probe trains on."""
    encoder.eval()
    order = np.arange(len(inputs.patches)) if trials is None else np.asarray(trials)
    out = []
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        b = inputs.batch(idx, device)
        tokens = encoder(**b)
        out.append(masked_tokens(tokens, b["channel_mask"], b["patch_mask"]).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------ one run


@dataclass
class RunResult:
    proba: np.ndarray  # test probabilities
    best_epoch: int
    val_score: float
    log: list[dict[str, Any]]


def _batches(
    n: int, size: int, rng: np.random.Generator, order: np.ndarray
) -> Iterator[np.ndarray]:
    shuffled = order[rng.permutation(n)]
    for start in range(0, n, size):
        yield shuffled[start : start + size]


def fit(
    module: nn.Module,
    forward: Callable[[np.ndarray], torch.Tensor],
    labels: np.ndarray,
    fold: Fold,
    recipe: Recipe,
    seed: int,
    n_classes: int,
    *,
    eval_batch: int = 64,
    device: str = "cpu",
) -> RunResult:
    """Train ``module``'s trainable parameters through ``forward(trial positions) ->
    logits`` on ``fold.train``, select on ``fold.val``, predict ``fold.test``."""
    metric = selection_metric(n_classes, recipe.select)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=recipe.lr, weight_decay=recipe.weight_decay, betas=recipe.betas
    )
    steps = recipe.epochs * math.ceil(len(fold.train) / recipe.batch_size)
    scheduler = cosine_schedule(optimizer, steps, min_ratio=recipe.min_lr_ratio)
    rng = np.random.default_rng([seed, fold.index, 0xF17E])
    y = torch.as_tensor(labels, dtype=torch.long, device=device)
    best_key: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] = {}
    best_epoch, rows = -1, []
    for epoch in range(recipe.epochs):
        module.train()
        total, count = 0.0, 0
        lr = float(optimizer.param_groups[0]["lr"])
        for idx in _batches(len(fold.train), recipe.batch_size, rng, fold.train):
            logits = forward(idx)
            loss = F.cross_entropy(logits, y[idx], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        val_logits = predict(module, forward, fold.val, eval_batch)
        val_loss = float(F.cross_entropy(val_logits, y[fold.val].cpu()))
        score = classification_metrics(
            labels[fold.val], torch.softmax(val_logits, -1).numpy(), n_classes
        )[metric]
        key = (score if math.isfinite(score) else -math.inf, -val_loss)
        rows.append(
            {"epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val_loss,
             f"val_{metric}": score, "lr": lr}
        )  # fmt: skip
        if best_key is None or key > best_key:
            best_key, best_epoch = key, epoch
            best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        elif recipe.patience is not None and epoch - best_epoch >= recipe.patience:
            break
    module.load_state_dict(best_state)
    test_logits = predict(module, forward, fold.test, eval_batch)
    assert best_key is not None
    return RunResult(torch.softmax(test_logits, -1).numpy(), best_epoch, best_key[0], rows)


@torch.no_grad()
def predict(
    module: nn.Module, forward: Callable[[np.ndarray], torch.Tensor], idx: np.ndarray, batch: int
) -> torch.Tensor:
    module.eval()
    out = [forward(idx[s : s + batch]).float().cpu() for s in range(0, len(idx), batch)]
    return torch.cat(out) if out else torch.zeros(0)


# ------------------------------------------------------------------------ the job


def _fresh_encoder(config: ModelConfig, seed: int) -> DiverEncoder:
    from diver.model.mup_setup import build_model

    torch.manual_seed(seed)
    return build_model(config).encoder


def finetune(settings: FinetuneSettings, tracking: TrackingTarget | None = None) -> dict:
    """Run the job described by ``settings`` (see the module docstring); return metrics."""
    context: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    cell = settings.cell or cell_of_model(settings.pretrained)
    if tracking is not None:
        from diver.tracking import child_run

        context = child_run(
            tracking.uri,
            tracking.parent_run_id,
            stage="finetune",
            cell=cell,
            name=f"finetune:{settings.task.name}:{settings.mode}:{cell}",
            tags={
                "diver.pretrained_cell": cell,
                "diver.task": settings.task.name,
                "diver.finetune_mode": settings.mode,
                "diver.head": settings.recipe.head,
            },
        )
    with context as run:
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
    inputs = ModelInputs.build(taskset, config.patch_samples)
    n_channels, n_patches = inputs.shape
    seconds = n_patches * config.patch_samples / SFREQ  # sizes the mlp head
    metric = selection_metric(n_classes, recipe.select)
    split = s.task.split
    folds = make_folds(
        taskset.units(split.by), taskset.units(split.val_unit), labels, split, source=s.task.source
    )
    names = metric_names(n_classes)
    runs: dict[str, list[dict[str, Any]]] = {}
    predictions: list[pd.DataFrame] = []
    train_log: list[dict[str, Any]] = []
    features = stft = None
    if "linear" in s.baselines:
        stft = stft_features(inputs.patches.reshape(*inputs.patches.shape[:2], -1).numpy())
    if s.mode == "linear-probe" or recipe.centre:
        # The pretrained encoder's tokens of every trial, once: what a linear probe
        # trains on, and where every fold's centre for the pretrained model comes from.
        features = encode_all(pretrained, inputs, s.eval_batch, device)

    def centre_of(encoder: DiverEncoder, fold: Fold) -> torch.Tensor | None:
        """Mean token of the fold's training trials under a fresh ``encoder`` (None: no
        centring)."""
        if not recipe.centre:
            return None
        tokens = encode_all(encoder, inputs, s.eval_batch, device, fold.train)
        return token_mean(tokens, inputs.valid(fold.train)).to(device)

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
            pretrained_centre = token_mean(features[fold.train], inputs.valid(fold.train))
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
                        return _m(**inputs.batch(idx, device))

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


def _log_run(run: Any, settings: FinetuneSettings, metrics: dict) -> None:
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
