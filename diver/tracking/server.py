"""``diver track server``: the study's MLflow server, started once on the login node.

On a cluster many grid cells log at once over shared storage, where one SQLite file
is not safe; jobs log to this server instead (put its URL in
``cluster_profiles/slurm/site.yaml`` as ``tracking_uri``).  The server keeps runs in
an SQLite file on the login node's disk and proxies artifacts into ``--store``.

It runs in the foreground (put it in tmux / ``nohup``); SIGTERM ends it.  Job
execution is disabled (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``): 2 processes
and ~0.5 GB instead of ~9 and 2.3 GB (STACK.md).

It binds 127.0.0.1 unless told otherwise.  Binding another interface (for compute
nodes) takes ``--expose``, a deliberate choice, and then always runs MLflow's
basic-auth app (``mlflow[auth]``): without it anyone who reaches the port can create,
delete and upload runs, and a forged ``Host`` header passes MLflow's allow-list.  The
admin credential is generated once into ``STORE/auth/credentials`` (mode 600, in the
format of MLflow's own ``~/.mlflow/credentials``, which jobs read); users and
permissions live in ``STORE/auth/users.db``.  ``--auth`` turns the same on for a
loopback server (a shared login node's other users reach loopback too).  MLflow 3
checks the Host header against an allow-list: exactly this machine's names, the bound
address and the ``--allowed-host`` values (no address ranges).  The artifact proxy
writes only under ``STORE/artifacts`` (MLflow refuses paths that leave it).
"""

from __future__ import annotations

import configparser
import os
import secrets
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from diver.atomic import temporary_name
from diver.errors import DiverError
from diver.tracking.ui_app import APP_NAME

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


ADMIN = "admin"


class ExposureError(DiverError, ValueError):
    """A bind that would expose the server without being asked to."""


class CredentialsError(DiverError, RuntimeError):
    """The server's user database exists but the credential it was created with is gone."""


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
            f"--host {host} would open the MLflow server to the network; pass --expose to "
            "do that (it then requires the generated credentials, see STORE/auth/"
            "credentials), or keep the default 127.0.0.1"
        )


@dataclass(frozen=True)
class AuthFiles:
    """The basic-auth app's files in ``STORE/auth`` and the secrets read from them."""

    folder: Path

    @property
    def credentials(self) -> Path:
        """The admin credential, in MLflow's ``~/.mlflow/credentials`` format."""
        return self.folder / "credentials"

    @property
    def secret_key_file(self) -> Path:
        """The CSRF secret every server worker shares."""
        return self.folder / "secret_key"

    @property
    def password(self) -> str:
        parser = configparser.ConfigParser()
        parser.read(self.credentials)
        return parser["mlflow"]["mlflow_tracking_password"]

    @property
    def secret_key(self) -> str:
        return self.secret_key_file.read_text().strip()

    @property
    def config(self) -> Path:
        """The auth app's settings (``MLFLOW_AUTH_CONFIG_PATH``)."""
        return self.folder / "basic_auth.ini"

    @property
    def users(self) -> Path:
        return self.folder / "users.db"

    def environment(self) -> dict[str, str]:
        """What the server process needs: the settings file, the admin password (read
        only when the user database is first created) and the CSRF secret (the same for
        every worker, so forms posted to one are accepted by another)."""
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(self.config),
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN,
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
        }


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` readable by its owner only, atomically (never world-readable,
    not even for a moment: the mode is set when the file is created)."""
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _auth_settings(users: Path) -> str:
    """The auth app's ini: new users get no permission until the admin grants one."""
    return (
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{users}\n"
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )


def prepare_auth(store: Path) -> AuthFiles:
    """The store's auth files, generated on first use and reused afterwards.

    The admin password only takes effect when MLflow creates ``users.db``; a user
    database whose credential file is gone cannot be opened again by this command, so
    that is an error naming both files rather than a silently different password.
    """
    files = AuthFiles(store.resolve() / "auth")
    files.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not files.credentials.exists():
        if files.users.exists():
            raise CredentialsError(
                f"{files.users} exists but its credential file {files.credentials} is "
                "gone; restore it, or move the user database away to create a new admin "
                "credential (runs and artifacts are kept)"
            )
        _write_secret(
            files.credentials,
            "[mlflow]\n"
            f"mlflow_tracking_username = {ADMIN}\n"
            f"mlflow_tracking_password = {secrets.token_urlsafe(24)}\n",
        )
    if not files.secret_key_file.exists():
        _write_secret(files.secret_key_file, secrets.token_hex(32) + "\n")
    _write_secret(files.config, _auth_settings(files.users))
    return files


def server_command(
    store: Path, host: str, port: int, workers: int, extra_hosts: list[str], auth: bool
) -> list[str]:
    """The ``mlflow server`` command line (store folder created by the caller)."""
    store = store.resolve()
    return [
        "mlflow",
        "server",
        # basic-auth, or diver's app (MLflow's UI opening on the training runs,
        # diver.tracking.ui_app); MLflow runs one app, and the credentials come first
        "--app-name",
        "basic-auth" if auth else APP_NAME,
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


def serve(
    store: Path, host: str, port: int, workers: int, extra_hosts: list[str], auth: bool
) -> None:
    """Replace this process by the MLflow server (prints the URI jobs should use).

    ``auth`` runs the basic-auth app with the store's generated admin credential; a
    non-loopback ``host`` always does (:func:`check_bind` refused it otherwise).
    """
    auth = auth or host not in LOOPBACK
    store.mkdir(parents=True, exist_ok=True)
    (store / "artifacts").mkdir(exist_ok=True)
    cmd = server_command(store, host, port, workers, extra_hosts, auth)
    shown = socket.getfqdn() if host in {"0.0.0.0", "::"} else host
    print(f"MLflow server for jobs: tracking_uri: http://{shown}:{port}", flush=True)
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if auth:
        files = prepare_auth(store)
        os.environ.update(files.environment())
        print(
            f"Authentication on: jobs and browsers log in as {ADMIN!r} with the password "
            f"in {files.credentials} (copy that file to ~/.mlflow/credentials, mode 600, "
            "where jobs run, or export MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)",
            flush=True,
        )
    exe = shutil.which("mlflow") or str(Path(sys.executable).with_name("mlflow"))
    os.execv(exe, cmd)
