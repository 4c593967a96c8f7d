"""The Parquet layout of the windowed corpus: schema, atomic shard writer, readers.

One row per kept 30 s window.  The signal is stored as one binary value per window:
the raw little-endian bytes of its C-ordered ``(n_channels, n_samples)`` array, of
the type named in ``signal_dtype``.  A binary column has no per-sample repetition
levels to decode, so a table's whole ``signal`` column is one contiguous buffer plus
offsets that numpy views without copying (``signals_of``) - a random window read is
a decompression and a view, about ten times faster than the same data stored as a
Parquet list of floats.  Uncompressed (the default) with one window per row group, a
window's signal is the tail of its row group's column chunk, so the training loader
reads just the channels and patches a crop keeps, in place (``signal_offsets``).
Coordinates are a list column (``coords_mm``, ``n_channels * 3`` values).

Shards live at ``<corpus>/windows/<dataset>/<recording>.parquet``; the whole corpus
opens with ``pyarrow.dataset.dataset(corpus / "windows")``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diver.atomic import temporary_name

if TYPE_CHECKING:
    import pandas as pd

SIGNAL_DTYPES = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}

METADATA_COLUMNS = (
    "dataset",
    "subject",
    "recording",
    "window_index",
    "start_seconds",
    "modality",
    "sfreq",
    "n_channels",
    "n_samples",
    "coord_frame",
    "channel_names",
    "channel_types",
    "channel_subtypes",
    "coords_mm",
    "signal_dtype",
)


# The columns naming a window (and its modality): the first columns of a corpus shard,
# and of every per-window file derived from one (embeddings).
WINDOW_KEY_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("dataset", pa.string()),
    ("subject", pa.string()),
    ("recording", pa.string()),
    ("window_index", pa.int32()),
    ("start_seconds", pa.float64()),
    ("modality", pa.string()),
)


def window_schema(signal_dtype: str = "float16") -> pa.Schema:
    """Arrow schema of a window row; ``signal_dtype`` is ``float16`` or ``float32``."""
    if signal_dtype not in SIGNAL_DTYPES:
        raise ValueError(
            f"signal_dtype must be one of {sorted(SIGNAL_DTYPES)}, got {signal_dtype!r}"
        )
    return pa.schema(
        [
            *WINDOW_KEY_FIELDS,
            ("sfreq", pa.float32()),
            ("n_channels", pa.int32()),
            ("n_samples", pa.int32()),
            ("coord_frame", pa.string()),
            ("channel_names", pa.list_(pa.string())),
            ("channel_types", pa.list_(pa.string())),
            ("channel_subtypes", pa.list_(pa.string())),
            ("coords_mm", pa.list_(pa.float32())),
            ("signal_dtype", pa.string()),
            ("signal", pa.large_binary()),
        ],
        metadata={b"diver.signal_dtype": signal_dtype.encode()},
    )


@dataclass(frozen=True)
class Window:
    """One kept window, ready to be written (signal already scaled and clipped)."""

    dataset: str
    subject: str
    recording: str
    window_index: int
    start_seconds: float
    modality: str
    sfreq: float
    coord_frame: str
    channel_names: Sequence[str]
    channel_types: Sequence[str]
    channel_subtypes: Sequence[str]
    coords_mm: np.ndarray  # (n_channels, 3), NaN where unknown
    signal: np.ndarray  # (n_channels, n_samples)


def windows_to_table(windows: Sequence[Window], schema: pa.Schema) -> pa.Table:
    """Columnar table of ``windows``; the signal buffer is built without per-sample loops."""
    dtype_name = schema.metadata[b"diver.signal_dtype"].decode()
    dtype = SIGNAL_DTYPES[dtype_name]
    signals = [np.ascontiguousarray(w.signal, dtype=dtype) for w in windows]
    offsets = np.zeros(len(windows) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([s.nbytes for s in signals])
    flat = b"".join(s.tobytes() for s in signals)
    signal_col = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(windows), [None, pa.py_buffer(offsets), pa.py_buffer(flat)]
    )
    coords = [np.asarray(w.coords_mm, dtype=np.float32).reshape(-1) for w in windows]
    columns = {
        "dataset": [w.dataset for w in windows],
        "subject": [w.subject for w in windows],
        "recording": [w.recording for w in windows],
        "window_index": [w.window_index for w in windows],
        "start_seconds": [w.start_seconds for w in windows],
        "modality": [w.modality for w in windows],
        "sfreq": [w.sfreq for w in windows],
        "n_channels": [int(w.signal.shape[0]) for w in windows],
        "n_samples": [int(w.signal.shape[1]) for w in windows],
        "coord_frame": [w.coord_frame for w in windows],
        "channel_names": [list(w.channel_names) for w in windows],
        "channel_types": [list(w.channel_types) for w in windows],
        "channel_subtypes": [list(w.channel_subtypes) for w in windows],
        "coords_mm": [c.tolist() for c in coords],
        "signal_dtype": [dtype_name] * len(windows),
    }
    arrays = [pa.array(columns[name], type=schema.field(name).type) for name in METADATA_COLUMNS]
    return pa.Table.from_arrays([*arrays, signal_col], schema=schema)


class ShardWriter:
    """Writes one recording's windows to ``path`` atomically.

    Rows go to ``<path>.tmp-<pid>`` as they come (one row group per
    ``row_group_windows`` windows, so memory stays bounded), and the file is renamed
    into place only by ``close()`` after a clean exit: a killed or failed run never
    leaves a half-written shard under the final name.
    """

    def __init__(
        self,
        path: Path,
        *,
        signal_dtype: str = "float16",
        row_group_windows: int = 1,
        signal_compression: str = "none",
    ):
        self.path = Path(path)
        self.signal_compression = signal_compression
        self.schema = window_schema(signal_dtype)
        self.row_group_windows = row_group_windows
        self._tmp = temporary_name(self.path)  # renamed into place by close()
        self._pending: list[Window] = []
        self._writer: pq.ParquetWriter | None = None
        self.n_written = 0

    def __enter__(self) -> ShardWriter:
        return self

    def write(self, window: Window) -> None:
        self._pending.append(window)
        if len(self._pending) >= self.row_group_windows:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(
                self._tmp,
                self.schema,
                # metadata columns always zstd; the signal as configured (float16 EEG
                # compresses by ~8 %; uncompressed, a crop is read in place:
                # signal_offsets)
                compression={
                    **dict.fromkeys(METADATA_COLUMNS, "zstd"),
                    "signal": self.signal_compression,
                },
                use_dictionary=list(METADATA_COLUMNS),
                # no statistics for the signal bytes: min/max of a blob is useless and
                # would copy up to 2 x its size into the footer
                write_statistics=list(METADATA_COLUMNS),
            )
        self._writer.write_table(windows_to_table(self._pending, self.schema))
        self.n_written += len(self._pending)
        self._pending = []

    def close(self) -> None:
        """Flush and publish the shard (no file at all when no window was written)."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def signals_of(table: pa.Table) -> list[np.ndarray]:
    """Each row's signal as a ``(n_channels, n_samples)`` view into one flat buffer.

    ``table`` must hold the ``signal``, ``signal_dtype``, ``n_channels`` and
    ``n_samples`` columns.  No copy is made: the arrays are read-only views.
    """
    missing = {"signal", "signal_dtype", "n_channels", "n_samples"} - set(table.column_names)
    if missing:
        raise KeyError(f"signals_of needs the columns {sorted(missing)} as well")
    col = table.column("signal").combine_chunks()
    _, offsets_buf, data_buf = col.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[col.offset : col.offset + len(col) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8)
    dtypes = table.column("signal_dtype").to_pylist()
    n_ch = table.column("n_channels").to_numpy()
    n_s = table.column("n_samples").to_numpy()
    return [
        data[offsets[i] : offsets[i + 1]]
        .view(SIGNAL_DTYPES[dtypes[i]])
        .reshape(int(n_ch[i]), int(n_s[i]))
        for i in range(table.num_rows)
    ]


def signal_offsets(
    meta: pq.FileMetaData, n_channels: np.ndarray, n_samples: np.ndarray
) -> np.ndarray | None:
    """Where each window's raw signal bytes start in the shard file, if they can be read
    in place; None when the shard's layout does not allow it.

    A shard written with ``signal_compression="none"`` and one window per row group (the
    defaults) stores each window's signal as the single PLAIN value of its row group's
    ``signal`` column chunk, so its bytes are the chunk's last ``n_channels x n_samples
    x itemsize`` bytes, C-ordered ``(n_channels, n_samples)``: channel ``c``'s samples
    ``[a, b)`` are one contiguous byte range.  The training loader reads just the
    channels and patches a crop keeps (``diver.data.signal_reads``) instead of decoding
    the whole window.  Any other shard (compressed signal, several windows per row group,
    a dictionary page) gives None and is read by decoding, as before.
    ``n_channels``/``n_samples`` are the rows' values in file order.
    """
    dtype_name = (meta.metadata or {}).get(b"diver.signal_dtype", b"").decode()
    if dtype_name not in SIGNAL_DTYPES or meta.num_rows != meta.num_row_groups:
        return None
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if "signal" not in names:
        return None
    column = names.index("signal")
    nbytes = (
        np.asarray(n_channels, dtype=np.int64)
        * np.asarray(n_samples, dtype=np.int64)
        * SIGNAL_DTYPES[dtype_name].itemsize
    )
    if len(nbytes) != meta.num_row_groups:
        return None
    offsets = np.empty(meta.num_row_groups, dtype=np.int64)
    for g in range(meta.num_row_groups):
        chunk = meta.row_group(g).column(column)
        if (
            chunk.compression != "UNCOMPRESSED"
            or chunk.has_dictionary_page
            or chunk.num_values != 1
            or not set(chunk.encodings) <= {"PLAIN", "RLE", "BIT_PACKED"}
            or chunk.total_compressed_size < nbytes[g] + 4
        ):
            return None
        offsets[g] = chunk.data_page_offset + chunk.total_compressed_size - nbytes[g]
    return offsets


def coords_of(table: pa.Table) -> list[np.ndarray]:
    """Each row's channel coordinates as ``(n_channels, 3)`` millimetres (NaN unknown)."""
    col = table.column("coords_mm").combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False)
    offsets = col.offsets.to_numpy()
    return [flat[offsets[i] : offsets[i + 1]].reshape(-1, 3) for i in range(table.num_rows)]


def recording_stem(recording: str) -> str:
    """A recording id as a file name (ids may contain ``/``): its shard's and receipt's."""
    return recording.replace("/", "__")


def shard_path(corpus_dir: Path, dataset: str, recording: str) -> Path:
    """Where a recording's shard lives; recording ids may contain ``/``.

    Always inside ``<corpus_dir>/windows/<dataset>/``: a dataset name or recording id
    that would lead elsewhere (``..``, an absolute path) is a ValueError, never a write
    outside the corpus.
    """
    windows = Path(corpus_dir) / "windows"
    path = windows / dataset / (recording_stem(recording) + ".parquet")
    inside = windows.resolve() / Path(dataset).name
    if dataset in ("", ".", "..") or path.resolve().parent != inside:
        raise ValueError(
            f"dataset {dataset!r}, recording {recording!r}: the shard path {path} leaves {windows}"
        )
    return path


def listed_shards(corpus_dir: Path, qc: pd.DataFrame) -> set[Path]:
    """The corpus's shards: those of the recordings ``qc`` (the qc.csv table) lists with
    kept windows.  Another shard on disk is not part of the corpus: a copy of a recording
    kept once, found when datasets or chunks built by separate runs were merged."""
    kept = qc[qc["windows_kept"] > 0]
    return {
        shard_path(corpus_dir, dataset, recording)
        for dataset, recording in zip(kept["dataset"], kept["recording"], strict=True)
    }
