"""The corpus folder's bookkeeping: receipts, scope, locks and the merged tables.

Layout of a corpus folder::

    windows/<dataset>/<recording>.parquet   one shard per recording (kept windows)
    receipts/<dataset>/<recording>.json     what processing that recording produced
    qc.csv  channels.csv  manifest.csv      merged from the receipts

A receipt is written (atomically) only after its shard is in place, so a receipt
means its recording is done; the tables are merged from the receipts of every dataset
in the folder, whichever run wrote them.  A run (:mod:`diver.corpus.build`) has the
datasets it builds as its scope and never touches another dataset's files.  Files of a
dataset in scope whose recording is no longer among its inputs are an error unless
``prune`` is given, and then each is logged as it is removed.  Each dataset is locked
for the run (``.locks/<dataset>.lock``): a second run over the same dataset is refused,
runs over other datasets go on.  A chunk's job shares its dataset's lock with the other
chunks of that dataset and holds its own (``.locks/chunks/<chunk>.lock``).
"""

from __future__ import annotations

import fcntl
import glob
import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import pandas as pd

from diver.atomic import write_csv_atomic, write_text_atomic
from diver.corpus.content import is_readable
from diver.corpus.discovery import UNREADABLE, RecordingSource
from diver.corpus.manifest import write_manifest
from diver.corpus.recording import QC_COLUMNS, RecordingReport, quarantined_row
from diver.corpus.shards import listed_shards, recording_stem, shard_path
from diver.errors import DiverError

log = logging.getLogger(__name__)


def receipt_path(out_dir: Path, source: RecordingSource) -> Path:
    name = recording_stem(source.recording) + ".json"
    return out_dir / "receipts" / source.dataset / name


def read_receipt(out_dir: Path, source: RecordingSource) -> dict[str, Any] | None:
    try:
        return json.loads(receipt_path(out_dir, source).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_receipt(
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
        receipt_path(out_dir, source), json.dumps(body, sort_keys=True, allow_nan=True)
    )


class CorpusError(DiverError, RuntimeError):
    """The corpus folder cannot be built as asked; the message says why."""


def stale_files(
    out_dir: Path, names: Iterable[str], sources: Iterable[RecordingSource]
) -> list[Path]:
    """Shards and receipts of the named datasets whose recording is no longer an input.

    Files under a folder that could not be listed this time are not stale: their
    recordings may well still be there (the folder is a quarantined row instead).
    """
    sources = list(sources)
    wanted = {shard_path(out_dir, s.dataset, s.recording) for s in sources}
    wanted |= {receipt_path(out_dir, s) for s in sources}
    hidden = [
        (s.dataset, recording_stem(s.recording) + "__")
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


def clean_scope(out_dir: Path, names: Iterable[str], stale: list[Path], prune: bool) -> None:
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


def remove_partials(path: Path) -> None:
    """Remove what killed writers left of ``path`` (its ``*.tmp-<pid>`` temporaries)."""
    for tmp in path.parent.glob(f"{glob.escape(path.name)}.tmp-*"):
        tmp.unlink(missing_ok=True)


def _locked(handle: IO[str], *, exclusive: bool) -> bool:
    """Lock ``handle``'s file without waiting; False when another run holds it."""
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def dataset_locks(out_dir: Path, names: Iterable[str]) -> Iterator[None]:
    """Exclusive locks on the named datasets of ``out_dir`` for one run or merge (not
    waiting): refused while any run, chunk or merge holds one of them."""
    locks = out_dir / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        for name in sorted(set(names)):
            handle = stack.enter_context((locks / f"{name}.lock").open("w"))
            if not _locked(handle, exclusive=True):
                raise CorpusError(
                    f"{out_dir}: another `diver corpus` is building dataset {name!r} into this "
                    "folder; wait for it to finish (runs over other datasets may go side by side)"
                )
        yield


@contextmanager
def chunk_lock(out_dir: Path, dataset: str, chunk: str) -> Iterator[None]:
    """The locks of one chunk's job (not waiting): shared on its dataset, so chunks of one
    dataset go side by side while a whole-dataset run or a merge of it waits for them
    all; exclusive on the chunk (``.locks/chunks/<chunk>.lock``), so the same chunk is
    never built twice at once."""
    locks = out_dir / ".locks"
    (locks / "chunks").mkdir(parents=True, exist_ok=True)
    with (
        (locks / f"{dataset}.lock").open("w") as shared,
        (locks / "chunks" / f"{chunk}.lock").open("w") as own,
    ):
        if not _locked(shared, exclusive=False):
            raise CorpusError(
                f"{out_dir}: another `diver corpus` is building or merging dataset {dataset!r} "
                f"in this folder; wait for it to finish before building chunk {chunk!r}"
            )
        if not _locked(own, exclusive=True):
            raise CorpusError(
                f"{out_dir}: another `diver corpus chunk` is building chunk {chunk!r} into this "
                "folder; wait for it to finish (other chunks may go side by side)"
            )
        yield


def prune_unlisted_shards(out_dir: Path, names: Iterable[str], qc: pd.DataFrame) -> None:
    """Remove (each logged) the shards of the named datasets that the merged tables ``qc``
    leave out of the corpus: copies of a recording kept once, built by a chunk that could
    not know the original was in another.  Their receipts stay, so the merge still finds
    them built (a rerun of their chunk processes them again, and a merge removes them)."""
    listed = listed_shards(out_dir, qc)
    for name in names:
        for shard in sorted((out_dir / "windows" / name).glob("*.parquet")):
            if shard not in listed:
                log.warning("--prune: removing %s (not in the corpus, see qc.csv)", shard)
                shard.unlink()


def merge_tables(out_dir: Path, names: list[str]) -> pd.DataFrame:
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
        found = kept_once(found)
        qc = pd.DataFrame([data["qc"] for data in found], columns=QC_COLUMNS)
        channels = pd.DataFrame(
            [row for data in found for row in data["channels"]], columns=CHANNEL_COLUMNS
        )
        write_csv_atomic(out_dir / "qc.csv", qc)
        write_csv_atomic(out_dir / "channels.csv", channels)
        order = names + [name for name in present if name not in names]
        write_manifest(out_dir / "manifest.csv", qc, order)
    return qc


def kept_once(receipts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The receipts (sorted by dataset and recording) as the corpus tables show them:
    of recordings with the same bytes only the first is in the corpus, the others are
    quarantined rows naming it, without channel rows.

    The same rule as :func:`_drop_duplicates` within one run, applied here to every
    dataset in the folder: datasets built by separate runs (chunks of one corpus) meet
    only in this step, and the tables must not depend on how the corpus was split.  A
    shard of such a copy, written by another run, is left alone here (never deleted
    behind that run's back); the corpus index reads qc.csv and leaves it out, and a
    merge that owns the folder removes it (:func:`prune_unlisted_shards`).
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
