"""The two fine-tuning recipes of SPEC §5 as presets, overridable field by field.

* ``ieeg`` (DIVER-1 on Neuroprobe / MAYO; the authors' ``finetune_neuroprobe.sh``):
  linear head on the flattened C x N x d tokens, AdamW lr 2e-3, weight decay 1e-2,
  batch 32, 40 epochs, cosine schedule, early stopping on validation AUROC with
  patience 10, label smoothing 0.1.
* ``eeg`` (the CBraMod recipe; the authors' ``finetune_physionet.sh``, ``_faced``,
  ``_mentalarithmetic``): MLP head C*N*d -> S*200 -> 200 -> classes (S the trial's
  seconds; ELU, dropout 0.1), AdamW lr 2e-4, weight decay 0.3, batch 64, 50 epochs,
  cosine, label smoothing 0.1, gradient clipping at norm 1, seeds 41-45.  No early
  stopping (the authors' patience of 50 epochs never triggers): the epoch with the
  best validation weighted F1 is kept (their ``--early_stop_criteria val_f1``).

Both heads are plain ``nn.Linear`` layers trained by plain AdamW (the authors'
``--ft_mup False``); ``centre`` (default on) subtracts the training trials' mean token
before the head (see :mod:`diver.finetune.heads`), ``centre=False`` is their head
exactly.

SPEC gives seeds only for the EEG recipe; the iEEG preset uses the same five so every
result is a mean ± SEM over seeds.  Either preset works with either mode
(``linear-probe``: frozen encoder, ``full``: everything trained).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from diver.errors import DiverError
from diver.finetune.metrics import SELECTABLE

HEADS = ("flatten-linear", "mlp")
MODES = ("linear-probe", "full")
SEEDS = (41, 42, 43, 44, 45)  # SPEC §5


class RecipeError(DiverError, ValueError):
    """A recipe setting is out of range; the message names it."""


@dataclass(frozen=True)
class Recipe:
    """Everything a fine-tuning run is trained with."""

    name: str
    head: str
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    patience: int | None  # epochs without a better validation score before stopping
    label_smoothing: float
    grad_clip: float | None
    dropout: float  # in the head
    seeds: tuple[int, ...] = SEEDS
    betas: tuple[float, float] = (0.9, 0.999)
    min_lr_ratio: float = 0.01  # cosine floor, as pretraining's schedule
    # Validation metric the kept epoch maximises; None: AUROC for two classes, else
    # Cohen's kappa (AUROC / AUC-PR fall back to kappa for more than two classes).
    select: str | None = None
    centre: bool = True  # subtract the training trials' mean token before the head

    def __post_init__(self) -> None:
        problems = []
        if self.head not in HEADS:
            problems.append(f"head must be one of {list(HEADS)}, got {self.head!r}")
        for name in ("lr",):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1 or self.epochs < 1:
            problems.append("batch_size and epochs must be at least 1")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be at least 1 (or none), got {self.patience}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            problems.append(f"grad_clip must be positive (or none), got {self.grad_clip}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.seeds or any(s < 0 for s in self.seeds):
            problems.append(f"seeds must be non-negative and at least one, got {self.seeds}")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds repeat: {self.seeds}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.select is not None and self.select not in SELECTABLE:
            problems.append(f"select must be one of {list(SELECTABLE)}, got {self.select!r}")
        if problems:
            raise RecipeError(f"recipe {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seeds"] = list(self.seeds)
        data["betas"] = list(self.betas)
        return data


PRESETS: dict[str, Recipe] = {
    "ieeg": Recipe(
        name="ieeg",
        head="flatten-linear",
        lr=2e-3,
        weight_decay=1e-2,
        batch_size=32,
        epochs=40,
        patience=10,
        label_smoothing=0.1,
        grad_clip=None,
        dropout=0.0,
        select="auroc",
    ),
    "eeg": Recipe(
        name="eeg",
        head="mlp",
        lr=2e-4,
        weight_decay=0.3,
        batch_size=64,
        epochs=50,
        patience=None,
        label_smoothing=0.1,
        grad_clip=1.0,
        dropout=0.1,
        select="f1_weighted",
    ),
}


def recipe(name: str, **overrides: Any) -> Recipe:
    """Preset ``name`` with the non-None ``overrides`` applied (validated).

    ``patience=0`` and ``grad_clip=0`` switch early stopping and clipping off.
    """
    if name not in PRESETS:
        raise RecipeError(f"unknown recipe {name!r}; recipes: {sorted(PRESETS)}")
    known = {f.name for f in fields(Recipe)} - {"name"}
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise RecipeError(f"unknown recipe settings {unknown}")
    if changes.get("patience") == 0:
        changes["patience"] = None
    if changes.get("grad_clip") == 0:
        changes["grad_clip"] = None
    if "seeds" in changes:
        changes["seeds"] = tuple(int(s) for s in changes["seeds"])
    return replace(PRESETS[name], **changes)
