"""Retrying transient tracking-store errors, and telling them from permanent ones.

Why: the default store is an SQLite file under the results folder, and a grid
launches many jobs that write to it at once.  SQLite allows one writer at a time;
MLflow sets a 20 s busy timeout, but SQLite still answers ``database is locked`` at
once when waiting could deadlock (a reader upgrading to a writer), and on loaded
network file systems.  A tracking server can drop connections.  So every call to the
store goes through :func:`with_retry` (exponential backoff with jitter), and only
errors for which :func:`is_transient_error` holds are retried, plus, for a call marked
as setting a tag (``upsert=True``), a simultaneous first write of the same key
(:func:`is_unique_violation`).
"""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException

__all__ = ["is_transient_error", "is_unique_violation", "search_all_runs", "with_retry"]

_log = logging.getLogger(__name__)

T = TypeVar("T")

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
# A concurrent insert of the same key, as each database words it (SQLite, PostgreSQL,
# MySQL, SQL Server).  MLflow's stores set a tag by read-then-insert, so two
# simultaneous first writes of one key collide; the loser's retry finds the row and
# updates it.
_UNIQUE_MESSAGES = (
    "unique constraint failed",
    "duplicate key value violates unique constraint",
    "duplicate entry",
    "cannot insert duplicate key",
)


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


def _is_db_error(exc: BaseException, sqlalchemy_error: str = "OperationalError") -> bool:
    """Whether ``exc`` comes from the database layer (so its message can be trusted):
    ``sqlite3``, MLflow (wrapping it, in-process or from a server), or sqlalchemy's
    ``sqlalchemy_error`` class."""
    if isinstance(exc, MlflowException | sqlite3.Error):
        return True
    # sqlalchemy is not imported here (stdlib + mlflow only); match it by module.
    return any(
        cls.__module__.startswith("sqlalchemy") and cls.__name__ == sqlalchemy_error
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


def is_unique_violation(exc: BaseException) -> bool:
    """Whether ``exc`` is the database refusing a second row with the same key.

    Raised directly (``sqlite3``/sqlalchemy ``IntegrityError``) or wrapped by MLflow,
    in-process or in a tracking server's error body.  Only an *upsert* (setting a tag)
    may retry it: for an insert that must be unique it is a permanent error.
    """
    return any(
        _is_db_error(err, "IntegrityError") and any(m in str(err).lower() for m in _UNIQUE_MESSAGES)
        for err in _exception_chain(exc)
    )


def with_retry(
    fn: Callable[..., T],
    *args: object,
    attempts: int = 8,
    base_delay: float = 0.05,
    max_delay: float = 5.0,
    upsert: bool = False,
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

    ``upsert=True`` marks ``fn`` as an insert-or-update (setting a tag) and also retries
    :func:`is_unique_violation`: jobs starting together set the same experiment tags,
    and MLflow's stores do that by read-then-insert, so all but one may hit the unique
    key; on retry the row exists and is updated.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            retryable = is_transient_error(exc) or (upsert and is_unique_violation(exc))
            if attempt == attempts - 1 or not retryable:
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


def search_all_runs(client: Any, experiment_id: str, filter_string: str) -> list[Any]:
    """Every active run of the experiment matching ``filter_string``: all result pages
    (a grid has hundreds of runs, a page at most 1,000), each call retried."""
    from mlflow.entities.view_type import ViewType

    runs: list[Any] = []
    token = None
    while True:
        page = with_retry(
            client.search_runs,
            [experiment_id],
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs
