"""`diver track server`: a real MLflow server that jobs log runs and artifacts to."""

from __future__ import annotations

import base64
import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities.view_type import ViewType

from diver.tracking.parent import ensure_parent_run
from diver.tracking.runs import child_run
from diver.tracking.server import CredentialsError, allowed_hosts, check_bind, prepare_auth
from tests.conftest import missing_data


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(store: Path, *flags: str, host: str = "127.0.0.1") -> Iterator[str]:
    """``diver track server`` with ``flags``, up and answering; yields its URI."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "diver", "track", "server", "--store", str(store),
         "--port", str(port), "--workers", "1", *flags],
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    uri = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "server did not come up in 90 s"
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses with a socket listening on ``port`` (from /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def test_server_takes_runs_and_artifacts_from_jobs(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running_server(store) as uri:  # the defaults: loopback, no credentials
        assert _listening_addresses(int(uri.rsplit(":", 1)[1])) == {"127.0.0.1"}
        parent = ensure_parent_run(uri, "server-study", "server-study")
        artifact = tmp_path / "metrics.json"
        artifact.write_text('{"val_loss": 0.5}')
        with child_run(uri, parent, stage="pretrain", cell="c") as run:
            run.log_metrics({"val_loss": 0.5}, step=1)
            run.log_artifact(artifact)
        client = MlflowClient(uri)
        assert client.get_run(run.run_id).data.metrics == {"val_loss": 0.5}
        assert [f.path for f in client.list_artifacts(run.run_id)] == ["metrics.json"]
        # runs in the SQLite file on the server's disk, artifacts proxied into the store
        assert (store / "mlflow.db").exists()
        assert list((store / "artifacts").rglob("metrics.json"))


def test_the_server_binds_loopback_unless_exposed_on_purpose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 13: MLflow's server has no authentication here, so it listens on 127.0.0.1
    by default and another interface needs --expose; the Host allow-list is exactly this
    machine's names, the bound address and the extras (no private ranges)."""
    from diver.cli import build_parser, main

    args = build_parser().parse_args(["track", "server", "--store", str(tmp_path)])
    assert args.host == "127.0.0.1" and not args.expose
    assert main(["track", "server", "--store", str(tmp_path / "s"), "--host", "0.0.0.0"]) == 2
    assert "--expose" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before anything was created
    check_bind("0.0.0.0", expose=True)  # an explicit choice is honoured
    check_bind("127.0.0.1", expose=False)
    hosts = allowed_hosts(5000, ["login01.cluster"], host="10.1.2.3")
    assert "10.1.2.3:5000" in hosts and "login01.cluster" in hosts and "localhost" in hosts
    assert not [h for h in hosts if "*" in h]



def test_the_generated_credential_is_made_once_and_kept(tmp_path: Path) -> None:
    """The admin password only takes effect when MLflow creates the user database, so a
    restart must reuse it; a user database without its credential file is an error that
    names both (never a silently new password that the database does not know)."""
    first = prepare_auth(tmp_path)
    again = prepare_auth(tmp_path)
    assert again.password == first.password and len(first.password) >= 24
    assert again.secret_key == first.secret_key
    for secret in (first.credentials, first.folder / "secret_key", first.config):
        assert secret.stat().st_mode & 0o077 == 0, secret
    assert first.environment()["MLFLOW_AUTH_ADMIN_PASSWORD"] == first.password
    assert "NO_PERMISSIONS" in first.config.read_text()
    first.users.write_bytes(b"")  # the server created its user database
    first.credentials.unlink()
    with pytest.raises(CredentialsError, match=r"users\.db.*credentials"):
        prepare_auth(tmp_path)

@contextmanager
def network_namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair: yields (namespace, the
    address of this side, the address of its side).

    The addresses come from 198.18.0.0/15 (reserved for benchmarking: nobody's network),
    a /30 per test process so parallel workers do not meet; everything is removed
    afterwards, also when the test fails (STACK.md, "Several nodes on one machine").
    """
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing_data("needs root and iproute2 (ip) to create a network namespace")
    tag = os.getpid() % 16384
    name, near, far = f"diver-t{tag}", f"dvh{tag}", f"dvn{tag}"
    base = f"198.{18 + tag // 8192}.{(tag % 8192) // 64}.{(tag % 64) * 4}"
    prefix, last = base.rsplit(".", 1)
    here, there = f"{prefix}.{int(last) + 1}", f"{prefix}.{int(last) + 2}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    try:
        ip("netns", "add", name)
        ip("link", "add", near, "type", "veth", "peer", "name", far)
        ip("link", "set", far, "netns", name)
        ip("addr", "add", f"{here}/30", "dev", near)
        ip("link", "set", near, "up")
        ip("netns", "exec", name, "ip", "addr", "add", f"{there}/30", "dev", far)
        ip("netns", "exec", name, "ip", "link", "set", far, "up")
        ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, here, there
    finally:
        subprocess.run(["ip", "link", "del", near], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


_CLIENT = """
import base64, sys, urllib.error, urllib.request
url, host, user, password, method = sys.argv[1:6]
request = urllib.request.Request(url, method=method, headers={"Host": host})
if method == "POST":
    request.data = b'{"name": "from-the-network"}'
    request.add_header("Content-Type", "application/json")
if user:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


def test_an_exposed_server_wants_the_generated_credentials_from_the_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 13 item 2, reproduced from another host: a client in a network namespace,
    reaching the server's non-loopback address, forging ``Host: localhost``, used to
    create experiments.  Exposed, the server answers 401 without the credentials it
    generated into STORE/auth/credentials (mode 600, MLflow's credentials format) and
    accepts them; the artifact proxy refuses paths outside the store."""
    store = tmp_path / "store"
    with (
        network_namespace() as (namespace, here, _),
        running_server(store, "--host", here, "--expose", host=here) as uri,
    ):

        def remote(path: str, host: str, login: tuple[str, str] = ("", ""),
                   method: str = "GET") -> int:
            out = subprocess.run(
                ["ip", "netns", "exec", namespace, sys.executable, "-c", _CLIENT,
                 f"{uri}{path}", host, *login, method],
                check=True, capture_output=True, text=True, timeout=60,
            )
            return int(out.stdout)

        create = "/api/2.0/mlflow/experiments/create"
        search = "/api/2.0/mlflow/experiments/search?max_results=5"
        port = uri.rsplit(":", 1)[1]
        assert remote(create, "localhost", method="POST") == 401  # the attack
        assert remote(search, f"localhost:{port}") == 401

        credentials = configparser.ConfigParser()
        credentials.read(store / "auth" / "credentials")
        user = credentials["mlflow"]["mlflow_tracking_username"]
        password = credentials["mlflow"]["mlflow_tracking_password"]
        assert len(password) >= 24
        assert (store / "auth" / "credentials").stat().st_mode & 0o077 == 0
        assert remote(search, f"{here}:{port}", (user, "wrong-password-0000")) == 401
        assert remote(search, f"{here}:{port}", (user, password)) == 200
        assert remote(create, f"{here}:{port}", (user, password), "POST") == 200

        # jobs: MLflow's client reads the same credentials (here from the environment)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        assert MlflowClient(uri).get_experiment_by_name("from-the-network") is not None
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        escape = urllib.request.Request(
            f"{uri}/api/2.0/mlflow-artifacts/artifacts/..%2F..%2Fescaped.txt",
            data=b"x", method="PUT", headers={"Authorization": f"Basic {token}"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(escape, timeout=10)
        assert refused.value.code == 400
        assert not list(tmp_path.rglob("escaped.txt"))


def test_simultaneous_first_calls_against_a_server_leave_one_parent(tmp_path: Path) -> None:
    """Issue 13 item 10: a server has no file lock to serialise look-up-or-create, and
    four simultaneous first calls used to leave three parent runs.  Every caller must
    get the same run and exactly one active parent must remain (losers delete theirs).
    Each round is a new experiment, so the callers also race to set its first tags
    (kind, description), which MLflow's server does by read-then-insert: the losers
    used to fail on the unique key."""
    callers = 6
    with running_server(tmp_path / "store") as uri:
        for attempt in range(3):  # a few rounds: one race may happen to serialise
            study = f"race-{attempt}"
            start = threading.Barrier(callers)

            def first_call(_: int, study: str = study, start: threading.Barrier = start) -> str:
                start.wait()
                return ensure_parent_run(uri, study, study, description="a study")

            with ThreadPoolExecutor(callers) as pool:
                got = list(pool.map(first_call, range(callers)))
            assert len(got) == callers
            client = MlflowClient(uri)
            experiment = client.get_experiment_by_name(study).experiment_id
            parents = client.search_runs(
                [experiment], f"tags.`diver.study` = '{study}'", ViewType.ACTIVE_ONLY
            )
            assert [run.info.run_id for run in parents] == [got[0]], study
            assert set(got) == {got[0]}, study
