"""What a pretraining cell trains and validates on, and how many tokens that is.

Validation is a set of held-out *subjects* (``split_subjects``, keyed by ``split_seed``,
not by the training seed), so every cell of the grid is validated on the same windows;
the training fraction is taken from the remaining subjects (``take_fraction``: nested,
10 % is inside 20 %).  These live with the corpus reader rather than the training loop
because a launcher sizes a job from them (``diver.study.budget.planned_flops``) before
any GPU, DeepSpeed or process group exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from diver.data.index import (
    CorpusIndex,
    CorpusIndexError,
    split_subjects,
    take_fraction,
    take_subjects,
)
from diver.errors import DiverError
from diver.study.budget import window_tokens

if TYPE_CHECKING:
    from diver.config import ValidationConfig


class SplitError(DiverError, RuntimeError):
    """A corpus cannot give the asked-for training and validation split; the message
    says why (too few subjects, an empty family, a subject sweep without enough data)."""


@dataclass(frozen=True)
class Splits:
    """The training fraction and the fixed validation set of a corpus."""

    train: CorpusIndex
    val: CorpusIndex


def make_splits(
    corpus: Path | str,
    data_fraction: float,
    config: ValidationConfig,
    index: CorpusIndex | None = None,
    *,
    modalities: tuple[str, ...] | None = None,
    datasets: tuple[str, ...] | None = None,
    subjects: int | None = None,
) -> Splits:
    """The family's windows; validation subjects first, then the nested training data.

    ``modalities``/``datasets`` select a corpus family (SPEC §3: iEEG, EEG, both);
    ``subjects`` keeps a nested subset of the training subjects before the fraction.
    """
    if index is None:
        try:
            index = CorpusIndex.from_dir(corpus)
        except CorpusIndexError as exc:  # an OSError; the CLI reports DiverErrors cleanly
            raise SplitError(str(exc)) from exc
    if modalities is not None or datasets is not None:
        keep = np.ones(len(index), dtype=bool)
        if modalities is not None:
            keep &= index.frame["modality"].isin(list(modalities)).to_numpy()
        if datasets is not None:
            keep &= index.frame["dataset"].isin(list(datasets)).to_numpy()
        if not keep.any():
            raise SplitError(
                f"corpus {corpus} has no windows of modalities {list(modalities or [])} "
                f"in datasets {list(datasets) if datasets is not None else 'any'}; its datasets: "
                f"{sorted(index.frame['dataset'].unique())}"
            )
        index = index.subset(keep)
    train_all, val = split_subjects(
        index, config.val_fraction, config.split_seed, stratify_by_dataset=config.val_stratify
    )
    if len(val) == 0 or len(train_all) == 0:
        n_subjects = len(index.subjects())
        raise SplitError(
            f"corpus {corpus} has {n_subjects} subject(s); a subject-level validation split "
            f"(val_fraction {config.val_fraction}) needs at least two"
        )
    if config.val_max_windows is not None and len(val) > config.val_max_windows:
        val = take_fraction(val, config.val_max_windows / len(val), config.split_seed)
    if subjects is None:
        train = take_fraction(train_all, data_fraction, config.split_seed)
        return Splits(train=train, val=val)
    # Subject sweep at fixed data (SPEC §3): the fraction still counts against *all*
    # training windows, drawn from the chosen subjects only.
    n_windows = max(1, round(data_fraction * len(train_all)))
    try:
        chosen = take_subjects(train_all, subjects, config.split_seed)
    except ValueError as exc:
        raise SplitError(f"corpus {corpus}: --subjects {subjects}: {exc}") from exc
    if n_windows > len(chosen):
        raise SplitError(
            f"corpus {corpus}: {subjects} training subjects have {len(chosen)} windows, fewer "
            f"than the {n_windows} that --data-fraction {data_fraction} asks for; lower the "
            "fraction so every point of the subject sweep has the same data"
        )
    train = take_fraction(chosen, n_windows / len(chosen), config.split_seed)
    return Splits(train=train, val=val)


def unique_tokens(index: CorpusIndex, patch_samples: int) -> float:
    """U_D of SPEC §1 over the index's windows (:mod:`diver.study.budget`)."""
    frame = index.frame
    patches = frame["n_samples"].to_numpy() // patch_samples
    return float(np.sum(window_tokens(frame["n_channels"].to_numpy(), patches)))


def micro_batches_per_epoch(n_windows: int, world_size: int, workers: int, micro: int) -> int:
    """Micro-batches every rank takes per epoch: the minimum over ranks.

    ``WindowDataset(drop_uneven=True)`` gives each rank ``n // world_size`` windows,
    split into one contiguous slice per loader worker, and each worker batches its own
    slice; with workers, ranks can end up one batch apart.  Every rank must run the same
    number of forward/backward passes (the gradient reductions are collective), so all
    stop at the smallest count, computed identically on every rank without talking.
    """
    total = (n_windows // world_size) * world_size
    consumers = max(workers, 1)
    n_slices = world_size * consumers
    counts = []
    for rank in range(world_size):
        count = 0
        for worker in range(consumers):
            c = rank * consumers + worker
            size = (c + 1) * total // n_slices - c * total // n_slices
            count += math.ceil(size / micro)
        counts.append(count)
    return min(counts)
