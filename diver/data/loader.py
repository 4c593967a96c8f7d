"""The training stream of a pretraining run: the dataset and the loader over it.

One place builds them (``training_dataset``, ``TrainingLoader``), so ``diver pretrain``
and ``benchmarks/bench_loader.py`` measure and run the same pipeline (sharding,
spatio-temporal resampling, loader workers, batches read in place, pinning).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
from torch.utils.data import DataLoader

from diver.data.dataset import WindowBatch, WindowDataset
from diver.data.index import CorpusIndex
from diver.data.resample import ResampleConfig
from diver.data.slabs import SlabRing

# Batches a worker may have in flight: DataLoader's prefetch (2 per worker), the one it
# is writing, and one spare.
SLABS_PER_WORKER = 4

HostAllocator = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def training_dataset(
    index: CorpusIndex, patch_samples: int, *, seed: int, rank: int, world_size: int
) -> WindowDataset:
    """A rank's training windows: shuffled, resampled (SPEC §2), equal counts per rank."""
    return WindowDataset(
        index,
        patch_samples,
        resample=ResampleConfig(enabled=True),
        seed=seed,
        shuffle=True,
        rank=rank,
        world_size=world_size,
        drop_uneven=True,
    )


class TrainingLoader:
    """Micro-batches of a ``WindowDataset``, each loader worker batching its own slice.

    The batches are exactly ``DataLoader(dataset, micro_batch,
    collate_fn=collate_windows)``'s, but read straight into place (``WindowBatches``):
    with workers, into reused shared-memory slabs (``diver.data.slabs``) that this
    process copies out of - into pinned memory when the model is on a GPU, so the copy
    to it can overlap compute (``batch.to(device, non_blocking=True)``).
    ``host`` allocates the host copy of a batch's signal (default: pinned on CUDA,
    plain otherwise; the loader benchmark passes a reusing allocator to model the
    CUDA caching host allocator on a machine without a GPU).
    """

    def __init__(
        self,
        dataset: WindowDataset,
        micro_batch: int,
        *,
        num_workers: int,
        seed: int,
        device: torch.device | str = "cpu",
        host: HostAllocator | None = None,
    ) -> None:
        self.dataset = dataset
        self.pinned = torch.device(device).type == "cuda"
        self.host = host or self._allocate
        self.ring = None
        if num_workers > 0:
            r = dataset.resample
            # room for float32 batches; a float16 batch touches only the first half
            slab = micro_batch * r.max_channels * r.max_patches * dataset.patch_samples * 4
            self.ring = SlabRing(num_workers, SLABS_PER_WORKER, slab)
        self.batches = dataset.batches(micro_batch, self.ring)
        self.loader = DataLoader(
            self.batches,
            batch_size=None,
            num_workers=num_workers,
            # Workers live for the whole run: their slabs, open shards and shard facts
            # stay warm, and nothing is forked again each epoch.
            persistent_workers=num_workers > 0,
            generator=torch.Generator().manual_seed(seed),
        )

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=self.pinned)

    def __iter__(self) -> Iterator[WindowBatch]:
        """One pass over the dataset's current epoch (``dataset.set_epoch`` first).

        A pass left unfinished (a preemption, or the batches a resume skips) is simply
        dropped: the next pass restarts the workers' streams, and the slabs of the
        batches it never took are free again (``SlabRing.begin``)."""
        self.batches.set_epoch(self.dataset.epoch)
        if self.ring is not None:
            self.ring.begin()
        for batch in self.loader:
            yield self._land(batch)

    def _land(self, batch: WindowBatch) -> WindowBatch:
        """The batch in this process's memory (its slab freed), pinned on CUDA."""
        if batch.slab is None:
            return batch.pin_memory() if self.pinned else batch
        assert self.ring is not None
        worker, slab, shape, dtype = batch.slab
        signal = self.host(shape, dtype)
        signal.copy_(self.ring.view(worker, slab, shape, dtype))
        self.ring.release(worker, slab)
        landed = replace(batch, signal=signal, slab=None)
        # (pinning an already pinned tensor - the signal - returns it as it is)
        return landed.pin_memory() if self.pinned else landed
