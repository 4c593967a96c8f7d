"""diver.data on a small real corpus written with ShardWriter to a temporary folder."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from diver.corpus.shards import ShardWriter, Window, shard_path
from diver.data import (
    CHANNEL_SUBTYPE_IDS,
    CHANNEL_TYPE_IDS,
    MODALITY_IDS,
    PAD_ID,
    CorpusIndex,
    CorpusIndexError,
    ResampleConfig,
    WindowDataset,
    WindowSample,
    apply_crop,
    collate_windows,
    draw_crop,
    eval_crop,
    split_subjects,
    stable_hash64,
    take_fraction,
    take_subjects,
)
from diver.data.dataset import NO_SUBTYPE_ID

SFREQ = 500.0
N_SAMPLES = 1500  # 3 s windows keep the corpus small; 30 patches of 50 samples
PATCH = 50

Key = tuple[str, str, int]


@dataclass(frozen=True)
class Recording:
    dataset: str
    subject: str
    recording: str
    modality: str
    n_channels: int
    n_windows: int
    signal_dtype: str = "float32"
    n_samples: int = N_SAMPLES


# Three datasets; "sub-01" exists in two of them (different people); channel counts
# 3..80; one recording id with a "/" (stored as "__" in the file name); one float16
# dataset; row groups of 2 windows so most shards have several.
RECORDINGS = [
    *(
        Recording("eegset", f"sub-0{i}", f"sub-0{i}_task-rest", "eeg", c, 3)
        for i, c in enumerate([3, 7, 12, 19, 21], start=1)
    ),
    *(
        Recording("ieegset", f"sub-{s}", f"sub-{s}/run-{r}", "ieeg", c, 3)
        for s, chans in [("a", (40, 44)), ("b", (64, 80)), ("c", (33, 36)), ("d", (58, 5))]
        for r, c in enumerate(chans, start=1)
    ),
    Recording("halfset", "sub-01", "rec-1", "eeg", 16, 5, "float16"),
    Recording("halfset", "sub-02", "rec-2", "eeg", 9, 4, "float16"),
]


def make_window(rec: Recording, w: int, rng: np.random.Generator) -> Window:
    c = rec.n_channels
    if rec.modality == "eeg":
        types, subtypes = ["eeg"] * c, [""] * c
    else:
        types = [("seeg", "ecog", "ecog")[i % 3] for i in range(c)]
        subtypes = [("depth", "grid", "strip")[i % 3] for i in range(c)]
    coords = rng.normal(0, 50, size=(c, 3)).astype(np.float32)
    coords[::4] = np.nan  # unknown positions are NaN and must stay NaN
    return Window(
        dataset=rec.dataset,
        subject=rec.subject,
        recording=rec.recording,
        window_index=w,
        start_seconds=w * rec.n_samples / SFREQ,
        modality=rec.modality,
        sfreq=SFREQ,
        coord_frame="mni_tal",
        channel_names=[f"ch{i}" for i in range(c)],
        channel_types=types,
        channel_subtypes=subtypes,
        coords_mm=coords,
        signal=rng.uniform(-1, 1, size=(c, rec.n_samples)).astype(np.float32),
    )


def write_corpus(
    root: Path,
    recordings: list[Recording],
    *,
    row_group_windows: int = 2,
    signal_compression: str = "zstd",
) -> dict[Key, Window]:
    """Write the shards; return every window with its signal as stored (dtype-rounded).

    The default layout (zstd, two windows per row group) is one the loader must decode,
    as every corpus written before in-place reads; ``tests/test_signal_reads.py`` writes
    the in-place layout (uncompressed, one window per row group) too."""
    rng = np.random.default_rng(1234)
    written: dict[Key, Window] = {}
    for rec in recordings:
        path = shard_path(root, rec.dataset, rec.recording)
        with ShardWriter(
            path,
            signal_dtype=rec.signal_dtype,
            row_group_windows=row_group_windows,
            signal_compression=signal_compression,
        ) as writer:
            for w in range(rec.n_windows):
                window = make_window(rec, w, rng)
                writer.write(window)
                stored = window.signal.astype(rec.signal_dtype).astype(np.float32)
                written[(rec.dataset, rec.recording, w)] = replace(window, signal=stored)
    return written


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[Key, Window]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, write_corpus(root, RECORDINGS)


@pytest.fixture(scope="module")
def index(corpus: tuple[Path, dict[Key, Window]]) -> CorpusIndex:
    return CorpusIndex.from_dir(corpus[0])


def keys_of(index: CorpusIndex) -> list[Key]:
    f = index.frame
    return list(
        zip(
            f["dataset"].astype(str),
            f["recording"].astype(str),
            f["window_index"].astype(int),
            strict=True,
        )
    )


def subject_set(index: CorpusIndex) -> set[tuple[str, str]]:
    f = index.frame
    return set(zip(f["dataset"].astype(str), f["subject"].astype(str), strict=True))


def synthetic_index(n_subjects: int, windows_per_subject: int) -> CorpusIndex:
    """A large in-memory index (no files) for the split and fraction arithmetic."""
    subject = np.repeat(np.arange(n_subjects), windows_per_subject)
    frame = pd.DataFrame(
        {
            "dataset": pd.Categorical(np.where(subject % 3 == 0, "a", "b")),
            "subject": pd.Categorical([f"s{s}" for s in subject]),
            "recording": pd.Categorical([f"s{s}_r" for s in subject]),
            "window_index": np.tile(np.arange(windows_per_subject), n_subjects),
        }
    )
    return CorpusIndex(Path("/nonexistent"), frame)


# ----------------------------------------------------------------------------- index


def test_index_matches_what_was_written(
    corpus: tuple[Path, dict[Key, Window]], index: CorpusIndex
) -> None:
    root, written = corpus
    assert len(index) == len(written)
    assert sorted(keys_of(index)) == sorted(written)
    for row in index.frame.itertuples():
        w = written[(row.dataset, row.recording, row.window_index)]
        assert (row.subject, row.modality) == (w.subject, w.modality)
        assert (row.n_channels, row.n_samples, row.sfreq) == (*w.signal.shape, SFREQ)
        path = index.shard_path(row.shard)
        assert path == shard_path(root, row.dataset, row.recording)
        # row_group / row_in_group point at the window in the file.
        group = pq.ParquetFile(path).read_row_group(row.row_group, columns=["window_index"])
        assert group.column("window_index")[row.row_in_group].as_py() == row.window_index
    assert index.frame["n_channels"].min() == 3 and index.frame["n_channels"].max() == 80
    assert index.frame["row_group"].max() >= 1  # several row groups per shard
    # Canonical order: rebuilding gives the same table row for row.
    assert CorpusIndex.from_dir(root).frame.equals(index.frame)


def test_index_reads_columns_the_footer_cannot_vouch_for(tmp_path: Path) -> None:
    """Channel counts that vary within a shard (QC) and, oddly, modality: read, not guessed."""
    rng = np.random.default_rng(5)
    rec = Recording("qcset", "sub-1", "rec-1", "ieeg", 10, 1)
    windows = [make_window(rec, w, rng) for w in range(5)]
    windows = [
        replace(
            w,
            signal=w.signal[:n],
            coords_mm=w.coords_mm[:n],
            channel_names=w.channel_names[:n],
            channel_types=w.channel_types[:n],
            channel_subtypes=w.channel_subtypes[:n],
            modality=modality,
        )
        for w, n, modality in zip(
            windows, [10, 9, 10, 8, 7], ["ieeg", "ieeg", "eeg", "ieeg", "ieeg"], strict=True
        )
    ]
    with ShardWriter(shard_path(tmp_path, "qcset", "rec-1"), row_group_windows=2) as writer:
        for w in windows:
            writer.write(w)
    index = CorpusIndex.from_dir(tmp_path)
    assert index.frame["n_channels"].tolist() == [10, 9, 10, 8, 7]
    assert index.frame["modality"].astype(str).tolist() == ["ieeg", "ieeg", "eeg", "ieeg", "ieeg"]
    assert set(index.frame["subject"].astype(str)) == {"sub-1"}
    assert index.frame["row_group"].tolist() == [0, 0, 1, 1, 2]
    assert index.frame["row_in_group"].tolist() == [0, 1, 0, 1, 0]


def test_index_save_and_load(tmp_path: Path, index: CorpusIndex) -> None:
    index.save(tmp_path / "index.parquet")
    loaded = CorpusIndex.load(tmp_path / "index.parquet")
    assert loaded.corpus_dir == index.corpus_dir
    assert loaded.frame.equals(index.frame)
    elsewhere = CorpusIndex.load(tmp_path / "index.parquet", corpus_dir=tmp_path)
    assert elsewhere.corpus_dir == tmp_path
    pq.write_table(pq.read_table(tmp_path / "index.parquet").drop(["shard"]), tmp_path / "x")
    with pytest.raises(CorpusIndexError, match="not a corpus index"):
        CorpusIndex.load(tmp_path / "x")


def test_index_never_reads_the_signal_column(tmp_path: Path) -> None:
    """Corrupt every signal page on disk: indexing still works, reading does not."""
    write_corpus(tmp_path, RECORDINGS[5:7])
    for path in (tmp_path / "windows").rglob("*.parquet"):
        meta = pq.ParquetFile(path).metadata
        (signal_col,) = [
            i for i in range(meta.num_columns) if meta.schema.column(i).path == "signal"
        ]
        data = bytearray(path.read_bytes())
        for g in range(meta.num_row_groups):
            chunk = meta.row_group(g).column(signal_col)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            data[start : start + chunk.total_compressed_size] = b"\xff" * (
                chunk.total_compressed_size
            )
        path.write_bytes(bytes(data))
    index = CorpusIndex.from_dir(tmp_path)
    assert len(index) == RECORDINGS[5].n_windows + RECORDINGS[6].n_windows
    with pytest.raises(OSError):
        next(iter(WindowDataset(index, PATCH)))


def test_index_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(CorpusIndexError, match=r"no windows/ folder.*" + tmp_path.name):
        CorpusIndex.from_dir(tmp_path)
    (tmp_path / "windows" / "eegset").mkdir(parents=True)
    # A half-written shard of an interrupted build is not a shard.
    (tmp_path / "windows" / "eegset" / "r.parquet.tmp-123").write_bytes(b"partial")
    with pytest.raises(CorpusIndexError, match=r"no window shards.*windows"):
        CorpusIndex.from_dir(tmp_path)
    (tmp_path / "windows" / "eegset" / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(CorpusIndexError, match=r"cannot read .*broken\.parquet"):
        CorpusIndex.from_dir(tmp_path)


def test_stable_hash_is_fixed_across_machines() -> None:
    # BLAKE2b, not Python's salted hash(): these values must never change, or every
    # split and data fraction of past runs would silently change with them.
    assert stable_hash64("abc", 0) == 0x6ADCB3371084211F
    assert stable_hash64("eegset\x1fsub-01", 7) == 0x9AC26C564E85F545
    assert stable_hash64("abc", 0) != stable_hash64("abc", 1)


# ------------------------------------------------------------------- split, fraction


def test_split_is_subject_level_and_deterministic(index: CorpusIndex) -> None:
    train, val = split_subjects(index, 0.3, seed=7)
    assert len(train) + len(val) == len(index)
    assert sorted(keys_of(train) + keys_of(val)) == sorted(keys_of(index))
    assert not subject_set(train) & subject_set(val)
    # Stratified per dataset: round(0.3 x 5) = 2, round(0.3 x 4) = 1, round(0.3 x 2) = 1.
    per_dataset = Counter(d for d, _ in subject_set(val))
    assert per_dataset == {"eegset": 2, "ieegset": 1, "halfset": 1}
    again_train, again_val = split_subjects(index, 0.3, seed=7)
    assert keys_of(again_val) == keys_of(val) and keys_of(again_train) == keys_of(train)
    # Independent of row order.
    shuffled = CorpusIndex(
        index.corpus_dir, index.frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    )
    assert subject_set(split_subjects(shuffled, 0.3, seed=7)[1]) == subject_set(val)
    # Other seeds choose other subjects.
    others = {frozenset(subject_set(split_subjects(index, 0.3, seed=s)[1])) for s in range(8)}
    assert len(others) > 1


def test_split_edge_cases(index: CorpusIndex) -> None:
    train, val = split_subjects(index, 0.0)
    assert len(val) == 0 and len(train) == len(index)
    # A tiny fraction still gives one validation subject.
    _, val = split_subjects(index, 0.001, seed=1, stratify_by_dataset=False)
    assert len(subject_set(val)) == 1
    one = index.subset((index.frame["subject"] == "sub-a").to_numpy())
    train, val = split_subjects(one, 0.5)
    assert len(val) == 0 and len(train) == len(one)
    big = synthetic_index(1000, 2)
    train, val = split_subjects(big, 0.1, seed=0, stratify_by_dataset=False)
    assert len(subject_set(val)) == 100 and not subject_set(train) & subject_set(val)
    with pytest.raises(ValueError, match="val_fraction"):
        split_subjects(index, 1.0)


def test_fraction_nested_deterministic_and_sized() -> None:
    big = synthetic_index(500, 20)  # 10,000 windows
    n = len(big)
    previous: set[Key] = set()
    for fraction in (0.01, 0.03, 0.09, 0.24, 0.5, 0.9):
        part = take_fraction(big, fraction, seed=11)
        keys = set(keys_of(part))
        assert len(keys) == round(fraction * n)
        assert previous <= keys
        previous = keys
        assert keys_of(take_fraction(big, fraction, seed=11)) == keys_of(part)
    assert take_fraction(big, 1.0) is big
    shuffled = CorpusIndex(
        big.corpus_dir, big.frame.sample(frac=1.0, random_state=5).reset_index(drop=True)
    )
    assert set(keys_of(take_fraction(shuffled, 0.2, seed=11))) == set(
        keys_of(take_fraction(big, 0.2, seed=11))
    )
    assert set(keys_of(take_fraction(big, 0.2, seed=12))) != set(
        keys_of(take_fraction(big, 0.2, seed=11))
    )
    # Spread over subjects, not a block of them.
    assert take_fraction(big, 0.1, seed=11).frame["subject"].nunique() > 250
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="fraction"):
            take_fraction(big, bad)


def test_subjects_nested_and_sweep_at_fixed_data() -> None:
    big = synthetic_index(40, 25)  # 1,000 windows
    previous: set[tuple[str, str]] = set()
    for n in (2, 4, 8, 16):
        part = take_subjects(big, n, seed=3)
        subjects = subject_set(part)
        assert len(subjects) == n and previous <= subjects
        assert len(part) == n * 25  # every window of the chosen subjects
        previous = subjects
    with pytest.raises(ValueError, match="41 subjects requested"):
        take_subjects(big, 41)
    # SPEC §3 subject sweep through make_splits: the same data size at every subject count.
    from diver.config import ValidationConfig
    from diver.data import SplitError, make_splits

    config = ValidationConfig(val_fraction=0.1, val_stratify=False)
    sizes = {
        n: len(make_splits("mem", 0.04, config, index=big, subjects=n).train) for n in (2, 4, 8)
    }
    assert len(set(sizes.values())) == 1, sizes
    with pytest.raises(SplitError, match="fewer than"):
        make_splits("mem", 0.5, config, index=big, subjects=2)


def test_fraction_on_real_index(index: CorpusIndex) -> None:
    part = take_fraction(index, 0.3, seed=2)
    assert len(part) == round(0.3 * len(index))
    assert set(keys_of(part)) <= set(keys_of(take_fraction(index, 0.6, seed=2)))
    assert len(take_fraction(index, 0.001)) == 1


# ---------------------------------------------------------------------- resampling


def test_draw_crop_bounds() -> None:
    rng = np.random.default_rng(0)
    config = ResampleConfig()
    for n_channels in (1, 3, 31, 32, 33, 80):
        for n_patches in (1, 7, 30, 300):
            for _ in range(50):
                crop = draw_crop(n_channels, n_patches, rng, config)
                k = len(crop.channels)
                assert 1 <= k <= min(n_channels, 32)
                assert len(set(crop.channels.tolist())) == k
                assert np.all(np.diff(crop.channels) > 0)
                assert crop.channels.min() >= 0 and crop.channels.max() < n_channels
                assert 1 <= crop.n_patches <= min(n_patches, 30)
                assert 0 <= crop.patch_start <= n_patches - crop.n_patches
    with pytest.raises(ValueError):
        draw_crop(0, 30, rng, config)


@pytest.mark.parametrize(
    ("rounding", "expected"),
    [
        # ceil: E[C'] = K - (K - 1)^2 / (4K); round: 0.75 K + 1/(8K) (+ clamp at 1).
        ("ceil", (32 - 31**2 / 128) / 32),
        ("round", 0.75 + 1 / (8 * 32**2) + (0.5 / 32) ** 3 / 32),
    ],
)
def test_beta_3_1_mean(rounding: str, expected: float) -> None:
    rng = np.random.default_rng(1)
    config = ResampleConfig(rounding=rounding)  # type: ignore[arg-type]
    draws = np.array([len(draw_crop(80, 300, rng, config).channels) for _ in range(20000)])
    ratio = draws / 32
    assert abs(ratio.mean() - expected) < 0.006
    assert abs(ratio.mean() - 0.75) < 0.02  # the 0.75 of U_D = windows x 540
    assert draws.min() >= 1 and draws.max() == 32


def test_eval_crop_is_deterministic() -> None:
    spread = eval_crop(80, 300, ResampleConfig(enabled=False))
    assert len(spread.channels) == 32 and np.all(np.diff(spread.channels) > 0)
    assert spread.channels[0] >= 0 and spread.channels[-1] < 80 and spread.channels[-1] > 70
    assert (spread.patch_start, spread.n_patches) == (0, 30)
    first = eval_crop(80, 30, ResampleConfig(enabled=False, eval_channels="first"))
    assert first.channels.tolist() == list(range(32))
    small = eval_crop(5, 12, ResampleConfig(enabled=False))
    assert small.channels.tolist() == [0, 1, 2, 3, 4] and small.n_patches == 12


def test_apply_crop_takes_the_source_slice() -> None:
    rng = np.random.default_rng(2)
    signal = rng.normal(size=(40, 300 * 5)).astype(np.float16)
    crop = draw_crop(40, 300, rng, ResampleConfig())
    out = apply_crop(signal, crop, 5)
    start = crop.patch_start * 5
    expected = signal[crop.channels][:, start : start + crop.n_patches * 5].astype(np.float32)
    assert out.dtype == np.float32 and np.array_equal(out, expected)


# ------------------------------------------------------------------------- dataset


def w_dtype(written: dict[Key, Window], sample: WindowSample) -> str:
    """The storage type of the sample's recording."""
    (rec,) = [
        r for r in RECORDINGS if (r.dataset, r.recording) == (sample.dataset, sample.recording)
    ]
    return rec.signal_dtype


def check_sample_against_source(
    sample: WindowSample, written: dict[Key, Window], config: ResampleConfig
) -> None:
    w = written[(sample.dataset, sample.recording, sample.window_index)]
    channels = sample.channels.numpy()
    n_channels, n_samples = w.signal.shape
    n_patches_src = n_samples // PATCH
    assert sample.n_channels == len(channels) <= min(n_channels, config.max_channels)
    assert 1 <= sample.n_patches <= min(n_patches_src, config.max_patches)
    assert len(set(channels.tolist())) == len(channels)
    start = sample.patch_start * PATCH
    expected = w.signal[channels][:, start : start + sample.n_patches * PATCH]
    # as stored: float16 shards give float16 samples (cast by the model, exactly)
    assert sample.signal.dtype == getattr(torch, w_dtype(written, sample))
    assert np.array_equal(sample.signal.float().numpy(), expected)
    np.testing.assert_array_equal(sample.coords.numpy(), w.coords_mm[channels])
    assert sample.subject == w.subject
    assert sample.modality_id == MODALITY_IDS[w.modality]
    types = [CHANNEL_TYPE_IDS[w.channel_types[c]] for c in channels]
    assert sample.channel_type_ids.tolist() == types
    subtypes = [CHANNEL_SUBTYPE_IDS.get(w.channel_subtypes[c], NO_SUBTYPE_ID) for c in channels]
    assert sample.channel_subtype_ids.tolist() == subtypes


def test_dataset_samples_equal_source(
    corpus: tuple[Path, dict[Key, Window]], index: CorpusIndex
) -> None:
    _, written = corpus
    config = ResampleConfig()
    dataset = WindowDataset(index, PATCH, seed=3, block_windows=5)
    samples = list(dataset)
    assert sorted((s.dataset, s.recording, s.window_index) for s in samples) == sorted(written)
    for s in samples:
        check_sample_against_source(s, written, config)
    assert len({s.n_channels for s in samples}) > 5  # crops vary
    assert any(np.isnan(s.coords.numpy()).any() for s in samples)
    # Same epoch: identical stream.  Next epoch: new order and new crops.
    again = list(dataset)
    assert [(s.recording, s.window_index, s.channels.tolist()) for s in again] == [
        (s.recording, s.window_index, s.channels.tolist()) for s in samples
    ]
    dataset.set_epoch(1)
    epoch1 = list(dataset)
    assert [(s.recording, s.window_index) for s in epoch1] != [
        (s.recording, s.window_index) for s in samples
    ]
    crops0 = {(s.recording, s.window_index): s.channels.tolist() for s in samples}
    crops1 = {(s.recording, s.window_index): s.channels.tolist() for s in epoch1}
    assert crops0 != crops1


def test_eval_dataset_is_deterministic_and_ordered(
    corpus: tuple[Path, dict[Key, Window]], index: CorpusIndex
) -> None:
    _, written = corpus
    config = ResampleConfig(enabled=False)
    dataset = WindowDataset(index, PATCH, resample=config, shuffle=False)
    samples = list(dataset)
    assert [(s.dataset, s.recording, s.window_index) for s in samples] == keys_of(index)
    for s in samples:
        check_sample_against_source(s, written, config)
        n_channels = written[(s.dataset, s.recording, s.window_index)].signal.shape[0]
        assert s.n_channels == min(n_channels, 32)
        assert (s.patch_start, s.n_patches) == (0, 30)
    dataset.set_epoch(4)
    assert [s.signal.shape for s in dataset] == [s.signal.shape for s in samples]


def test_long_windows_give_at_most_30_patches(tmp_path: Path) -> None:
    """1 s patches of 30 s windows, and 0.1 s patches (300 per window, N' <= 30)."""
    recs = [Recording("long", "sub-1", "r1", "ieeg", 36, 2, "float16", n_samples=15000)]
    written = write_corpus(tmp_path, recs)
    index = CorpusIndex.from_dir(tmp_path)
    for patch, n_patches in ((500, 30), (50, 300)):
        for s in WindowDataset(index, patch, seed=1):
            w = written[(s.dataset, s.recording, s.window_index)]
            assert s.signal.shape[1] == s.n_patches * patch
            assert 1 <= s.n_patches <= 30 and s.patch_start + s.n_patches <= n_patches
            start = s.patch_start * patch
            expected = w.signal[s.channels.numpy()][:, start : start + s.n_patches * patch]
            assert np.array_equal(s.signal.numpy(), expected)
    with pytest.raises(ValueError, match="fewer than one"):
        WindowDataset(index, 20000)


def test_crop_does_not_depend_on_sharding(index: CorpusIndex) -> None:
    whole = {
        (s.recording, s.window_index): (s.channels.tolist(), s.patch_start, s.n_patches)
        for s in WindowDataset(index, PATCH, seed=9)
    }
    for rank in range(3):
        for s in WindowDataset(index, PATCH, seed=9, rank=rank, world_size=3, block_windows=2):
            assert whole[(s.recording, s.window_index)] == (
                s.channels.tolist(),
                s.patch_start,
                s.n_patches,
            )


def test_rank_and_worker_sharding_covers_every_window_once(index: CorpusIndex) -> None:
    everything = Counter(keys_of(index))
    for epoch in (0, 1):
        seen: Counter[Key] = Counter()
        per_rank = []
        for rank in range(2):
            dataset = WindowDataset(index, PATCH, seed=5, rank=rank, world_size=2, block_windows=4)
            dataset.set_epoch(epoch)
            loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_windows)
            keys = [
                (d, r, int(w))
                for batch in loader
                for d, r, w in zip(
                    batch.datasets, batch.recordings, batch.window_indices, strict=True
                )
            ]
            assert len(keys) == len(dataset)
            per_rank.append(len(keys))
            seen.update(keys)
        assert seen == everything  # exactly once, over 2 ranks x 2 workers
        assert abs(per_rank[0] - per_rank[1]) <= 1


def test_drop_uneven_balances_ranks(index: CorpusIndex) -> None:
    world = 4
    counts = []
    seen: set[Key] = set()
    for rank in range(world):
        dataset = WindowDataset(index, PATCH, rank=rank, world_size=world, drop_uneven=True)
        keys = [(s.dataset, s.recording, s.window_index) for s in dataset]
        assert len(keys) == len(dataset)
        counts.append(len(keys))
        assert not seen & set(keys)
        seen |= set(keys)
    assert len(set(counts)) == 1 and sum(counts) == len(index) // world * world
    with pytest.raises(ValueError, match="rank"):
        WindowDataset(index, PATCH, rank=2, world_size=2)


def test_stale_index_is_detected(tmp_path: Path) -> None:
    recs = [Recording("s", "sub-1", "r1", "eeg", 4, 4)]
    write_corpus(tmp_path, recs)
    index = CorpusIndex.from_dir(tmp_path)
    # Rewrite the shard with its windows in another order.
    path = shard_path(tmp_path, "s", "r1")
    table = pq.read_table(path)
    pq.write_table(table.take([3, 2, 1, 0]), path, row_group_size=2)
    with pytest.raises(RuntimeError, match="rebuild the index"):
        list(WindowDataset(index, PATCH, shuffle=False))


# ------------------------------------------------------------------------- collate


def test_collate_pads_mixed_channel_counts(
    corpus: tuple[Path, dict[Key, Window]], index: CorpusIndex
) -> None:
    samples = list(WindowDataset(index, PATCH, seed=4))[:12]
    assert len({s.n_channels for s in samples}) > 1 and len({s.n_patches for s in samples}) > 1
    batch = collate_windows(samples)
    b, c_max, n_max = (
        len(samples),
        max(s.n_channels for s in samples),
        max(s.n_patches for s in samples),
    )
    assert batch.signal.shape == (b, c_max, n_max, PATCH) and len(batch) == b
    assert batch.coords.shape == (b, c_max, 3)
    assert batch.channel_mask.dtype == torch.bool and batch.patch_mask.dtype == torch.bool
    for i, s in enumerate(samples):
        c, n = s.n_channels, s.n_patches
        assert batch.channel_mask[i].tolist() == [True] * c + [False] * (c_max - c)
        assert batch.patch_mask[i].tolist() == [True] * n + [False] * (n_max - n)
        assert torch.equal(batch.signal[i, :c, :n].reshape(c, n * PATCH), s.signal)
        assert torch.count_nonzero(batch.signal[i, c:]) == 0
        assert torch.count_nonzero(batch.signal[i, :, n:]) == 0
        assert torch.equal(batch.coords[i, :c].isnan(), s.coords.isnan())
        assert torch.count_nonzero(batch.coords[i, c:]) == 0  # padding is 0, not NaN
        assert torch.equal(batch.channel_type_ids[i, :c], s.channel_type_ids)
        assert (batch.channel_type_ids[i, c:] == PAD_ID).all()
        assert (batch.channel_subtype_ids[i, c:] == PAD_ID).all()
        assert batch.modality_ids[i] == s.modality_id
        assert (batch.datasets[i], batch.subjects[i], batch.recordings[i]) == (
            s.dataset,
            s.subject,
            s.recording,
        )
    assert torch.equal(
        batch.token_mask, batch.channel_mask[:, :, None] & batch.patch_mask[:, None, :]
    )
    assert batch.to("cpu").signal.shape == batch.signal.shape
    with pytest.raises(ValueError, match="empty"):
        collate_windows([])


def test_index_of_many_shards_is_quick(tmp_path: Path) -> None:
    """Indexing reads footers and small columns only: 400 shards take well under 5 s."""
    src = write_corpus(tmp_path / "one", [Recording("d", "s", "r", "eeg", 2, 2)])
    assert src
    shard = shard_path(tmp_path / "one", "d", "r")
    many = tmp_path / "many" / "windows" / "d"
    many.mkdir(parents=True)
    for i in range(400):
        shutil.copyfile(shard, many / f"r{i:04d}.parquet")
    start = time.perf_counter()
    index = CorpusIndex.from_dir(tmp_path / "many")
    elapsed = time.perf_counter() - start
    assert len(index) == 800 and index.frame["shard"].nunique() == 400
    assert elapsed < 5.0
