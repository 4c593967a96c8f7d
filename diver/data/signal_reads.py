"""Reading the part of a window a crop keeps, and the per-shard facts the crop needs.

Spatio-temporal resampling (SPEC §2) keeps at most 32 channels and 30 patches of a
window: of an HBN window (129 channels, 30 s) that is a fifth of its bytes, of a
0.1 s-patch window (30 patches of 0.1 s) a tenth or less.  Decoding the whole window
to keep that much made the loader read 5-10x the bytes it delivered and spend its
time in Parquet calls per window.  ``ShardReader`` instead

- reads each shard's small metadata columns (window index, channel counts, channel
  types, subtypes and coordinates) once per loader worker, keeping each distinct
  montage once (a recording's windows share theirs);
- reads a window's signal in place when the shard allows it
  (``diver.corpus.shards.signal_offsets``: uncompressed signal, one window per row
  group, the corpus defaults): one ``preadv`` per kept channel straight into the
  sample's buffer, exactly the kept patches, with readahead off so that a cold read
  fetches only those pages;
- otherwise (a compressed signal, e.g. a corpus written before uncompressed signals
  became the default) decodes the window's row group with pyarrow, as before.

Either way the delivered sample is identical: which channels and patches a sample
holds is decided by the crop alone (``diver.data.resample``), never by how it is read.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from diver.corpus.shards import SIGNAL_DTYPES, coords_of, signal_offsets, signals_of
from diver.data.vocab import channel_subtype_id, channel_type_id

_META_COLUMNS = [
    "window_index",
    "n_channels",
    "n_samples",
    "channel_types",
    "channel_subtypes",
    "coords_mm",
    "signal_dtype",
]


class ShardMismatchError(RuntimeError):
    """A shard changed since the corpus index was built; the message names it."""


@dataclass(frozen=True)
class Montage:
    """The per-channel inputs of a window besides its signal: embedding ids and
    coordinates (mm, NaN where unknown)."""

    type_ids: torch.Tensor  # (C,) long
    subtype_ids: torch.Tensor  # (C,) long
    coords: torch.Tensor  # (C, 3) float32


@dataclass(frozen=True)
class ShardFacts:
    """One shard's rows in file order: what the loader checks and crops with.

    ``offsets`` are the rows' in-place signal offsets (None when the shard must be
    decoded); ``montages[montage_of_row[r]]`` is row ``r``'s montage.
    """

    path: Path
    window_index: np.ndarray
    n_channels: np.ndarray
    n_samples: np.ndarray
    group_start: np.ndarray  # first row of each row group
    offsets: np.ndarray | None
    dtype: np.dtype
    montage_of_row: np.ndarray
    montages: tuple[Montage, ...]

    def row(self, row_group: int, row_in_group: int) -> int:
        return int(self.group_start[row_group]) + row_in_group


def read_shard_facts(path: Path) -> ShardFacts:
    """Everything but the signal of ``path``, with each distinct montage kept once."""
    try:
        with pq.ParquetFile(path) as pf:
            meta = pf.metadata
            table = pf.read(columns=_META_COLUMNS, use_threads=False)
    except (OSError, pa.ArrowException) as exc:
        raise ShardMismatchError(
            f"cannot read shard {path}: {exc}; was it rewritten since the corpus index "
            "was built? rebuild the index"
        ) from exc
    n_channels = table.column("n_channels").to_numpy().astype(np.int64)
    n_samples = table.column("n_samples").to_numpy().astype(np.int64)
    dtypes = set(table.column("signal_dtype").unique().to_pylist())
    if len(dtypes) != 1 or (name := dtypes.pop()) not in SIGNAL_DTYPES:
        raise ShardMismatchError(f"shard {path} has signal types {sorted(dtypes)}")
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    montage_ids: dict[tuple[object, ...], int] = {}
    montages: list[Montage] = []
    montage_of_row = np.empty(table.num_rows, dtype=np.int64)
    types = table.column("channel_types").to_pylist()
    subtypes = table.column("channel_subtypes").to_pylist()
    coords = coords_of(table)
    for r in range(table.num_rows):
        key = (tuple(types[r]), tuple(subtypes[r]), coords[r].tobytes())
        if key not in montage_ids:
            montage_ids[key] = len(montages)
            montages.append(
                Montage(
                    type_ids=torch.tensor([channel_type_id(t) for t in types[r]]),
                    subtype_ids=torch.tensor([channel_subtype_id(t) for t in subtypes[r]]),
                    coords=torch.from_numpy(np.array(coords[r], dtype=np.float32)),
                )
            )
        montage_of_row[r] = montage_ids[key]
    return ShardFacts(
        path=path,
        window_index=table.column("window_index").to_numpy().astype(np.int64),
        n_channels=n_channels,
        n_samples=n_samples,
        group_start=np.cumsum([0, *sizes[:-1]]).astype(np.int64),
        offsets=signal_offsets(meta, n_channels, n_samples),
        dtype=SIGNAL_DTYPES[name],
        montage_of_row=montage_of_row,
        montages=tuple(montages),
    )


def channel_runs(channels: np.ndarray) -> list[tuple[int, int, int]]:
    """``(first position, first channel, length)`` of each run of consecutive channels."""
    breaks = np.flatnonzero(np.diff(channels) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [len(channels)]])
    return [(int(a), int(channels[a]), int(b - a)) for a, b in zip(starts, ends, strict=True)]


class ShardReader:
    """Shard facts and open files of one process (a loader worker, or the main one).

    Facts are kept for every shard touched (a few kB each); at most ``max_open`` files
    stay open.  Not shared across processes: ``WindowDataset`` makes one per process.
    """

    def __init__(self, corpus_dir: Path, shards: Sequence[str], max_open: int = 64) -> None:
        self.corpus_dir = Path(corpus_dir)
        self.shards = list(shards)
        self.max_open = max_open
        self.pid = os.getpid()
        self._facts: dict[int, ShardFacts] = {}
        self._fds: OrderedDict[int, int] = OrderedDict()

    def facts(self, code: int) -> ShardFacts:
        if code not in self._facts:
            self._facts[code] = read_shard_facts(self.corpus_dir / self.shards[code])
        return self._facts[code]

    def _fd(self, code: int) -> int:
        if code in self._fds:
            self._fds.move_to_end(code)
            return self._fds[code]
        fd = os.open(self.corpus_dir / self.shards[code], os.O_RDONLY | os.O_CLOEXEC)
        # Crops are scattered over the file: no readahead, only the pages asked for.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        self._fds[code] = fd
        while len(self._fds) > self.max_open:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def read_in_place(
        self,
        code: int,
        row: int,
        channels: np.ndarray,
        start: int,
        stop: int,
        out: Sequence[np.ndarray],
    ) -> None:
        """Samples ``[start, stop)`` of ``channels`` (increasing) of row ``row``, as
        stored, into ``out`` (one contiguous array per channel, e.g. the channel's slot
        in a padded batch): one ``preadv`` per channel, or per run of consecutive
        channels when the crop spans the whole window (their bytes are then adjacent)."""
        facts = self.facts(code)
        assert facts.offsets is not None
        fd = self._fd(code)
        item = facts.dtype.itemsize
        stride = int(facts.n_samples[row]) * item
        base = int(facts.offsets[row]) + start * item
        if start == 0 and stop == int(facts.n_samples[row]):
            reads = channel_runs(channels)
        else:
            reads = [(i, int(c), 1) for i, c in enumerate(channels.tolist())]
        for position, channel, count in reads:
            targets = out[position : position + count]
            want = sum(t.nbytes for t in targets)
            got = os.preadv(fd, targets, base + channel * stride)
            if got != want:
                raise ShardMismatchError(
                    f"shard {facts.path} ended early: {got} of {want} bytes of window "
                    f"{facts.window_index[row]}, channel {channel}; rebuild the index"
                )

    def decode(self, code: int, row_groups: Sequence[int]) -> dict[int, np.ndarray]:
        """The signals of whole row groups (decoded by pyarrow), by file row."""
        facts = self.facts(code)
        groups = sorted(set(row_groups))
        with pq.ParquetFile(facts.path) as pf:
            table = pf.read_row_groups(
                groups,
                columns=["n_channels", "n_samples", "signal_dtype", "signal"],
                use_threads=False,
            )
            sizes = [pf.metadata.row_group(g).num_rows for g in groups]
        starts = [int(facts.group_start[g]) for g in groups]
        rows = [a + i for a, n in zip(starts, sizes, strict=True) for i in range(n)]
        return dict(zip(rows, signals_of(table), strict=True))

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def __del__(self) -> None:
        if getattr(self, "pid", None) == os.getpid():
            self.close()
