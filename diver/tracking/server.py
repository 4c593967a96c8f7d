"""``diver track server``: the study's MLflow server, started once on the login node.

On a cluster many grid cells log at once over shared storage, where one SQLite file
is not safe; jobs log to this server instead (put its URL in
``cluster_profiles/slurm/site.yaml`` as ``tracking_uri``).  The server keeps runs in
an SQLite file on the login node's disk and proxies artifacts into ``--store``.

It runs in the foreground (put it in tmux / ``nohup``); SIGTERM ends it.  Job
execution is disabled (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): 2 processes
and ~0.5 GB instead of ~9 and 2.3 GB (STACK.md).

It binds 127.0.0.1 unless told otherwise: MLflow's server has no authentication here,
so anyone who reaches it can create, delete and upload.  Binding another interface
(for compute nodes) takes ``--expose``, a deliberate choice.  MLflow 3 checks the Host
header against an allow-list: exactly this machine's names, the bound address and the
``--allowed-host`` values (no address ranges).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from diver.errors import DiverError

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class ExposureError(DiverError, ValueError):
    """A bind that would expose the unauthenticated server without being asked to."""


def allowed_hosts(port: int, extra: list[str], host: str = "127.0.0.1") -> list[str]:
    """The Host headers to accept: this machine's names, the bound address and
    ``extra``, each bare and with the port.  No wildcards or address ranges."""
    names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn(), *extra}
    if host not in {"0.0.0.0", "::"}:
        names.add(host)
    hosts = sorted(n for n in names if n)
    return [*hosts, *(f"{h}:{port}" for h in hosts)]


def check_bind(host: str, expose: bool) -> None:
    """Refuse a non-loopback bind unless ``expose`` says it is meant."""
    if host not in LOOPBACK and not expose:
        raise ExposureError(
            f"--host {host} would open the MLflow server (no authentication: anyone who "
            "reaches it can create, delete and upload runs) to the network; pass --expose "
            "to do that on a trusted network, or keep the default 127.0.0.1"
        )


def server_command(
    store: Path, host: str, port: int, workers: int, extra_hosts: list[str]
) -> list[str]:
    """The ``mlflow server`` command line (store folder created by the caller)."""
    store = store.resolve()
    return [
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--backend-store-uri",
        f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination",
        str(store / "artifacts"),
        "--allowed-hosts",
        ",".join(allowed_hosts(port, extra_hosts, host)),
    ]


def serve(store: Path, host: str, port: int, workers: int, extra_hosts: list[str]) -> None:
    """Replace this process by the MLflow server (prints the URI jobs should use)."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "artifacts").mkdir(exist_ok=True)
    cmd = server_command(store, host, port, workers, extra_hosts)
    shown = socket.getfqdn() if host in {"0.0.0.0", "::"} else host
    print(f"MLflow server for jobs: tracking_uri: http://{shown}:{port}", flush=True)
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    os.execv(exe, cmd)
