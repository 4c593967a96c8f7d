"""MLflow tracking for a study: one experiment, one parent run, one child run per job.

Layout (the issue's words, made concrete):

* **One experiment per study** (its name comes from the config; by default the study
  name).
* **One parent run per study**, created once by a Snakemake rule *before* the grid by
  :func:`ensure_parent_run`.  It is found again by its tags (``diver.study=<study>``,
  ``diver.role=parent``), so rerunning the rule, or editing one cell's config, returns
  the same run id instead of creating a second parent.  The id goes to a small text
  file (:func:`write_run_id`) that every later rule takes as an input
  (:func:`read_run_id`), so the grid depends on that file and not on MLflow state.
* **One child run per job** (:func:`child_run`), tagged with its stage, grid cell, git
  commit, SLURM job id and the corpus manifest's SHA-256, so any number in the UI can be
  traced to the exact code and data that produced it.

Why the care about concurrency: the default store is an SQLite file under the results
folder, and a grid launches many jobs that write to it at once.  SQLite allows one
writer at a time; MLflow sets a 20 s busy timeout, but SQLite still answers
``database is locked`` at once when waiting could deadlock (a reader upgrading to a
writer), and on loaded network file systems.  So every call to the store goes through
:func:`with_retry` (exponential backoff with jitter), metrics are buffered and sent
with ``log_batch`` (one transaction per 1,000 values instead of one per value: fewer
lock round-trips and ~35x faster on SQLite), and the one step that must not race
(creating the experiment, the schema and the parent run) is serialised with a file
lock beside the SQLite database.  Any other tracking URI (an ``mlflow server``) works
the same way through the REST store.

Only ``mlflow`` and the standard library are imported: this module is used by every
rule, including lightweight ones, and must not pull in the rest of the package.
Every function takes the tracking URI explicitly and uses its own
``mlflow.MlflowClient``; nothing touches MLflow's global state (``mlflow.set_tracking_uri``,
active runs), so several stores can be used from one process and tests stay isolated.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import random
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.entities.view_type import ViewType
from mlflow.exceptions import MlflowException

from diver.errors import DiverError  # a leaf module: tracking stays free of stage code

__all__ = [
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_PER_BATCH",
    "MAX_TAGS_PER_BATCH",
    "TAG_CELL",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "TAG_MANIFEST",
    "TAG_MANIFEST_SHA256",
    "TAG_ROLE",
    "TAG_SLURM_JOB_ID",
    "TAG_STAGE",
    "TAG_STUDY",
    "RunIdFileError",
    "RunLogger",
    "child_run",
    "ensure_parent_run",
    "file_sha256",
    "git_commit",
    "is_transient_error",
    "read_run_id",
    "slurm_job_id",
    "with_retry",
    "write_run_id",
]

_log = logging.getLogger(__name__)

T = TypeVar("T")

# Tag keys.  Namespaced so they never collide with MLflow's own ``mlflow.*`` tags.
TAG_STUDY = "diver.study"
TAG_ROLE = "diver.role"
TAG_STAGE = "diver.stage"
TAG_CELL = "diver.cell"
TAG_GIT_COMMIT = "diver.git_commit"
TAG_GIT_DIRTY = "diver.git_dirty"
TAG_SLURM_JOB_ID = "diver.slurm_job_id"
TAG_MANIFEST = "diver.corpus_manifest"
TAG_MANIFEST_SHA256 = "diver.corpus_manifest_sha256"
_PARENT_RUN_ID_TAG = "mlflow.parentRunId"  # what the MLflow UI nests children by

# MLflow's LogBatch request limits (the REST server rejects larger requests; the SQL
# store accepts them but one huge transaction holds the SQLite write lock longer).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100

# MLflow's own run-id rule (mlflow.utils.validation._RUN_ID_REGEX).
_RUN_ID_RE = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")

# Messages of errors worth retrying.  SQLite reports contention as SQLITE_BUSY
# ("database is locked") or SQLITE_LOCKED ("database table is locked"); MLflow wraps
# the sqlalchemy OperationalError into an MlflowException, and a tracking server wraps
# it again into its HTTP error body, so the message is the one stable signal.
_LOCK_MESSAGES = ("database is locked", "database is busy", "database table is locked")
# Transport failures reaching a tracking server.  MLflow's REST client already retries
# HTTP 429/5xx itself; what reaches us is its final "API request to ... failed with
# exception ..." wrapping a requests/urllib3 connection error, or a raw connection error.
_HTTP_TRANSIENT_MESSAGES = (
    "max retries exceeded",
    "connection refused",
    "connection aborted",
    "connection reset",
    "remotedisconnected",
    "remote end closed connection",
    "failed to establish a new connection",
    "read timed out",
    "failed with timeout exception",
    "temporarily unavailable",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
)


# --------------------------------------------------------------------------- retries


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes/contexts, each once.

    The context matters, not only ``__cause__``: MLflow's REST client raises its
    "API request ... failed" MlflowException inside ``except`` without ``from``, so the
    requests/urllib3 connection error is only reachable as ``__context__``.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_db_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the database layer (so its message can be trusted)."""
    if isinstance(exc, MlflowException | sqlite3.Error):
        return True
    # sqlalchemy is not imported here (stdlib + mlflow only); match it by module.
    return any(
        cls.__module__.startswith("sqlalchemy") and cls.__name__ == "OperationalError"
        for cls in type(exc).__mro__
    )


def _is_http_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection-level failure of the HTTP stack."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    names = [
        cls.__name__
        for cls in type(exc).__mro__
        if cls.__module__.split(".")[0] in {"requests", "urllib3"}
    ]
    if any("SSL" in n or "Certificate" in n for n in names):
        return False  # a TLS misconfiguration does not heal by waiting
    return any(("Connection" in n or "Timeout" in n or "Protocol" in n) for n in names)


def is_transient_error(exc: BaseException) -> bool:
    """Whether retrying the call that raised ``exc`` may succeed.

    True for SQLite contention (``database is locked`` / ``is busy``), raised directly by
    ``sqlite3``, by sqlalchemy, or wrapped by MLflow (in-process store or tracking
    server), and for transport failures talking to a tracking server.  Everything else
    (a missing run, an invalid parameter, a changed param value, a bug) is permanent:
    retrying would only delay the error.
    """
    for err in _exception_chain(exc):
        message = str(err).lower()
        if _is_db_error(err) and any(m in message for m in _LOCK_MESSAGES):
            return True
        if _is_http_error(err):
            return True
        from_http = isinstance(err, MlflowException) and (
            "api request to" in message or err.error_code == "TEMPORARILY_UNAVAILABLE"
        )
        if from_http and any(m in message for m in _HTTP_TRANSIENT_MESSAGES):
            return True
    return False


def with_retry(
    fn: Callable[..., T],
    *args: object,
    attempts: int = 8,
    base_delay: float = 0.05,
    max_delay: float = 5.0,
    **kwargs: object,
) -> T:
    """Call ``fn(*args, **kwargs)``, retrying transient store errors with backoff.

    Waits ``base_delay * 2**i`` (capped at ``max_delay``) times a random factor in
    [0.5, 1.5) between attempts: the jitter keeps a grid of jobs that collided once from
    colliding again in lockstep.  Errors for which :func:`is_transient_error` is false
    propagate at once; after ``attempts`` tries the last transient error propagates.

    Retrying is safe for what this module sends: an SQLite write that hit a lock was
    rolled back as a whole, ``log_batch`` ignores metric rows that already exist, and
    tags/params are idempotent.  (After a lost HTTP *response*, ``create_run`` could in
    principle create a run twice; MLflow's REST client only reaches us after its own
    retries, so this needs the server to have failed repeatedly mid-request.)
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient_error(exc):
                raise
            delay = min(max_delay, base_delay * 2**attempt) * random.uniform(0.5, 1.5)
            _log.warning(
                "transient tracking error in %s (attempt %d/%d), retrying in %.2f s: %s",
                getattr(fn, "__qualname__", fn),
                attempt + 1,
                attempts,
                delay,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# ------------------------------------------------------------------- provenance facts


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (manifests can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The checkout the running `diver` package was imported from: the code actually
# executing, wherever the job's working directory is (Snakemake --directory, a SLURM
# job's cwd).  A package installed without its repository has no commit ('unknown').
_CODE_DIR = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    """Output of a git command in the package's checkout, or None outside a repository."""
    try:
        proc = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=30, check=False,
            cwd=_CODE_DIR,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout holding the running package, or ``'unknown'``."""
    return _git("rev-parse", "HEAD") or "unknown"


def _git_dirty() -> str | None:
    """``'true'`` if tracked files differ from HEAD (the commit alone is then not the
    code that ran), ``'false'`` if clean, None outside git.  Untracked files (results,
    caches) are ignored on purpose."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is None:
        return None
    return "true" if status else "false"


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The job's SLURM id: ``<array job>_<task>`` for array tasks (the form ``sacct``
    and ``squeue`` print), else ``SLURM_JOB_ID``; None outside SLURM."""
    env = os.environ if environ is None else environ
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return env.get("SLURM_JOB_ID") or None


# ------------------------------------------------------------------------ run-id file


class RunIdFileError(DiverError, RuntimeError):
    """A run-id file is missing or does not hold a run id; the message names the file."""


def write_run_id(path: Path, run_id: str) -> None:
    """Write ``run_id`` to ``path`` atomically (temporary file in the same folder, then
    rename), so a reader never sees a half-written id even if the job is killed.

    An existing file with the same id is left untouched: its mtime is what Snakemake
    compares, and rewriting it would make every downstream rule look out of date.
    """
    if not _RUN_ID_RE.match(run_id):
        raise ValueError(f"not an MLflow run id: {run_id!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError, RunIdFileError):
        if read_run_id(path) == run_id:
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with tmp.open("w") as fh:
            fh.write(run_id + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_run_id(path: Path) -> str:
    """The run id stored in ``path`` by :func:`write_run_id`.

    Raises RunIdFileError naming the file when it is missing or its content is not a
    run id, so a broken input fails the rule with a message pointing at the file
    rather than deep inside MLflow.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise RunIdFileError(
            f"run-id file {path} does not exist (the rule creating the study's parent "
            "run must run first)"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RunIdFileError(f"run-id file {path} cannot be read: {exc}") from exc
    run_id = text.strip()
    if not _RUN_ID_RE.match(run_id):
        raise RunIdFileError(f"run-id file {path} does not hold an MLflow run id: {text!r:.80}")
    return run_id


# ------------------------------------------------------------------------ parent run


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


def _find_parents(client: MlflowClient, experiment_id: str, study: str) -> list:
    """All active parent runs of ``study`` in the experiment, oldest first."""
    filter_string = f"tags.`{TAG_STUDY}` = {_quote(study)} AND tags.`{TAG_ROLE}` = 'parent'"
    runs: list = []
    page_token = None
    while True:
        page = with_retry(
            client.search_runs,
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            break
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
) -> str:
    """Return the id of ``study``'s parent run, creating the experiment and run if needed.

    Idempotent, keyed on the study name: the parent is the active run of the experiment
    tagged ``diver.study=<study>`` and ``diver.role=parent``.  When one exists it is
    returned unchanged (``params`` and ``tags`` are applied only on creation: MLflow
    params cannot change, and an edited cell config must not alter the study's run).

    Concurrency: on an SQLite store the whole look-up-or-create step holds a file lock,
    so any number of simultaneous callers get one parent.  On a tracking server two
    first-time callers racing could both create one; the design avoids that (one rule
    creates the parent before the grid), and should it happen the **oldest** parent
    (earliest start time, then smallest run id) is what every later call returns, so
    the study still converges on one run.  Duplicates are never deleted automatically.

    ``artifact_location``: where the experiment's artifacts go when it is created.  For
    an SQLite store the default is ``mlartifacts/`` beside the database (MLflow's own
    default is ``./mlruns`` under whatever cwd the job had); for a server, the server's
    default (``--artifacts-destination``).
    """
    if not study:
        raise ValueError("study name must not be empty")
    db = _sqlite_path(tracking_uri)
    if artifact_location is None and db is not None:
        artifact_location = (db.parent / "mlartifacts").as_uri()
    with _store_lock(tracking_uri):
        client = MlflowClient(tracking_uri)
        experiment_id = _get_or_create_experiment(client, experiment, artifact_location)
        parents = _find_parents(client, experiment_id, study)
        if parents:
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
        run_tags = {
            **(tags or {}),
            TAG_STUDY: study,
            TAG_ROLE: "parent",
            TAG_GIT_COMMIT: git_commit(),
        }
        run = with_retry(client.create_run, experiment_id, tags=run_tags, run_name=study)
        run_id = run.info.run_id
        _log_params(client, run_id, params or {})
        return run_id


# ------------------------------------------------------------------------- child runs


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, object]) -> None:
    """Log params in LogBatch-sized chunks (values stringified, as MLflow stores them)."""
    items = [Param(str(k), str(v)) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        with_retry(
            client.log_batch, run_id, params=items[i : i + MAX_PARAMS_PER_BATCH], synchronous=True
        )


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set tags in LogBatch-sized chunks."""
    items = [RunTag(str(k), str(v)) for k, v in tags.items()]
    for i in range(0, len(items), MAX_TAGS_PER_BATCH):
        with_retry(
            client.log_batch, run_id, tags=items[i : i + MAX_TAGS_PER_BATCH], synchronous=True
        )


class RunLogger:
    """Logging handle of one run, with metrics buffered and sent in batches.

    ``log_metrics`` only appends to a buffer (the timestamp is taken at call time, so
    batching does not change what is recorded); the buffer is sent with
    ``MlflowClient.log_batch`` in chunks of at most 1,000 metrics when it reaches
    ``batch_size``, on :meth:`flush`, and when the run ends.  Thread-safe, so a
    data-loader thread and the training loop may share one logger.
    """

    def __init__(
        self, client: MlflowClient, run_id: str, *, batch_size: int = MAX_METRICS_PER_BATCH
    ):
        if not 1 <= batch_size <= MAX_METRICS_PER_BATCH:
            raise ValueError(f"batch_size must be in 1..{MAX_METRICS_PER_BATCH}, got {batch_size}")
        self.client = client
        self.run_id = run_id
        self.batch_size = batch_size
        self._buffer: list[Metric] = []
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Number of metric values buffered but not yet sent."""
        with self._lock:
            return len(self._buffer)

    def log_params(self, params: Mapping[str, object]) -> None:
        """Log hyper-parameters now (params are few; no buffering needed)."""
        _log_params(self.client, self.run_id, params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Buffer metric values at ``step`` (MLflow's default 0 when None)."""
        timestamp = int(time.time() * 1000)
        entries = [Metric(str(k), float(v), timestamp, int(step or 0)) for k, v in metrics.items()]
        with self._lock:
            self._buffer.extend(entries)
            full = len(self._buffer) >= self.batch_size
        if full:
            self.flush()

    def flush(self) -> None:
        """Send every buffered metric, in chunks of at most ``batch_size``.

        A chunk is removed from the buffer only after the store accepted it, so a failed
        flush loses nothing and can be called again.
        """
        with self._lock:
            while self._buffer:
                chunk = self._buffer[: self.batch_size]
                with_retry(self.client.log_batch, self.run_id, metrics=chunk, synchronous=True)
                del self._buffer[: len(chunk)]

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set (or overwrite) run tags now."""
        _set_tags(self.client, self.run_id, tags)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        """Copy a local file or folder into the run's artifact store."""
        with_retry(self.client.log_artifact, self.run_id, str(path), artifact_path)


@contextmanager
def child_run(
    tracking_uri: str,
    parent_run_id: str,
    *,
    stage: str,
    cell: str | None = None,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    manifest: Path | None = None,
) -> Iterator[RunLogger]:
    """Run the body inside a new child run of ``parent_run_id``; yield its RunLogger.

    The child lives in the parent's experiment and carries ``mlflow.parentRunId`` (so
    the UI nests it and ``tags.mlflow.parentRunId = '<id>'`` finds it) plus
    ``diver.stage``, ``diver.cell`` (when given), ``diver.git_commit`` (``'unknown'``
    outside git), ``diver.git_dirty``, ``diver.slurm_job_id`` (under SLURM) and
    ``diver.corpus_manifest_sha256`` (when ``manifest`` is given; hashed before the run
    is created, so a missing manifest fails fast without leaving a stray run).

    The run ends FINISHED if the body returns, FAILED if it raises an Exception, KILLED
    on KeyboardInterrupt/SystemExit; the exception is re-raised.  Buffered metrics are
    flushed first in every case (a failing job's last metrics are the useful ones).
    """
    client = MlflowClient(tracking_uri)
    run_tags: dict[str, str] = {**(tags or {})}
    if manifest is not None:
        run_tags[TAG_MANIFEST] = str(manifest)
        run_tags[TAG_MANIFEST_SHA256] = file_sha256(Path(manifest))
    parent = with_retry(client.get_run, parent_run_id)
    run_tags.update(
        {
            _PARENT_RUN_ID_TAG: parent_run_id,
            TAG_STAGE: stage,
            TAG_GIT_COMMIT: git_commit(),
        }
    )
    if cell is not None:
        run_tags[TAG_CELL] = cell
    if (dirty := _git_dirty()) is not None:
        run_tags[TAG_GIT_DIRTY] = dirty
    if (job := slurm_job_id()) is not None:
        run_tags[TAG_SLURM_JOB_ID] = job
    if TAG_STUDY in parent.data.tags:
        run_tags.setdefault(TAG_STUDY, parent.data.tags[TAG_STUDY])
    run_name = name or (f"{stage}:{cell}" if cell else stage)
    run = with_retry(client.create_run, parent.info.experiment_id, tags=run_tags, run_name=run_name)
    logger = RunLogger(client, run.info.run_id)
    status = RunStatus.to_string(RunStatus.FINISHED)
    try:
        yield logger
    except Exception:
        status = RunStatus.to_string(RunStatus.FAILED)
        raise
    except BaseException:
        status = RunStatus.to_string(RunStatus.KILLED)
        raise
    finally:
        try:
            logger.flush()
        except Exception:
            if status == RunStatus.to_string(RunStatus.FINISHED):
                status = RunStatus.to_string(RunStatus.FAILED)
                with_retry(client.set_terminated, run.info.run_id, status)
                raise
            # The body's own exception is the one to report; keep this one in the log.
            _log.exception("could not flush metrics of failing run %s", run.info.run_id)
        with_retry(client.set_terminated, run.info.run_id, status)
