"""One training run of a fine-tuning job: fit on a fold's training trials, keep the
best validation epoch, predict its test trials.

Each run: AdamW (``recipe.lr``, ``weight_decay``), the cosine schedule of pretraining
over all steps (``diver.train.schedule``), cross-entropy with label smoothing,
optional gradient clipping.  After every epoch the validation split is scored with
the recipe's selection metric (``Recipe.select``: weighted F1 for the EEG recipe,
AUROC for the iEEG recipe; ties broken by the lower validation loss); the best epoch's
weights are kept, training stops after ``patience`` epochs without improvement, and
the kept weights score the test split.

The loop knows nothing of encoders or heads: it trains whatever ``module`` holds
trainable parameters through a ``forward(trial positions) -> logits`` function, so a
linear probe on cached tokens and a fully trained encoder share it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from diver.finetune.metrics import classification_metrics, selection_metric
from diver.finetune.recipes import Recipe
from diver.finetune.splits import Fold
from diver.train.schedule import cosine_schedule

__all__ = ["RunResult", "fit", "predict_logits"]


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
        val_logits = predict_logits(module, forward, fold.val, eval_batch)
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
    test_logits = predict_logits(module, forward, fold.test, eval_batch)
    assert best_key is not None
    return RunResult(torch.softmax(test_logits, -1).numpy(), best_epoch, best_key[0], rows)


@torch.no_grad()
def predict_logits(
    module: nn.Module, forward: Callable[[np.ndarray], torch.Tensor], idx: np.ndarray, batch: int
) -> torch.Tensor:
    """Logits (on the CPU) of the trials at ``idx``, ``batch`` at a time, in eval mode."""
    module.eval()
    out = [forward(idx[s : s + batch]).float().cpu() for s in range(0, len(idx), batch)]
    return torch.cat(out) if out else torch.zeros(0)
