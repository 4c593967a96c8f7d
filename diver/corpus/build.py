"""The corpus stage: every recording of every dataset into one Parquet corpus folder.

``build_corpus`` does it in one process.  Spread over jobs (issue 14), the same work
is a plan (:mod:`diver.corpus.plan`), one ``build_chunk`` per chunk, side by side on
any machines, and ``merge_corpus``, with the same output.  The folder's layout,
receipts, scope and locks are :mod:`diver.corpus.folder`'s.  Each receipt carries a
fingerprint of the input file and of every setting that shapes the output; a rerun
skips recordings whose receipt matches, so an interrupted run (or chunk) resumes where
it stopped and finishes with output identical to an uninterrupted one.  A run's scope
is the datasets it builds, so ``--dataset X`` updates X and keeps the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from contextlib import closing
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from diver.atomic import write_text_atomic
from diver.config import ConfigError, CorpusConfig, DatasetConfig
from diver.corpus.content import content_id, is_readable, stat_key
from diver.corpus.discovery import RecordingSource, discover_recordings
from diver.corpus.folder import (
    CorpusError,
    chunk_lock,
    clean_scope,
    dataset_locks,
    merge_tables,
    prune_unlisted_shards,
    read_receipt,
    receipt_path,
    remove_partials,
    stale_files,
    write_receipt,
)
from diver.corpus.plan import CorpusPlan
from diver.corpus.recording import QC_COLUMNS, RecordingReport, process_recording
from diver.corpus.shards import shard_path
from diver.corpus.workers import WorkerDied, run_in_workers

__all__ = ["CorpusError", "CorpusResult", "build_chunk", "build_corpus", "merge_corpus"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CorpusResult:
    """Counts of one ``build_corpus``, ``build_chunk`` or ``merge_corpus`` call (a merge
    processes nothing: every recording counts as already done)."""

    recordings: int
    processed: int
    skipped: int
    quarantined: int
    windows: int
    out_dir: Path
    qc_rejected: int = 0  # recordings whose every window failed QC


def _identify(
    sources: list[RecordingSource], receipts: dict[tuple[str, str], dict[str, Any] | None]
) -> dict[int, dict[str, Any]]:
    """Each recording's content identity (:mod:`diver.corpus.content`), keyed by
    ``id(source)``; the hash cached in its last receipt is reused while its stat key
    holds.  Recordings discovery already found a problem with are not read."""
    identities = {}
    for source in sources:
        if source.problem:
            identities[id(source)] = {"key": stat_key(source.path), "sha256": None}
            continue
        cached = (receipts[source.dataset, source.recording] or {}).get("content")
        identities[id(source)] = content_id(source.path, cached)
    return identities


def _drop_duplicates(
    sources: list[RecordingSource], identities: dict[int, dict[str, Any]]
) -> list[RecordingSource]:
    """Byte-identical recordings are kept once (the first by dataset and recording id);
    each other copy becomes a quarantined row naming the one kept, so one recording
    never enters the corpus as two subjects (a train/validation leak)."""
    first: dict[str, RecordingSource] = {}
    out = []
    for source in sorted(sources, key=lambda s: (s.dataset, s.recording)):
        identity = identities[id(source)]
        sha = identity["sha256"]
        if source.problem or not sha or not is_readable(identity):
            out.append(source)
            continue
        kept = first.setdefault(sha, source)
        if kept is source:
            out.append(source)
            continue
        log.warning(
            "%s/%s has the same bytes as %s/%s; kept once",
            source.dataset, source.recording, kept.dataset, kept.recording,
        )  # fmt: skip
        copy = replace(source, problem=f"duplicate of {kept.dataset}/{kept.recording} (same bytes)")
        identities[id(copy)] = identity
        out.append(copy)
    return out


def _fingerprint(
    source: RecordingSource,
    dataset: DatasetConfig,
    corpus: CorpusConfig,
    identity: dict[str, Any],
) -> str:
    """Changes when the recording's content (or its readability), the source or any
    setting that shapes this recording's output does."""
    payload = {
        "file": identity["sha256"] or identity["key"],
        "source": {k: str(v) for k, v in asdict(source).items()},
        # the settings, not where they came from: naming a preset or writing its values
        # out is the same dataset
        "dataset": asdict(dataset) | {"inputs": None, "preset": None},
        "corpus": corpus.fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _is_done(
    out_dir: Path, source: RecordingSource, fingerprint: str, data: dict[str, Any] | None
) -> bool:
    """Whether the recording's last receipt (``data``) matches and its shard is there."""
    if data is None or data.get("fingerprint") != fingerprint:
        return False
    if data["qc"]["windows_kept"] > 0:
        return shard_path(out_dir, source.dataset, source.recording).exists()
    return True


def _run_one(
    source: RecordingSource, dataset: DatasetConfig, corpus: CorpusConfig, out_dir: Path
) -> RecordingReport:
    shard = shard_path(out_dir, source.dataset, source.recording)
    shard.unlink(missing_ok=True)  # a changed input or setting: the old shard is stale
    return process_recording(source, dataset, corpus, out_dir)


def build_corpus(
    datasets: Iterable[DatasetConfig],
    corpus: CorpusConfig,
    out_dir: Path,
    *,
    jobs: int | None = None,
    progress: bool = True,
    prune: bool = False,
) -> CorpusResult:
    """Process every recording of ``datasets`` into ``out_dir`` and merge the tables, in
    one process: what the plan, chunk and merge steps do spread over jobs.

    ``prune``: delete the files of recordings no longer among these datasets' inputs
    (otherwise their presence is an error).  The counts are this run's datasets'.
    """
    out_dir = Path(out_dir)
    datasets = list(datasets)
    if not datasets:
        raise ConfigError(
            "no datasets to process: give --input paths or corpus.datasets in the config"
        )
    by_name = {ds.name: ds for ds in datasets}
    sources = [src for ds in datasets for src in discover_recordings(ds)]
    out_dir.mkdir(parents=True, exist_ok=True)
    with dataset_locks(out_dir, by_name):
        clean_scope(out_dir, by_name, stale_files(out_dir, by_name, sources), prune)
        processed = _build(sources, by_name, corpus, out_dir, jobs or corpus.jobs, progress)
        qc = merge_tables(out_dir, list(by_name))
    return _result(qc[qc["dataset"].isin(list(by_name))], processed, out_dir)


def build_chunk(
    plan: CorpusPlan,
    chunk: str,
    out_dir: Path,
    *,
    jobs: int | None = None,
    progress: bool = True,
    done: Path | None = None,
) -> CorpusResult:
    """Process the recordings of one chunk of ``plan`` into ``out_dir`` (their shards and
    receipts only; the merge writes the tables), then write ``done`` if given: the
    per-chunk file a workflow waits for.

    Chunks of one dataset may be built side by side (:func:`~diver.corpus.folder.chunk_lock`).
    Byte-identical recordings are kept once within the chunk; copies in other chunks are
    found by the merge.  The counts are the chunk's recordings' as its receipts say.
    """
    out_dir = Path(out_dir)
    part = plan.chunk(chunk)
    sources = part.sources
    out_dir.mkdir(parents=True, exist_ok=True)
    with chunk_lock(out_dir, part.dataset, part.name):
        for source in sources:  # a killed job's leftovers, of this chunk's files only
            remove_partials(shard_path(out_dir, source.dataset, source.recording))
            remove_partials(receipt_path(out_dir, source))
        by_name = {part.dataset: plan.dataset(part.dataset)}
        jobs = jobs or plan.corpus.jobs
        processed = _build(sources, by_name, plan.corpus, out_dir, jobs, progress)
        receipts = [read_receipt(out_dir, s) for s in sources]  # each written by now
    if done is not None:
        recordings = [s.recording for s in sources]
        record = {"chunk": part.name, "dataset": part.dataset, "recordings": recordings}
        write_text_atomic(Path(done), json.dumps(record, indent=1) + "\n")
    rows = [receipt["qc"] for receipt in receipts if receipt is not None]
    return _result(pd.DataFrame(rows, columns=QC_COLUMNS), processed, out_dir)


def merge_corpus(plan: CorpusPlan, out_dir: Path, *, prune: bool = False) -> CorpusResult:
    """qc.csv, channels.csv and manifest.csv of ``out_dir`` from the receipts, once every
    chunk of ``plan`` is built (a CorpusError naming the chunks that are not).

    Byte-identical recordings in different chunks are kept once here (the one-job run's
    rule).  ``prune``: the merge owns the planned datasets' folders, and removes (each
    logged) the files of recordings not in the plan and the shards of the copies it kept
    once, so the folder holds what one ``build_corpus`` run writes.
    """
    out_dir = Path(out_dir)
    names = plan.dataset_names
    sources = plan.sources
    with dataset_locks(out_dir, names):
        _check_built(plan, out_dir)
        clean_scope(out_dir, names, stale_files(out_dir, names, sources), prune)
        qc = merge_tables(out_dir, names)
        if prune:
            prune_unlisted_shards(out_dir, names, qc)
    return _result(qc[qc["dataset"].isin(names)], 0, out_dir)


def _check_built(plan: CorpusPlan, out_dir: Path) -> None:
    """Every planned recording has its receipt; else a CorpusError naming the chunks."""
    missing: dict[str, list[str]] = {}
    for chunk in plan.chunks:
        unbuilt = [s.recording for s in chunk.sources if not receipt_path(out_dir, s).is_file()]
        if unbuilt:
            missing[chunk.name] = unbuilt
    if missing:
        shown = "; ".join(
            f"{name} ({len(recordings)} recording(s) without a receipt, e.g. {recordings[0]})"
            for name, recordings in list(missing.items())[:5]
        )
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CorpusError(
            f"{out_dir}: {len(missing)} chunk(s) of the plan not built: {shown}{more}. Build "
            "each with `diver corpus chunk --plan PLAN --chunk NAME`, then merge again"
        )


def _build(
    sources: list[RecordingSource],
    by_name: dict[str, DatasetConfig],
    corpus: CorpusConfig,
    out_dir: Path,
    jobs: int,
    progress: bool,
) -> int:
    """Process those of ``sources`` whose receipt does not match, under the caller's
    locks; returns how many that was."""
    # Each receipt read once: its cached hash and whether the recording is done.
    last = {(s.dataset, s.recording): read_receipt(out_dir, s) for s in sources}
    identities = _identify(sources, last)
    sources = _drop_duplicates(sources, identities)
    fingerprints = {
        id(s): _fingerprint(s, by_name[s.dataset], corpus, identities[id(s)]) for s in sources
    }
    todo = [
        s
        for s in sources
        if not _is_done(out_dir, s, fingerprints[id(s)], last[s.dataset, s.recording])
    ]
    skipped = len(sources) - len(todo)
    if skipped:
        log.info("%d of %d recordings already done; skipping them", skipped, len(sources))
    receipts = {id(s): (fingerprints[id(s)], identities[id(s)]) for s in sources}
    _process(todo, by_name, corpus, out_dir, receipts, jobs, progress)
    return len(todo)


def _result(qc: pd.DataFrame, processed: int, out_dir: Path) -> CorpusResult:
    """The counts of a run whose recordings' qc rows are ``qc``."""
    return CorpusResult(
        recordings=len(qc),
        processed=processed,
        skipped=len(qc) - processed,
        quarantined=int((qc["status"] == "quarantined").sum()),
        qc_rejected=int((qc["status"] == "qc_rejected").sum()),
        windows=int(qc["windows_kept"].sum()),
        out_dir=out_dir,
    )


def _process(
    todo: list[RecordingSource],
    by_name: dict[str, DatasetConfig],
    corpus: CorpusConfig,
    out_dir: Path,
    receipts: dict[int, tuple[str, dict[str, Any]]],
    jobs: int,
    progress: bool,
) -> None:
    """Process ``todo``, writing each recording's receipt once its shard is in place.

    With ``jobs`` > 1 in worker processes (:mod:`diver.corpus.workers`): a recording
    whose worker dies on it (out of memory, a crash) is quarantined and the rest go on.
    """
    bar = tqdm(total=len(todo), desc="corpus", unit="rec", disable=not progress)

    def finished(source: RecordingSource, report: RecordingReport) -> None:
        fingerprint, identity = receipts[id(source)]
        write_receipt(out_dir, source, fingerprint, report, identity)
        bar.update()

    if jobs <= 1 or len(todo) <= 1:
        for source in todo:
            finished(source, _run_one(source, by_name[source.dataset], corpus, out_dir))
    else:
        tasks = [(s, by_name[s.dataset], corpus, out_dir) for s in todo]
        with closing(run_in_workers(_run_one, tasks, jobs)) as outcomes:
            for index, outcome in outcomes:
                source = todo[index]
                if isinstance(outcome, WorkerDied):
                    report = _worker_died(source, outcome, by_name[source.dataset], corpus, out_dir)
                else:
                    report = outcome
                finished(source, report)
    bar.close()


def _worker_died(
    source: RecordingSource,
    died: WorkerDied,
    dataset: DatasetConfig,
    corpus: CorpusConfig,
    out_dir: Path,
) -> RecordingReport:
    """The quarantined row of a recording whose worker died on it (the OOM killer, a crash
    in a reader), made as any other quarantine is, so that its receipt keeps every rerun
    from dying on it again until the file or a setting changes.  What the worker had
    written goes: no shard is left of a quarantined recording (the dataset is locked, so
    no other run is writing it)."""
    shard = shard_path(out_dir, source.dataset, source.recording)
    shard.unlink(missing_ok=True)
    remove_partials(shard)
    return process_recording(replace(source, problem=died.reason), dataset, corpus, out_dir)
