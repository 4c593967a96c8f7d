"""A real SLURM cluster on this machine, for tests and demos.

``diver localslurm start`` brings up munge, a private MariaDB, ``slurmdbd``,
``slurmctld`` and ``slurmd`` (Debian's ``slurmctld slurmd slurm-client munge slurmdbd
mariadb-server`` packages) with one node ``localhost`` that has this machine's cores,
most of its memory and two fake GPUs (gres.conf ``File=/dev/null`` / ``/dev/zero``:
enough for ``--gpus`` requests to schedule; no CUDA behind them).  ``--nodes N`` runs
N slurmd instead, each on a simulated node of its own (:mod:`diver.localnodes`: a
network and UTS namespace on a private bridge), for multi-node jobs.  Accounting is on
because without it ``sacct`` fails and a cancelled job looks UNKNOWN forever
(``../shared/notes/STACK.md``).  ``diver localslurm stop`` ends every daemon it started.

Why so careful: the Snakemake SLURM jobstep strips ``SLURM_CONF`` before its nested
``srun``, so the config has to live at ``/etc/slurm/slurm.conf``.  This module only
ever writes that path as a symlink to its own state folder, refuses to run unless
root, and refuses if a ``slurm.conf`` it did not write is present — a real site's
``/etc/slurm`` is never touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from diver import localnodes
from diver.errors import DiverError
from diver.localnodes import CONTROLLER_ADDRESS, Node

STATE_DIR = Path(os.environ.get("DIVER_LOCALSLURM_DIR", "/var/lib/diver-localslurm"))
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by diver localslurm"
CLUSTER = "diverlocal"
PARTITION = "debug"
DB_PORT = 3307
DB_USER = "slurm"
DB_PASS = "diver-localslurm"
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")


class LocalSlurmError(DiverError, RuntimeError):
    """The local test cluster cannot be started here; the message says why."""


@dataclass(frozen=True)
class Paths:
    """Every file of the local cluster, under one state folder."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def gres(self) -> Path:
        return self.root / "etc" / "gres.conf"

    @property
    def dbd_conf(self) -> Path:
        return self.root / "etc" / "slurmdbd.conf"

    @property
    def db_dir(self) -> Path:
        return self.root / "mysql"

    @property
    def db_socket(self) -> Path:
        return self.root / "run" / "mysqld.sock"

    @property
    def logs(self) -> Path:
        return self.root / "log"

    @property
    def run(self) -> Path:
        return self.root / "run"

    def pidfile(self, daemon: str) -> Path:
        return self.run / f"{daemon}.pid"

    @property
    def nodes_record(self) -> Path:
        """The simulated nodes of a ``--nodes N`` cluster (:mod:`diver.localnodes`)."""
        return self.root / "nodes.json"

    def slurmd_pidfile(self, node: str) -> Path:
        """slurmd's pidfile when there are several nodes, one per node (``node`` ``%n``:
        the pattern slurm.conf names it by)."""
        return self.run / f"slurmd-{node}.pid"

    def slurmd_log(self, node: str) -> Path:
        """slurmd's log when there are several nodes, as :meth:`slurmd_pidfile`."""
        return self.logs / f"slurmd-{node}.log"


def missing_requirements() -> str | None:
    """Why this machine cannot run the local cluster, or None when it can."""
    if os.geteuid() != 0:
        return "the local SLURM cluster runs only as root"
    absent = [
        exe
        for exe in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct")
        if shutil.which(exe) is None and not Path("/usr/sbin", exe).exists()
    ]
    if absent:
        return (
            f"missing {', '.join(absent)}; install the Debian packages: "
            f"apt-get install -y {' '.join(PACKAGES)}"
        )
    foreign = foreign_config()
    if foreign:
        return foreign
    return None


# Where SLURM clients look for their configuration besides /etc/slurm/slurm.conf:
# Debian's old path, and configless mode's cache (slurmd --conf-server / DNS SRV).
# Configless mode without a cache is found through DNS (:func:`_configless_dns`).
OTHER_CONF_SOURCES = (Path("/etc/slurm-llnl/slurm.conf"), Path("/run/slurm/conf/slurm.conf"))


def _ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(errors="replace")
    except OSError:
        return False


def foreign_config() -> str | None:
    """A message when this machine's SLURM configuration belongs to someone else (a real
    site): every place a SLURM client reads it from is checked, not only /etc/slurm."""
    found = []
    env_conf = os.environ.get("SLURM_CONF")
    if env_conf and not _ours(Path(env_conf)):
        found.append(f"SLURM_CONF={env_conf}")
    for path in (SYSTEM_CONF, *OTHER_CONF_SOURCES):
        if (path.exists() or path.is_symlink()) and not _ours(path):
            found.append(str(path))
    for pid in _pids():
        name = _command_name(pid)
        if name == "slurmd" and b"--conf-server" in _cmdline(pid):
            found.append(f"slurmd --conf-server (pid {pid})")
    found.extend(_configless_dns())
    if not found:
        return None
    return (
        f"this machine has SLURM configured ({', '.join(found)}), not by diver localslurm; "
        "the local test cluster never touches a real site's config"
    )


# DNS record type SRV and class IN (RFC 1035/2782), the query SLURM's configless mode makes.
_SRV, _IN = 33, 1


def _configless_dns() -> list[str]:
    """``["DNS SRV _slurmctld._tcp"]`` when DNS announces a SLURM controller here.

    With no slurm.conf anywhere, slurmd and the SLURM clients look up the SRV record
    ``_slurmctld._tcp`` with the system resolver's search rules (``res_nsearch`` on
    /etc/resolv.conf's search domains); a site announced that way is a real one.  The
    same libresolv call is made here, so the answer is the one SLURM would get.
    """
    try:
        resolv = ctypes.CDLL(ctypes.util.find_library("resolv") or "libresolv.so.2")
    except OSError:  # no libresolv (not glibc): SLURM's configless lookup needs it too
        return []
    answer = ctypes.create_string_buffer(4096)
    size = resolv.res_search(b"_slurmctld._tcp", _IN, _SRV, answer, len(answer))
    # res_search gives -1 for NXDOMAIN and for an answer without records; the answer
    # count (header bytes 6-7) must still be checked against a truncated reply.
    if size >= 12 and int.from_bytes(answer.raw[6:8], "big") > 0:
        return ["DNS SRV _slurmctld._tcp"]
    return []


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise LocalSlurmError("cannot read MemTotal from /proc/meminfo")


def slurm_conf(paths: Paths, cpus: int, memory_mb: int, nodes: list[Node] | None = None) -> str:
    """slurm.conf of the local cluster (the settings STACK.md verified).

    One node ``localhost`` by default; with ``nodes`` (``--nodes N``), one slurmd per
    simulated node, each declaring the machine's cores and two fake GPUs
    (``SlurmdParameters=config_overrides`` lets a node declare more than it holds, so
    multi-rank jobs fit on a 2-core machine), and the controller at the bridge's
    address, which the nodes' namespaces reach.
    """
    if nodes:
        controller = CONTROLLER_ADDRESS
        slurmd_files = (
            f"SlurmdParameters=config_overrides\n"
            f"SlurmdSpoolDir={paths.root / 'spool' / '%n'}\n"
            f"SlurmdPidFile={paths.slurmd_pidfile('%n')}\n"
            f"SlurmdLogFile={paths.slurmd_log('%n')}\n"
        )
        node_lines = "".join(
            f"NodeName={n.name} NodeAddr={n.address} CPUs={cpus} RealMemory={memory_mb} "
            "Gres=gpu:2 State=UNKNOWN\n"
            for n in nodes
        )
        names = ",".join(n.name for n in nodes)
    else:
        controller = "127.0.0.1"
        slurmd_files = (
            f"SlurmdSpoolDir={paths.root / 'spool'}\n"
            f"SlurmdPidFile={paths.pidfile('slurmd')}\n"
            f"SlurmdLogFile={paths.logs / 'slurmd.log'}\n"
        )
        node_lines = (
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} "
            "Gres=gpu:2 State=UNKNOWN\n"
        )
        names = "localhost"
    return f"""{MARKER} ({paths.root}); removed by `diver localslurm stop`
ClusterName={CLUSTER}
SlurmctldHost=localhost({controller})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
EnforcePartLimits=ALL
MinJobAge=600
JobRequeue=1
KillWait=30
ReturnToService=2
GresTypes=gpu
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation={paths.root / "state"}
SlurmctldPidFile={paths.pidfile("slurmctld")}
SlurmctldLogFile={paths.logs / "slurmctld.log"}
{slurmd_files}SlurmctldTimeout=30
SlurmdTimeout=30
{node_lines}PartitionName={PARTITION} Nodes={names} Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf() -> str:
    # Two fake GPUs: `Count=2` without File= is refused, so point at two device nodes.
    return f"""{MARKER}
AutoDetect=off
Name=gpu File=/dev/null
Name=gpu File=/dev/zero
"""


def slurmdbd_conf(paths: Paths) -> str:
    return f"""{MARKER}
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile={paths.pidfile("slurmdbd")}
LogFile={paths.logs / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={DB_PORT}
StorageUser={DB_USER}
StoragePass={DB_PASS}
StorageLoc=slurm_acct_db
"""


def _run(cmd: list[str], *, what: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise LocalSlurmError(
            f"{what} failed ({' '.join(cmd)}, exit {proc.returncode}):\n"
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc.stdout


def _wait(check: object, what: str, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.25)
    tail = ""
    if log is not None and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise LocalSlurmError(f"{what} did not come up within {timeout:.0f} s{tail}")


def _command_name(pid: int) -> str | None:
    """The program a process runs (its argv[0]'s base name), None when it is gone."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return None
    return Path(argv0.decode(errors="replace")).name


def _pid_alive(pidfile: Path, daemon: str | None = None) -> int | None:
    """The live process a pidfile names, if it runs ``daemon`` (default: the pidfile's
    stem).  A stale pidfile whose number now belongs to an unrelated process is not
    ours: nothing is ever signalled on its word alone."""
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 1:
        return None
    if _command_name(pid) != (daemon or pidfile.stem):
        return None
    return pid


def _start_munge(paths: Paths) -> None:
    if _munge_ok():
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        _run(["mungekey", "--create", "--keyfile", str(key)], what="creating the munge key")
        shutil.chown(key, "munge", "munge")
        key.chmod(0o600)
    for folder in (Path("/run/munge"), Path("/var/log/munge"), Path("/var/lib/munge")):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], what="starting munged")
    _wait(_munge_ok, "munged", 10)


def _munge_ok() -> bool:
    if shutil.which("munge") is None:
        return False
    proc = subprocess.run(
        "munge -n | unmunge", shell=True, capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


def _start_mariadb(paths: Paths) -> None:
    if _pid_alive(paths.pidfile("mariadbd")):
        return
    if not (paths.db_dir / "mysql").exists():
        paths.db_dir.mkdir(parents=True, exist_ok=True)
        _run(
            [
                "mariadb-install-db",
                f"--datadir={paths.db_dir}",
                "--user=root",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
            ],
            what="initialising the accounting database",
        )
    log = paths.logs / "mariadb.log"
    with log.open("ab") as fh:
        subprocess.Popen(
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={paths.db_dir}",
                f"--socket={paths.db_socket}",
                f"--pid-file={paths.pidfile('mariadbd')}",
                f"--port={DB_PORT}",
                "--bind-address=127.0.0.1",
                "--user=root",
                "--innodb-buffer-pool-size=64M",
                "--skip-name-resolve",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _wait(paths.db_socket.exists, "mariadbd", 60, log)
    sql = (
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{DB_PASS}';"
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'localhost' IDENTIFIED BY '{DB_PASS}';"
        "CREATE DATABASE IF NOT EXISTS slurm_acct_db;"
        f"GRANT ALL ON slurm_acct_db.* TO '{DB_USER}'@'127.0.0.1';"
        f"GRANT ALL ON slurm_acct_db.* TO '{DB_USER}'@'localhost';"
        "FLUSH PRIVILEGES;"
    )
    deadline = time.monotonic() + 30
    while True:
        proc = subprocess.run(
            ["mariadb", f"--socket={paths.db_socket}", "-u", "root", "-e", sql],
            capture_output=True,
            text=True,
        )
        if proc.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise LocalSlurmError(f"cannot set up the accounting database: {proc.stderr.strip()}")
        time.sleep(0.5)


def _install_conf(paths: Paths, nodes: list[Node]) -> None:
    for folder in (paths.root / "etc", paths.root / "state", paths.root / "spool", paths.logs,
                   paths.run):
        folder.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        (paths.root / "spool" / node.name).mkdir(exist_ok=True)
    cpus = os.cpu_count() or 1
    memory = max(1000, int(_memory_mb() * 0.8))
    paths.conf.write_text(slurm_conf(paths, cpus, memory, nodes))
    paths.gres.write_text(gres_conf())
    paths.dbd_conf.write_text(slurmdbd_conf(paths))
    paths.dbd_conf.chmod(0o600)  # slurmdbd refuses a world-readable config (password)
    SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
    for name, target in (("slurm.conf", paths.conf), ("gres.conf", paths.gres),
                         ("slurmdbd.conf", paths.dbd_conf)):
        link = SYSTEM_CONF.parent / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            if MARKER not in link.read_text(errors="replace"):
                raise LocalSlurmError(f"{link} exists and was not written by diver localslurm")
            link.unlink()
        link.symlink_to(target)


def _daemon_pidfile(paths: Paths, label: str) -> tuple[Path, str]:
    """The pidfile and program of a daemon label (``slurmd@dnode1``: node dnode1's slurmd)."""
    program, _, node = label.partition("@")
    return (paths.slurmd_pidfile(node) if node else paths.pidfile(program)), program


def _labels(paths: Paths) -> list[str]:
    """The daemons of this cluster in stopping order (slurmds first; munged excluded)."""
    nodes = localnodes.recorded(paths.nodes_record)
    slurmds = [f"slurmd@{n.name}" for n in nodes] or ["slurmd"]
    return [*slurmds, *(d for d in DAEMONS if d not in ("slurmd", "munged"))]


def _start_daemon(paths: Paths, label: str, cmd: list[str]) -> None:
    pidfile, program = _daemon_pidfile(paths, label)
    if _pid_alive(pidfile, program):
        return
    _run(cmd, what=f"starting {label}")
    node = label.partition("@")[2]
    log = paths.slurmd_log(node) if node else paths.logs / f"{label}.log"
    _wait(lambda: _pid_alive(pidfile, program) is not None, label, 20, log)


def _idle(count: int) -> bool:
    """Whether all ``count`` nodes are up (idle, or already running jobs)."""
    proc = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, check=False
    )
    states = proc.stdout.split()
    return proc.returncode == 0 and len(states) == count and set(states) <= {"idle", "mix", "alloc"}


def _accounting_ok() -> bool:
    proc = subprocess.run(
        ["sacctmgr", "-n", "-P", "list", "cluster", "format=cluster"],
        capture_output=True, text=True, check=False,
    )
    return proc.returncode == 0 and CLUSTER in proc.stdout


def start(root: Path = STATE_DIR, nodes: int = 1) -> Paths:
    """Start (or confirm) the local cluster; returns its paths once every node is idle.

    ``nodes`` > 1: that many slurmd, each on its own simulated node
    (:mod:`diver.localnodes`).  A cluster already running with another node count is
    an error (stop it first): its jobs would lose their nodes.
    """
    reason = missing_requirements()
    if reason:
        raise LocalSlurmError(reason)
    paths = Paths(root)
    wanted = localnodes.plan(nodes) if nodes != 1 else []
    running = {label for label, up in status(root).items() if up and label != "munged"}
    current = localnodes.recorded(paths.nodes_record)
    if running and [n.name for n in current] != [n.name for n in wanted]:
        raise LocalSlurmError(
            f"the local cluster runs with {len(current) or 1} node(s), not {nodes}; "
            "`diver localslurm stop` it first"
        )
    links_were_ours = all(
        (SYSTEM_CONF.parent / name).is_symlink()
        for name in ("slurm.conf", "gres.conf", "slurmdbd.conf")
    )
    nodes_were_up = bool(wanted) and localnodes.ready(wanted, paths.nodes_record)
    try:
        _start_all(paths, wanted)
    except BaseException:
        # Half a cluster is worse than none: stop what this call started, and take
        # back the nodes and links it installed, before reporting the failure.
        _stop_daemons(paths, [label for label in _labels(paths) if label not in running])
        if wanted and not nodes_were_up:
            localnodes.remove(paths.nodes_record)
        if not links_were_ours:
            _remove_links(paths)
        raise
    return paths


def _start_all(paths: Paths, nodes: list[Node]) -> None:
    _install_conf(paths, nodes)
    _start_munge(paths)
    _start_mariadb(paths)
    _start_daemon(paths, "slurmdbd", ["slurmdbd"])
    _wait(lambda: subprocess.run(["sacctmgr", "-n", "list", "cluster"], capture_output=True)
          .returncode == 0, "slurmdbd", 30, paths.logs / "slurmdbd.log")
    if not _accounting_ok():
        _run(["sacctmgr", "-i", "add", "cluster", CLUSTER], what="registering the cluster")
    _start_daemon(paths, "slurmctld", ["slurmctld", "-c"])
    if not nodes:
        _start_daemon(paths, "slurmd", ["slurmd", "-N", "localhost"])
    elif not localnodes.ready(nodes, paths.nodes_record):
        localnodes.create(nodes, paths.nodes_record)
    for node in nodes:
        _start_daemon(paths, f"slurmd@{node.name}",
                      localnodes.in_node(node, ["slurmd", "-N", node.name]))
    _wait(lambda: _idle(len(nodes) or 1), "the nodes", 30, paths.logs / "slurmctld.log")


def stop(root: Path = STATE_DIR) -> list[str]:
    """Stop every daemon of the local cluster, remove its simulated nodes (namespaces,
    bridge, /etc/hosts lines) and its /etc/slurm links."""
    paths = Paths(root)
    # munged is shared with anything else on the machine that uses munge
    stopped = _stop_daemons(paths, _labels(paths))
    stopped += localnodes.remove(paths.nodes_record)
    _remove_links(paths)
    return stopped


def _stop_daemons(paths: Paths, labels: list[str]) -> list[str]:
    """SIGTERM (then SIGKILL after 20 s) each daemon whose pidfile names a live process
    running that daemon; returns the ones stopped."""
    stopped = []
    for label in labels:
        pid = _pid_alive(*_daemon_pidfile(paths, label))
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        stopped.append(label)
    return stopped


def _remove_links(paths: Paths) -> None:
    """Remove the /etc/slurm links that point into this cluster's folder (resolved paths
    compared, not string prefixes: ``/var/lib/diver-localslurm-site`` is not ours)."""
    root = paths.root.resolve()
    for name in ("slurm.conf", "gres.conf", "slurmdbd.conf"):
        link = SYSTEM_CONF.parent / name
        if not link.is_symlink():
            continue
        target = Path(os.readlink(link))
        target = (link.parent / target) if not target.is_absolute() else target
        if target.resolve().is_relative_to(root):
            link.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return False
    return state != "Z"


def status(root: Path = STATE_DIR) -> dict[str, bool]:
    """Which daemons of the local cluster are running (one slurmd per node)."""
    paths = Paths(root)
    running = {
        label: _pid_alive(*_daemon_pidfile(paths, label)) is not None for label in _labels(paths)
    }
    running["munged"] = _munge_ok()
    return running
