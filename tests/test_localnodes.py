"""Simulated nodes (``diver.localnodes``): namespaces on a private bridge, reachable from
each other by name, removed without a trace, and nobody else's links reused.

Names, addresses and the hosts-line marker are this test's own (monkeypatched), so a
local cluster running on the machine meanwhile is not disturbed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from diver import localnodes
from tests.conftest import missing_data

_SERVE = (
    "import socket; s = socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen(); "
    "c, a = s.accept(); print(socket.gethostname(), a[0])"
)
_CONNECT = "import socket; socket.create_connection(('{}', 7777), timeout=10)"


@pytest.fixture()
def own_names(monkeypatch: pytest.MonkeyPatch) -> list[localnodes.Node]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        missing_data("needs root, ip and unshare for network namespaces")
    tag = os.getpid() % 200
    monkeypatch.setattr(localnodes, "BRIDGE", f"dvtbr{tag}")
    monkeypatch.setattr(localnodes, "CONTROLLER_ADDRESS", f"198.19.{tag + 50}.1")
    monkeypatch.setattr(localnodes, "HOSTS_MARKER", f"# diver localnodes test {tag}")
    return [localnodes.Node(f"t{tag}n{i}", f"198.19.{tag + 50}.{10 + i}") for i in (1, 2)]


def _leftovers(nodes: list[localnodes.Node]) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    hosts = Path("/etc/hosts").read_text()
    found = [n.namespace for n in nodes if n.namespace in netns]
    found += [
        name
        for name in (localnodes.BRIDGE, *(n.veth for n in nodes))
        if f" {name}:" in links or f" {name}@" in links
    ]
    found += [line for line in hosts.splitlines() if line.endswith(localnodes.HOSTS_MARKER)]
    return found


def test_nodes_reach_each_other_by_name_and_leave_nothing(
    own_names: list[localnodes.Node], tmp_path: Path
) -> None:
    state = tmp_path / "nodes.json"
    hosts_before = Path("/etc/hosts").read_text()
    try:
        localnodes.create(own_names, state)
        assert localnodes.ready(own_names, state)
        first, second = own_names
        server = subprocess.Popen(
            localnodes.in_node(second, [sys.executable, "-c", _SERVE]),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(50):  # until the server listens
            client = subprocess.run(
                localnodes.in_node(first, [sys.executable, "-c", _CONNECT.format(second.name)]),
                capture_output=True,
                text=True,
            )
            if client.returncode == 0:
                break
        assert client.returncode == 0, client.stderr[-500:]
        # the server saw its own hostname and the first node's address
        assert server.communicate(timeout=30)[0].split() == [second.name, first.address]
    finally:
        removed = localnodes.remove(state)
    assert set(removed) >= {n.namespace for n in own_names} | {localnodes.BRIDGE}
    assert _leftovers(own_names) == []
    assert Path("/etc/hosts").read_text() == hosts_before
    assert not state.exists()


def test_a_bridge_of_someone_else_is_never_reused(
    own_names: list[localnodes.Node], tmp_path: Path
) -> None:
    subprocess.run(["ip", "link", "add", localnodes.BRIDGE, "type", "bridge"], check=True)
    try:
        with pytest.raises(localnodes.LocalNodesError, match="not made by diver"):
            localnodes.create(own_names, tmp_path / "nodes.json")
        assert _leftovers(own_names) == [localnodes.BRIDGE]  # theirs, untouched
    finally:
        subprocess.run(["ip", "link", "del", localnodes.BRIDGE], check=False)


def test_remove_takes_only_the_hosts_lines_of_the_nodes_it_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopping one cluster folder never takes another cluster's (or a user's) lines:
    CI failed when a folder that made no nodes removed marked lines it did not write."""
    hosts = tmp_path / "hosts"
    monkeypatch.setattr(localnodes, "HOSTS_FILE", hosts)
    theirs = localnodes.Node("dnode1", "198.19.0.11")
    ours = localnodes.Node("dnode2", "198.19.0.12")
    user = "10.0.0.5 fileserver"
    hosts.write_text(f"127.0.0.1 localhost\n{user}\n{localnodes.hosts_line(theirs)}\n")
    nothing = tmp_path / "no-nodes.json"  # a cluster folder that never made nodes
    assert localnodes.remove(nothing) == []
    assert localnodes.hosts_line(theirs) in hosts.read_text().splitlines()

    stale = f"198.19.0.99 dnode2 {localnodes.HOSTS_MARKER}"  # an earlier start's, unrecorded
    hosts.write_text(hosts.read_text() + stale + "\n")
    localnodes._add_hosts_lines([ours])
    assert stale not in hosts.read_text().splitlines()  # one address per name
    state = tmp_path / "nodes.json"
    localnodes._write_state(state, [ours])
    assert localnodes.remove(state) == [f"{hosts} lines"]
    assert hosts.read_text().splitlines() == [
        "127.0.0.1 localhost",
        user,
        localnodes.hosts_line(theirs),
    ]
