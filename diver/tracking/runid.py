"""The run-id file: how a study's parent run id reaches every later rule.

The id of the parent run goes to a small text file that every later rule takes as an
input, so the Snakemake DAG depends on that file and not on MLflow state.  Standard
library (and the leaf ``diver.atomic``) only: reading the file must not load MLflow.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

from diver.atomic import replacing
from diver.errors import DiverError  # a leaf module: tracking stays free of stage code

__all__ = ["RunIdFileError", "read_run_id", "write_run_id"]

# MLflow's own run-id rule (mlflow.utils.validation._RUN_ID_REGEX).
_RUN_ID_RE = re.compile(r"^[a-zA-Z0-9][\w\-]{0,255}$")


class RunIdFileError(DiverError, RuntimeError):
    """A run-id file is missing or does not hold a run id; the message names the file."""


def write_run_id(path: Path, run_id: str) -> None:
    """Write ``run_id`` to ``path`` atomically (:func:`diver.atomic.replacing`, flushed
    to disk before the rename), so a reader never sees a half-written id even if the
    job is killed.

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
    # The thread id keeps two threads of one process off the same temporary file.
    with replacing(path, suffix=f"-{threading.get_ident()}") as tmp, tmp.open("w") as fh:
        fh.write(run_id + "\n")
        fh.flush()
        os.fsync(fh.fileno())


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
