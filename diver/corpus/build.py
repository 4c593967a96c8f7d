"""The corpus stage: every recording of every dataset into one Parquet corpus folder.

Layout of ``out``::

    windows/<dataset>/<recording>.parquet   one shard per recording (kept windows)
    receipts/<dataset>/<recording>.json     what processing that recording produced
    qc.csv  channels.csv  manifest.csv      merged from the receipts

A receipt is written (atomically) only after its shard is in place, and carries a
fingerprint of the input file and of every setting that shapes the output; a rerun
skips recordings whose receipt matches, so an interrupted run resumes where it
stopped and finishes with output identical to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from diver.atomic import write_csv_atomic, write_text_atomic
from diver.config import ConfigError, CorpusConfig, DatasetConfig
from diver.corpus.discovery import RecordingSource, discover_recordings
from diver.corpus.manifest import write_manifest
from diver.corpus.recording import QC_COLUMNS, RecordingReport, process_recording
from diver.corpus.shards import shard_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusResult:
    """Counts of one ``build_corpus`` call."""

    recordings: int
    processed: int
    skipped: int
    quarantined: int
    windows: int
    out_dir: Path


def _receipt_path(out_dir: Path, source: RecordingSource) -> Path:
    name = source.recording.replace("/", "__") + ".json"
    return out_dir / "receipts" / source.dataset / name


def _fingerprint(source: RecordingSource, dataset: DatasetConfig, corpus: CorpusConfig) -> str:
    """Changes when the input file or any setting that shapes this recording's output does."""
    try:
        stat = source.path.stat()
        file_key = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        file_key = None
    payload = {
        "file": file_key,
        "source": {k: str(v) for k, v in asdict(source).items()},
        "dataset": asdict(dataset) | {"inputs": None},
        "corpus": corpus.fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _is_done(out_dir: Path, source: RecordingSource, fingerprint: str) -> bool:
    receipt = _receipt_path(out_dir, source)
    if not receipt.exists():
        return False
    try:
        data = json.loads(receipt.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if data.get("fingerprint") != fingerprint:
        return False
    if data["qc"]["windows_kept"] > 0:
        return shard_path(out_dir, source.dataset, source.recording).exists()
    return True


def _run_one(
    source: RecordingSource, dataset: DatasetConfig, corpus: CorpusConfig, out_dir: Path
) -> tuple[RecordingSource, RecordingReport]:
    shard = shard_path(out_dir, source.dataset, source.recording)
    shard.unlink(missing_ok=True)  # a changed input or setting: the old shard is stale
    report = process_recording(source, dataset, corpus, out_dir)
    return source, report


def _write_receipt(
    out_dir: Path, source: RecordingSource, fingerprint: str, report: RecordingReport
) -> None:
    body = {"fingerprint": fingerprint, "qc": report.qc, "channels": report.channels}
    write_text_atomic(
        _receipt_path(out_dir, source), json.dumps(body, sort_keys=True, allow_nan=True)
    )


def _prune_stale(out_dir: Path, sources: Iterable[RecordingSource]) -> None:
    """Remove shards and receipts of recordings that are no longer among the inputs."""
    wanted_shards = {shard_path(out_dir, s.dataset, s.recording) for s in sources}
    wanted_receipts = {_receipt_path(out_dir, s) for s in sources}
    for folder, wanted, pattern in (
        (out_dir / "windows", wanted_shards, "*.parquet"),
        (out_dir / "receipts", wanted_receipts, "*.json"),
    ):
        if not folder.exists():
            continue
        for path in sorted(folder.rglob(pattern)):
            if path not in wanted:
                log.info("removing stale %s", path)
                path.unlink()
        for tmp in folder.rglob("*.tmp-*"):
            tmp.unlink()  # left by a killed run
        for sub in sorted(folder.iterdir(), reverse=True):
            if sub.is_dir() and not any(sub.iterdir()):
                shutil.rmtree(sub)


def build_corpus(
    datasets: Iterable[DatasetConfig],
    corpus: CorpusConfig,
    out_dir: Path,
    *,
    jobs: int | None = None,
    progress: bool = True,
) -> CorpusResult:
    """Process every recording of ``datasets`` into ``out_dir`` (see the module docstring)."""
    out_dir = Path(out_dir)
    datasets = list(datasets)
    if not datasets:
        raise ConfigError(
            "no datasets to process: give --input paths or corpus.datasets in the config"
        )
    by_name = {ds.name: ds for ds in datasets}
    sources = [src for ds in datasets for src in discover_recordings(ds)]
    out_dir.mkdir(parents=True, exist_ok=True)
    _prune_stale(out_dir, sources)

    fingerprints = {id(s): _fingerprint(s, by_name[s.dataset], corpus) for s in sources}
    todo = [s for s in sources if not _is_done(out_dir, s, fingerprints[id(s)])]
    skipped = len(sources) - len(todo)
    if skipped:
        log.info("%d of %d recordings already done; skipping them", skipped, len(sources))

    jobs = jobs or corpus.jobs
    bar = tqdm(total=len(todo), desc="corpus", unit="rec", disable=not progress)
    if jobs <= 1 or len(todo) <= 1:
        for source in todo:
            _, report = _run_one(source, by_name[source.dataset], corpus, out_dir)
            _write_receipt(out_dir, source, fingerprints[id(source)], report)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {
                pool.submit(_run_one, s, by_name[s.dataset], corpus, out_dir): s for s in todo
            }
            for future in as_completed(futures):
                source = futures[future]
                _, report = future.result()
                _write_receipt(out_dir, source, fingerprints[id(source)], report)
                bar.update()
    bar.close()

    qc_rows, channel_rows = [], []
    for source in sorted(sources, key=lambda s: (s.dataset, s.recording)):
        data = json.loads(_receipt_path(out_dir, source).read_text())
        qc_rows.append(data["qc"])
        channel_rows.extend(data["channels"])
    qc = pd.DataFrame(qc_rows, columns=QC_COLUMNS)
    write_csv_atomic(out_dir / "qc.csv", qc)
    write_csv_atomic(out_dir / "channels.csv", pd.DataFrame(channel_rows, columns=CHANNEL_COLUMNS))
    write_manifest(out_dir / "manifest.csv", qc, [ds.name for ds in datasets])
    return CorpusResult(
        recordings=len(sources),
        processed=len(todo),
        skipped=skipped,
        quarantined=int((qc["status"] == "quarantined").sum()),
        windows=int(qc["windows_kept"].sum()),
        out_dir=out_dir,
    )


CHANNEL_COLUMNS = [
    "dataset",
    "recording",
    "name_raw",
    "name",
    "type",
    "subtype",
    "x",
    "y",
    "z",
    "coord_frame",
    "status",
    "windows_kept",
    "windows_dropped",
]


def quarantined_recordings(out_dir: Path) -> pd.DataFrame:
    qc = pd.read_csv(Path(out_dir) / "qc.csv")
    return qc[qc["status"] == "quarantined"]


def summary_metrics(out_dir: Path) -> dict[str, Any]:
    """Per-dataset manifest figures flattened for MLflow (``<dataset>.<column>``)."""
    manifest = pd.read_csv(Path(out_dir) / "manifest.csv")
    metrics: dict[str, Any] = {}
    for row in manifest.to_dict("records"):
        for key, value in row.items():
            if key != "dataset" and isinstance(value, int | float):
                metrics[f"{row['dataset']}.{key}"] = float(value)
    return metrics
