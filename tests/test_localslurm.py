"""``diver localslurm`` never signals or unlinks what is not its own (issue 13, item 9).

These run without a cluster: the processes are stand-ins whose command name is set with
``exec -a`` (what ``/proc/<pid>/cmdline`` shows), the configuration folder a temporary
one.  Starting and stopping a real cluster is covered by the SLURM tests (slow).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diver import localslurm


def _process(name: str) -> subprocess.Popen[bytes]:
    """A process whose command name is ``name`` (it sleeps)."""
    proc = subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 60"])
    for _ in range(100):
        if localslurm._command_name(proc.pid) == name:
            return proc
        time.sleep(0.02)
    raise AssertionError(f"{name} did not start")


@pytest.fixture()
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "etc-slurm"
    folder.mkdir()
    monkeypatch.setattr(localslurm, "SYSTEM_CONF", folder / "slurm.conf")
    monkeypatch.setattr(localslurm, "OTHER_CONF_SOURCES", ())
    monkeypatch.delenv("SLURM_CONF", raising=False)
    yield folder


def test_a_stale_pidfile_never_gets_an_unrelated_process_killed(
    tmp_path: Path, etc: Path
) -> None:
    paths = localslurm.Paths(tmp_path / "cluster")
    paths.run.mkdir(parents=True)
    bystander = _process("sleep")  # a process that now holds the pidfile's number
    try:
        paths.pidfile("slurmctld").write_text(f"{bystander.pid}\n")
        assert localslurm.stop(tmp_path / "cluster") == []
        assert bystander.poll() is None  # still alive
    finally:
        bystander.kill()
        bystander.wait()


def test_stop_signals_the_daemon_its_pidfile_names(tmp_path: Path, etc: Path) -> None:
    paths = localslurm.Paths(tmp_path / "cluster")
    paths.run.mkdir(parents=True)
    daemon = _process("slurmctld")
    paths.pidfile("slurmctld").write_text(f"{daemon.pid}\n")
    assert localslurm.stop(tmp_path / "cluster") == ["slurmctld"]
    assert daemon.wait(timeout=10) != 0


def test_only_links_into_its_own_folder_are_removed(tmp_path: Path, etc: Path) -> None:
    ours = tmp_path / "ls"
    site = tmp_path / "ls-site"  # a string-prefix compare takes this for ours
    for folder in (ours, site):
        (folder / "etc").mkdir(parents=True)
        (folder / "etc" / "slurm.conf").write_text("x")
    (etc / "slurm.conf").symlink_to(site / "etc" / "slurm.conf")
    (etc / "gres.conf").symlink_to(ours / "etc" / "slurm.conf")
    localslurm.stop(ours)
    assert (etc / "slurm.conf").is_symlink()
    assert not (etc / "gres.conf").exists()


def test_every_configuration_source_of_a_real_site_is_seen(
    tmp_path: Path, etc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert localslurm.foreign_config() is None
    site = tmp_path / "site.conf"
    site.write_text("ClusterName=real\n")
    monkeypatch.setenv("SLURM_CONF", str(site))
    assert "SLURM_CONF" in (localslurm.foreign_config() or "")
    monkeypatch.delenv("SLURM_CONF")
    llnl = tmp_path / "slurm-llnl" / "slurm.conf"
    llnl.parent.mkdir()
    llnl.write_text("ClusterName=real\n")
    monkeypatch.setattr(localslurm, "OTHER_CONF_SOURCES", (llnl,))
    assert str(llnl) in (localslurm.foreign_config() or "")
    llnl.write_text(localslurm.MARKER + "\n")
    assert localslurm.foreign_config() is None


def test_a_failed_start_takes_back_what_it_started(
    tmp_path: Path, etc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cluster"
    started: list[subprocess.Popen[bytes]] = []

    def half_start(paths: localslurm.Paths) -> None:
        """Links installed, slurmdbd up, then slurmctld fails to come up."""
        paths.run.mkdir(parents=True)
        (paths.root / "etc").mkdir()
        paths.conf.write_text(localslurm.MARKER)
        (etc / "slurm.conf").symlink_to(paths.conf)
        started.append(_process("slurmdbd"))
        paths.pidfile("slurmdbd").write_text(f"{started[0].pid}\n")
        raise localslurm.LocalSlurmError("slurmctld did not come up within 20 s")

    monkeypatch.setattr(localslurm, "missing_requirements", lambda: None)
    monkeypatch.setattr(localslurm, "_start_all", half_start)
    try:
        with pytest.raises(localslurm.LocalSlurmError, match="slurmctld"):
            localslurm.start(root)
        assert started[0].wait(timeout=10) != 0  # the daemon it started is stopped
        assert not (etc / "slurm.conf").is_symlink()  # and its link taken back
    finally:
        for proc in started:
            proc.kill()
