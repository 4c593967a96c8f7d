"""diver.tracking against real MLflow stores: an SQLite file and a live ``mlflow server``.

Nothing is mocked.  Concurrency tests start real processes that block on a "go" file
so their writes overlap, then check that no run and no metric value went missing.
Tests parametrised over ``store`` run on SQLite by default and on the server under
``-m slow`` (starting the server costs ~7 s, and its 16-process test ~40 s).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from diver import tracking
from diver.tracking import TrackingTarget, provenance, stage_run
from diver.tracking.parent import ensure_parent_run
from diver.tracking.provenance import file_sha256, slurm_job_id
from diver.tracking.retry import is_transient_error, is_unique_violation, with_retry
from diver.tracking.runid import RunIdFileError, read_run_id, write_run_id
from diver.tracking.runs import child_run

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT = 90.0


# ------------------------------------------------------------------------- fixtures


def _sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 with an SQLite backend; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            _sqlite_uri(root / "server.db"),
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited ({proc.returncode}):\n{_tail(root)}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not healthy after {SERVER_START_TIMEOUT} s:\n{_tail(root)}"
                )
            time.sleep(0.25)
        yield uri
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _tail(root: Path) -> str:
    return (root / "server.log").read_text()[-3000:]


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Tracking URI of each kind of store: a fresh SQLite file, or the shared server."""
    if request.param == "sqlite":
        return _sqlite_uri(tmp_path / "results" / "mlflow.db")
    return request.getfixturevalue("mlflow_server")


@pytest.fixture
def study() -> str:
    """A study name unique to the test, so tests sharing the server never interfere."""
    return f"study-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def git_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The code's checkout set to a fresh one-commit git repository; returns its HEAD."""
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    monkeypatch.setattr(provenance, "_CODE_DIR", repo)
    return head


def _parents(client: MlflowClient, experiment: str, study: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`diver.study` = '{study}' AND tags.`diver.role` = 'parent'",
    )


def _children(client: MlflowClient, parent_id: str) -> list:
    experiment_id = client.get_run(parent_id).info.experiment_id
    return client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )


# --------------------------------------------------------------------- subprocesses

# Each worker imports everything, says it is ready, then waits for the go file so the
# tracking calls of all workers overlap (imports take ~1 s each and would otherwise
# spread the workers out).
_WORKER_PRELUDE = """
import sys, time
from pathlib import Path
from diver.tracking import parent, runid, runs
ready, go = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not go.exists():
    time.sleep(0.01)
"""

_PARENT_WORKER = (
    _WORKER_PRELUDE
    + """
uri, experiment, study = sys.argv[3:6]
print(parent.ensure_parent_run(uri, experiment, study, params={"seed": 1}))
"""
)

_CHILD_WORKER = (
    _WORKER_PRELUDE
    + """
uri, parent_file, idx, n = sys.argv[3], Path(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
with runs.child_run(
    uri, runid.read_run_id(parent_file), stage="pretrain", cell=f"cell{idx:02d}"
) as run:
    run.log_params({"idx": idx})
    for step in range(n):
        run.log_metrics({"loss": idx * 1000.0 + step}, step=step)
        if step % 50 == 49:
            run.flush()  # several batches per worker: more write transactions to collide
print(run.run_id)
"""
)


def _run_workers(code: str, per_worker_args: list[list[str]], tmp_path: Path) -> list[str]:
    """Start one process per argument list, release them together, return their stdouts."""
    sync = tmp_path / f"sync-{uuid.uuid4().hex[:6]}"
    sync.mkdir()
    go = sync / "go"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    procs = []
    for i, args in enumerate(per_worker_args):
        ready = sync / f"ready{i}"
        cmd = [sys.executable, "-c", textwrap.dedent(code), str(ready), str(go), *args]
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    deadline = time.monotonic() + 120
    while not all((sync / f"ready{i}").exists() for i in range(len(procs))):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{err[-3000:]}"
        outputs.append(out.strip().splitlines()[-1])
    return outputs


# ----------------------------------------------------------------------- parent run


def test_ensure_parent_run_is_idempotent(store: str, study: str) -> None:
    first = ensure_parent_run(store, study, study, params={"lr": 0.001, "sizes": "debug"})
    # A second call, even with edited params/tags (an edited cell config), returns the
    # same run and does not touch it.
    second = ensure_parent_run(store, study, study, params={"lr": 0.5}, tags={"extra": "x"})
    assert first == second

    client = MlflowClient(store)
    parents = _parents(client, study, study)
    assert [run.info.run_id for run in parents] == [first]
    run = parents[0]
    assert run.data.tags["diver.study"] == study
    assert run.data.tags["diver.role"] == "parent"
    assert "extra" not in run.data.tags
    assert run.data.params == {"lr": "0.001", "sizes": "debug"}
    assert run.info.run_name == study
    # One experiment of that name, holding exactly this one run.
    exp = client.get_experiment_by_name(study)
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_experiment_is_a_described_training_experiment(store: str, study: str) -> None:
    """The experiment-kind tag and the description reach the store (SQLite or a server,
    through REST), the description built from the experiment's id; a repeated call
    returns the same parent and leaves the tags as they were."""
    from diver.tracking.names import (
        EXPERIMENT_KIND_TAG,
        EXPERIMENT_KIND_TRAINING,
        EXPERIMENT_NOTE_SHA_TAG,
        EXPERIMENT_NOTE_TAG,
    )

    def note(experiment_id: str) -> str:
        return f"**{study}** in experiment {experiment_id}"

    first = ensure_parent_run(store, study, study, description=note)
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(study)
    tags = experiment.tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING
    assert tags[EXPERIMENT_NOTE_TAG] == note(experiment.experiment_id)
    digest = hashlib.sha256(tags[EXPERIMENT_NOTE_TAG].encode()).hexdigest()
    assert tags[EXPERIMENT_NOTE_SHA_TAG] == digest
    assert ensure_parent_run(store, study, study, description=note) == first
    assert client.get_experiment_by_name(study).tags == tags


def test_two_studies_share_an_experiment_with_separate_parents(store: str, study: str) -> None:
    a = ensure_parent_run(store, study, f"{study}-a")
    b = ensure_parent_run(store, study, f"{study}-b")
    assert a != b
    assert ensure_parent_run(store, study, f"{study}-a") == a


def test_sqlite_artifacts_default_beside_database(tmp_path: Path, study: str) -> None:
    db = tmp_path / "results" / "mlflow.db"
    ensure_parent_run(_sqlite_uri(db), study, study)
    exp = MlflowClient(_sqlite_uri(db)).get_experiment_by_name(study)
    assert exp.artifact_location == (db.parent / "mlartifacts").as_uri()


def test_ensure_parent_run_from_four_processes_on_fresh_sqlite(tmp_path: Path, study: str) -> None:
    # The database does not exist yet: the processes also race on MLflow's schema
    # creation and on the experiment, not only on the parent run.
    db = tmp_path / "results" / "mlflow.db"
    uri = _sqlite_uri(db)
    ids = _run_workers(_PARENT_WORKER, [[uri, "exp", study]] * 4, tmp_path)
    assert len(set(ids)) == 1, ids
    client = MlflowClient(uri)
    assert [run.info.run_id for run in _parents(client, "exp", study)] == ids[:1]
    assert len(client.search_experiments(filter_string="name = 'exp'")) == 1


def test_duplicate_parents_resolve_to_the_oldest(store: str, study: str) -> None:
    parent = ensure_parent_run(store, study, study)
    client = MlflowClient(store)
    exp_id = client.get_run(parent).info.experiment_id
    tags = {"diver.study": study, "diver.role": "parent"}
    start = client.get_run(parent).info.start_time
    # As if a racing creator on a server had made another parent: younger ones are
    # ignored, an older one wins, and a tie in start time goes to the smaller run id.
    client.create_run(exp_id, start_time=start + 10_000, tags=tags)
    assert ensure_parent_run(store, study, study) == parent
    older = [client.create_run(exp_id, start_time=start - 10_000, tags=tags) for _ in range(2)]
    tie = [older[0].info.run_id, older[1].info.run_id]
    assert ensure_parent_run(store, study, study) == min(tie)
    # A deleted parent is not a parent any more.
    client.delete_run(min(tie))
    assert ensure_parent_run(store, study, study) == max(tie)


def test_deleted_experiment_is_a_clear_error(store: str, study: str) -> None:
    ensure_parent_run(store, study, study)
    client = MlflowClient(store)
    client.delete_experiment(client.get_experiment_by_name(study).experiment_id)
    with pytest.raises(MlflowException, match="deleted"):
        ensure_parent_run(store, study, study)


def test_study_names_with_quotes(store: str, study: str) -> None:
    name = f"{study} o'brien"
    run_id = ensure_parent_run(store, study, name)
    assert ensure_parent_run(store, study, name) == run_id
    with pytest.raises(ValueError, match="quote"):
        ensure_parent_run(store, study, "both ' and \"")


# ----------------------------------------------------------------------- run-id file


def test_run_id_file_round_trip_and_atomic_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "tracking" / "parent_run_id.txt"
    write_run_id(path, "0123456789abcdef0123456789abcdef")
    assert read_run_id(path) == "0123456789abcdef0123456789abcdef"
    os.utime(path, (1_000_000, 1_000_000))
    write_run_id(path, "0123456789abcdef0123456789abcdef")  # same id: file untouched
    assert path.stat().st_mtime == 1_000_000
    write_run_id(path, "fedcba9876543210fedcba9876543210")
    assert read_run_id(path) == "fedcba9876543210fedcba9876543210"
    assert path.stat().st_mtime != 1_000_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["parent_run_id.txt"]  # no temp left
    with pytest.raises(ValueError, match="run id"):
        write_run_id(path, "not a run id")


def test_read_run_id_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(RunIdFileError, match=str(missing)):
        read_run_id(missing)
    garbled = tmp_path / "garbled.txt"
    garbled.write_text("<<<<<<< merge conflict\n")
    with pytest.raises(RunIdFileError, match=str(garbled)):
        read_run_id(garbled)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(RunIdFileError, match=str(empty)):
        read_run_id(empty)


# ------------------------------------------------------------------------ child runs


def test_child_run_is_tagged_child_of_parent(
    store: str, study: str, tmp_path: Path, git_repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    manifest = tmp_path / "manifest.parquet"
    manifest.write_bytes(os.urandom(3000))
    artifact = tmp_path / "summary.json"
    artifact.write_text("{}")
    parent = ensure_parent_run(store, study, study)

    with child_run(
        store, parent, stage="pretrain", cell="size=debug,ep=1", tags={"k": "v"}, manifest=manifest
    ) as run:
        run.log_params({"lr": 0.01, "epochs": 1})
        run.log_metrics({"loss": 2.5, "acc": 0.1}, step=3)
        run.set_tags({"phase": "done"})
        run.log_artifact(artifact, artifact_path="reports")

    client = MlflowClient(store)
    children = _children(client, parent)
    assert [c.info.run_id for c in children] == [run.run_id]
    child = children[0]
    assert child.info.status == "FINISHED"
    assert child.info.experiment_id == client.get_run(parent).info.experiment_id
    tags = child.data.tags
    assert tags["mlflow.parentRunId"] == parent
    assert tags["diver.stage"] == "pretrain"
    assert tags["diver.cell"] == "size=debug,ep=1"
    assert tags["diver.git_commit"] == git_repo
    assert tags["diver.git_dirty"] == "false"
    assert tags["diver.slurm_job_id"] == "4200_7"
    assert tags["diver.corpus_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert tags["diver.study"] == study
    assert tags["k"] == "v"
    assert tags["phase"] == "done"
    assert child.info.run_name == "pretrain:size=debug,ep=1"
    assert child.data.params == {"lr": "0.01", "epochs": "1"}
    assert child.data.metrics == {"loss": 2.5, "acc": 0.1}
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [3]
    assert [f.path for f in client.list_artifacts(run.run_id, "reports")] == [
        "reports/summary.json"
    ]


def test_child_run_outside_git_and_slurm(
    store: str, study: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    monkeypatch.setattr(provenance, "_CODE_DIR", outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # don't find a repo above
    parent = ensure_parent_run(store, study, study)
    with child_run(store, parent, stage="corpus", name="build") as run:
        pass
    tags = MlflowClient(store).get_run(run.run_id).data.tags
    assert tags["diver.git_commit"] == "unknown"
    assert "diver.slurm_job_id" not in tags
    assert "diver.cell" not in tags
    assert "diver.corpus_manifest_sha256" not in tags
    assert MlflowClient(store).get_run(run.run_id).info.run_name == "build"


@pytest.mark.parametrize(
    ("error", "status"), [(ValueError("boom"), "FAILED"), (KeyboardInterrupt(), "KILLED")]
)
def test_raising_body_marks_run_and_keeps_metrics(
    store: str, study: str, error: BaseException, status: str
) -> None:
    parent = ensure_parent_run(store, study, study)
    with (
        pytest.raises(type(error)),
        child_run(store, parent, stage="finetune", cell="c0") as run,
    ):
        run.log_metrics({"loss": 1.0}, step=0)
        run.log_metrics({"loss": 0.5}, step=1)
        raise error
    client = MlflowClient(store)
    finished = client.get_run(run.run_id)
    assert finished.info.status == status
    assert finished.info.end_time is not None
    # The metrics logged before the failure were flushed, not lost with the buffer.
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [
        (0, 1.0),
        (1, 0.5),
    ]


def test_missing_manifest_fails_before_creating_a_run(
    store: str, study: str, tmp_path: Path
) -> None:
    parent = ensure_parent_run(store, study, study)
    with (
        pytest.raises(FileNotFoundError),
        child_run(store, parent, stage="pretrain", manifest=tmp_path / "nope.parquet"),
    ):
        pass
    assert _children(MlflowClient(store), parent) == []


def test_metrics_are_batched_and_all_arrive(store: str, study: str) -> None:
    parent = ensure_parent_run(store, study, study)
    client = MlflowClient(store)
    with child_run(store, parent, stage="pretrain", cell="big") as run:
        for step in range(999):
            run.log_metrics({"loss": step / 10}, step=step)
        # Nothing sent yet: the buffer holds 999 values, the store none.
        assert run.pending == 999
        assert client.get_metric_history(run.run_id, "loss") == []
        run.log_metrics({"loss": 99.9}, step=999)  # 1,000th value fills the buffer
        assert run.pending == 0
        assert len(client.get_metric_history(run.run_id, "loss")) == 1000
        for step in range(1000, 2500):
            run.log_metrics({"loss": step / 10}, step=step)
        assert run.pending == 500
    history = sorted(client.get_metric_history(run.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(2500))
    assert [m.value for m in history] == pytest.approx([s / 10 for s in range(2500)])
    assert client.get_run(run.run_id).data.metrics["loss"] == pytest.approx(249.9)


def _check_sixteen_children(uri: str, parent: str, run_ids: list[str], n: int) -> None:
    client = MlflowClient(uri)
    children = _children(client, parent)
    assert sorted(c.info.run_id for c in children) == sorted(run_ids)
    assert len(set(run_ids)) == 16
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.data.tags["diver.cell"] for c in children) == [
        f"cell{i:02d}" for i in range(16)
    ]
    for child in children:
        idx = int(child.data.params["idx"])
        history = sorted(client.get_metric_history(child.info.run_id, "loss"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(n)), child.data.tags["diver.cell"]
        assert [m.value for m in history] == [idx * 1000.0 + s for s in range(n)]


def test_sixteen_processes_sqlite(tmp_path: Path, study: str) -> None:
    uri = _sqlite_uri(tmp_path / "results" / "mlflow.db")
    parent = ensure_parent_run(uri, study, study)
    parent_file = tmp_path / "parent_run_id.txt"
    write_run_id(parent_file, parent)
    n = 200
    args = [[uri, str(parent_file), str(i), str(n)] for i in range(16)]
    run_ids = _run_workers(_CHILD_WORKER, args, tmp_path)
    _check_sixteen_children(uri, parent, run_ids, n)


@pytest.mark.slow
def test_sixteen_processes_server(mlflow_server: str, tmp_path: Path, study: str) -> None:
    parent = ensure_parent_run(mlflow_server, study, study)
    parent_file = tmp_path / "parent_run_id.txt"
    write_run_id(parent_file, parent)
    n = 200
    args = [[mlflow_server, str(parent_file), str(i), str(n)] for i in range(16)]
    run_ids = _run_workers(_CHILD_WORKER, args, tmp_path)
    _check_sixteen_children(mlflow_server, parent, run_ids, n)


# --------------------------------------------------------------------------- retries


class _Counted:
    """Wraps a real function and counts its calls (nothing is faked: it still runs)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(*args, **kwargs)


def _hold_exclusive_lock(db: Path, seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Hold ``BEGIN EXCLUSIVE`` on ``db`` from another thread for ``seconds``."""
    locked = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=hold)
    thread.start()
    assert locked.wait(10)
    return thread, locked


def test_with_retry_waits_out_a_locked_sqlite_database(tmp_path: Path) -> None:
    db = tmp_path / "plain.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")

    def insert(x: int) -> None:
        # timeout=0: fail at once on the lock instead of SQLite's own busy wait.
        with sqlite3.connect(db, timeout=0) as conn:
            conn.execute("INSERT INTO t VALUES (?)", (x,))
        conn.close()

    thread, _ = _hold_exclusive_lock(db, 1.0)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        insert(0)  # the lock is real
    counted = _Counted(insert)
    start = time.monotonic()
    with_retry(counted, 1, attempts=10, base_delay=0.05)
    elapsed = time.monotonic() - start
    thread.join()
    assert counted.calls > 1
    assert elapsed > 0.5
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    conn.close()


def test_with_retry_waits_out_a_lock_seen_through_sqlalchemy(tmp_path: Path) -> None:
    db = tmp_path / "sa.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}", connect_args={"timeout": 0})
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE t (x INTEGER)"))

    def insert() -> None:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))

    thread, _ = _hold_exclusive_lock(db, 1.0)
    counted = _Counted(insert)
    with_retry(counted, attempts=10, base_delay=0.05)
    thread.join()
    assert counted.calls > 1
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT count(*) FROM t")).scalar() == 1
    engine.dispose()


def test_with_retry_waits_out_a_lock_seen_through_mlflow(tmp_path: Path, study: str) -> None:
    """The exact shape MLflow's SQL store raises on a lock (an MlflowException wrapping
    sqlalchemy's OperationalError) is retried.  MLflow sets a 20 s busy timeout on
    each session; this write lowers it to 0 inside MLflow's own session so the lock
    surfaces at once, as it does in SQLite's deadlock-avoidance case."""
    db = tmp_path / "mlflow.db"
    uri = _sqlite_uri(db)
    run_id = ensure_parent_run(uri, study, study)
    store = SqlAlchemyStore(uri, str(tmp_path / "artifacts"))

    def set_tag_no_wait() -> None:
        with store.ManagedSessionMaker(read_only=False) as session:
            session.execute(sqlalchemy.text("PRAGMA busy_timeout = 0"))
            session.execute(
                sqlalchemy.text("INSERT INTO tags (key, value, run_uuid) VALUES ('k', 'v', :r)"),
                {"r": run_id},
            )

    thread, _ = _hold_exclusive_lock(db, 1.0)
    with pytest.raises(MlflowException, match="database is locked") as info:
        set_tag_no_wait()
    assert is_transient_error(info.value)
    counted = _Counted(set_tag_no_wait)
    with_retry(counted, attempts=10, base_delay=0.05)
    thread.join()
    assert counted.calls > 1
    assert MlflowClient(uri).get_run(run_id).data.tags["k"] == "v"


def test_metrics_survive_a_held_lock(tmp_path: Path, study: str) -> None:
    """End to end: a job flushing metrics while another process holds the write lock."""
    db = tmp_path / "mlflow.db"
    uri = _sqlite_uri(db)
    parent = ensure_parent_run(uri, study, study)
    with child_run(uri, parent, stage="pretrain") as run:
        for step in range(300):
            run.log_metrics({"loss": float(step)}, step=step)
        thread, _ = _hold_exclusive_lock(db, 1.0)
        run.flush()
        thread.join()
    assert len(MlflowClient(uri).get_metric_history(run.run_id, "loss")) == 300


def test_with_retry_does_not_retry_permanent_errors(tmp_path: Path, study: str) -> None:
    uri = _sqlite_uri(tmp_path / "mlflow.db")
    ensure_parent_run(uri, study, study)
    client = MlflowClient(uri)

    get_run = _Counted(client.get_run)
    with pytest.raises(MlflowException) as info:
        with_retry(get_run, "0" * 32, base_delay=0.5)
    assert info.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert get_run.calls == 1

    def no_table() -> None:
        with sqlite3.connect(tmp_path / "mlflow.db") as conn:
            conn.execute("SELECT * FROM no_such_table")

    counted = _Counted(no_table)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        with_retry(counted, base_delay=0.5)
    assert counted.calls == 1

    def bug() -> None:
        raise ValueError("database is locked")  # right words, wrong kind of error

    counted = _Counted(bug)
    with pytest.raises(ValueError):
        with_retry(counted, base_delay=0.5)
    assert counted.calls == 1


def test_upsert_retries_a_unique_key_collision_and_nothing_else_does(tmp_path: Path) -> None:
    """Two jobs setting the same new tag at once: MLflow's read-then-insert lets both
    insert, and the second hits the unique key.  With ``upsert=True`` the loser retries
    and its read now finds the row (an update); an insert that must be unique is not
    retried."""
    db = tmp_path / "tags.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE tags (key TEXT PRIMARY KEY, value TEXT)")
    conn.close()
    read_done, first_written = threading.Event(), threading.Event()

    def set_tag(value: str, before_write: Callable[[], None] = lambda: None) -> None:
        with sqlite3.connect(db) as conn:
            exists = conn.execute("SELECT 1 FROM tags WHERE key = 'k'").fetchone()
            before_write()
            if exists:
                conn.execute("UPDATE tags SET value = ? WHERE key = 'k'", (value,))
            else:
                conn.execute("INSERT INTO tags VALUES ('k', ?)", (value,))
        conn.close()

    # the first job inserts once the second has read "no row yet"
    thread = threading.Thread(target=lambda: set_tag("a", lambda: read_done.wait(10)))
    thread.start()

    def second_writer_read() -> None:
        read_done.set()
        thread.join(10)
        first_written.set()

    plain = _Counted(lambda: set_tag("b", second_writer_read))
    with pytest.raises(sqlite3.IntegrityError) as info:
        with_retry(plain, base_delay=0.01)
    assert first_written.is_set()
    assert plain.calls == 1  # not an upsert: a permanent error
    assert is_unique_violation(info.value) and not is_transient_error(info.value)

    calls: list[int] = []

    def upsert_after_race() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise info.value  # the collision just seen, raised again
        set_tag("b")

    with_retry(upsert_after_race, base_delay=0.01, upsert=True)
    assert len(calls) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM tags").fetchall() == [("b",)]
    conn.close()
    assert not is_unique_violation(ValueError("UNIQUE constraint failed"))  # wrong kind


def test_with_retry_retries_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    # No MLflow-internal HTTP retries, so each of our attempts is one connection try.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    client = MlflowClient(f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    counted = _Counted(client.search_experiments)
    with pytest.raises(MlflowException) as info:
        with_retry(counted, attempts=3, base_delay=0.01)
    assert counted.calls == 3
    assert is_transient_error(info.value)


# --------------------------------------------------------------------------- helpers


def test_file_sha256_matches_hashlib_across_blocks(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 123)  # spans three read blocks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_slurm_job_id_forms() -> None:
    assert slurm_job_id({}) is None
    assert slurm_job_id({"SLURM_JOB_ID": "12"}) == "12"
    assert (
        slurm_job_id({"SLURM_JOB_ID": "13", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "1"})
        == "12_1"
    )


def test_tracking_imports_only_mlflow_stdlib_and_diver_leaves() -> None:
    """Tracking stays free of stage code: besides its own modules, its only diver
    imports are the leaf modules errors and atomic (module-level and lazy imports)."""
    modules = {
        line.split()[1]
        for path in Path(tracking.__file__).parent.glob("*.py")
        for line in (raw.strip() for raw in path.read_text().splitlines())
        if line.startswith(("import ", "from "))
    }
    top = {m.split(".")[0] for m in modules}
    assert top - sys.stdlib_module_names - {"mlflow", "__future__", "diver"} == set()
    diver_modules = {m for m in modules if m.split(".")[0] == "diver"}
    assert {m for m in diver_modules if not m.startswith("diver.tracking")} == {
        "diver.errors",
        "diver.atomic",
    }


def test_importing_tracking_does_not_load_mlflow() -> None:
    """``diver.tracking`` (TrackingTarget, stage_run, tags) is light: commands that
    are not asked to track never import MLflow."""
    code = (
        "import sys; import diver.tracking; from diver.tracking import runid, provenance; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'diver')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert eval(out) == [
        "diver",
        "diver.atomic",
        "diver.errors",
        "diver.tracking",
        "diver.tracking.provenance",
        "diver.tracking.runid",
    ]


def test_stage_run_without_target_is_no_run() -> None:
    with stage_run(None, stage="corpus", params={"a": 1}) as run:
        assert run is None


def test_stage_run_logs_a_child_run_of_the_target(store: str, study: str, tmp_path: Path) -> None:
    parent = ensure_parent_run(store, study, study)
    run_file = tmp_path / "parent_run_id.txt"
    write_run_id(run_file, parent)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("a,b\n1,2\n")
    target = TrackingTarget.from_run_file(store, run_file, manifest=manifest)
    assert target == TrackingTarget(store, parent, manifest)
    with stage_run(target, stage="finetune", cell="c1", params={"lr": 0.1}, tags={"x": "y"}) as run:
        assert run is not None
        run.log_metrics({"acc": 0.5})
    child = MlflowClient(store).get_run(run.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["diver.stage"] == "finetune"
    assert child.data.tags["diver.cell"] == "c1"
    assert child.data.tags["x"] == "y"
    assert child.data.tags["diver.corpus_manifest_sha256"] == file_sha256(manifest)
    assert child.data.params == {"lr": "0.1"}
    assert child.data.metrics == {"acc": 0.5}
    with pytest.raises(RunIdFileError, match="does not exist"):
        TrackingTarget.from_run_file(store, tmp_path / "missing.txt")
