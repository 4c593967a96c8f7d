"""`snakemake --profile slurm` / `--profile local` work as written, from a fresh clone.

Snakemake looks a profile name up in the working directory first, so the repository's
root links ``slurm`` and ``local`` to ``cluster_profiles/``: nothing is installed into
the user's home, where a cluster user often keeps a ``slurm`` profile of their own.
The check runs on a copy of the tracked files only (what a clone holds), with ``HOME``
and ``XDG_CONFIG_HOME`` on an empty folder that must still be empty afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


def tracked_copy(dest: Path) -> Path:
    """The repository's tracked files (working-tree content, links kept as links)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src, dst = REPO_ROOT / name, dest / name
        if not src.is_symlink() and not src.exists():
            continue  # deleted in the working tree, not yet committed
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tracked_copy(tmp_path_factory.mktemp("clone") / "diver")


@pytest.mark.parametrize("profile", ["slurm", "local"])
def test_profile_by_name_from_the_repository_root(
    clone: Path, tmp_path: Path, profile: str
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
    }
    env.pop("XDG_CACHE_HOME", None)  # Snakemake's caches would default into HOME
    proc = subprocess.run(
        [str(bin_dir / "snakemake"), "--profile", profile, "-n"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "This was a dry-run" in proc.stdout
    # the profile's config file was the one read: its study's results folder
    study = "results/diver1" if profile == "slurm" else "results/"
    assert study in proc.stdout
    assert (clone / profile).resolve() == (clone / "cluster_profiles" / profile).resolve()
    assert not any(home.iterdir()), sorted(str(p) for p in home.rglob("*"))
