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


def _forward(
    model: Any, batch: WindowBatch, seed: int, device: torch.device | str, dtype: torch.dtype
) -> Any:
    """The model on one validation batch, its masks drawn from ``seed``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    return model(batch.to(device).encoder_inputs(dtype), generator=generator)


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
    lockstep: bool = False,
) -> dict[str, float]:
    """Validation loss and its parts, averaged over masked tokens of the fixed set.

    Each batch's losses (means over its masked tokens) are weighted by its masked-token
    count, so the result is the mean over every masked token of the set whatever the
    batching across ranks.  ``model`` is a DeepSpeed engine or a plain module; it is
    put in eval mode (no dropout) and back in the mode it was in.

    ``lockstep``: every rank makes the same number of forward passes.  Under ZeRO-3 a
    forward pass gathers the partitioned parameters from every rank, so a rank with one
    batch fewer than the others (the set rarely divides evenly) must still join their
    last pass, else they wait for it forever; it runs batch 0 again and discards it.
    """
    was_training = model.training
    model.eval()
    loader, batch_ids = validation_loader(
        val, patch_samples, batch_size, rank=rank, world_size=world_size
    )
    sums = np.zeros(1 + 1 + len(LOSS_PARTS))  # weight, loss, parts
    try:
        for b, batch in zip(batch_ids, loader, strict=True):
            out = _forward(model, batch, mixed_seed(mask_seed, b), device, dtype)
            weight = float(out.mask.sum())
            parts = [float(out.losses[k]) if k in out.losses else 0.0 for k in LOSS_PARTS]
            sums += weight * np.array([1.0, float(out.loss), *parts])
        rounds = math.ceil(math.ceil(len(val) / batch_size) / world_size)
        if lockstep and len(batch_ids) < rounds:
            first, _ = validation_loader(
                val, patch_samples, batch_size, rank=0, world_size=rounds * world_size
            )
            for batch in first:
                _forward(model, batch, mixed_seed(mask_seed, 0), device, dtype)
    finally:
        model.train(was_training)
    totals = all_reduce_sum(sums.tolist(), device=device if world_size > 1 else None)
    weight = totals[0]
    if weight <= 0:
        raise PretrainError("the validation set produced no masked tokens")
    result = {"val_loss": totals[1] / weight}
    result.update({f"val_loss_{k}": totals[2 + i] / weight for i, k in enumerate(LOSS_PARTS)})
    return result
