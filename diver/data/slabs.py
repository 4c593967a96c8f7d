"""Reusable shared memory for the batches loader workers hand to the training process.

A padded 1 s-patch micro-batch is tens of MB.  Torch's DataLoader moves each batch
through fresh shared memory: the worker allocates it, fills it page fault by page
fault, and the main process maps it again - per window, that cost more CPU than
reading the window (``benchmarks/bench_loader.py``).  A ``SlabRing`` is allocated once
per training loader: each worker owns a few slabs, writes a batch's signal into a free
one, and sends only where it is; the training process copies it out (into pinned
memory on a GPU node, where a copy is needed anyway for an asynchronous transfer) and
frees the slab at once.  A worker that finds no free slab (its batches not yet taken)
falls back to fresh shared memory for that batch, so nothing ever waits on a slab.
Workers persist across epochs (the epoch reaches them through shared memory,
``WindowBatches``), so their slabs, open files and shard facts stay warm.
"""

from __future__ import annotations

import math

import torch


class SlabRing:
    """``slabs`` buffers of ``slab_bytes`` per worker, and which of them hold a batch.

    Made in the training process before the workers start (they inherit it).  A slab's
    flag is the generation that filled it (0: free): set by its worker when it writes a
    batch, cleared by the training process once it has copied the batch out.  Each
    pass over the loader is a new generation (``begin``); a slab still flagged with an
    older one held a batch that pass abandoned (prefetched, never taken: the loader
    discards those when it restarts its workers) and is free again.
    """

    def __init__(self, workers: int, slabs: int, slab_bytes: int) -> None:
        if workers < 1 or slabs < 1 or slab_bytes < 1:
            raise ValueError(f"need positive sizes, got {workers}, {slabs}, {slab_bytes}")
        self.workers, self.slabs, self.slab_bytes = workers, slabs, slab_bytes
        # Shared from the start, without touching a page (torch's default_collate's way).
        self.memory = shared_zeros((workers, slabs, slab_bytes), torch.uint8)
        self.busy = shared_zeros((workers, slabs), torch.int64)
        self.generation = shared_zeros((1,), torch.int64)

    def begin(self) -> int:
        """A new pass over the loader (in the training process, before it starts)."""
        self.generation += 1
        return int(self.generation[0])

    def acquire(
        self, worker: int, shape: tuple[int, ...], dtype: torch.dtype, generation: int
    ) -> int | None:
        """A free slab of ``worker`` for a tensor of ``shape``, now flagged with
        ``generation``; None when none is free or the tensor does not fit."""
        if _nbytes(shape, dtype) > self.slab_bytes:
            return None
        free = (self.busy[worker] < generation).nonzero()
        if len(free) == 0:
            return None
        slab = int(free[0])
        self.busy[worker, slab] = generation
        return slab

    def view(
        self, worker: int, slab: int, shape: tuple[int, ...], dtype: torch.dtype
    ) -> torch.Tensor:
        """The slab's bytes as a tensor of ``shape`` (in every process, the same memory)."""
        return self.memory[worker, slab, : _nbytes(shape, dtype)].view(dtype).view(shape)

    def release(self, worker: int, slab: int) -> None:
        self.busy[worker, slab] = 0


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def shared_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor in fresh shared memory (new shared pages read as zero)."""
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
    return torch.empty(0, dtype=dtype).new(storage).view(shape)
