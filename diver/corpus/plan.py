"""The corpus plan: a study's recordings split into chunks, one corpus job each (issue 14).

One job over a 60k-hour corpus cannot spread over a cluster's nodes.  The plan lists
every recording of every dataset (the one-job run's discovery,
:func:`~diver.corpus.discovery.discover_recordings`) and splits each dataset's
recordings, in recording order, into chunks of at most ``corpus.chunk_hours``
recording-hours (a longer recording is a chunk of its own).  A recording's hours come
from its file header, which MNE reads without the data (``n_times / sfreq``); a file
whose header cannot be read is counted by its size, at the bytes-per-hour of its
dataset's readable files.  Such a file is quarantined in seconds, so its estimate only
decides which chunk it lands in.

The plan carries the corpus settings, the datasets and every recording as discovered,
so each chunk job (:func:`diver.corpus.build.build_chunk`) and the merge
(:func:`diver.corpus.build.merge_corpus`) build exactly what was planned, with no config
of their own and no second walk of the inputs.  It is written atomically as JSON, and
the same inputs and settings give the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from diver.atomic import write_text_atomic
from diver.config import ConfigError, CorpusConfig, DatasetConfig, QCConfig
from diver.corpus.content import recording_bytes
from diver.corpus.discovery import RecordingSource, discover_recordings
from diver.corpus.folder import CorpusError
from diver.corpus.recording import Quarantine, read_raw

PLAN_VERSION = 1
# Bytes per recording-hour when no header of a dataset can be read: 64 channels of
# 16-bit samples at 256 Hz, a common clinical EEG.
DEFAULT_BYTES_PER_HOUR = 64 * 256 * 2 * 3600
# RecordingSource fields that are paths (the others are strings or None).
_PATH_FIELDS = ("path", "channels_tsv", "electrodes_tsv", "coordsystem_json")


@dataclass(frozen=True)
class PlannedRecording:
    """A recording as discovered, with its estimated length.

    ``estimate`` says where ``hours`` came from: ``header``, ``size`` (the header could
    not be read) or ``none`` (discovery found a problem: it is quarantined unread).
    """

    source: RecordingSource
    hours: float
    estimate: str


@dataclass(frozen=True)
class Chunk:
    """Consecutive recordings of one dataset, built by one job."""

    name: str
    dataset: str
    recordings: tuple[PlannedRecording, ...]

    @property
    def hours(self) -> float:
        return sum(r.hours for r in self.recordings)

    @property
    def sources(self) -> list[RecordingSource]:
        return [r.source for r in self.recordings]


@dataclass(frozen=True)
class CorpusPlan:
    """The corpus settings (``corpus.datasets``: the planned datasets) and the chunks."""

    corpus: CorpusConfig
    chunks: tuple[Chunk, ...]

    @property
    def dataset_names(self) -> list[str]:
        return [ds.name for ds in self.corpus.datasets]

    @property
    def sources(self) -> list[RecordingSource]:
        return [source for chunk in self.chunks for source in chunk.sources]

    def dataset(self, name: str) -> DatasetConfig:
        return next(ds for ds in self.corpus.datasets if ds.name == name)

    def chunk(self, name: str) -> Chunk:
        """The chunk called ``name``; a CorpusError listing the plan's chunks if none is."""
        for chunk in self.chunks:
            if chunk.name == name:
                return chunk
        names = [c.name for c in self.chunks]
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise CorpusError(f"the corpus plan has no chunk {name!r}; its chunks: {shown or 'none'}")

    def to_json(self) -> str:
        data = {
            "version": PLAN_VERSION,
            "corpus": asdict(self.corpus),
            "chunks": [
                {
                    "name": chunk.name,
                    "dataset": chunk.dataset,
                    "hours": chunk.hours,
                    "recordings": [_recording_json(r) for r in chunk.recordings],
                }
                for chunk in self.chunks
            ],
        }
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CorpusPlan:
        data = json.loads(text)
        if data.get("version") != PLAN_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {PLAN_VERSION}")
        chunks = tuple(
            Chunk(
                name=chunk["name"],
                dataset=chunk["dataset"],
                recordings=tuple(_recording_from_json(r) for r in chunk["recordings"]),
            )
            for chunk in data["chunks"]
        )
        return cls(corpus=_corpus_from_json(data["corpus"]), chunks=chunks)

    def write(self, path: Path) -> None:
        write_text_atomic(Path(path), self.to_json())

    @classmethod
    def read(cls, path: Path) -> CorpusPlan:
        """The plan in ``path``; a CorpusError naming the file when it is not one."""
        try:
            return cls.from_json(Path(path).read_text())
        except FileNotFoundError as exc:
            raise CorpusError(
                f"corpus plan {path} not found: write it with `diver corpus plan`"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise CorpusError(
                f"{path} is not a corpus plan of this diver ({type(exc).__name__}: {exc}); "
                "write it again with `diver corpus plan`"
            ) from exc


def make_plan(corpus: CorpusConfig) -> CorpusPlan:
    """Discover the recordings of ``corpus.datasets`` and split them into chunks."""
    if not corpus.datasets:
        raise ConfigError(
            "no datasets to plan: give --input paths or corpus.datasets in the config"
        )
    chunks: list[Chunk] = []
    for dataset in corpus.datasets:
        recordings = estimate_hours(discover_recordings(dataset))
        chunks += split_chunks(dataset.name, recordings, corpus.chunk_hours)
    return CorpusPlan(corpus=corpus, chunks=tuple(chunks))


def header_hours(source: RecordingSource) -> float | None:
    """The recording's length from its header (None when no reader can open it)."""
    try:
        raw = read_raw(source.path)
    except Quarantine:
        return None
    return raw.n_times / float(raw.info["sfreq"]) / 3600.0


def estimate_hours(sources: Sequence[RecordingSource]) -> list[PlannedRecording]:
    """Each recording's hours: from its header, else from its size at the rate of the
    dataset's readable recordings (``DEFAULT_BYTES_PER_HOUR`` when none is readable)."""
    hours = {id(s): None if s.problem else header_hours(s) for s in sources}
    sizes = {id(s): recording_bytes(s.path) for s in sources if not s.problem}
    read_hours = sum(h for h in hours.values() if h is not None)
    read_bytes = sum(sizes[key] for key, h in hours.items() if h is not None)
    bytes_per_hour = read_bytes / read_hours if read_hours > 0 else DEFAULT_BYTES_PER_HOUR
    planned = []
    for source in sources:
        if source.problem:
            planned.append(PlannedRecording(source, 0.0, "none"))
        elif hours[id(source)] is None:
            planned.append(PlannedRecording(source, sizes[id(source)] / bytes_per_hour, "size"))
        else:
            planned.append(PlannedRecording(source, hours[id(source)], "header"))
    return planned


def split_chunks(
    dataset: str, recordings: Sequence[PlannedRecording], chunk_hours: float
) -> list[Chunk]:
    """``recordings`` (in order) in consecutive chunks of at most ``chunk_hours`` hours (a
    longer recording alone), named ``<dataset>-000``, ``<dataset>-001``, ...: unique
    across datasets, since what follows the last ``-`` is the number, the rest the
    dataset."""
    groups: list[list[PlannedRecording]] = []
    total = 0.0
    for recording in recordings:
        if not groups or total + recording.hours > chunk_hours:
            groups.append([])
            total = 0.0
        groups[-1].append(recording)
        total += recording.hours
    width = max(3, len(str(len(groups) - 1)))
    return [
        Chunk(name=f"{dataset}-{i:0{width}d}", dataset=dataset, recordings=tuple(group))
        for i, group in enumerate(groups)
    ]


def chunk_names(path: Path) -> list[str]:
    """The chunk names of the plan in ``path`` (for the workflow, without building it)."""
    return [chunk["name"] for chunk in json.loads(Path(path).read_text())["chunks"]]


def _recording_json(recording: PlannedRecording) -> dict[str, Any]:
    source = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(recording.source).items()}
    return {**source, "hours": recording.hours, "estimate": recording.estimate}


def _recording_from_json(data: dict[str, Any]) -> PlannedRecording:
    fields = {k: v for k, v in data.items() if k not in ("hours", "estimate")}
    for key in _PATH_FIELDS:
        if fields[key] is not None:
            fields[key] = Path(fields[key])
    return PlannedRecording(RecordingSource(**fields), data["hours"], data["estimate"])


def _corpus_from_json(data: dict[str, Any]) -> CorpusConfig:
    """The corpus settings as ``asdict`` wrote them (validated when the config was read)."""
    datasets = tuple(
        DatasetConfig(**{**ds, "inputs": tuple(ds["inputs"])}) for ds in data["datasets"]
    )
    return CorpusConfig(**{**data, "qc": QCConfig(**data["qc"]), "datasets": datasets})
