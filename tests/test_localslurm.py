"""``diver localslurm`` never signals or unlinks what is not its own (issue 13, item 9).

These run without a cluster: the processes are stand-ins whose command name is set with
``exec -a`` (what ``/proc/<pid>/cmdline`` shows), the configuration folder a temporary
one.  Starting and stopping a real cluster is covered by the SLURM tests (slow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from diver import localslurm
from tests.conftest import missing_data


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

    def half_start(paths: localslurm.Paths, nodes: list) -> None:
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


# A DNS server answering one SRV query, and the check run against it, inside a private
# mount and network namespace (its own /etc/resolv.conf and loopback): the machine's
# resolver configuration and port 53 are never touched.
_CONFIGLESS_SITE = r"""
import socket, struct, subprocess, sys, threading

resolv = sys.argv[1]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", resolv, "/etc/resolv.conf"], check=True)
WANTED = b"\x0a_slurmctld\x04_tcp\x07cluster\x07example\x00"

def labels(name):
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00"

def serve(sock):
    while True:
        query, client = sock.recvfrom(512)
        end = query.index(b"\x00", 12) + 1
        qname, qtype = query[12:end], struct.unpack("!H", query[end:end + 2])[0]
        question = query[12:end + 4]
        if qname.lower() == WANTED and qtype == 33:  # SRV
            target = labels("ctld.cluster.example")
            rdata = struct.pack("!HHH", 0, 0, 6817) + target
            answer = b"\xc0\x0c" + struct.pack("!HHIH", 33, 1, 60, len(rdata)) + rdata
            header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0)
        else:
            answer = b""
            header = query[:2] + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0)
        sock.sendto(header + question + answer, client)

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 53))
threading.Thread(target=serve, args=(sock,), daemon=True).start()
from diver import localslurm
print(localslurm.foreign_config())
"""


def test_a_configless_site_announced_in_dns_is_seen(tmp_path: Path) -> None:
    """Configless SLURM: with no slurm.conf anywhere, slurmd and the clients find the
    controller through the DNS SRV record ``_slurmctld._tcp`` of the resolver's search
    domains; such a site is a real one, and localslurm must not take the machine over."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        missing_data("needs root, unshare and ip for a private network and mount namespace")
    resolv = tmp_path / "resolv.conf"
    options = "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n"
    resolv.write_text(f"{options}search cluster.example\n")
    check = tmp_path / "check.py"
    check.write_text(_CONFIGLESS_SITE)

    def found(conf: Path) -> str:
        out = subprocess.run(
            ["unshare", "--mount", "--net", "--", sys.executable, str(check), str(conf)],
            capture_output=True, text=True, timeout=120, check=True,
        )
        return out.stdout

    assert "DNS SRV _slurmctld._tcp" in found(resolv)
    other = tmp_path / "other.conf"  # the same server, a search domain without the record
    other.write_text(f"{options}search elsewhere.example\n")
    assert "DNS SRV" not in found(other)
