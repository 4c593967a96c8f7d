"""Errors a user can fix: their messages name the file or key and the problem.

The ``diver`` command prints these without a traceback (exit status 2); anything
else is a bug and keeps its traceback.
"""


class DiverError(Exception):
    """Bad input or configuration; the message says which and why."""


class ConfigError(DiverError, ValueError):
    """A configuration file is invalid; the message names the file and the key.

    Defined here, not in ``diver.config`` (which re-exports it), so that modules the
    config loader calls, such as ``diver.presets``, can raise it without an import cycle.
    """


class CheckpointError(DiverError, OSError):
    """A model file or a training checkpoint is missing, unreadable, incomplete or not
    what it should be; the message names the file or folder (one class for the model
    files ``diver.model.load`` reads and the step folders ``diver.train`` resumes from)."""
