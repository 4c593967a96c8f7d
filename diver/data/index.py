"""An index of every window of the Parquet corpus, and the splits taken from it.

Training needs to know *where* each window is (shard file, row group, row) and a few
facts about it (dataset, subject, channel count) long before it needs the signal.
``CorpusIndex.from_dir`` builds that table from the Parquet footers and the small
metadata columns only: the ``signal`` column, which is more than 99 % of the bytes,
is never read, so indexing thousands of shards takes seconds.

Everything chosen from the index — the subject-level train/validation split and the
data fraction of the scaling grid's D axis — is decided by a keyed BLAKE2b hash of
the window's or subject's identity, never by Python's ``hash`` (salted per process)
nor by listing order (which differs across file systems).  The same corpus and seed
therefore give the same split and the same fraction on every machine and every run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from diver.atomic import replacing
from diver.corpus.shards import listed_shards, signal_offsets

# The metadata the index keeps per window; all are scalar columns of the shard schema
# (``diver.corpus.shards.window_schema``), cheap to read next to the signal.
INDEX_COLUMNS = (
    "dataset",
    "subject",
    "recording",
    "window_index",
    "modality",
    "sfreq",
    "n_channels",
    "n_samples",
)
# The frame's columns: the metadata, then where the window is in its shard.
FRAME_COLUMNS = (*INDEX_COLUMNS, "shard", "row_group", "row_in_group", "signal_offset")
# String columns held as pandas categoricals: a few thousand distinct values repeated
# over millions of windows, and the index is copied into every DataLoader worker.
_CATEGORICAL = ("dataset", "subject", "recording", "modality", "shard")


class CorpusIndexError(OSError):
    """No window shards in the corpus folder, an unreadable shard, or a file that is not
    a saved index; the message names the folder or file."""


def _shards_in_tables(corpus_dir: Path) -> set[str] | None:
    """Relative paths of the shards qc.csv lists with kept windows (None without one)."""
    qc_path = corpus_dir / "qc.csv"
    if not qc_path.is_file():
        return None
    qc = pd.read_csv(
        qc_path,
        usecols=["dataset", "recording", "windows_kept"],
        dtype={"dataset": str, "recording": str},
        keep_default_na=False,
    )
    return {p.relative_to(corpus_dir).as_posix() for p in listed_shards(corpus_dir, qc)}


@dataclass(frozen=True, eq=False)
class CorpusIndex:
    """One row per window of a corpus, with where to find it.

    ``frame`` columns: ``dataset``, ``subject``, ``recording``, ``window_index``,
    ``modality``, ``sfreq``, ``n_channels``, ``n_samples`` (as written in the shard),
    ``shard`` (path of the shard file relative to ``corpus_dir``), ``row_group`` and
    ``row_in_group`` (the window's position inside that file) and ``signal_offset``
    (where its raw signal bytes start in the file, -1 when the shard's layout needs
    decoding: ``diver.corpus.shards.signal_offsets``).  Rows are in a
    canonical order — shard paths sorted, then file order — so two indexes of the
    same corpus are equal row for row.
    """

    corpus_dir: Path
    frame: pd.DataFrame

    @classmethod
    def from_dir(cls, corpus_dir: Path | str, *, max_threads: int = 16) -> CorpusIndex:
        """Index every shard under ``<corpus_dir>/windows/<dataset>/*.parquet``.

        Only footers and, usually, the ``window_index`` column are read (see
        ``_read_shard_metadata``), on a thread pool: Parquet decoding releases the GIL,
        and on a network file system the scan is latency-bound.  Expect a few
        milliseconds per shard and core; at the paper's scale (tens of thousands of
        recordings) build the index once and ``save`` it for every rank to ``load``.
        Half-written ``*.parquet.tmp-<pid>`` files of an interrupted corpus build do
        not match the pattern and are ignored.  When the corpus has its ``qc.csv``
        (every corpus the corpus stage writes), only shards of recordings it lists with
        windows are indexed: a copy of another recording found when datasets built by
        separate runs were merged stays on disk but is not part of the corpus.
        """
        corpus_dir = Path(corpus_dir)
        windows_dir = corpus_dir / "windows"
        if not windows_dir.is_dir():
            raise CorpusIndexError(
                f"no windows/ folder in corpus {corpus_dir} (expected "
                f"{windows_dir}/<dataset>/<recording>.parquet; was the corpus stage run?)"
            )
        shards = sorted(windows_dir.rglob("*.parquet"))
        shards = [p for p in shards if p.is_file()]
        in_corpus = _shards_in_tables(corpus_dir)
        if in_corpus is not None:
            shards = [p for p in shards if p.relative_to(corpus_dir).as_posix() in in_corpus]
        if not shards:
            raise CorpusIndexError(f"no window shards (*.parquet) under {windows_dir}")
        relative = [p.relative_to(corpus_dir).as_posix() for p in shards]
        with ThreadPoolExecutor(max_workers=max(1, min(max_threads, len(shards)))) as pool:
            tables = list(pool.map(_read_shard_metadata, shards, range(len(shards))))
        table = pa.concat_tables(tables).unify_dictionaries()
        frame = table.to_pandas()
        frame["shard"] = pd.Categorical.from_codes(
            frame.pop("shard_code").to_numpy(), categories=relative
        )
        for name in _CATEGORICAL:
            if frame[name].dtype != "category":
                frame[name] = frame[name].astype("category")
        frame = frame[list(FRAME_COLUMNS)]
        return cls(corpus_dir=corpus_dir, frame=frame)

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, mask: np.ndarray | pd.Series) -> CorpusIndex:
        """The windows where ``mask`` is true, in the same (canonical) order."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self.frame),):
            raise ValueError(f"mask has shape {mask.shape}, index has {len(self.frame)} rows")
        return CorpusIndex(self.corpus_dir, self.frame.loc[mask].reset_index(drop=True))

    def subjects(self) -> pd.DataFrame:
        """Distinct ``(dataset, subject)`` pairs with their window counts."""
        counts = self.frame.groupby(["dataset", "subject"], observed=True).size()
        return counts.rename("n_windows").reset_index()

    def shard_path(self, shard: str) -> Path:
        """Absolute path of a ``shard`` value of the frame."""
        return self.corpus_dir / shard

    def save(self, path: Path | str) -> None:
        """Write the index to a Parquet file, for ``load`` by every rank of a run.

        Scanning tens of thousands of shards takes a minute; under DDP every rank
        would otherwise repeat that scan against the shared file system.  The index
        stays valid as long as the shards are not rewritten (``WindowDataset``
        detects a shard that no longer matches and says to rebuild).
        """
        table = pa.Table.from_pandas(self.frame, preserve_index=False)
        metadata = {**(table.schema.metadata or {}), b"diver.corpus_dir": str(self.corpus_dir)}
        with replacing(path) as tmp:
            pq.write_table(table.replace_schema_metadata(metadata), tmp)

    @classmethod
    def load(cls, path: Path | str, corpus_dir: Path | str | None = None) -> CorpusIndex:
        """An index written by ``save``; ``corpus_dir`` overrides the recorded folder."""
        table = pq.read_table(path)
        if table.column_names != list(FRAME_COLUMNS):
            older = table.column_names == list(FRAME_COLUMNS[:-1])
            raise CorpusIndexError(
                f"{path} was saved by an older diver (no signal_offset column): rebuild it "
                "with CorpusIndex.from_dir"
                if older
                else f"{path} is not a corpus index (columns {table.column_names})"
            )
        if corpus_dir is None:
            corpus_dir = (table.schema.metadata or {}).get(b"diver.corpus_dir", b"").decode()
        return cls(corpus_dir=Path(corpus_dir), frame=table.to_pandas())


# Arrow types of the index columns as read (strings dictionary-encoded, so every
# shard's table concatenates without casts and lands in pandas as categoricals).
_INDEX_TYPES = {
    "dataset": pa.dictionary(pa.int32(), pa.string()),
    "subject": pa.dictionary(pa.int32(), pa.string()),
    "recording": pa.dictionary(pa.int32(), pa.string()),
    "window_index": pa.int32(),
    "modality": pa.dictionary(pa.int32(), pa.string()),
    "sfreq": pa.float32(),
    "n_channels": pa.int32(),
    "n_samples": pa.int32(),
}
_STRING_COLUMNS = [name for name, t in _INDEX_TYPES.items() if pa.types.is_dictionary(t)]
# Columns that usually hold one value per shard (a shard is one recording; the
# channel count varies only when QC drops an electrode from some windows).  When the
# footer statistics prove a column constant (min == max in every row group), its
# pages are not read.
_OFTEN_CONSTANT = (
    "dataset",
    "subject",
    "recording",
    "modality",
    "sfreq",
    "n_samples",
    "n_channels",
)


def _constant_from_statistics(meta: pq.FileMetaData, column: int) -> object | None:
    """The column's single value when the footer proves it is constant, else None."""
    value = None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(column).statistics
        if stats is None or not stats.has_min_max or stats.null_count != 0:
            return None
        if stats.min != stats.max or (value is not None and stats.min != value):
            return None
        value = stats.min
    return value


def _read_shard_metadata(path: Path, shard_code: int) -> pa.Table:
    """The index columns of one shard plus its file code, row group and row number.

    Columns that the footer statistics prove constant are taken from there, so
    usually only ``window_index`` is decoded: about half the cost of reading the
    eight columns (measured 1.5 ms against 3 ms per 4-row-group shard, 6 against
    12 ms at 50 row groups).  Any column the statistics cannot vouch for is read.
    """
    try:
        with pq.ParquetFile(path, read_dictionary=_STRING_COLUMNS) as pf:
            meta = pf.metadata
            position = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
            missing = [name for name in INDEX_COLUMNS if name not in position]
            if missing:
                raise CorpusIndexError(f"shard {path} lacks the columns {missing}")
            constants = {}
            for name in _OFTEN_CONSTANT:
                value = _constant_from_statistics(meta, position[name])
                if value is not None:
                    constants[name] = value
            to_read = [name for name in INDEX_COLUMNS if name not in constants]
            table = pf.read(columns=to_read, use_threads=False)
            group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    except CorpusIndexError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise CorpusIndexError(f"cannot read the metadata of shard {path}: {exc}") from exc
    n = table.num_rows
    columns = {}
    for name, arrow_type in _INDEX_TYPES.items():
        if name in constants:
            value = constants[name]
            if pa.types.is_dictionary(arrow_type):
                columns[name] = pa.DictionaryArray.from_arrays(
                    pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string())
                )
            else:
                columns[name] = pa.array(np.full(n, value), type=arrow_type)
        else:
            columns[name] = table.column(name).combine_chunks().cast(arrow_type)
    row_group = np.repeat(np.arange(len(group_rows), dtype=np.int32), group_rows)
    starts = np.repeat(np.cumsum([0, *group_rows[:-1]]), group_rows)
    columns["shard_code"] = pa.array(np.full(n, shard_code, dtype=np.int32))
    columns["row_group"] = pa.array(row_group)
    columns["row_in_group"] = pa.array((np.arange(n) - starts).astype(np.int32))
    offsets = signal_offsets(
        meta, columns["n_channels"].to_numpy(), columns["n_samples"].to_numpy()
    )
    columns["signal_offset"] = pa.array(
        np.full(n, -1, dtype=np.int64) if offsets is None else offsets
    )
    return pa.table(columns)


# --------------------------------------------------------------------------- hashing


def stable_hash64(text: str, seed: int = 0) -> int:
    """A 64-bit hash of ``text`` keyed by ``seed``, identical on every machine and run."""
    key = int(seed).to_bytes(16, "little", signed=True)
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=key).digest(), "little"
    )


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrap-around arithmetic is intended)."""
    x = x.astype(np.uint64, copy=True)
    x += np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def factorize_rows(frame: pd.DataFrame, columns: Sequence[str]) -> tuple[np.ndarray, list[tuple]]:
    """Per row, the number of its distinct tuple of ``columns``; and those tuples.

    Works on the categorical codes (a mixed-radix integer key, then one hash-based
    ``pd.factorize``), an order of magnitude faster than a MultiIndex on millions
    of rows.
    """
    key = np.zeros(len(frame), dtype=np.int64)
    values: list[np.ndarray] = []
    for name in columns:
        codes, uniques = pd.factorize(frame[name])
        key = key * max(len(uniques), 1) + codes
        values.append(np.asarray(uniques, dtype=object))
    inverse, distinct = pd.factorize(key)
    radices = [max(len(v), 1) for v in values]
    parts = []
    rest = np.asarray(distinct, dtype=np.int64)
    for v, radix in zip(reversed(values), reversed(radices), strict=True):
        rest, code = np.divmod(rest, radix)
        parts.append(v[code] if len(v) else code)
    tuples = list(zip(*reversed(parts), strict=True)) if parts else []
    return np.asarray(inverse, dtype=np.int64), tuples


def _pair_hashes(frame: pd.DataFrame, columns: Sequence[str], seed: int) -> np.ndarray:
    """Per row, the stable hash of its values in ``columns`` (hashed once per distinct tuple)."""
    codes, uniques = factorize_rows(frame, columns)
    keys = np.array(
        [stable_hash64("\x1f".join(str(v) for v in values), seed) for values in uniques],
        dtype=np.uint64,
    )
    return keys[codes] if len(keys) else np.zeros(0, dtype=np.uint64)


def window_hashes(frame: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """A stable uint64 per window, from ``(dataset, recording, window_index)`` and ``seed``.

    The string part is hashed once per recording with BLAKE2b and the window number is
    mixed in with SplitMix64, vectorised: millions of windows hash in well under a second.
    """
    recording = _pair_hashes(frame, ("dataset", "recording"), seed)
    window = frame["window_index"].to_numpy().astype(np.uint64)
    return _splitmix64(recording ^ _splitmix64(window))


def _round_half_up(x: float) -> int:
    """Round to nearest, halves up; the epsilon absorbs float error (0.3 * 10 -> 3)."""
    return math.floor(x + 0.5 + 1e-9)


# ----------------------------------------------------------------- split and fraction


def split_subjects(
    index: CorpusIndex,
    val_fraction: float,
    seed: int = 0,
    *,
    stratify_by_dataset: bool = True,
) -> tuple[CorpusIndex, CorpusIndex]:
    """``(train, val)``: every window of a subject lands on the same side.

    A subject is the pair ``(dataset, subject)`` (BIDS ids such as ``sub-01`` repeat
    across datasets).  Subjects are ranked by a stable hash of that pair keyed by
    ``seed`` and the first ``round(val_fraction * n)`` go to validation.  With
    ``stratify_by_dataset`` the count is taken per dataset (at most ``n - 1`` of a
    dataset's ``n`` subjects, so no dataset leaves training entirely), which keeps a
    small iEEG dataset represented in validation next to a ten-thousand-subject EEG
    one.  The fraction counts subjects, not windows.  When ``val_fraction > 0`` and
    there are at least two subjects, validation gets at least one (the lowest-ranked
    subject overall when the per-dataset counts all round to zero).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    row_subject, pairs = factorize_rows(index.frame, ("dataset", "subject"))
    subjects = pd.DataFrame(
        [(str(d), str(s)) for d, s in pairs], columns=["dataset", "subject"], dtype=object
    )
    n_subjects = len(subjects)
    subjects["rank"] = np.array(
        [
            stable_hash64(f"{d}\x1f{s}", seed)
            for d, s in zip(subjects["dataset"], subjects["subject"], strict=True)
        ],
        dtype=np.uint64,
    )
    subjects["code"] = np.arange(n_subjects)
    # Ranked by hash; identity breaks (64-bit) ties, never listing order.
    subjects = subjects.sort_values(["rank", "dataset", "subject"], ignore_index=True)
    val = np.zeros(n_subjects, dtype=bool)
    if val_fraction > 0 and n_subjects >= 2:
        if stratify_by_dataset:
            strata = [np.sort(rows) for rows in subjects.groupby("dataset").indices.values()]
        else:
            strata = [np.arange(n_subjects)]
        for rows in strata:
            n_val = min(_round_half_up(val_fraction * len(rows)), len(rows) - 1)
            val[rows[:n_val]] = True
        if not val.any():
            val[0] = True
    subject_in_val = np.zeros(n_subjects, dtype=bool)
    subject_in_val[subjects["code"].to_numpy()[val]] = True
    in_val = subject_in_val[row_subject]
    return index.subset(~in_val), index.subset(in_val)


def take_subjects(index: CorpusIndex, n_subjects: int, seed: int = 0) -> CorpusIndex:
    """Every window of ``n_subjects`` subjects, a nested choice (SPEC §3 subject sweep).

    Subjects ``(dataset, subject)`` are ranked by a stable hash keyed by ``seed`` and
    the first ``n_subjects`` kept, so 4 subjects are a subset of 8.  Asking for more
    subjects than the index has is an error, not a silent smaller run.
    """
    row_subject, pairs = factorize_rows(index.frame, ("dataset", "subject"))
    if n_subjects > len(pairs):
        raise ValueError(f"{n_subjects} subjects requested, the index has {len(pairs)}")
    ranks = np.array(
        [stable_hash64(f"{d}\x1f{s}", seed ^ 0x5B5B) for d, s in pairs], dtype=np.uint64
    )
    order = sorted(range(len(pairs)), key=lambda i: (ranks[i], str(pairs[i])))
    keep_subject = np.zeros(len(pairs), dtype=bool)
    keep_subject[order[:n_subjects]] = True
    return index.subset(keep_subject[row_subject])


def take_fraction(index: CorpusIndex, fraction: float, seed: int = 0) -> CorpusIndex:
    """A deterministic, nested sample of ``round(fraction * n)`` windows (at least one).

    Windows are ranked by a stable hash of ``(dataset, recording, window_index)``
    keyed by ``seed`` and the first ones kept, so the result does not depend on the
    order of the index, the windows kept at 10 % are all kept at 20 %, and
    ``fraction=1`` keeps everything.  The exact count (rather than a per-window
    coin) pins the D axis of the scaling grid to the requested size even on small
    corpora.  Rows stay in the index's order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = len(index)
    if fraction == 1.0 or n == 0:
        return index
    n_keep = max(1, _round_half_up(fraction * n))
    frame = index.frame
    rank = window_hashes(frame, seed)
    # A second, independent hash breaks ties of the first (a 64-bit collision), so
    # the choice never falls back to row position.
    order = np.lexsort((window_hashes(frame, seed ^ 0x5A5A5A5A), rank))
    keep = np.zeros(n, dtype=bool)
    keep[order[:n_keep]] = True
    return index.subset(keep)
