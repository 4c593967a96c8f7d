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

from mlflow import MlflowClient

from diver.tracking.parent import ensure_parent_run
from diver.tracking.runs import child_run


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
