"""Exit statuses of the ``diver`` commands: one home for the CLI, the launchers and tests."""

EXIT_OK = 0
EXIT_ERROR = 2
"""A :class:`~diver.errors.DiverError`: bad input or configuration, named on stderr (the
status argparse also uses for a bad command line)."""
EXIT_QUARANTINED = 3
"""``diver corpus --strict``: at least one recording was quarantined (see ``qc.csv``)."""
EXIT_PREEMPTED = 75
"""``diver pretrain`` handled a preemption signal after writing a checkpoint: rerun (or
let SLURM requeue) to continue.  75 is ``EX_TEMPFAIL`` of ``sysexits.h``."""
