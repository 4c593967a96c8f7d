"""The exception that sets a recording aside, with the reason written to qc.csv.

Its own module so that every step of reading a recording (the reader, the units
check, the per-recording pipeline) can raise it without importing the pipeline.
"""


class Quarantine(Exception):
    """The recording cannot be used; the message is the reason written to qc.csv."""
