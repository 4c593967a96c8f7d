"""Errors a user can fix: their messages name the file or key and the problem.

The ``diver`` command prints these without a traceback (exit status 2); anything
else is a bug and keeps its traceback.
"""


class DiverError(Exception):
    """Bad input or configuration; the message says which and why."""
