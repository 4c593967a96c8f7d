"""A run's data and its length, fixed before the model exists.

**Budget.**  ``unique_tokens`` is U_D of the training fraction (SPEC §1: per window
``min(C, 32) x 30 x 0.75 x 0.75``) and the token budget is ``epochs x U_D``.  One epoch
is ``K`` micro-batches per rank (every window once) and ``ceil(K / GAS)`` optimizer
steps: ``ceil(windows / global_batch)`` when the world size divides the window count;
the last step of an epoch may accumulate fewer micro-batches and is then averaged over
those.  The scheduler needs the run's total steps, so the plan comes before the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from diver.config import ConfigError
from diver.data import (
    Splits,
    WindowDataset,
    make_splits,
    micro_batches_per_epoch,
    unique_tokens,
)
from diver.data.loader import training_dataset
from diver.study.settings import PretrainSettings
from diver.train.distributed import DistEnv
from diver.train.errors import PretrainError


@dataclass(frozen=True)
class RunPlan:
    """Splits, the token budget, this rank's training stream and the run's length."""

    splits: Splits
    patch_samples: int
    unique_tokens: float
    token_budget: float
    dataset: WindowDataset  # this rank's training windows (epoch set by the loop)
    micro: int  # windows per forward pass and rank
    accumulation: int  # micro-batches per optimizer step
    micro_per_epoch: int
    steps_per_epoch: int
    total_steps: int

    def loader_state(self, settings: PretrainSettings, world_size: int) -> dict[str, Any]:
        """What the position in an epoch means: the same values make skipping exact."""
        return {
            "seed": settings.config.runtime.seed,
            "world_size": world_size,
            "num_workers": settings.config.batch.num_workers,
            "micro_batch": self.micro,
            "accumulation": self.accumulation,
            "train_windows": len(self.splits.train),
            "micro_per_epoch": self.micro_per_epoch,
        }


def plan_run(
    settings: PretrainSettings, env: DistEnv, patch_samples: int, micro: int, accumulation: int
) -> RunPlan:
    """The cell's data and length on this rank, for ``(micro, accumulation)`` batches."""
    s, c = settings, settings.config
    splits = make_splits(
        s.corpus, s.data_fraction, c.validation,
        modalities=s.modalities, datasets=s.datasets, subjects=s.subjects,
    )
    tokens = unique_tokens(splits.train, patch_samples)
    dataset = training_dataset(
        splits.train, patch_samples, seed=c.runtime.seed, rank=env.rank, world_size=env.world_size
    )
    micro_per_epoch = micro_batches_per_epoch(
        len(splits.train), env.world_size, c.batch.num_workers, micro
    )
    if micro_per_epoch < 1:
        raise PretrainError(
            f"{len(splits.train)} training windows cannot feed {env.world_size} ranks"
        )
    steps_per_epoch = math.ceil(micro_per_epoch / accumulation)
    total_steps = s.epochs * steps_per_epoch
    if c.optimiser.warmup_steps >= total_steps:
        raise ConfigError(
            f"warmup_steps {c.optimiser.warmup_steps} must be below the run's {total_steps} steps"
        )
    return RunPlan(
        splits=splits,
        patch_samples=patch_samples,
        unique_tokens=tokens,
        token_budget=s.epochs * tokens,
        dataset=dataset,
        micro=micro,
        accumulation=accumulation,
        micro_per_epoch=micro_per_epoch,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )
