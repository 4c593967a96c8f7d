"""The corpus stage: every recording of every dataset into one Parquet corpus folder.

Layout of ``out``::

    windows/<dataset>/<recording>.parquet   one shard per recording (kept windows)
    receipts/<dataset>/<recording>.json     what processing that recording produced
    qc.csv  channels.csv  manifest.csv      merged from the receipts

A receipt is written (atomically) only after its shard is in place, and carries a
fingerprint of the input file and of every setting that shapes the output; a rerun
skips recordings whose receipt matches, so an interrupted run resumes where it
stopped and finishes with output identical to an uninterrupted one.

A run's scope is the datasets it builds: it never touches another dataset's files, so
``--dataset X`` updates X and keeps the rest, and the tables are merged from the
receipts of every dataset in the folder.  Files of a dataset in scope whose recording
is no longer among its inputs are an error unless ``prune`` is given, and then each is
logged as it is removed.  Each dataset is locked for the run (``.locks/<dataset>.lock``):
a second run over the same dataset is refused, runs over other datasets go on.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, closing, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from diver.atomic import write_csv_atomic, write_text_atomic
from diver.config import ConfigError, CorpusConfig, DatasetConfig
from diver.corpus.content import content_id, is_readable, stat_key
from diver.corpus.discovery import UNREADABLE, RecordingSource, discover_recordings
from diver.corpus.manifest import write_manifest
from diver.corpus.recording import (
    QC_COLUMNS,
    RecordingReport,
    process_recording,
    quarantined_row,
)
from diver.corpus.shards import shard_path
from diver.corpus.workers import WorkerDied, run_in_workers
from diver.errors import DiverError

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
    qc_rejected: int = 0  # recordings whose every window failed QC


def _receipt_path(out_dir: Path, source: RecordingSource) -> Path:
    name = source.recording.replace("/", "__") + ".json"
    return out_dir / "receipts" / source.dataset / name


def _read_receipt(out_dir: Path, source: RecordingSource) -> dict[str, Any] | None:
    try:
        return json.loads(_receipt_path(out_dir, source).read_text())
    except (OSError, json.JSONDecodeError):
        return None


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
        "dataset": asdict(dataset) | {"inputs": None},
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
) -> tuple[RecordingSource, RecordingReport]:
    shard = shard_path(out_dir, source.dataset, source.recording)
    shard.unlink(missing_ok=True)  # a changed input or setting: the old shard is stale
    report = process_recording(source, dataset, corpus, out_dir)
    return source, report


def _receipt_of(
    receipts: dict[int, tuple[str, dict[str, Any]]],
    source: RecordingSource,
    report: RecordingReport,
) -> tuple[str, RecordingReport, dict[str, Any]]:
    fingerprint, identity = receipts[id(source)]
    return fingerprint, report, identity


def _write_receipt(
    out_dir: Path,
    source: RecordingSource,
    fingerprint: str,
    report: RecordingReport,
    identity: dict[str, Any],
) -> None:
    body = {
        "fingerprint": fingerprint,
        "content": identity,
        "qc": report.qc,
        "channels": report.channels,
    }
    write_text_atomic(
        _receipt_path(out_dir, source), json.dumps(body, sort_keys=True, allow_nan=True)
    )


class CorpusError(DiverError, RuntimeError):
    """The corpus folder cannot be built as asked; the message says why."""


def _stale_files(
    out_dir: Path, names: Iterable[str], sources: Iterable[RecordingSource]
) -> list[Path]:
    """Shards and receipts of the named datasets whose recording is no longer an input.

    Files under a folder that could not be listed this time are not stale: their
    recordings may well still be there (the folder is a quarantined row instead).
    """
    sources = list(sources)
    wanted = {shard_path(out_dir, s.dataset, s.recording) for s in sources}
    wanted |= {_receipt_path(out_dir, s) for s in sources}
    hidden = [
        (s.dataset, s.recording.replace("/", "__") + "__")
        for s in sources
        if s.problem.startswith(UNREADABLE)
    ]
    stale = []
    for name in names:
        for folder, pattern in (("windows", "*.parquet"), ("receipts", "*.json")):
            for path in sorted((out_dir / folder / name).glob(pattern)):
                if path in wanted or any(
                    name == ds and path.name.startswith(prefix) for ds, prefix in hidden
                ):
                    continue
                stale.append(path)
    return stale


def _clean_scope(out_dir: Path, names: Iterable[str], stale: list[Path], prune: bool) -> None:
    """Remove ``stale`` (only with ``prune``) and the temporaries a killed run of these
    datasets left; nothing outside their folders."""
    if stale and not prune:
        shown = ", ".join(str(p.relative_to(out_dir)) for p in stale[:5])
        more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
        raise CorpusError(
            f"{out_dir}: {len(stale)} file(s) of recordings no longer among the inputs: "
            f"{shown}{more}. Rerun with --prune to delete them, or restore the inputs"
        )
    for path in stale:
        log.warning("--prune: removing %s", path)
        path.unlink()
    for name in names:
        for folder in (out_dir / "windows" / name, out_dir / "receipts" / name):
            for tmp in folder.glob("*.tmp-*"):
                tmp.unlink()  # left by a killed run of this dataset


@contextmanager
def _dataset_locks(out_dir: Path, names: Iterable[str]) -> Iterator[None]:
    """Exclusive locks on the named datasets of ``out_dir`` for one run (not waiting)."""
    locks = out_dir / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for name in sorted(set(names)):
            handle = stack.enter_context((locks / f"{name}.lock").open("w"))
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise CorpusError(
                    f"{out_dir}: another `diver corpus` is building dataset {name!r} into this "
                    "folder; wait for it to finish (runs over other datasets may go side by side)"
                ) from exc
        yield


def _merge_tables(out_dir: Path, names: list[str]) -> pd.DataFrame:
    """qc.csv, channels.csv and manifest.csv from the receipts of every dataset in the
    folder (rows by dataset and recording; the manifest lists ``names`` first), under a
    folder lock so concurrent runs over different datasets cannot interleave writes."""
    receipts = out_dir / "receipts"
    present = sorted(p.name for p in receipts.iterdir() if p.is_dir()) if receipts.is_dir() else []
    with (out_dir / ".locks" / "tables.lock").open("w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        found = [
            json.loads(path.read_text())
            for name in present
            for path in (receipts / name).glob("*.json")
        ]
        found.sort(key=lambda data: (data["qc"]["dataset"], data["qc"]["recording"]))
        found = _kept_once(found)
        qc = pd.DataFrame([data["qc"] for data in found], columns=QC_COLUMNS)
        channels = pd.DataFrame(
            [row for data in found for row in data["channels"]], columns=CHANNEL_COLUMNS
        )
        write_csv_atomic(out_dir / "qc.csv", qc)
        write_csv_atomic(out_dir / "channels.csv", channels)
        order = names + [name for name in present if name not in names]
        write_manifest(out_dir / "manifest.csv", qc, order)
    return qc


def _kept_once(receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The receipts (sorted by dataset and recording) as the corpus tables show them:
    of recordings with the same bytes only the first is in the corpus, the others are
    quarantined rows naming it, without channel rows.

    The same rule as :func:`_drop_duplicates` within one run, applied here to every
    dataset in the folder: datasets built by separate runs (chunks of one corpus) meet
    only in this step, and the tables must not depend on how the corpus was split.  A
    shard of such a copy, written by another run, is left alone (never deleted behind
    that run's back); the corpus index reads qc.csv and leaves it out.
    """
    first: dict[str, str] = {}
    out = []
    for data in receipts:
        qc, sha = data["qc"], (data.get("content") or {}).get("sha256")
        name = f"{qc['dataset']}/{qc['recording']}"
        if not sha or not is_readable(data["content"]) or first.setdefault(sha, name) == name:
            out.append(data)
            continue
        reason = f"duplicate of {first[sha]} (same bytes)"
        if qc["reason"] != reason:  # not already found within one run
            log.warning("%s has the same bytes as %s; kept once", name, first[sha])
        out.append({**data, "qc": quarantined_row(qc, reason), "channels": []})
    for data in out:
        qc = data["qc"]
        kept = str(qc["reason"]).removeprefix("duplicate of ").removesuffix(" (same bytes)")
        if kept != qc["reason"] and kept not in first.values():
            log.warning(
                "%s/%s is quarantined as a duplicate of %s, which is no longer in the "
                "corpus: rebuild dataset %s",
                qc["dataset"], qc["recording"], kept, qc["dataset"],
            )  # fmt: skip
    return out


def build_corpus(
    datasets: Iterable[DatasetConfig],
    corpus: CorpusConfig,
    out_dir: Path,
    *,
    jobs: int | None = None,
    progress: bool = True,
    prune: bool = False,
) -> CorpusResult:
    """Process every recording of ``datasets`` into ``out_dir`` (see the module docstring).

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
    with _dataset_locks(out_dir, by_name):
        _clean_scope(out_dir, by_name, _stale_files(out_dir, by_name, sources), prune)
        # Each receipt read once: its cached hash and whether the recording is done.
        last = {(s.dataset, s.recording): _read_receipt(out_dir, s) for s in sources}
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
        _process(todo, by_name, corpus, out_dir, receipts, jobs or corpus.jobs, progress)
        qc = _merge_tables(out_dir, list(by_name))
    mine = qc[qc["dataset"].isin(list(by_name))]
    return CorpusResult(
        recordings=len(sources),
        processed=len(todo),
        skipped=skipped,
        quarantined=int((mine["status"] == "quarantined").sum()),
        qc_rejected=int((mine["status"] == "qc_rejected").sum()),
        windows=int(mine["windows_kept"].sum()),
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
    if jobs <= 1 or len(todo) <= 1:
        for source in todo:
            _, report = _run_one(source, by_name[source.dataset], corpus, out_dir)
            _write_receipt(out_dir, source, *_receipt_of(receipts, source, report))
            bar.update()
    else:
        tasks = [(s, by_name[s.dataset], corpus, out_dir) for s in todo]
        with closing(run_in_workers(_run_one, tasks, jobs)) as outcomes:
            for index, outcome in outcomes:
                source = todo[index]
                if isinstance(outcome, WorkerDied):
                    report = _worker_died(source, outcome, by_name[source.dataset], corpus, out_dir)
                else:
                    _, report = outcome
                _write_receipt(out_dir, source, *_receipt_of(receipts, source, report))
                bar.update()
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
    for partial in shard.parent.glob(f"{glob.escape(shard.name)}.tmp-*"):
        partial.unlink()
    return process_recording(replace(source, problem=died.reason), dataset, corpus, out_dir)


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
