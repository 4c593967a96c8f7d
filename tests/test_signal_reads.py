"""In-place crop reads (diver.data.signal_reads): the same samples as decoding, for the
crop's bytes only; and the layouts that must be decoded still are."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from diver.corpus.shards import ShardWriter, shard_path
from diver.data import CorpusIndex, CorpusIndexError, ResampleConfig, WindowDataset
from diver.data.signal_reads import ShardMismatchError, channel_runs
from tests.test_data import RECORDINGS, Recording, make_window, write_corpus

Layouts = dict[str, tuple[CorpusIndex, dict]]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Layouts:
    """The same windows in the in-place layout (the corpus default) and in the decoded
    one (zstd, two windows per row group: a corpus written before in-place reads)."""
    out = {}
    for name, kwargs in {
        "in_place": {"row_group_windows": 1, "signal_compression": "none"},
        "decoded": {"row_group_windows": 2, "signal_compression": "zstd"},
        "uncompressed_groups": {"row_group_windows": 3, "signal_compression": "none"},
    }.items():
        root = tmp_path_factory.mktemp(name)
        written = write_corpus(root, RECORDINGS, **kwargs)
        out[name] = (CorpusIndex.from_dir(root), written)
    return out


def test_writer_defaults_give_the_in_place_layout(tmp_path: Path, layouts: Layouts) -> None:
    rec = Recording("d", "sub-1", "r", "eeg", 5, 3)
    rng = np.random.default_rng(0)
    with ShardWriter(shard_path(tmp_path, "d", "r")) as writer:
        for w in range(3):
            writer.write(make_window(rec, w, rng))
    assert (CorpusIndex.from_dir(tmp_path).frame["signal_offset"] > 0).all()
    assert (layouts["in_place"][0].frame["signal_offset"] > 0).all()
    # Compressed, or several windows per row group: decoded, never guessed at.
    assert (layouts["decoded"][0].frame["signal_offset"] == -1).all()
    assert (layouts["uncompressed_groups"][0].frame["signal_offset"] == -1).all()


def _stream(index: CorpusIndex, patch: int, **kwargs: object) -> list[tuple]:
    dataset = WindowDataset(index, patch, block_windows=4, **kwargs)  # type: ignore[arg-type]
    out = []
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for s in dataset:
            out.append(
                (
                    s.recording,
                    s.window_index,
                    s.channels.tolist(),
                    s.patch_start,
                    s.signal.numpy().tobytes(),
                    s.coords.numpy().tobytes(),
                    s.channel_type_ids.tolist(),
                    s.channel_subtype_ids.tolist(),
                    s.modality_id,
                )
            )
    return out


@pytest.mark.parametrize("patch", [50, 500])
@pytest.mark.parametrize("enabled", [True, False])
def test_in_place_reads_deliver_exactly_the_decoded_samples(
    layouts: Layouts, patch: int, enabled: bool
) -> None:
    """Same seed, same draws, same bytes: the layout changes how a crop is read, never
    which channels and patches it holds (SPEC §2's resampling, unchanged)."""
    resample = ResampleConfig(enabled=enabled)
    streams = {
        name: _stream(index, patch, seed=11, resample=resample, shuffle=enabled)
        for name, (index, _) in layouts.items()
    }
    reference = streams.pop("decoded")
    assert len(reference) == 2 * sum(rec.n_windows for rec in RECORDINGS)
    for name, stream in streams.items():
        assert sorted(stream) == sorted(reference), name
    assert len({len(s[2]) for s in reference}) > 5  # the crops really vary


def test_in_place_values_are_the_written_ones(layouts: Layouts) -> None:
    index, written = layouts["in_place"]
    for s in WindowDataset(index, 50, seed=2):
        w = written[(s.dataset, s.recording, s.window_index)]
        start = s.patch_start * 50
        expected = w.signal[s.channels.numpy(), start : start + s.n_patches * 50]
        assert np.array_equal(s.signal.float().numpy(), expected)


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_a_crop_of_a_wide_window_reads_the_crop_bytes(tmp_path: Path) -> None:
    """A 129-channel window: after the shard's small metadata columns (read once per
    process), each window costs the bytes of the channels and patches it keeps, not the
    whole window (which is 4-5x more at 24 of 129 channels)."""
    rec = Recording("hbn", "sub-1", "r", "eeg", 129, 12, "float16", n_samples=15000)
    written = write_corpus(tmp_path, [rec], row_group_windows=1, signal_compression="none")
    index = CorpusIndex.from_dir(tmp_path)
    dataset = WindowDataset(index, 500, seed=0, block_windows=64)
    list(dataset)  # the shard's metadata is read once per process (and lazy imports)
    before = _rchar()
    samples = list(dataset)
    read = _rchar() - before
    assert {s.signal.dtype for s in samples} == {torch.float16}  # as stored
    delivered = sum(s.signal.numel() * 2 for s in samples)
    whole = sum(w.signal.size * 2 for w in written.values())
    assert len(samples) == 12
    # (plus the few hundred bytes of reading /proc/self/io itself)
    assert delivered <= read < delivered + 1024, (read, delivered)
    assert whole > 3 * delivered


def test_eval_crop_of_whole_rows_is_one_read_per_run() -> None:
    assert channel_runs(np.array([0, 1, 2, 5, 6, 9])) == [(0, 0, 3), (3, 5, 2), (5, 9, 1)]
    assert channel_runs(np.array([4])) == [(0, 4, 1)]


def test_rewritten_shard_is_refused_not_misread(tmp_path: Path) -> None:
    """The index's offsets no longer match a shard rewritten with other channel counts:
    the loader says to rebuild the index instead of reading the wrong bytes."""
    recs = [Recording("s", "sub-1", "r1", "eeg", 6, 4, "float16")]
    write_corpus(tmp_path, recs, row_group_windows=1, signal_compression="none")
    index = CorpusIndex.from_dir(tmp_path)
    write_corpus(
        tmp_path,
        [Recording("s", "sub-1", "r1", "eeg", 5, 4, "float16")],
        row_group_windows=1,
        signal_compression="none",
    )
    with pytest.raises(ShardMismatchError, match="rebuild the index"):
        list(WindowDataset(index, 50, shuffle=False))
    # A shard that is no longer Parquet at all: the message names it.
    path = shard_path(tmp_path, "s", "r1")
    path.write_bytes(b"not parquet")
    with pytest.raises(ShardMismatchError, match=r"cannot read shard .*r1\.parquet"):
        list(WindowDataset(index, 50, shuffle=False))
    # A shard cut short under the index is refused too.
    write_corpus(tmp_path, recs, row_group_windows=1, signal_compression="none")
    index = CorpusIndex.from_dir(tmp_path)
    path = shard_path(tmp_path, "s", "r1")
    dataset = WindowDataset(index, 50, shuffle=False)
    reader = dataset._reader()
    reader.facts(0)
    os.truncate(path, int(index.frame["signal_offset"].iloc[-1]) + 10)
    with pytest.raises(ShardMismatchError, match="ended early"):
        list(dataset)


def test_index_saved_by_an_older_diver_says_rebuild(tmp_path: Path, layouts: Layouts) -> None:
    index, _ = layouts["in_place"]
    index.save(tmp_path / "index.parquet")
    old = pq.read_table(tmp_path / "index.parquet").drop(["signal_offset"])
    pq.write_table(old, tmp_path / "old.parquet")
    with pytest.raises(CorpusIndexError, match=r"older diver.*rebuild"):
        CorpusIndex.load(tmp_path / "old.parquet")


@pytest.mark.parametrize("layout", ["in_place", "decoded"])
def test_training_loader_batches_equal_collated_samples(layouts: Layouts, layout: str) -> None:
    """The training loader reads each crop straight into its batch slot (in shared
    memory inside a worker); its batches, padding included, are exactly those of
    collating the sample stream, with 0, 1 or 2 workers, and keep the storage type."""
    from torch.utils.data import DataLoader

    from diver.data import collate_windows
    from diver.data.loader import TrainingLoader, training_dataset

    index, _ = layouts[layout]

    def flat(batch: object) -> tuple:
        return tuple(
            (v.dtype, tuple(v.shape), v.numpy().tobytes()) if isinstance(v, torch.Tensor) else v
            for v in vars(batch).values()
        )

    for workers in (0, 1, 2):
        dataset = training_dataset(index, 50, seed=4, rank=0, world_size=1)
        dataset.set_epoch(1)
        direct = [flat(b) for b in TrainingLoader(dataset, 6, num_workers=workers, seed=0)]
        classic = DataLoader(dataset, batch_size=6, collate_fn=collate_windows, num_workers=workers)
        assert direct == [flat(b) for b in classic], workers
        assert len(direct) >= 8
    assert {b[0][0] for b in direct} == {torch.float32}  # float32 and float16 mixed


def test_dataset_pickles_without_its_open_files(layouts: Layouts) -> None:
    """Loader workers get the dataset by pickling (spawn) or fork; neither may carry the
    parent's open files and caches across."""
    import pickle

    index, _ = layouts["in_place"]
    dataset = WindowDataset(index, 50)
    next(iter(dataset))
    assert dataset._shard_reader is not None
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._shard_reader is None
    assert [s.window_index for s in copy][:3] == [s.window_index for s in dataset][:3]


def test_slab_ring_hands_out_free_slabs_and_never_blocks() -> None:
    from diver.data.slabs import SlabRing

    ring = SlabRing(workers=2, slabs=2, slab_bytes=4 * 10 * 2)
    shape = (4, 10)
    g = ring.begin()
    first = ring.acquire(1, shape, torch.float16, g)
    second = ring.acquire(1, shape, torch.float16, g)
    assert {first, second} == {0, 1}
    assert ring.acquire(1, shape, torch.float16, g) is None  # all busy: the caller allocates
    assert ring.acquire(0, shape, torch.float16, g) == 0  # another worker's slabs are its own
    assert ring.acquire(0, (4, 10), torch.float32, g) is None  # does not fit
    view = ring.view(1, second, shape, torch.float16)
    view.fill_(3.0)
    assert ring.view(1, second, shape, torch.float16).sum() == 120  # the same memory
    ring.release(1, second)
    assert ring.acquire(1, shape, torch.float16, g) == second
    # A new pass: batches the last one left untaken free their slabs.
    g2 = ring.begin()
    assert g2 == g + 1
    assert ring.acquire(1, shape, torch.float16, g2) == 0
    assert ring.acquire(1, shape, torch.float16, g2) == 1
    assert ring.acquire(1, shape, torch.float16, g2) is None


def test_workers_hand_batches_over_in_reused_slabs(layouts: Layouts) -> None:
    """With workers, batches travel through the loader's slabs (not fresh shared memory
    each time), each freed as soon as it is copied out, and equal the samples' batches;
    the workers persist across epochs, which reach them, and across abandoned passes."""
    from torch.utils.data import DataLoader

    from diver.data import collate_windows
    from diver.data.loader import TrainingLoader, training_dataset

    index, _ = layouts["in_place"]
    dataset = training_dataset(index, 50, seed=8, rank=0, world_size=1)
    loader = TrainingLoader(dataset, 4, num_workers=2, seed=0)
    landed: list[tuple[int, int] | None] = []
    land = loader._land

    def spy(batch):  # type: ignore[no-untyped-def]
        landed.append(None if batch.slab is None else batch.slab[:2])
        out = land(batch)
        assert int((loader.ring.busy > 0).sum()) <= 2 * 3  # freed on landing (a few in flight)
        return out

    loader._land = spy  # type: ignore[method-assign]

    def flat(batches: object) -> list[tuple]:
        return [(b.signal.numpy().tobytes(), b.window_indices.tolist()) for b in batches]

    for epoch in (0, 1, 1, 2):
        dataset.set_epoch(epoch)
        want = flat(DataLoader(dataset, batch_size=4, collate_fn=collate_windows, num_workers=2))
        if epoch == 1 and landed[-1:] != ["abandoned"]:
            # A pass abandoned after 3 batches (as a preemption or a resume's skip
            # does): the persistent workers restart, its prefetched slabs come back.
            stream = iter(loader)
            assert flat([next(stream) for _ in range(3)]) == want[:3]
            del stream
            landed.append("abandoned")  # type: ignore[arg-type]
            continue
        assert flat(loader) == want, epoch
    used = [s for s in landed if s not in (None, "abandoned")]
    assert len(used) == len(landed) - 1 > 10  # every batch fit a free slab
    assert len(set(used)) <= 2 * 4 < len(used)  # and slabs were reused
    assert loader.loader._iterator is not None  # the workers persisted across passes


def test_a_training_log_from_an_older_diver_keeps_its_rows_on_resume(tmp_path: Path) -> None:
    """Columns were added to train_log.csv (step_s, loader_wait_s, model_flops); a run
    folder written before keeps its rows when resumed, the new columns nan."""
    from diver.train.outputs import TRAIN_COLUMNS, CsvLog

    old_columns = [c for c in TRAIN_COLUMNS if c not in ("step_s", "loader_wait_s", "model_flops")]
    path = tmp_path / "train_log.csv"
    lines = [",".join(old_columns)]
    lines += [
        ",".join(str(step if c == "step" else 0.5) for c in old_columns) for step in (1, 2, 3)
    ]
    path.write_text("\n".join(lines) + "\n")
    kept = CsvLog(path, TRAIN_COLUMNS).truncate(max_step=2)
    assert [int(r["step"]) for r in kept] == [1, 2]
    assert kept[0]["loader_wait_s"] == "nan" and kept[0]["loss"] == "0.5"
    assert path.read_text().splitlines()[0] == ",".join(TRAIN_COLUMNS)
    # The summary's loader wait is over the rows that timed it, not made nan by the rest.
    from diver.train.loop import loader_wait_totals

    new_row = {**kept[0], "step": "3", "step_s": "2.0", "loader_wait_s": "0.5"}
    assert loader_wait_totals([*kept, new_row]) == (2.0, 0.5)
