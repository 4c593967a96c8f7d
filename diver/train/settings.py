"""What the training side adds to a cell's settings: its error and where it logs.

The cell itself (:class:`diver.study.settings.PretrainSettings`) belongs to the study
layer, which the launcher and the command line use without importing torch; these are
only what a running pretraining job needs besides it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diver.errors import DiverError


class PretrainError(DiverError, RuntimeError):
    """A pretraining run cannot start or continue; the message says why."""


@dataclass(frozen=True)
class TrackingTarget:
    """Where to log the cell's MLflow child run (rank 0 only)."""

    uri: str
    parent_run_id: str
    manifest: Path | None = None
