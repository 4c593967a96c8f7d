"""Corpus-stage benchmark: `diver corpus` against a plain MNE pipeline, Parquet against HDF5.

Both sides run in this process's children on the same recordings (the shared
sample files, repeated to at least one recording-hour), and the ratios are printed:

1. recording-hours per core-second: `diver corpus --jobs 1` against a plain MNE
   script doing the same operations (read, high-pass, notch, resample to 500 Hz,
   scale/clip, 30 s windows, Parquet write), each timed as the child's CPU time;
2. windows per second of random-access reads: the Parquet corpus (one row group
   read per window, files kept open) against the same windows in an HDF5 file
   (h5py, one chunk per window);
3. peak memory on one multi-hour recording: block-wise `diver corpus` against the
   plain pipeline, which loads the whole recording.

    python benchmarks/bench_corpus.py [--data ../shared/data] [--reads 400]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
FOLDERS = [
    "eegmmidb_S001",
    "eegmmidb_128hz_run",
    "eeglab_tutorial",
    "resting_yasa",
    "openbci_cosleep_bdf",
]
EXTS = {".edf", ".bdf", ".set", ".fdt", ".fif"}

PLAIN_MNE = r"""
import sys
from pathlib import Path
import mne, numpy as np, pyarrow as pa, pyarrow.parquet as pq
src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
for path in sorted(p for p in src.rglob("*") if p.suffix in {".edf", ".bdf", ".set", ".fif"}):
    raw = mne.io.read_raw(path, preload=True, verbose="error")
    raw.filter(0.3, None, picks="all", verbose="error")
    raw.notch_filter(60.0, picks="all", verbose="error")
    raw.resample(500.0, verbose="error")
    data = raw.get_data() * 1e6 / 100.0
    n = data.shape[1] // 15000
    if n == 0:
        continue
    windows = np.clip(data[:, : n * 15000], -1, 1).reshape(len(data), n, 15000).transpose(1, 0, 2)
    flat = pa.array(windows.astype(np.float16).reshape(-1))
    offsets = pa.array(np.arange(n + 1, dtype=np.int64) * windows[0].size)
    signal = pa.LargeListArray.from_arrays(offsets, flat)
    table = pa.table({"window_index": np.arange(n), "signal": signal})
    pq.write_table(table, out / (path.stem + ".parquet"), compression="zstd")
"""


@dataclass(frozen=True)
class ChildUsage:
    cpu_s: float
    wall_s: float
    max_rss_mb: float


def run_child(cmd: list[str]) -> ChildUsage:
    """Run ``cmd`` and return its own CPU time, wall time and peak memory (os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}")
    return ChildUsage(usage.ru_utime + usage.ru_stime, wall, usage.ru_maxrss / 1024)


def write_long_recording(
    path: Path, hours: float, n_channels: int = 32, sfreq: float = 512.0
) -> None:
    """One long scalp recording written block by block (FIF splits past 2 GB itself)."""
    import mne

    rng = np.random.default_rng(0)
    n = int(hours * 3600 * sfreq)
    data = np.empty((n_channels, n), dtype=np.float32)
    for start in range(0, n, 1_000_000):
        stop = min(n, start + 1_000_000)
        data[:, start:stop] = rng.normal(0, 20e-6, (n_channels, stop - start))
    names = [
        "Fp1",
        "Fp2",
        "F7",
        "F3",
        "Fz",
        "F4",
        "F8",
        "FC5",
        "FC1",
        "FC2",
        "FC6",
        "T7",
        "C3",
        "Cz",
        "C4",
        "T8",
        "CP5",
        "CP1",
        "CP2",
        "CP6",
        "P7",
        "P3",
        "Pz",
        "P4",
        "P8",
        "PO3",
        "PO4",
        "O1",
        "Oz",
        "O2",
        "AF3",
        "AF4",
    ][:n_channels]
    raw = mne.io.RawArray(data, mne.create_info(names, sfreq, "eeg"), verbose="error")
    raw.save(path, overwrite=True, verbose="error")


def build_inputs(data: Path, dest: Path, min_hours: float) -> float:
    """Copy the shared recordings into ``dest`` (folders ``copy<k>``) until ``min_hours``.

    Real copies, not links: discovery lists a file reached through two links once.
    """
    import mne

    once = 0.0
    for folder in FOLDERS:
        for path in sorted((data / folder).iterdir()):
            if path.suffix in {".edf", ".bdf", ".set", ".fif"}:
                raw = mne.io.read_raw(path, preload=False, verbose="error")
                once += raw.n_times / raw.info["sfreq"] / 3600
    copies = int(np.ceil(min_hours / once))
    for k in range(copies):
        for folder in FOLDERS:
            target = dest / f"copy{k}" / folder
            target.mkdir(parents=True)
            for path in (data / folder).iterdir():
                if path.suffix in EXTS:
                    shutil.copy(path, target / path.name)
    return once * copies


def random_reads(corpus: Path, h5_path: Path, n_reads: int, seed: int) -> tuple[float, float]:
    """Windows per second reading the same random windows from Parquet and from HDF5."""
    dataset = pads.dataset(corpus / "windows")
    files = sorted(dataset.files)
    locations = []  # (file index, row group, row in group)
    for fi, path in enumerate(files):
        meta = pq.ParquetFile(path).metadata
        for rg in range(meta.num_row_groups):
            locations.extend((fi, rg, r) for r in range(meta.row_group(rg).num_rows))
    rng = np.random.default_rng(seed)
    picks = [locations[i] for i in rng.integers(0, len(locations), n_reads)]

    # HDF5: the same windows, one dataset per window, chunked per window.
    from diver.corpus.shards import signals_of

    with h5py.File(h5_path, "w") as h5:
        for fi, path in enumerate(files):
            pf = pq.ParquetFile(path)
            for rg in range(pf.metadata.num_row_groups):
                for r, sig in enumerate(signals_of(pf.read_row_group(rg))):
                    h5.create_dataset(f"{fi}/{rg}/{r}", data=sig, chunks=sig.shape)

    handles = [pq.ParquetFile(p) for p in files]
    start = time.perf_counter()
    total = 0.0
    for fi, rg, r in picks:
        table = handles[fi].read_row_group(
            rg, columns=["n_channels", "n_samples", "signal_dtype", "signal"]
        )
        total += float(signals_of(table.slice(r, 1))[0][0, 0])
    parquet_rate = n_reads / (time.perf_counter() - start)

    with h5py.File(h5_path, "r") as h5:
        start = time.perf_counter()
        for fi, rg, r in picks:
            total += float(h5[f"{fi}/{rg}/{r}"][()][0, 0])
        h5_rate = n_reads / (time.perf_counter() - start)
    return parquet_rate, h5_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--hours", type=float, default=1.0, help="minimum recording-hours")
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument(
        "--long-hours",
        type=float,
        default=2.0,
        help="length of the single long recording for the memory check",
    )
    parser.add_argument("--write-long", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write_long:
        write_long_recording(Path(args.write_long), args.long_hours)
        return
    data = Path(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hours = build_inputs(data, tmp / "in", args.hours)
        print(f"input: {hours:.2f} recording-hours")
        diver = run_child(
            [
                sys.executable,
                "-m",
                "diver",
                "corpus",
                "--input",
                f"bench={tmp / 'in'}",
                "--out",
                str(tmp / "diver"),
                "--jobs",
                "1",
                "--quiet",
            ]
        )
        plain = run_child([sys.executable, "-c", PLAIN_MNE, str(tmp / "in"), str(tmp / "plain")])
        d_rate, m_rate = hours / diver.cpu_s, hours / plain.cpu_s
        for name, usage, rate in (("diver corpus", diver, d_rate), ("plain MNE", plain, m_rate)):
            print(
                f"{name:13}: {usage.cpu_s:7.1f} core-s ({usage.wall_s:.1f} s wall) "
                f"{rate * 3600:8.1f} recording-h per core-hour"
            )
        print(f"ratio diver / plain MNE (recording-hours per core-second): {d_rate / m_rate:.2f}")

        # The same corpus with a zstd-compressed signal column (corpus.signal_compression;
        # the default is uncompressed, which the training loader reads in place).
        zstd_cfg = tmp / "zstd.yaml"
        zstd_cfg.write_text("corpus:\n  signal_compression: zstd\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "diver",
                "corpus",
                "--config",
                str(zstd_cfg),
                "--input",
                f"bench={tmp / 'in'}",
                "--out",
                str(tmp / "diver_zstd"),
                "--quiet",
            ],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        for label, corpus_dir in (("none", tmp / "diver"), ("zstd", tmp / "diver_zstd")):
            parquet_rate, h5_rate = random_reads(
                corpus_dir, tmp / f"windows_{label}.h5", args.reads, 0
            )
            print(
                f"random reads : Parquet (signal {label}) {parquet_rate:8.1f} windows/s, "
                f"HDF5 {h5_rate:8.1f} windows/s"
            )
            print(
                f"ratio Parquet (signal {label}) / HDF5 (windows per second): "
                f"{parquet_rate / h5_rate:.2f}"
            )

        # Peak memory on one long recording: block-wise vs whole-recording processing.
        long_dir = tmp / "long"
        long_dir.mkdir()
        # Written by a child: a child's peak RSS (wait4) starts from its parent's RSS
        # at fork time, so the parent must stay small for the figures to be honest.
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--write-long",
                str(long_dir / "long_raw.fif"),
                "--long-hours",
                str(args.long_hours),
            ],
            check=True,
        )
        diver_long = run_child(
            [
                sys.executable,
                "-m",
                "diver",
                "corpus",
                "--input",
                f"long={long_dir}",
                "--out",
                str(tmp / "diver_long"),
                "--jobs",
                "1",
                "--quiet",
            ]
        )
        plain_long = run_child(
            [sys.executable, "-c", PLAIN_MNE, str(long_dir), str(tmp / "plain_long")]
        )
        print(
            f"peak memory on a {args.long_hours:g} h 32-channel 512 Hz recording: diver "
            f"{diver_long.max_rss_mb:.0f} MB, plain MNE {plain_long.max_rss_mb:.0f} MB"
        )
        print(
            f"ratio diver / plain MNE (peak memory): "
            f"{diver_long.max_rss_mb / plain_long.max_rss_mb:.2f}"
        )


if __name__ == "__main__":
    main()
