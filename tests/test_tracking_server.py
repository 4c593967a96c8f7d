"""`diver track server`: a real MLflow server that jobs log runs and artifacts to."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from diver.tracking.parent import ensure_parent_run
from diver.tracking.runs import child_run
from diver.tracking.server import allowed_hosts, check_bind


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_takes_runs_and_artifacts_from_jobs(tmp_path: Path) -> None:
    port = _free_port()
    store = tmp_path / "store"
    server = subprocess.Popen(
        [sys.executable, "-m", "diver", "track", "server", "--store", str(store),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
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
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


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
