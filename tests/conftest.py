"""Shared fixtures.

Real recordings live outside the repo (``../shared/data`` beside the clone); one
setting, the ``DIVER_SHARED_DATA`` environment variable, points elsewhere.  When the
folder is missing, tests that need it skip with a clear message on a user's clone,
and fail under CI (``CI=true``), where its absence is a broken setup.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    return Path(os.environ.get("DIVER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real sample recordings (see its SOURCES.md)."""
    path = shared_data_dir()
    if not (path / "SOURCES.md").exists():
        message = (
            f"real sample recordings not found at {path}; set DIVER_SHARED_DATA to the "
            "folder holding SOURCES.md"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The repo's Snakefile on ``workdir``, its rules' `diver` from this interpreter."""
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile"),
         "--directory", str(workdir), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
    )
