"""Validation loss on the fixed held-out set, comparable across every cell of a grid.

Validation uses the deterministic evaluation crop, fixed batches of ``val_batch``
windows and a fixed mask per batch (a ``torch.Generator`` seeded from
``(split_seed, batch index)``), and weights each batch by its masked tokens, so
``val_loss`` is comparable across sizes, fractions, epochs, seeds and world sizes.  A
``model.pt`` loaded without DeepSpeed reproduces a run's validation loss through the
same :func:`evaluate`.  :func:`model_inputs` and :func:`mixed_seed` are shared with
the training step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from diver.data import CorpusIndex, ResampleConfig, WindowBatch, WindowDataset, collate_windows
from diver.train.distributed import all_reduce_sum
from diver.train.errors import PretrainError

LOSS_PARTS = ("time", "fft", "stft")
"""The parts of the pretraining loss, logged beside their sum."""


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: stable across runs and
    machines; sequences of different lengths give unrelated seeds)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def validation_loader(
    val: CorpusIndex,
    patch_samples: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Iterable[WindowBatch], list[int]]:
    """This rank's validation batches and their global batch numbers.

    Global batch b is windows ``b * batch_size ...`` of the validation index in its
    canonical order; rank r evaluates batches ``b = r, r + W, ...``.  The rank reads only
    those windows (a subset index keeps the order, so the batches come out identical).
    """
    n = len(val)
    n_batches = math.ceil(n / batch_size)
    mine = list(range(rank, n_batches, world_size))
    if not mine:  # more ranks than batches: this one only joins the all-reduce
        return [], []
    keep = np.zeros(n, dtype=bool)
    for b in mine:
        keep[b * batch_size : (b + 1) * batch_size] = True
    dataset = WindowDataset(
        val.subset(keep),
        patch_samples,
        resample=ResampleConfig(enabled=False),
        shuffle=False,
        rank=0,
        world_size=1,
    )
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_windows, num_workers=0)
    return loader, mine


@torch.no_grad()
def evaluate(
    model: Any,
    val: CorpusIndex,
    patch_samples: int,
    *,
    batch_size: int,
    mask_seed: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Validation loss and its parts, averaged over masked tokens of the fixed set.

    Each batch's losses (means over its masked tokens) are weighted by its masked-token
    count, so the result is the mean over every masked token of the set whatever the
    batching across ranks.  ``model`` is a DeepSpeed engine or a plain module; it is
    put in eval mode (no dropout) and back in the mode it was in.
    """
    was_training = model.training
    model.eval()
    loader, batch_ids = validation_loader(
        val, patch_samples, batch_size, rank=rank, world_size=world_size
    )
    sums = np.zeros(1 + 1 + len(LOSS_PARTS))  # weight, loss, parts
    try:
        for b, batch in zip(batch_ids, loader, strict=True):
            generator = torch.Generator(device=device).manual_seed(mixed_seed(mask_seed, b))
            out = model(batch.to(device).encoder_inputs(dtype), generator=generator)
            weight = float(out.mask.sum())
            parts = [float(out.losses[k]) if k in out.losses else 0.0 for k in LOSS_PARTS]
            sums += weight * np.array([1.0, float(out.loss), *parts])
    finally:
        model.train(was_training)
    totals = all_reduce_sum(sums.tolist(), device=device if world_size > 1 else None)
    weight = totals[0]
    if weight <= 0:
        raise PretrainError("the validation set produced no masked tokens")
    result = {"val_loss": totals[1] / weight}
    result.update({f"val_loss_{k}": totals[2 + i] / weight for i, k in enumerate(LOSS_PARTS)})
    return result
