"""The training side's error.  The cell's settings themselves
(:class:`diver.study.settings.PretrainSettings`) belong to the study layer, which the
launcher and the command line use without importing torch."""

from __future__ import annotations

from diver.errors import DiverError


class PretrainError(DiverError, RuntimeError):
    """A pretraining run cannot start or continue; the message says why."""
