"""Training input pipeline: the real loader against what a GPU consumes, and the anchors.

1. A corpus of a few GB written by ``diver corpus`` from generated recordings: scalp
   EEG with 129 (HBN-like), 64 and 19 channels, and 160-contact sEEG, 500 Hz float32
   FIF (kept under ``.cache/bench_loader`` and reused by later runs).  It is built twice:
   the default layout (uncompressed signal, crops read in place) and
   ``signal_compression: zstd`` (every read decodes the whole window, as all corpora
   did before in-place reads).
2. The training stream exactly as ``diver pretrain`` builds it
   (``diver.data.loader``: WindowDataset with SPEC §2's resampling, DataLoader workers,
   collation), each configuration in a fresh child process, warm (page cache) and cold
   (the corpus evicted with ``posix_fadvise(DONTNEED)`` first): windows/s and tokens/s
   per loader worker and per core-second (all CPU of the child and its workers), MB
   read per delivered window (``/proc/self/io``: ``rchar`` warm, ``read_bytes`` cold;
   reaped workers' counters are included) against the MB the delivered sample holds as
   stored, and peak memory.
3. The anchors on the same windows, one core, each window read whole then given the
   same crop: HDF5 with one dataset per window (LaBraM), LMDB with one pickled array
   per key (CBraMod; the benchmark unpickles only what it wrote itself) and a raw
   ``np.memmap`` of all windows (the floor).
4. The demand side: windows/s and tokens/s one GPU consumes at a sustained FLOP/s —
   the SLURM site file's ``flops_per_gpu`` (an A100 at ~35 % MFU) and an H100 at 4e14 —
   from the model's FLOPs account (``diver.model.flops``) for the mean sample of SPEC
   §2's resampling, and the loader cores each GPU therefore needs.

    python benchmarks/bench_loader.py [--scale 1.0] [--seconds 20] [--batch 32]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench_loader"
SFREQ = 500.0
RECORDING_MINUTES = 30
# (dataset, channel type, channels, recording-hours at scale 1): ~3.1 GB of float16
# windows, about three quarters of them in windows of 64 channels or more.
RECIPE = (
    ("hbn129", "eeg", 129, 2.5),
    ("seeg160", "seeg", 160, 1.5),
    ("eeg64", "eeg", 64, 3.0),
    ("eeg19", "eeg", 19, 6.0),
)
LAYOUTS = {"in_place": "none", "zstd": "zstd"}
H100_FLOPS = 4.0e14


# ------------------------------------------------------------------------ the corpus


def write_recordings(raw_dir: Path, scale: float) -> None:
    """500 Hz FIF recordings of the recipe: 1/f-ish noise with an alpha rhythm."""
    import mne

    rng = np.random.default_rng(0)
    n = int(RECORDING_MINUTES * 60 * SFREQ)
    for name, kind, channels, hours in RECIPE:
        folder = raw_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        for r in range(max(1, round(hours * scale * 60 / RECORDING_MINUTES))):
            target = folder / f"sub-{r:02d}_raw.fif"
            if target.exists():
                continue
            white = rng.standard_normal((channels, n), dtype=np.float32)
            pink = np.cumsum(white, axis=1, dtype=np.float32)
            pink -= np.linspace(0, 1, n, dtype=np.float32) * pink[:, -1:]  # no drift
            t = np.arange(n, dtype=np.float32) / SFREQ
            data = (
                20e-6 * white + 2e-6 * pink / np.sqrt(n) * 50 + 10e-6 * np.sin(2 * np.pi * 10.0 * t)
            )
            names = [f"{'E' if kind == 'eeg' else 'LA'}{i + 1}" for i in range(channels)]
            info = mne.create_info(names, SFREQ, kind)
            raw = mne.io.RawArray(data, info, verbose="error")
            tmp = folder / f".{target.name}.tmp_raw.fif"
            raw.save(tmp, overwrite=True, verbose="error")
            os.replace(tmp, target)


def build_corpus(raw_dir: Path, out: Path, compression: str) -> None:
    config = out.parent / f"{out.name}.yaml"
    config.write_text(f"corpus:\n  signal_compression: {compression}\n")
    inputs = [a for name, *_ in RECIPE for a in ("--input", f"{name}={raw_dir / name}")]
    cmd = [sys.executable, "-m", "diver", "corpus", "--config", str(config), *inputs]
    subprocess.run([*cmd, "--out", str(out), "--jobs", "2", "--quiet"], check=True)


def prepare(scale: float) -> dict[str, Path]:
    """The corpus in both layouts and their saved indexes (built once per scale)."""
    from diver.data import CorpusIndex

    base = CACHE / f"scale-{scale:g}"
    raw = base / "raw"
    out: dict[str, Path] = {}
    for layout, compression in LAYOUTS.items():
        corpus = base / layout
        index = base / f"{layout}.index.parquet"
        if not index.exists():
            write_recordings(raw, scale)
            t0 = time.perf_counter()
            build_corpus(raw, corpus, compression)
            print(f"built the {layout} corpus in {time.perf_counter() - t0:.0f} s")
            CorpusIndex.from_dir(corpus).save(index)
        out[layout] = index
    return out


def shard_files(corpus: Path) -> list[Path]:
    return sorted((corpus / "windows").rglob("*.parquet"))


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (no privileges needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- child measurements


@dataclass
class Measured:
    """One configuration's figures (a child process's own and its reaped workers')."""

    windows: int
    tokens: int
    stored_values: int  # signal values the delivered samples hold
    itemsize: int
    wall_s: float
    cpu_s: float
    rchar: int
    read_bytes: int
    main_rss_mb: float
    worker_rss_mb: float


def _io() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value)
    return fields


def _high_water_mb() -> float:
    """This process's peak RSS since its exec (``ru_maxrss`` would carry the parent's
    peak across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _finish(
    windows: int, tokens: int, values: int, itemsize: int, t0: float, c0: float, io0: dict
) -> Measured:
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    io = _io()
    return Measured(
        windows=windows,
        tokens=tokens,
        stored_values=values,
        itemsize=itemsize,
        wall_s=wall,
        cpu_s=cpu,
        rchar=io["rchar"] - io0["rchar"],
        read_bytes=io["read_bytes"] - io0["read_bytes"],
        main_rss_mb=_high_water_mb(),
        worker_rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    )


class ReusedHostMemory:
    """The CUDA caching host allocator's behaviour on a machine without a GPU: a batch's
    host copy lands in memory reused from earlier batches (pinned pages are never
    given back), not in fresh pages."""

    def __init__(self) -> None:
        self.buffers: dict[object, object] = {}

    def __call__(self, shape: tuple[int, ...], dtype: object) -> object:
        import torch

        n = int(np.prod(shape))
        buffer = self.buffers.get(dtype)
        if buffer is None or buffer.numel() < n:
            buffer = self.buffers[dtype] = torch.empty(n, dtype=dtype)
        return buffer[:n].view(shape)


def child_loader(spec: dict) -> Measured:
    """The training stream of ``diver pretrain`` (rank 0 of 1) for ``seconds`` or
    ``epochs`` passes, whichever ends first; batches land as on a GPU node (a host
    copy into reused memory, as into pinned memory there)."""
    from diver.data import CorpusIndex
    from diver.data.loader import TrainingLoader, training_dataset

    index = CorpusIndex.load(spec["index"])
    patch = spec["patch"]
    dataset = training_dataset(index, patch, seed=0, rank=0, world_size=1)
    host = ReusedHostMemory()
    loader = TrainingLoader(dataset, spec["batch"], num_workers=spec["workers"], seed=0, host=host)
    itemsize = 2  # the corpus stores float16
    if spec["cold"]:
        evict(shard_files(index.corpus_dir))
    io0, c0, t0 = _io(), _cpu(), time.perf_counter()
    windows = tokens = 0
    deadline = t0 + spec["seconds"]
    for epoch in range(spec["epochs"]):
        dataset.set_epoch(epoch)
        batches = iter(loader)
        for batch in batches:
            windows += len(batch)
            tokens += int(batch.token_mask.sum())
            if spec["workers"] == 0:  # built in this process: pinning would copy it
                host(tuple(batch.signal.shape), batch.signal.dtype).copy_(batch.signal)
            if time.perf_counter() > deadline:
                break
        del batches
        if time.perf_counter() > deadline:
            break
    del loader  # shuts down and joins (so reaps) the persistent workers: their I/O and
    gc.collect()  # CPU then count in this process's figures
    return _finish(windows, tokens, tokens * patch, itemsize, t0, c0, io0)


def _anchor_windows(spec: dict) -> list[tuple[int, int, int]]:
    return [tuple(w) for w in json.loads(Path(spec["windows"]).read_text())]


def child_anchor(spec: dict) -> Measured:
    """Random reads of whole windows from an anchor's storage, each given its crop."""
    import torch

    from diver.data import ResampleConfig, choose_crop

    windows = _anchor_windows(spec)  # (key, n_channels, n_samples)
    kind, path, patch = spec["kind"], Path(spec["path"]), spec["patch"]
    config = ResampleConfig()
    if kind == "hdf5":
        import h5py

        store = h5py.File(path, "r")

        def read(key: int, c: int, s: int) -> np.ndarray:
            return store[str(key)][()]
    elif kind == "lmdb":
        import lmdb

        # CBraMod's reader settings
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=True, meminit=False)
        txn = env.begin(write=False)

        def read(key: int, c: int, s: int) -> np.ndarray:
            return pickle.loads(txn.get(str(key).encode()))  # written by this benchmark
    else:
        offsets = json.loads((path.parent / "memmap_offsets.json").read_text())
        flat = np.memmap(path, dtype=np.float16, mode="r")

        def read(key: int, c: int, s: int) -> np.ndarray:
            a = offsets[key]
            return flat[a : a + c * s].reshape(c, s)

    if spec["cold"]:
        evict([p for p in ([path] if path.is_file() else path.iterdir())])
    io0, c0, t0 = _io(), _cpu(), time.perf_counter()
    done = tokens = 0
    deadline = t0 + spec["seconds"]
    for epoch in range(spec["epochs"]):
        order = np.random.default_rng([epoch, 7]).permutation(len(windows))
        for i in order.tolist():
            key, c, s = windows[i]
            signal = read(key, c, s)
            rng = np.random.default_rng([0, epoch, key])
            crop = choose_crop(c, s // patch, rng, config)
            a = crop.patch_start * patch
            kept = signal[crop.channels, a : a + crop.n_patches * patch]
            torch.from_numpy(np.ascontiguousarray(kept)).float()
            done += 1
            tokens += len(crop.channels) * crop.n_patches
            if time.perf_counter() > deadline:
                break
        if time.perf_counter() > deadline:
            break
    return _finish(done, tokens, tokens * patch, 2, t0, c0, io0)


def write_anchors(index_path: Path, folder: Path) -> Path:
    """The in-place corpus's windows as HDF5, LMDB and one raw memmap (written once)."""
    import h5py
    import lmdb
    import pyarrow.parquet as pq

    from diver.corpus.shards import signals_of
    from diver.data import CorpusIndex

    listing = folder / "windows.json"
    if listing.exists():
        return listing
    folder.mkdir(parents=True, exist_ok=True)
    index = CorpusIndex.load(index_path)
    frame = index.frame
    total = int((frame["n_channels"] * frame["n_samples"]).sum()) * 2
    env = lmdb.open(str(folder / "lmdb"), map_size=int(total * 1.2) + (1 << 30))
    offsets: list[int] = []
    windows: list[tuple[int, int, int]] = []
    with (
        h5py.File(folder / "windows.h5", "w") as h5,
        open(folder / "windows.memmap", "wb") as flat,
    ):
        position = 0
        for shard in frame["shard"].cat.categories:
            table = pq.read_table(index.shard_path(shard))
            with env.begin(write=True) as txn:
                for signal in signals_of(table):
                    key = len(windows)
                    h5.create_dataset(str(key), data=signal)  # contiguous, one per window
                    txn.put(str(key).encode(), pickle.dumps(np.array(signal)))
                    flat.write(signal.tobytes())
                    offsets.append(position)
                    position += signal.size
                    windows.append((key, *signal.shape))
    env.close()
    (folder / "memmap_offsets.json").write_text(json.dumps(offsets))
    listing.write_text(json.dumps(windows))
    return listing


def run_child(spec: dict) -> Measured:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return Measured(**json.loads(out.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------ the demand


def demand() -> dict[tuple[str, str], float]:
    """FLOPs of one training pass of the mean resampled window, per size and patch."""
    from diver.model.config import PUBLISHED_SIZES, model_config
    from diver.model.flops import STR_MEAN_CHANNELS, STR_MEAN_PATCHES, forward_flops

    return {
        (size, patch): forward_flops(
            model_config(size, patch), STR_MEAN_CHANNELS, STR_MEAN_PATCHES
        ).training
        for patch in ("1s", "0.1s")
        for size in PUBLISHED_SIZES
    }


def site_flops() -> float:
    from diver.launch.site import load_site

    return load_site(REPO / "cluster_profiles" / "slurm" / "site.yaml").flops_per_gpu


# ------------------------------------------------------------------------------ main


def _mb(x: float) -> str:
    return f"{x / 1e6:7.3f}"


def per_core(m: Measured) -> float:
    """Windows per core-second: all CPU of the configuration (workers included)."""
    return m.windows / m.cpu_s


def read_ratio(m: Measured, counter: str) -> float:
    """Bytes read (``rchar`` or ``read_bytes``) per byte the delivered samples hold."""
    return getattr(m, counter) / max(m.stored_values * m.itemsize, 1)


def report(label: str, m: Measured, workers: int) -> None:
    per_worker = m.windows / m.wall_s / max(workers, 1)
    delivered = m.stored_values * m.itemsize / max(m.windows, 1)
    warm_read = m.rchar / max(m.windows, 1)
    cold_read = m.read_bytes / max(m.windows, 1)
    print(
        f"{label:34} {m.windows / m.wall_s:8.0f} win/s {per_worker:8.0f} per worker "
        f"{m.tokens / m.wall_s / max(workers, 1):10.0f} tok/s per worker "
        f"{m.windows / m.cpu_s:8.0f} win per core-s | MB/window read "
        f"{_mb(warm_read)} (syscalls) {_mb(cold_read)} (storage) delivered {_mb(delivered)} | "
        f"peak RSS main {m.main_rss_mb:5.0f} MB, worker {m.worker_rss_mb:5.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="corpus size (1 = ~3 GB)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per configuration")
    parser.add_argument("--batch", type=int, default=32, help="micro-batch of the loader")
    parser.add_argument("--patch", choices=["1s", "0.1s"], action="append", help="default both")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        measured = child_anchor(spec) if "kind" in spec else child_loader(spec)
        print(json.dumps(asdict(measured)))
        return

    indexes = prepare(args.scale)
    corpus_bytes = sum(
        p.stat().st_size for p in shard_files(indexes["in_place"].parent / "in_place")
    )
    print(f"corpus: {corpus_bytes / 1e9:.2f} GB of shards ({os.cpu_count()} cores)")
    common = {"batch": args.batch, "seconds": args.seconds, "epochs": 50}
    rates: dict[str, Measured] = {}
    patches = {name: n for name, n in (("1s", 500), ("0.1s", 50)) if name in (args.patch or [name])}
    for patch_name, patch in patches.items():
        print(f"\n== {patch_name} patches: the training loader (diver.data.loader) ==")
        for layout, index in indexes.items():
            for workers in (0, 1, 2):
                for cold in (False, True):
                    if cold and workers != 1:
                        continue
                    spec = {**common, "index": str(index), "patch": patch, "workers": workers}
                    spec["cold"] = cold
                    if cold:
                        spec["epochs"] = 1
                    m = run_child(spec)
                    label = f"{layout} {workers} worker(s) {'cold' if cold else 'warm'}"
                    rates[f"{patch_name} {label}"] = m
                    report(label, m, workers)
        listing = write_anchors(indexes["in_place"], indexes["in_place"].parent / "anchors")
        folder = listing.parent
        print(f"-- {patch_name} patches: anchors (one core, whole-window reads + the same crop) --")
        for kind, path in (
            ("hdf5", folder / "windows.h5"),
            ("lmdb", folder / "lmdb"),
            ("memmap", folder / "windows.memmap"),
        ):
            for cold in (False, True):
                spec = {**common, "kind": kind, "path": str(path), "windows": str(listing)}
                spec.update(patch=patch, cold=cold, epochs=1 if cold else 50)
                m = run_child(spec)
                label = f"{kind} {'cold' if cold else 'warm'}"
                rates[f"{patch_name} {label}"] = m
                report(label, m, 1)

    print("\n== ratios (same windows, same run) ==")
    for patch_name in patches:
        ours = rates[f"{patch_name} in_place 1 worker(s) warm"]
        old = rates[f"{patch_name} zstd 1 worker(s) warm"]
        h5 = rates[f"{patch_name} hdf5 warm"]
        floor = rates[f"{patch_name} memmap warm"]
        print(
            f"{patch_name}: windows per core-second, in-place loader (1 worker) / HDF5 random "
            f"reads: {per_core(ours) / per_core(h5):.2f}; / zstd-decoding loader: "
            f"{per_core(ours) / per_core(old):.2f}; / memmap floor: "
            f"{per_core(ours) / per_core(floor):.2f}"
        )
        cold = rates[f"{patch_name} in_place 1 worker(s) cold"]
        cold_old = rates[f"{patch_name} zstd 1 worker(s) cold"]
        print(
            f"{patch_name}: bytes read per delivered byte: cold, from storage: in place "
            f"{read_ratio(cold, 'read_bytes'):.2f}, zstd {read_ratio(cold_old, 'read_bytes'):.2f}; "
            f"warm, by syscalls: in place {read_ratio(ours, 'rchar'):.2f}, zstd "
            f"{read_ratio(old, 'rchar'):.2f}"
        )

    flops = demand()
    site = site_flops()
    print(
        f"\n== loader cores needed per GPU (warm cache, in-place loader with 1 worker: its "
        f"and the main process's CPU per token) "
        f"at {site:.0e} FLOP/s (site file) and {H100_FLOPS:.0e} (H100) =="
    )
    from diver.model.flops import STR_MEAN_CHANNELS, STR_MEAN_PATCHES

    mean_tokens = STR_MEAN_CHANNELS * STR_MEAN_PATCHES
    print(
        f"{'size':6} {'patch':5} {'GFLOP/window':>12} {'win/s/GPU':>10} {'cores/GPU':>10} "
        f"{'win/s H100':>10} {'cores H100':>10}"
    )
    for (size, patch_name), f in flops.items():
        if patch_name not in patches:
            continue
        m = rates[f"{patch_name} in_place 1 worker(s) warm"]
        tokens_per_core_s = m.tokens / m.cpu_s  # the worker's and the main process's CPU
        need = site / f * mean_tokens
        need_h100 = H100_FLOPS / f * mean_tokens
        print(
            f"{size:6} {patch_name:5} {f / 1e9:12.1f} {site / f:10.0f} "
            f"{need / tokens_per_core_s:10.2f} {H100_FLOPS / f:10.0f} "
            f"{need_h100 / tokens_per_core_s:10.2f}"
        )


if __name__ == "__main__":
    main()
