"""Several "nodes" on one machine for the local SLURM cluster (``--nodes N``).

A multi-node job is where distributed training breaks in practice (rendezvous
address, node ranks, a checkpoint written from two hosts), and a laptop or CI machine
has one host.  Each node here is a network namespace with its own address on a bridge
this module creates, plus (for the processes started in it by :func:`in_node`) a UTS
namespace with its own hostname; the file system is the host's, as a cluster's NFS
would be.  Node names resolve through marked ``/etc/hosts`` lines.

Safety (``../shared/notes/STACK.md``, "Several nodes on one machine"): the addresses
come from 198.19.0.0/24, inside 198.18.0.0/15, the range reserved for benchmarking
(nobody's network); the bridge has no uplink and forwarding is never turned on, so
traffic only goes between namespaces made here.  Everything created is recorded in a
state file, and :func:`remove` deletes exactly what that file lists, including only
the ``/etc/hosts`` lines of the nodes it lists (another cluster's, or a line someone
else wrote, stays), nothing else.
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from diver.atomic import replacing
from diver.errors import DiverError

BRIDGE = "diverbr0"
SUBNET = "198.19.0"
PREFIX = 24
CONTROLLER_ADDRESS = f"{SUBNET}.1"  # the bridge's own address: slurmctld, in the host
HOSTS_FILE = Path("/etc/hosts")
HOSTS_MARKER = "# diver localslurm node"
MAX_NODES = 8


class LocalNodesError(DiverError, RuntimeError):
    """The nodes cannot be created here; the message says why."""


@dataclass(frozen=True)
class Node:
    """One simulated node: its hostname, address and network namespace."""

    name: str
    address: str

    @property
    def namespace(self) -> str:
        return f"diver-{self.name}"

    @property
    def veth(self) -> str:
        """The host side of the node's link (the node side is ``eth0`` in its namespace)."""
        return f"dv-{self.name}"


def plan(count: int) -> list[Node]:
    """The nodes of an ``count``-node cluster: ``dnode1`` at .11, ``dnode2`` at .12, ..."""
    if not 2 <= count <= MAX_NODES:
        raise LocalNodesError(f"--nodes must be 1 (no namespaces) or 2..{MAX_NODES}, not {count}")
    return [Node(f"dnode{i}", f"{SUBNET}.{10 + i}") for i in range(1, count + 1)]


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LocalNodesError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _exists(*args: str) -> bool:
    return subprocess.run(["ip", *args], capture_output=True, check=False).returncode == 0


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def create(nodes: list[Node], state: Path) -> None:
    """Create the bridge, each node's namespace and link, and the hosts lines.

    Refuses when any of these names already exists without being in ``state`` (someone
    else's, or a leftover this module did not record): nothing of theirs is reused or
    changed.  On failure everything created so far is removed again.
    """
    previous = recorded(state)
    taken = [n.namespace for n in nodes if n.namespace in _namespaces()]
    if _exists("link", "show", BRIDGE):
        taken.append(f"link {BRIDGE}")
    if taken and not previous:
        raise LocalNodesError(
            f"{', '.join(taken)} already exist(s) and were not made by diver localslurm "
            f"(no record in {state}); remove them or pick another machine"
        )
    if previous:  # a previous start's nodes: take them down first, then build afresh
        remove(state)
    _write_state(state, nodes)
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{CONTROLLER_ADDRESS}/{PREFIX}", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for node in nodes:
            _ip("netns", "add", node.namespace)
            _ip("link", "add", node.veth, "type", "veth", "peer", "name", "eth0", "netns",
                node.namespace)  # fmt: skip
            _ip("link", "set", node.veth, "master", BRIDGE)
            _ip("link", "set", node.veth, "up")
            inside = ("netns", "exec", node.namespace, "ip")
            _ip(*inside, "addr", "add", f"{node.address}/{PREFIX}", "dev", "eth0")
            _ip(*inside, "link", "set", "eth0", "up")
            _ip(*inside, "link", "set", "lo", "up")
        _add_hosts_lines(nodes)
    except BaseException:
        remove(state)
        raise


def remove(state: Path) -> list[str]:
    """Delete what ``state`` records (namespaces, links, bridge, those nodes' hosts
    lines); returns what was removed.  Missing pieces are skipped.

    Without a record nothing is touched: a cluster folder that never made nodes must not
    take the hosts lines of a cluster that did.
    """
    nodes = recorded(state)
    removed = []
    present = _namespaces()
    for node in nodes:
        if _exists("link", "show", node.veth):
            _ip("link", "del", node.veth)
        if node.namespace in present:
            _ip("netns", "del", node.namespace)
            removed.append(node.namespace)
    if nodes and _exists("link", "show", BRIDGE):
        _ip("link", "del", BRIDGE)
        removed.append(BRIDGE)
    if _remove_hosts_lines(nodes):
        removed.append(f"{HOSTS_FILE} lines")
    state.unlink(missing_ok=True)
    return removed


def in_node(node: Node, argv: list[str]) -> list[str]:
    """``argv`` run inside ``node``: its network namespace and a UTS namespace with its
    hostname (SLURM's slurmd checks the host name it runs on).

    ``nsenter --net`` rather than ``ip netns exec``: the latter also gives the process
    a mount namespace with /sys remounted, which hides /sys/fs/cgroup (slurmd then
    refuses to start); the node shares the host's file systems, as on a cluster.  The
    name is passed as an argument, never pasted into the shell text.
    """
    return [
        "nsenter", f"--net=/run/netns/{node.namespace}", "unshare", "--uts", "--",
        "sh", "-c", 'hostname "$1" && shift && exec "$@"', "sh", node.name, *argv,
    ]  # fmt: skip


def ready(nodes: list[Node], state: Path) -> bool:
    """Whether exactly ``nodes`` were created and their namespaces and bridge are there."""
    present = _namespaces()
    return (
        recorded(state) == nodes
        and all(n.namespace in present for n in nodes)
        and _exists("link", "show", BRIDGE)
    )


def recorded(state: Path) -> list[Node]:
    """The nodes ``state`` records as created (none without a record)."""
    if not state.exists():
        return []
    try:
        return [Node(**entry) for entry in json.loads(state.read_text())["nodes"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise LocalNodesError(f"{state}: not a node record ({exc}); remove it by hand") from exc


def _write_state(state: Path, nodes: list[Node]) -> None:
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"nodes": [asdict(n) for n in nodes]}, indent=1) + "\n")


def hosts_line(node: Node) -> str:
    """The /etc/hosts line naming ``node``, marked as this module's."""
    return f"{node.address} {node.name} {HOSTS_MARKER}"


def _add_hosts_lines(nodes: list[Node]) -> None:
    """Add one marked line per node, replacing any marked line for the same name (a
    leftover of an earlier start whose record was lost) so a name resolves once."""
    names = {n.name for n in nodes}
    lines = [hosts_line(n) for n in nodes]
    _rewrite_hosts(lambda kept: [*_without(kept, names), *lines])


def _remove_hosts_lines(nodes: list[Node]) -> bool:
    """Remove exactly the lines :func:`_add_hosts_lines` wrote for ``nodes``."""
    ours = {hosts_line(n) for n in nodes}
    text = HOSTS_FILE.read_text() if HOSTS_FILE.exists() else ""
    if not ours & set(text.splitlines()):
        return False
    _rewrite_hosts(lambda kept: [line for line in kept if line not in ours])
    return True


def _without(lines: list[str], names: set[str]) -> list[str]:
    """``lines`` less the marked ones naming one of ``names``."""
    return [
        line
        for line in lines
        if not (line.endswith(HOSTS_MARKER) and len(line.split()) > 1 and line.split()[1] in names)
    ]


def _rewrite_hosts(edit: Callable[[list[str]], list[str]]) -> None:
    """Rewrite /etc/hosts as ``edit`` of its lines.

    Atomically (a temporary file renamed over it) where possible; in containers
    /etc/hosts is often a bind mount, which a rename cannot replace (EBUSY/EXDEV), and
    there it is rewritten in place (a small file, one write).
    """
    new = "\n".join(edit(HOSTS_FILE.read_text().splitlines())) + "\n"
    mode = HOSTS_FILE.stat().st_mode & 0o7777
    try:
        with replacing(HOSTS_FILE) as tmp:
            tmp.write_text(new)
            tmp.chmod(mode)
    except OSError as exc:
        if exc.errno not in (errno.EBUSY, errno.EXDEV):
            raise
        with HOSTS_FILE.open("r+") as fh:
            fh.write(new)
            fh.truncate()
