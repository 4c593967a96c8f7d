"""The study's parent run, created once and found again, safely under concurrency.

Why the care: on the default SQLite store many jobs of a grid start at once, and
SQLite has no atomic "create if absent" across MLflow's search + create calls;
concurrent first use of a fresh database even races on MLflow's schema creation.  So
the one step that must not race (creating the experiment, the schema and the parent
run) is serialised with a file lock beside the SQLite database
(:func:`_store_lock`).  A tracking server (``diver track server``) offers no such
lock: there callers agree on the oldest parent once it has settled, and the other
creators delete theirs (:func:`_settle`).

The same step marks the experiment as a model-training one and gives it its
description (:func:`_describe_experiment`), on creation and again on every later call,
so an experiment made by an older diver gets both on the next ``diver track init``.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from diver.tracking import TAG_GIT_COMMIT, TAG_ROLE, TAG_STUDY
from diver.tracking.names import (
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_KIND_TRAINING,
    EXPERIMENT_NOTE_SHA_TAG,
    EXPERIMENT_NOTE_TAG,
)
from diver.tracking.provenance import git_commit
from diver.tracking.retry import search_all_runs, with_retry
from diver.tracking.runs import log_params

__all__ = ["ensure_parent_run"]

_log = logging.getLogger(__name__)

#: Age (by its start time) at which a parent run on a server counts as settled: racing
#: creators whose run is stamped earlier have reached the server by then.  Clocks of
#: the machines calling are assumed in sync (NTP) to well within this.
SETTLE_SECONDS = 2.0


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (None for servers and in-memory DBs)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    raw = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not raw or raw == ":memory:":
        return None
    return Path(raw).absolute()


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """Exclusive lock serialising parent-run set-up on one SQLite store.

    SQLite has no atomic "create if absent" across MLflow's search + create calls, and
    concurrent first use of a fresh database races on MLflow's schema creation
    (duplicate tables/columns).  An ``flock`` on ``<db>.lock`` makes the whole
    look-up-or-create step one at a time across processes on the machine (and on NFS,
    where Linux maps flock to POSIX locks).  Servers need no lock here: they own their
    database (see :func:`ensure_parent_run` for the remaining race).
    """
    db = _sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            # Some cluster file systems (Lustre mounted without -o flock) refuse locks.
            # The lock is a second line of defence (one rule creates the parent), so
            # go on without it rather than fail the study.
            _log.warning("cannot lock %s (%s); creating the parent run unlocked", fh.name, exc)
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _quote(value: str) -> str:
    """A string literal for an MLflow search filter (which has no escape sequences)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for a value holding both quote kinds: {value!r}")


def _get_or_create_experiment(
    client: MlflowClient, name: str, artifact_location: str | None
) -> str:
    """Id of the active experiment ``name``, creating it if missing.

    Tolerates a concurrent creator (another process, or a server client without our
    file lock): the loser's RESOURCE_ALREADY_EXISTS is caught and the name re-read.
    """
    experiment = with_retry(client.get_experiment_by_name, name)
    if experiment is None:
        try:
            return with_retry(client.create_experiment, name, artifact_location=artifact_location)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = with_retry(client.get_experiment_by_name, name)
        if experiment is None:  # pragma: no cover - created then deleted in between
            raise MlflowException(f"experiment {name!r} vanished while being created")
    if experiment.lifecycle_stage != "active":
        raise MlflowException(
            f"experiment {name!r} exists but is deleted; restore it "
            "(mlflow experiments restore) or configure another tracking.experiment"
        )
    return experiment.experiment_id


#: Experiment kinds that are MLflow's own guesses (or none): replaced by the training kind.
#: A kind someone chose on purpose (e.g. ``genai_development``) is kept.
_GUESSED_KINDS = frozenset(
    {"", "no_inferred_type", "custom_model_development_inferred", "genai_development_inferred"}
)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


#: An experiment's description, or the function of its id that writes it.
Description = str | Callable[[str], str]


def _describe_experiment(
    client: MlflowClient, experiment_id: str, description: Description | None
) -> None:
    """Tag the experiment as model training and set its description (idempotent).

    Why: MLflow 3's UI opens an experiment without a kind on its GenAI view (traces,
    token usage); with ``mlflow.experimentKind = custom_model_development`` it opens on
    the training runs.  A kind that is not one of MLflow's guesses is left as set.  The
    description (``mlflow.note.content``) is replaced only while it is still the one
    diver wrote (its hash in ``diver.note_sha256``): a note edited in the UI stays.
    Only changed tags are written, so a repeated call writes nothing.
    """

    def set_tag(key: str, value: str) -> None:
        # jobs starting together set the same new tags: upsert retries their collision
        with_retry(client.set_experiment_tag, experiment_id, key, value, upsert=True)

    note = description(experiment_id) if callable(description) else description
    tags = with_retry(client.get_experiment, experiment_id).tags
    if tags.get(EXPERIMENT_KIND_TAG, "") in _GUESSED_KINDS:
        set_tag(EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
    if note is None or tags.get(EXPERIMENT_NOTE_TAG) == note:
        return
    current = tags.get(EXPERIMENT_NOTE_TAG)
    if current is not None and tags.get(EXPERIMENT_NOTE_SHA_TAG) != _sha256(current):
        _log.info("experiment %s has a description edited by hand; keeping it", experiment_id)
        return
    set_tag(EXPERIMENT_NOTE_TAG, note)
    set_tag(EXPERIMENT_NOTE_SHA_TAG, _sha256(note))


def _find_parents(client: MlflowClient, experiment_id: str, study: str) -> list:
    """All active parent runs of ``study`` in the experiment, oldest first."""
    filter_string = f"tags.`{TAG_STUDY}` = {_quote(study)} AND tags.`{TAG_ROLE}` = 'parent'"
    runs = search_all_runs(client, experiment_id, filter_string)
    # Oldest by start time; the run id breaks ties so every caller agrees on one run.
    return sorted(runs, key=lambda run: (run.info.start_time, run.info.run_id))


def ensure_parent_run(
    tracking_uri: str,
    experiment: str,
    study: str,
    *,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
    artifact_location: str | None = None,
    description: Description | None = None,
) -> str:
    """Return the id of ``study``'s parent run, creating the experiment and run if needed.

    Idempotent, keyed on the study name: the parent is the active run of the experiment
    tagged ``diver.study=<study>`` and ``diver.role=parent``.  When one exists it is
    returned unchanged (``params`` and ``tags`` are applied only on creation: MLflow
    params cannot change, and an edited cell config must not alter the study's run).

    Concurrency: on an SQLite store the whole look-up-or-create step holds a file lock,
    so any number of simultaneous callers get one parent.  A server has no lock to
    offer, so simultaneous first callers may each create one; all of them then agree on
    the **oldest** parent (earliest start time, then smallest run id) once it is
    ``SETTLE_SECONDS`` old, and the others delete the run they made (:func:`_settle`),
    so one parent remains.  The first call of a study on a server so takes about
    ``SETTLE_SECONDS``.  (Only a create reaching the server more than ``SETTLE_SECONDS``
    after it was stamped can leave a second parent; later calls then return the oldest
    and log a warning.)

    ``artifact_location``: where the experiment's artifacts go when it is created.  For
    an SQLite store the default is ``mlartifacts/`` beside the database (MLflow's own
    default is ``./mlruns`` under whatever cwd the job had); for a server, the server's
    default (``--artifacts-destination``).

    The experiment is tagged as a model-training experiment and, with ``description``
    (Markdown, or a function of the experiment id returning it:
    :func:`diver.tracking.note.study_note`), described, on every call
    (:func:`_describe_experiment`).
    """
    if not study:
        raise ValueError("study name must not be empty")
    db = _sqlite_path(tracking_uri)
    if artifact_location is None and db is not None:
        artifact_location = (db.parent / "mlartifacts").as_uri()
    with _store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        experiment_id = _get_or_create_experiment(client, experiment, artifact_location)
        _describe_experiment(client, experiment_id, description)
        parents = _find_parents(client, experiment_id, study)
        if parents and (db is not None or _settled(parents[0])):
            if len(parents) > 1:
                _log.warning(
                    "study %r has %d parent runs in experiment %r (a creation race); "
                    "using the oldest, %s",
                    study,
                    len(parents),
                    experiment,
                    parents[0].info.run_id,
                )
            return parents[0].info.run_id
        mine = None
        if not parents:
            run_tags = {
                **(tags or {}),
                TAG_STUDY: study,
                TAG_ROLE: "parent",
                TAG_GIT_COMMIT: git_commit(),
            }
            run = with_retry(client.create_run, experiment_id, tags=run_tags, run_name=study)
            mine = run.info.run_id
            log_params(client, mine, params or {})
            if db is not None:
                return mine  # the lock kept everyone else out
        return _settle(client, experiment_id, study, mine)


def _age_seconds(run: Run) -> float:
    return time.time() - run.info.start_time / 1000


def _settled(run: Run) -> bool:
    """Whether a parent run is old enough that no racing creator can still replace it."""
    return _age_seconds(run) >= SETTLE_SECONDS


def _settle(client: MlflowClient, experiment_id: str, study: str, mine: str | None) -> str:
    """The study's parent every caller of a race on a server agrees on.

    The oldest parent wins (earliest start time, then smallest run id), once it is
    ``SETTLE_SECONDS`` old: by then every racing creator's run has reached the server, so
    the oldest can no longer change.  Callers look again until then; a creator whose run
    is not the oldest deletes it (no child run refers to it: its id was never returned).
    Finders wait too, so nobody returns a run its creator is about to delete.
    """
    while True:
        parents = _find_parents(client, experiment_id, study)
        if not parents:
            raise MlflowException(f"the parent run of study {study!r} was deleted meanwhile")
        oldest = parents[0]
        if mine is not None and oldest.info.run_id != mine:
            _log.info("study %r: another caller created its parent run first; using it", study)
            with_retry(client.delete_run, mine)
            mine = None
        if _settled(oldest):
            return oldest.info.run_id
        time.sleep(max(0.05, SETTLE_SECONDS - _age_seconds(oldest)))
