"""Child processes that end with their parent (Linux ``prctl(PR_SET_PDEATHSIG)``).

Why: a worker or rank whose parent was killed (``kill -9``, the OOM killer, a
cancelled job step) otherwise runs its task to the end and then waits forever,
holding memory and files; on a shared node that outlives the user's job.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> bool:
    """Get SIGKILL when ``parent`` (this process's parent when it started) dies.

    Returns whether the kernel will deliver it (Linux only).  A parent that died
    before the request took effect is caught by ``getppid`` no longer naming it: the
    process then ends at once.  The signal follows the parent *thread* that started
    this process, so the caller must start children from a thread that outlives them.
    """
    armed = False
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        armed = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)
    return armed
