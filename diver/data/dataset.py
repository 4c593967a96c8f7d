"""Streaming windows to torch: sharding, efficient shard reads, STR, and batching.

``WindowDataset`` is an ``IterableDataset`` rather than a map-style one because the
expensive thing is opening and decoding Parquet, not indexing: windows are read a
row group at a time, grouped by shard file, so a worker never opens a file per
window.  Each epoch:

1. The windows are ordered — row groups in a random order (seeded by ``seed`` and
   the epoch, identical on every rank and worker), windows in a random order inside
   each row group — or left in index order when ``shuffle=False``.
2. That sequence is cut into ``world_size x num_workers`` contiguous, near-equal
   slices, one per (rank, loader worker): together they cover every window exactly
   once, ranks get the same count within one window, and consecutive windows of a
   slice share row groups, so each row group is read once.
3. A worker takes its slice in blocks of ``block_windows`` windows, each block in a
   random order, chooses each window's crop (``diver.data.resample``) from its shape
   alone, and reads only what the crop keeps (``diver.data.signal_reads``: in place
   from the default layout, else by decoding each shard's row groups once per block);
   only cropped samples are held in memory.  ``WindowBatches`` reads the same stream
   straight into padded batches, the training loader's way (``diver.data.loader``).

The crop of a window depends only on ``(seed, epoch, window identity)``, not on the
rank or worker that happens to read it, so changing the number of GPUs or loader
workers does not change what the model sees for a window.

Channel types, iEEG subtypes and window modalities become integer ids for the
model's embeddings; id 0 is the padding id of the per-channel vocabularies.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from diver.data.index import CorpusIndex, window_hashes
from diver.data.resample import Crop, ResampleConfig, choose_crop
from diver.data.signal_reads import Montage, ShardMismatchError, ShardReader
from diver.data.slabs import SlabRing, shared_zeros
from diver.data.vocab import (  # noqa: F401  (re-exported: the ids are the dataset's)
    CHANNEL_SUBTYPE_IDS,
    CHANNEL_TYPE_IDS,
    MODALITY_IDS,
    NO_SUBTYPE_ID,
    OTHER_CHANNEL_TYPE_ID,
    OTHER_MODALITY_ID,
    PAD_ID,
    channel_subtype_id,
    channel_type_id,
    modality_id,
)
from diver.model.inputs import EncoderInputs


@dataclass
class WindowSample:
    """One cropped window.

    ``signal`` is ``(C', N' * patch_samples)`` in the corpus's storage type (float16 by
    default: half the bytes through the loader, and exact in the model's compute type,
    to which ``WindowBatch.encoder_inputs`` casts it); ``coords`` ``(C', 3)`` mm with
    NaN where unknown (the model zeroes those); ``channels`` the source indices of the
    kept channels and ``patch_start`` the first kept patch, for tracing a token back.
    """

    signal: torch.Tensor
    coords: torch.Tensor
    channel_type_ids: torch.Tensor
    channel_subtype_ids: torch.Tensor
    modality_id: int
    channels: torch.Tensor
    patch_start: int
    patch_samples: int
    dataset: str
    subject: str
    recording: str
    window_index: int

    @property
    def n_channels(self) -> int:
        return int(self.signal.shape[0])

    @property
    def n_patches(self) -> int:
        return int(self.signal.shape[1]) // self.patch_samples


@dataclass
class WindowBatch:
    """A padded batch of windows with variable channel counts and lengths.

    ``signal`` is ``(B, C_max, N_max, patch)``, zero outside the masks;
    ``channel_mask`` ``(B, C_max)`` and ``patch_mask`` ``(B, N_max)`` are true on real
    channels / patches.  Padded ``coords`` are 0, not NaN: a NaN at a padded key would
    still reach the attention output through ``0 * NaN``.  Padded channel type and
    subtype ids are ``PAD_ID``.
    """

    signal: torch.Tensor
    channel_mask: torch.Tensor
    patch_mask: torch.Tensor
    coords: torch.Tensor
    channel_type_ids: torch.Tensor
    channel_subtype_ids: torch.Tensor
    modality_ids: torch.Tensor
    window_indices: torch.Tensor
    datasets: list[str]
    subjects: list[str]
    recordings: list[str]
    # Set by a loader worker that wrote the signal into a ``SlabRing`` slab instead:
    # (worker, slab, shape, dtype); ``signal`` is then empty until the training process
    # copies it out (``diver.data.loader.TrainingLoader``).
    slab: tuple[int, int, tuple[int, ...], torch.dtype] | None = None

    def __len__(self) -> int:
        return int(self.channel_mask.shape[0])

    @property
    def token_mask(self) -> torch.Tensor:
        """``(B, C_max, N_max)``: true on real (channel, patch) tokens."""
        return self.channel_mask[:, :, None] & self.patch_mask[:, None, :]

    def _map(self, fn: Any) -> WindowBatch:
        values = {
            f.name: fn(v) if isinstance(v := getattr(self, f.name), torch.Tensor) else v
            for f in fields(self)
        }
        return WindowBatch(**values)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> WindowBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> WindowBatch:
        """Called by ``DataLoader(pin_memory=True)`` on custom batch types."""
        return self._map(lambda t: t.pin_memory())

    def encoder_inputs(self, dtype: torch.dtype = torch.float32) -> EncoderInputs:
        """What the model reads of the batch.

        The signal goes in the model's compute dtype (bf16 under DeepSpeed's bf16 mode,
        which casts the module, not its inputs); the model computes its reconstruction
        targets in fp32 and coordinates stay fp32 for the position encoding.
        """
        return EncoderInputs(
            patches=self.signal.to(dtype),
            coords_mm=self.coords,
            type_ids=self.channel_type_ids,
            subtype_ids=self.channel_subtype_ids,
            channel_mask=self.channel_mask,
            patch_mask=self.patch_mask,
        )


def _zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor; in a loader worker, made directly in shared memory (as torch's
    ``default_collate`` does): the batch would otherwise be copied there to reach the
    main process."""
    if get_worker_info() is None:
        return torch.zeros(shape, dtype=dtype)
    return shared_zeros(shape, dtype)


def collate_windows(samples: Sequence[WindowSample]) -> WindowBatch:
    """Pad ``samples`` to the largest channel count and patch count of the batch."""
    if not samples:
        raise ValueError("cannot collate an empty list of windows")
    patch = samples[0].patch_samples
    if any(s.patch_samples != patch for s in samples):
        raise ValueError("all windows of a batch must share one patch size")
    b = len(samples)
    c_max = max(s.n_channels for s in samples)
    n_max = max(s.n_patches for s in samples)
    dtype = functools.reduce(torch.promote_types, {s.signal.dtype for s in samples})
    signal = _zeros((b, c_max, n_max, patch), dtype)
    parts = _Parts(b, c_max, n_max)
    for i, s in enumerate(samples):
        c, n = s.n_channels, s.n_patches
        signal[i, :c, :n] = s.signal.reshape(c, n, patch)
        parts.put(i, c, n, s.coords, s.channel_type_ids, s.channel_subtype_ids)
    return parts.batch(
        signal,
        modality_ids=[s.modality_id for s in samples],
        window_indices=[s.window_index for s in samples],
        datasets=[s.dataset for s in samples],
        subjects=[s.subject for s in samples],
        recordings=[s.recording for s in samples],
    )


class _Parts:
    """Everything of a padded batch but its signal, filled window by window."""

    def __init__(self, b: int, c_max: int, n_max: int) -> None:
        self.channel_mask = torch.zeros(b, c_max, dtype=torch.bool)
        self.patch_mask = torch.zeros(b, n_max, dtype=torch.bool)
        self.coords = torch.zeros(b, c_max, 3, dtype=torch.float32)
        self.type_ids = torch.full((b, c_max), PAD_ID, dtype=torch.long)
        self.subtype_ids = torch.full((b, c_max), PAD_ID, dtype=torch.long)

    def put(
        self,
        i: int,
        c: int,
        n: int,
        coords: torch.Tensor,
        type_ids: torch.Tensor,
        subtype_ids: torch.Tensor,
    ) -> None:
        self.channel_mask[i, :c] = True
        self.patch_mask[i, :n] = True
        self.coords[i, :c] = coords
        self.type_ids[i, :c] = type_ids
        self.subtype_ids[i, :c] = subtype_ids

    def batch(
        self,
        signal: torch.Tensor,
        *,
        modality_ids: list[int],
        window_indices: list[int],
        datasets: list[str],
        subjects: list[str],
        recordings: list[str],
        slab: tuple[int, int, tuple[int, ...], torch.dtype] | None = None,
    ) -> WindowBatch:
        return WindowBatch(
            signal=signal,
            channel_mask=self.channel_mask,
            patch_mask=self.patch_mask,
            coords=self.coords,
            channel_type_ids=self.type_ids,
            channel_subtype_ids=self.subtype_ids,
            modality_ids=torch.tensor(modality_ids, dtype=torch.long),
            window_indices=torch.tensor(window_indices, dtype=torch.long),
            datasets=datasets,
            subjects=subjects,
            recordings=recordings,
            slab=slab,
        )


@dataclass(frozen=True)
class _Planned:
    """A window about to be read: where it is, its crop, and its decoded signal when
    its shard cannot be read in place."""

    position: int
    code: int
    row: int
    crop: Crop
    dtype: np.dtype
    montage: Montage
    decoded: np.ndarray | None


_TORCH_DTYPES = {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32}


def _distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    return rank, world_size


def _codes_and_values(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A string column as integer codes plus distinct values (cheap to copy to workers)."""
    codes, values = pd.factorize(column)
    return np.asarray(codes, dtype=np.int32), np.asarray(values, dtype=object)


class WindowDataset(IterableDataset[WindowSample]):
    """Cropped windows of ``index`` for one distributed rank (see the module docstring).

    ``patch_samples`` is 500 (1 s at 500 Hz) or 50 (0.1 s); a window's patch count is
    ``n_samples // patch_samples``.  ``rank``/``world_size`` default to the initialised
    ``torch.distributed`` group, else 0/1.  Call ``set_epoch`` before each epoch's
    ``iter(loader)``; with ``persistent_workers=True`` the workers keep the epoch they
    started with, so leave that off.  ``drop_uneven`` trims each epoch to a multiple of
    ``world_size`` windows (a different random remainder each epoch when shuffling),
    for training loops that need the same number of batches on every rank; by default
    every window is yielded exactly once and ranks differ by at most one window.
    ``len()`` counts a rank's windows; each loader worker batches its own slice, so a
    rank's last batches of an epoch can be partial, one per worker.
    """

    def __init__(
        self,
        index: CorpusIndex,
        patch_samples: int = 500,
        *,
        resample: ResampleConfig | None = None,
        seed: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        block_windows: int = 64,
        drop_uneven: bool = False,
    ) -> None:
        super().__init__()
        if patch_samples < 1:
            raise ValueError(f"patch_samples must be positive, got {patch_samples}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative (a numpy SeedSequence), got {seed}")
        if block_windows < 1:
            raise ValueError(f"block_windows must be positive, got {block_windows}")
        self.rank, self.world_size = _distributed_defaults(rank, world_size)
        self.corpus_dir = index.corpus_dir
        self.patch_samples = patch_samples
        self.resample = resample if resample is not None else ResampleConfig()
        self.seed = seed
        self.shuffle = shuffle
        self.block_windows = block_windows
        self.drop_uneven = drop_uneven
        self.epoch = 0
        frame = index.frame
        short = frame["n_samples"].to_numpy() < patch_samples
        if short.any():
            row = frame.loc[short].iloc[0]
            raise ValueError(
                f"window {row['dataset']}/{row['recording']}#{row['window_index']} has "
                f"{row['n_samples']} samples, fewer than one {patch_samples}-sample patch"
            )
        # Plain arrays (no pandas on the hot path); strings stay categorical codes.
        shard_codes, shards = _codes_and_values(frame["shard"])
        self._shard_codes = shard_codes.astype(np.int64)
        self._shards = [str(s) for s in shards]
        self._row_group = frame["row_group"].to_numpy().astype(np.int64)
        self._row_in_group = frame["row_in_group"].to_numpy().astype(np.int64)
        self._window_index = frame["window_index"].to_numpy().astype(np.int64)
        self._signal_offset = frame["signal_offset"].to_numpy().astype(np.int64)
        self._shard_reader: ShardReader | None = None
        self._labels = {
            name: _codes_and_values(frame[name])
            for name in ("dataset", "subject", "recording", "modality")
        }
        # Seed-free identity hash: the crop stream is keyed by it, so the same window
        # gets the same crop in an epoch whatever rank or worker reads it.
        self._keys = window_hashes(frame, seed=0)
        # A unit is one row group of one shard: the granularity of reads and shuffling.
        unit_key = self._shard_codes * (int(self._row_group.max(initial=0)) + 1) + self._row_group
        self._unit = np.asarray(pd.factorize(unit_key)[0], dtype=np.int64)

    def _label(self, name: str, position: int) -> str:
        codes, values = self._labels[name]
        return str(values[codes[position]])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order and crops (deterministic in ``seed`` and ``epoch``)."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = int(epoch)

    def _epoch_total(self) -> int:
        n = len(self._keys)
        return (n // self.world_size) * self.world_size if self.drop_uneven else n

    def __len__(self) -> int:
        """Windows this rank yields per epoch (over all of its loader workers)."""
        n = self._epoch_total()
        return (self.rank + 1) * n // self.world_size - self.rank * n // self.world_size

    def epoch_order(self) -> np.ndarray:
        """Positions (rows of the index) in this epoch's order, the same on every rank."""
        n = len(self._keys)
        if not self.shuffle:
            order = np.arange(n)
        else:
            rng = np.random.default_rng([self.seed, self.epoch, 0x5EED])
            unit_rank = rng.permutation(int(self._unit.max(initial=-1)) + 1)[self._unit]
            # Integer unit rank plus a fraction in [0, 1): by unit, random inside it.
            order = np.argsort(unit_rank + rng.random(n))
        return order[: self._epoch_total()]

    def _consumer(self) -> tuple[int, int]:
        """This iterator's slot among ``world_size x num_workers`` and the slot count."""
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * n_workers + worker, self.world_size * n_workers

    def _blocks(self) -> Iterator[np.ndarray]:
        """This iterator's windows in yield order, a block (``block_windows``) at a time:
        its contiguous slice of the epoch order, each block shuffled when shuffling."""
        consumer, n_consumers = self._consumer()
        order = self.epoch_order()
        n = len(order)
        mine = order[consumer * n // n_consumers : (consumer + 1) * n // n_consumers]
        block_rng = np.random.default_rng([self.seed, self.epoch, consumer, n_consumers])
        for start in range(0, len(mine), self.block_windows):
            block = mine[start : start + self.block_windows]
            if self.shuffle:
                block = block[block_rng.permutation(len(block))]
            yield block

    def __iter__(self) -> Iterator[WindowSample]:
        for block in self._blocks():
            for planned in self._plan(block):
                yield self._sample(planned)

    def batches(self, batch_size: int, ring: SlabRing | None = None) -> WindowBatches:
        """This dataset's windows as ready-padded batches (see ``WindowBatches``)."""
        return WindowBatches(self, batch_size, ring)

    def _reader(self) -> ShardReader:
        """This process's shard reader (loader workers each make their own)."""
        if self._shard_reader is None or self._shard_reader.pid != os.getpid():
            self._shard_reader = ShardReader(self.corpus_dir, self._shards)
        return self._shard_reader

    def __getstate__(self) -> dict[str, Any]:
        # Open files and cached facts stay in the process that made them.
        return {**self.__dict__, "_shard_reader": None}

    def _plan(self, positions: np.ndarray) -> list[_Planned]:
        """The crops of the windows at ``positions``, in that order, ready to be read.

        Shards are visited once each: a window whose shard allows it (``signal_offset >=
        0``) will be read in place, only the crop's bytes; otherwise the row groups of
        the shard's windows here are decoded now, once.  The crop is chosen from the
        window's shape alone, before anything is read.
        """
        reader = self._reader()
        planned: dict[int, _Planned] = {}
        codes = self._shard_codes[positions]
        for code in dict.fromkeys(codes.tolist()):
            in_shard = positions[codes == code]
            facts = reader.facts(code)
            decoded = None
            if (self._signal_offset[in_shard] < 0).any():
                decoded = reader.decode(code, self._row_group[in_shard].tolist())
            for position in in_shard.tolist():
                row = facts.row(int(self._row_group[position]), int(self._row_in_group[position]))
                offset = int(self._signal_offset[position])
                if (
                    row >= len(facts.window_index)
                    or facts.window_index[row] != self._window_index[position]
                    or (offset >= 0 and (facts.offsets is None or facts.offsets[row] != offset))
                ):
                    raise ShardMismatchError(
                        f"shard {facts.path} no longer matches the corpus index (window "
                        f"{self._window_index[position]} expected at row group "
                        f"{self._row_group[position]}, row {self._row_in_group[position]}); "
                        "rebuild the index"
                    )
                n_samples = int(facts.n_samples[row])
                crop = self._choose(
                    position, int(facts.n_channels[row]), n_samples // self.patch_samples
                )
                planned[position] = _Planned(
                    position=position,
                    code=code,
                    row=row,
                    crop=crop,
                    dtype=facts.dtype,
                    montage=facts.montages[int(facts.montage_of_row[row])],
                    decoded=None if decoded is None else decoded[row],
                )
        return [planned[p] for p in positions.tolist()]

    def _fill(self, planned: _Planned, rows: Sequence[np.ndarray]) -> None:
        """Write the crop's kept channels, one per array of ``rows`` (each ``N' x
        patch`` values long), from the shard or from the decoded window."""
        crop = planned.crop
        start = crop.patch_start * self.patch_samples
        stop = start + crop.n_patches * self.patch_samples
        if planned.decoded is None:
            self._reader().read_in_place(
                planned.code, planned.row, crop.channels, start, stop, rows
            )
        else:
            for out, channel in zip(rows, crop.channels.tolist(), strict=True):
                out[:] = planned.decoded[channel, start:stop]

    def _sample(self, planned: _Planned) -> WindowSample:
        crop, position = planned.crop, planned.position
        signal = np.empty((len(crop.channels), crop.n_patches * self.patch_samples), planned.dtype)
        self._fill(planned, list(signal))
        channels = torch.from_numpy(crop.channels)
        return WindowSample(
            signal=torch.from_numpy(signal),
            coords=planned.montage.coords[channels],
            channel_type_ids=planned.montage.type_ids[channels],
            channel_subtype_ids=planned.montage.subtype_ids[channels],
            modality_id=modality_id(self._label("modality", position)),
            channels=channels,
            patch_start=crop.patch_start,
            patch_samples=self.patch_samples,
            dataset=self._label("dataset", position),
            subject=self._label("subject", position),
            recording=self._label("recording", position),
            window_index=int(self._window_index[position]),
        )

    def _batch(self, positions: np.ndarray, ring: SlabRing | None = None) -> WindowBatch:
        """``collate_windows`` of the windows' samples, read straight into the batch (in a
        loader worker, into a free slab of ``ring`` when there is one)."""
        plan = self._plan(positions)
        patch = self.patch_samples
        b = len(plan)
        c_max = max(len(p.crop.channels) for p in plan)
        n_max = max(p.crop.n_patches for p in plan)
        dtype = _TORCH_DTYPES[np.dtype(functools.reduce(np.promote_types, {p.dtype for p in plan}))]
        shape = (b, c_max, n_max, patch)
        slab = None
        info = get_worker_info()
        if ring is not None and info is not None:
            slab = ring.acquire(info.id, shape, dtype, int(ring.generation[0]))
        if slab is None:
            signal = _zeros(shape, dtype)
        else:
            signal = ring.view(info.id, slab, shape, dtype).zero_()  # a reused slab
        into = signal.numpy()
        parts = _Parts(b, c_max, n_max)
        for i, planned in enumerate(plan):
            crop = planned.crop
            c, n = len(crop.channels), crop.n_patches
            if planned.dtype == into.dtype:
                self._fill(planned, [into[i, j, :n].reshape(-1) for j in range(c)])
            else:  # a float16 window in a batch promoted to float32 by another window
                kept = np.empty((c, n * patch), planned.dtype)
                self._fill(planned, list(kept))
                signal[i, :c, :n] = torch.from_numpy(kept).reshape(c, n, patch)
            channels = torch.from_numpy(crop.channels)
            montage = planned.montage
            parts.put(
                i,
                c,
                n,
                montage.coords[channels],
                montage.type_ids[channels],
                montage.subtype_ids[channels],
            )
        where = None
        if slab is not None:  # the signal travels in the slab, not in the batch
            where = (info.id, slab, shape, dtype)
            signal = torch.empty(0, dtype=dtype)
        return parts.batch(
            signal,
            slab=where,
            modality_ids=[modality_id(self._label("modality", p.position)) for p in plan],
            window_indices=[int(self._window_index[p.position]) for p in plan],
            datasets=[self._label("dataset", p.position) for p in plan],
            subjects=[self._label("subject", p.position) for p in plan],
            recordings=[self._label("recording", p.position) for p in plan],
        )

    def _choose(self, position: int, n_channels: int, n_patches: int) -> Crop:
        """The window's crop: a function of (seed, epoch, window identity) only."""
        rng = None
        if self.resample.enabled:
            rng = np.random.default_rng([self.seed, self.epoch, int(self._keys[position])])
        return choose_crop(n_channels, n_patches, rng, self.resample)


class WindowBatches(IterableDataset[WindowBatch]):
    """A ``WindowDataset``'s stream as padded batches, read straight into them.

    Equal to ``DataLoader(dataset, batch_size, collate_fn=collate_windows)`` batch for
    batch (each loader worker batches its own slice of the epoch, the last batch of a
    slice may be partial), but each kept channel is read from the shard directly into
    its slot of the batch - in shared memory inside a loader worker - instead of into a
    sample that collation then copies: at 1 s patches that copy and its fresh pages
    cost more than the read.  With a ``ring`` (``diver.data.slabs``), workers write into
    reused shared memory; the batches must then be landed by the process that made the
    ring (``diver.data.loader.TrainingLoader``).  Use with ``DataLoader(batch_size=None)``;
    ``set_epoch`` reaches persistent workers too.
    """

    def __init__(
        self, dataset: WindowDataset, batch_size: int, ring: SlabRing | None = None
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.ring = ring
        # Shared, so that persistent loader workers see the epoch set after they started.
        self.epoch = shared_zeros((1,), torch.int64)
        self.epoch[0] = dataset.epoch

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)
        self.epoch[0] = epoch

    def __iter__(self) -> Iterator[WindowBatch]:
        self.dataset.set_epoch(int(self.epoch[0]))
        blocks = list(self.dataset._blocks())
        if not blocks:
            return
        positions = np.concatenate(blocks)
        for start in range(0, len(positions), self.batch_size):
            yield self.dataset._batch(positions[start : start + self.batch_size], self.ring)
