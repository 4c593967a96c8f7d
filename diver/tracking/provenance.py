"""Provenance facts a child run is tagged with: git commit, SLURM job id, file hashes.

Standard library only: these are facts about the code and the job, not about MLflow,
and rules that only hash a manifest (``diver corpus``) need no store.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

__all__ = ["file_sha256", "git_commit", "git_dirty", "slurm_job_id"]


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (manifests can be large)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The checkout the running `diver` package was imported from: the code actually
# executing, wherever the job's working directory is (Snakemake --directory, a SLURM
# job's cwd).  A package installed without its repository has no commit ('unknown').
_CODE_DIR = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    """Output of a git command in the package's checkout, or None outside a repository."""
    try:
        proc = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=_CODE_DIR,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout holding the running package, or ``'unknown'``."""
    return _git("rev-parse", "HEAD") or "unknown"


def git_dirty() -> str | None:
    """``'true'`` if tracked files differ from HEAD (the commit alone is then not the
    code that ran), ``'false'`` if clean, None outside git.  Untracked files (results,
    caches) are ignored on purpose."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is None:
        return None
    return "true" if status else "false"


def slurm_job_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The job's SLURM id: ``<array job>_<task>`` for array tasks (the form ``sacct``
    and ``squeue`` print), else ``SLURM_JOB_ID``; None outside SLURM."""
    env = os.environ if environ is None else environ
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return env.get("SLURM_JOB_ID") or None
