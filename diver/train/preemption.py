"""Preemption: SLURM and submitit signal a job before killing it; the run checkpoints.

SIGTERM / SIGUSR1 / SIGUSR2 only set a flag (saving inside a handler could interrupt
DeepSpeed mid-collective); at the next step boundary every rank saves and the process
exits with ``EXIT_PREEMPTED`` (BSD ``EX_TEMPFAIL``: the launcher reruns the same
command, which resumes from the checkpoint).
"""

from __future__ import annotations

import signal
from typing import Any

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Preempted(BaseException):
    """Unwinds a preempted run (checkpoint saved) through its context managers.

    A BaseException, like KeyboardInterrupt, so ``tracking.child_run`` ends the MLflow
    run as KILLED rather than FINISHED or FAILED.
    """


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1/SIGUSR2; the loop checks it at step boundaries.

    The handler only records the signal: saving inside a handler could interrupt
    DeepSpeed mid-collective.  Previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __enter__(self) -> PreemptionFlag:
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if callable(previous):
            # Hand the signal on, now that the checkpoint is written, to whoever was
            # listening before: under submitit that is its requeue handler (SLURM
            # preemption / time limit), which resubmits the job to resume from here.
            previous(self.signum, None)

    @property
    def raised(self) -> bool:
        return self.signum is not None
