"""``diver datasets check``: what each configured dataset holds, from file headers only.

Before committing a cluster to a 60k-hour corpus build, a user wants to know that the
config points at the right folders and types the channels right: how many recordings
each dataset finds, which files cannot be opened and why, the sampling rates, how
many subjects the ``subject_pattern`` finds (and how many recordings fell back to
being their own subject), which channel types the typing rules give (so a missed EOG
label shows up as ``eeg``), and how many hours of whole windows the build would cut.

Everything comes from discovery (:func:`~diver.corpus.discovery.discover_recordings`)
and each recording's header, opened lazily (:func:`~diver.corpus.recording.read_raw`,
``preload=False``): no sample is read, so a survey costs milliseconds per file.  The
channel typing is the corpus stage's own (:func:`~diver.corpus.channels.describe_channels`),
and the window count its formula, so the numbers are what ``diver corpus`` would
produce before QA/QC drops anything.

A dataset whose input folder does not exist is not an exception here: it is a row with
zero recordings and the reason in ``error``, so one missing corpus does not hide the
survey of the others (the command then exits non-zero).
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.channels import describe_channels
from diver.corpus.discovery import RecordingSource, discover_recordings
from diver.corpus.recording import Quarantine, read_raw


@dataclass(frozen=True)
class RecordingSurvey:
    """One recording as its header describes it.

    ``windows`` is the number of whole corpus windows the build would cut (before QA/QC)
    -- zero, with ``note`` saying why, when the build would keep none (no neural
    channel, a rate below ``min_sfreq``, shorter than a window).  ``reason`` is set
    (and everything else empty) when the file cannot be opened.
    """

    dataset: str
    recording: str
    path: str
    subject: str
    subject_source: str
    readable: bool
    reason: str = ""
    sfreq: float | None = None
    duration_s: float = 0.0
    windows: int = 0
    note: str = ""
    channel_types: dict[str, int] = field(default_factory=dict)
    channels_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetSurvey:
    """One dataset: its recordings and their totals."""

    dataset: str
    preset: str | None
    inputs: tuple[str, ...]
    window_seconds: float
    recordings: tuple[RecordingSurvey, ...] = ()
    error: str = ""

    @property
    def readable(self) -> list[RecordingSurvey]:
        return [r for r in self.recordings if r.readable]

    @property
    def unreadable(self) -> list[RecordingSurvey]:
        return [r for r in self.recordings if not r.readable]

    @property
    def subjects(self) -> int:
        """Distinct subjects among the readable recordings."""
        return len({r.subject for r in self.readable})

    @property
    def hours(self) -> float:
        """Recorded hours of the readable recordings."""
        return sum(r.duration_s for r in self.readable) / 3600.0

    @property
    def windows(self) -> int:
        return sum(r.windows for r in self.recordings)

    @property
    def window_hours(self) -> float:
        """Hours of whole windows the build would cut (before QA/QC)."""
        return self.windows * self.window_seconds / 3600.0

    def sfreqs(self) -> dict[float, int]:
        """Sampling rate (Hz) -> recordings at it."""
        return dict(sorted(Counter(r.sfreq for r in self.readable if r.sfreq).items()))

    def channel_types(self) -> dict[str, int]:
        """Channel type -> channels of that type over the readable recordings."""
        total: Counter[str] = Counter()
        for r in self.readable:
            total.update(r.channel_types)
        return dict(sorted(total.items()))

    def subject_sources(self) -> dict[str, int]:
        """Where subjects came from (bids / pattern / recording) -> recordings."""
        return dict(sorted(Counter(r.subject_source for r in self.recordings).items()))

    def summary(self) -> dict[str, Any]:
        """The dataset's totals as plain types (the JSON output, without recordings)."""
        return {
            "dataset": self.dataset,
            "preset": self.preset,
            "inputs": list(self.inputs),
            "error": self.error,
            "recordings": len(self.recordings),
            "readable": len(self.readable),
            "unreadable": len(self.unreadable),
            "subjects": self.subjects,
            "subject_sources": self.subject_sources(),
            "hours": self.hours,
            "windows": self.windows,
            "window_hours": self.window_hours,
            "sfreqs": {f"{k:g}": v for k, v in self.sfreqs().items()},
            "channel_types": self.channel_types(),
            "channels_kept": sum(r.channels_kept for r in self.readable),
        }


def survey_recording(
    source: RecordingSource, dataset: DatasetConfig, corpus: CorpusConfig
) -> RecordingSurvey:
    """One recording's header: rate, length, channel types, the windows it would give.

    Never raises for a bad file: an unreadable one comes back with ``readable`` False
    and the reader's message (as the corpus stage would quarantine it).
    """
    base = {
        "dataset": source.dataset,
        "recording": source.recording,
        "path": str(source.path),
        "subject": source.subject,
        "subject_source": source.subject_source,
    }
    if source.problem:
        return RecordingSurvey(**base, readable=False, reason=source.problem)
    try:
        raw = read_raw(source.path)
    except Quarantine as exc:
        return RecordingSurvey(**base, readable=False, reason=str(exc))
    try:
        sfreq = float(raw.info["sfreq"])
        n_times = int(raw.n_times)
        infos = describe_channels(raw.ch_names, raw.get_channel_types(), source, dataset)
    except Exception as exc:  # a header that opens but cannot be described
        return RecordingSurvey(
            **base, readable=False, reason=f"unreadable header: {type(exc).__name__}: {exc}"
        )
    finally:
        _close(raw)
    kept = sum(ch.neural for ch in infos)
    windows, note = _windows(n_times, sfreq, kept, corpus)
    return RecordingSurvey(
        **base,
        readable=True,
        sfreq=sfreq,
        duration_s=n_times / sfreq if sfreq > 0 else 0.0,
        windows=windows,
        note=note,
        channel_types=dict(sorted(Counter(ch.type for ch in infos).items())),
        channels_kept=kept,
        dropped=dict(sorted(Counter(ch.drop_reason for ch in infos if ch.drop_reason).items())),
    )


def _windows(n_times: int, sfreq: float, kept: int, corpus: CorpusConfig) -> tuple[int, str]:
    """Whole windows as :func:`diver.corpus.recording.process_recording` counts them
    (samples after resampling to ``corpus.sfreq``, floored), or 0 and why not."""
    if kept == 0:
        return 0, "no neural channels"
    if sfreq < corpus.min_sfreq:
        return 0, f"sampling rate {sfreq:g} Hz below min_sfreq {corpus.min_sfreq:g} Hz"
    windows = math.floor(n_times * corpus.sfreq / sfreq) // corpus.window_samples
    if windows == 0:
        return 0, f"shorter than one {corpus.window_seconds:g} s window"
    return windows, ""


def _close(raw: Any) -> None:
    """Release a lazily opened file (NWB keeps its HDF5 file open)."""
    close = getattr(raw, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):  # closing must not fail a readable header
            close()


def _survey_task(args: tuple[RecordingSource, DatasetConfig, CorpusConfig]) -> RecordingSurvey:
    return survey_recording(*args)


def _surveyed(
    tasks: list[tuple[RecordingSource, DatasetConfig, CorpusConfig]], jobs: int
) -> Iterator[RecordingSurvey]:
    """Each task's survey, in order; with ``jobs`` > 1 in worker processes (headers are
    read by Python code, so threads would not help)."""
    if jobs <= 1 or len(tasks) <= 1:
        yield from map(_survey_task, tasks)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        yield from pool.map(_survey_task, tasks, chunksize=max(1, len(tasks) // (jobs * 8)))


def survey_datasets(
    datasets: Iterable[DatasetConfig],
    corpus: CorpusConfig,
    *,
    jobs: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[DatasetSurvey]:
    """Survey every dataset; ``progress(dataset, done, total)`` is called once its
    inputs are walked (``done`` 0) and after each recording."""
    out = []
    for dataset in datasets:
        common = {
            "dataset": dataset.name,
            "preset": dataset.preset,
            "inputs": dataset.inputs,
            "window_seconds": corpus.window_seconds,
        }
        try:
            sources = discover_recordings(dataset)
        except (FileNotFoundError, OSError) as exc:
            out.append(DatasetSurvey(**common, error=str(exc)))
            continue
        if progress is not None:
            progress(dataset.name, 0, len(sources))
        rows = []
        for row in _surveyed([(s, dataset, corpus) for s in sources], jobs):
            rows.append(row)
            if progress is not None:
                progress(dataset.name, len(rows), len(sources))
        out.append(DatasetSurvey(**common, recordings=tuple(rows)))
    return out


# --- output ---------------------------------------------------------------------------


def to_json(surveys: Sequence[DatasetSurvey], *, recordings: bool = True) -> dict[str, Any]:
    """The survey as plain types: each dataset's totals, and its recordings if asked."""
    return {
        "datasets": [
            s.summary()
            | ({"recording_details": [asdict(r) for r in s.recordings]} if recordings else {})
            for s in surveys
        ]
    }


def _counts(counts: dict[Any, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def format_table(surveys: Sequence[DatasetSurvey], *, recordings: bool = False) -> str:
    """A terminal table: one line per dataset, then what needs a look (missing inputs,
    unreadable files, recordings that give no window), and per recording if asked."""
    header = ("dataset", "recs", "bad", "subjects", "hours", "win_hours", "windows", "sfreq Hz")
    rows = [
        (
            s.dataset,
            str(len(s.recordings)),
            str(len(s.unreadable)),
            str(s.subjects),
            f"{s.hours:.2f}",
            f"{s.window_hours:.2f}",
            str(s.windows),
            ", ".join(f"{k:g} ({v})" for k, v in s.sfreqs().items()) or "-",
        )
        for s in surveys
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    for s in surveys:
        lines.append("")
        lines.append(f"{s.dataset}" + (f" (preset {s.preset})" if s.preset else ""))
        if s.error:
            lines.append(f"  error: {s.error}")
            continue
        lines.append(f"  channel types: {_counts(s.channel_types())}")
        lines.append(f"  channels kept: {s.summary()['channels_kept']}")
        lines.append(f"  subjects from: {_counts(s.subject_sources())}")
        for r in s.unreadable:
            lines.append(f"  unreadable: {r.recording}: {r.reason}")
        for r in s.readable:
            if r.note:
                lines.append(f"  no windows: {r.recording}: {r.note}")
        if recordings:
            for r in s.readable:
                lines.append(
                    f"  {r.recording}: subject {r.subject}, {r.sfreq:g} Hz, "
                    f"{r.duration_s / 3600:.3f} h, {r.windows} windows, "
                    f"types {_counts(r.channel_types)}, dropped {_counts(r.dropped)}"
                )
    return "\n".join(lines)
