"""MLflow's UI on a finished default run, opened the way a user does, in headless Chromium.

After the default DAG (``snakemake --profile cluster_profiles/local``), the test starts
the ``mlflow ui`` command ``diver where`` prints (bound to 127.0.0.1, on a free port)
and drives Debian's ``chromium`` over the DevTools protocol (aiohttp's websocket
client; MLflow itself depends on aiohttp) with a fresh profile, as a first-time user:

- from the UI's front page, the study's experiment (as the experiments list links it)
  opens on the training-runs table, where the study's parent run is listed; expanded,
  it shows the grid's twelve runs (the grid stays nested under the parent: later
  stages rely on it);
- the experiment's description (the note ``diver track init`` writes) is shown, and
  its link opens the same table;
- MLflow's compare view of those runs shows the cell's axes against ``val_loss``.

Why the first step holds: MLflow 3.17's UI picks an experiment's view from its own
*GenAI / Model training* switch (default GenAI, remembered per browser), not from the
``mlflow.experimentKind`` tag; the command ``diver where`` prints runs MLflow's UI as
``--app-name diver`` (diver.tracking.ui_app), whose page starts a browser that never
chose on *Model training*.

A second test reads the same store with ``diver compare`` and checks every grid run's
params and metrics against the cell's own ``metrics.json``.

Both read the session's one run of the default DAG (``tests.conftest.default_run``,
shared with test_workflow's end-to-end check).  Without chromium the browser test skips on a user's
machine and fails under CI (``CI=true``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from diver.tracking.names import (
    EPOCH_METRIC,
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_KIND_TRAINING,
    EXPERIMENT_NOTE_TAG,
    FINETUNE_PARAMS,
    GRID_METRICS,
    GRID_PARAMS,
)
from diver.tracking.ui_app import TRAINING_WORKFLOW, WORKFLOW_KEY
from tests.conftest import REPO_ROOT, alive, chromium

pytestmark = pytest.mark.slow

UI_TIMEOUT = 90.0  # seconds for one page state (a loaded 2-core CI box)


# ------------------------------------------------------------------ fixtures


def _diver(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "diver"), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )


def _where(workdir: Path) -> dict[str, str]:
    proc = _diver(workdir, "where", "--config", "results/config/study.yaml", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_ui(default_run: Path) -> Iterator[str]:
    """``diver where``'s ``mlflow ui`` command on the run's store, on a free port; its URL."""
    argv = shlex.split(_where(default_run)["browse"])
    assert argv[:2] == ["mlflow", "ui"] and "127.0.0.1" in argv, argv
    assert argv[argv.index("--app-name") + 1] == "diver", argv
    port = _free_port()
    argv[0] = str(Path(sys.executable).parent / "mlflow")
    log = (default_run / f"mlflow-ui-{port}.log").open("w")
    proc = subprocess.Popen(
        [*argv, "--port", str(port)],
        cwd=default_run,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers in one group, ended together below
        # the UI needs no job runner (it would start ~7 more processes, ~2 GB)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + UI_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (default_run / log.name).read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow ui did not come up"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _study(workdir: Path) -> tuple[MlflowClient, str, dict]:
    where = _where(workdir)
    client = MlflowClient(where["mlflow"])
    experiment = client.get_experiment_by_name(where["experiment"])
    return client, experiment.experiment_id, experiment.tags


def _cells() -> list[str]:
    """The default grid's cells, as their runs are named."""
    (block,) = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())["grid"]
    return [
        f"pretrain:{block['family']}/{block['patch']}/{size}/f{fraction}_e{epochs}"
        for size in block["size"]
        for fraction in block["fraction"]
        for epochs in block["epochs"]
    ]


# ------------------------------------------------------------------ the browser


class Page:
    """One tab of headless Chromium, driven over the DevTools protocol."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.last_id = 0

    async def call(self, method: str, **params: Any) -> dict:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        while True:  # events arrive in between; the reply carries our id
            message = await self.ws.receive_json()
            if message.get("id") == self.last_id:
                assert "error" not in message, message
                return message["result"]

    async def js(self, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str) -> Any:
        """The first truthy value of ``expression``, polled (an error while the page
        loads counts as not yet); fails naming ``what``."""
        guarded = f"(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()"
        deadline = time.monotonic() + UI_TIMEOUT
        while time.monotonic() < deadline:
            value = await self.js(guarded)
            if value:
                return value
            await asyncio.sleep(0.5)
        text = await self.js("document.body ? document.body.innerText.slice(0, 3000) : ''")
        raise AssertionError(f"timed out waiting for {what}; page shows:\n{text}")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)


async def _with_page(scenario: Any, profile: Path) -> Any:
    import aiohttp

    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            chromium("the MLflow UI check"),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1600,1400",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(profile)},  # chromium writes its profile under HOME
        start_new_session=True,  # its renderers and helpers: one process group to stop
    )
    try:
        port_file = profile / "DevToolsActivePort"  # the port chromium picked
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        ws_url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(ws_url, max_msg_size=0) as ws,
        ):
            return await scenario(Page(ws))
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop chromium and every process it started (renderers, network and storage
    helpers, which write into the profile), and wait until they are gone: a browser
    that has to be killed leaves its helpers running."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the helpers the browser left behind
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and alive(proc.pid):
        time.sleep(0.05)


_ROW_NAMES = """[...document.querySelectorAll('.ag-row')]
    .flatMap(row => row.innerText.split('\\n')).map(s => s.trim()).filter(Boolean)"""


# ------------------------------------------------------------------ tests


def test_mlflow_ui_opens_the_grid_runs_and_compares_them(
    default_run: Path, mlflow_ui: str, tmp_path: Path
) -> None:
    client, experiment_id, tags = _study(default_run)
    name = _where(default_run)["experiment"]
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND_TRAINING
    assert "tags.diver.stage = 'pretrain'" in tags[EXPERIMENT_NOTE_TAG]
    cells = _cells()
    grid = {
        r.info.run_name: r.info.run_id
        for r in client.search_runs([experiment_id], "tags.diver.stage = 'pretrain'")
    }
    assert sorted(grid) == sorted(cells)

    async def scenario(page: Page) -> dict:
        # 1. a first-time user: the front page, then the study's experiment as the
        # experiments list links it: the training-runs table, the study's parent run
        await page.goto(f"{mlflow_ui}/")
        listed = await page.wait_for(
            "[...document.querySelectorAll('a')]"
            f".filter(a => a.innerText.trim() === {json.dumps(name)}).map(a => a.href)[0]",
            "the study's experiment in the experiments list",
        )
        await page.goto(listed)
        await page.wait_for(
            f"({_ROW_NAMES}).includes('diver-default')", "the parent run in the runs table"
        )
        location = await page.js("location.href")
        switch = await page.js(f"localStorage.getItem({json.dumps(WORKFLOW_KEY)})")
        collapsed = await page.js(_ROW_NAMES)
        # 2. the description is shown; its link opens the same table
        await page.wait_for(
            "document.body.innerText.includes('DIVER-1 study diver-default')", "the description"
        )
        href = await page.wait_for(
            "[...document.querySelectorAll('a')]"
            '.filter(a => a.innerText.includes("grid\'s training runs")).map(a => a.href)[0]',
            "the description's link to the training runs",
        )
        await page.goto(href)
        await page.wait_for(
            f"({_ROW_NAMES}).includes('diver-default')", "the parent run behind the link"
        )
        # 3. the parent row expanded: the grid's runs, and only those (the link filters)
        await page.js(
            "[...document.querySelectorAll('.ag-row')]"
            ".find(row => row.innerText.includes('diver-default'))"
            ".querySelector('button[data-component-id*=runnamecellrenderer]').click()"
        )
        expanded = await page.wait_for(
            f"(() => {{ const names = {_ROW_NAMES};"
            f" return {json.dumps(cells)}.every(c => names.includes(c)) && names; }})()",
            "the grid's runs under the expanded parent",
        )
        # 4. MLflow's compare view of the grid's runs
        runs = urllib.parse.quote(json.dumps(sorted(grid.values())))
        experiments = urllib.parse.quote(json.dumps([experiment_id]))
        await page.goto(f"{mlflow_ui}/#/compare-runs?runs={runs}&experiments={experiments}")
        compare = await page.wait_for(
            f"document.body.innerText.includes('Comparing {len(grid)} Runs')"
            " && document.body.innerText.includes('Parallel Coordinates Plot')"
            " && document.body.innerText",
            "the compare view",
        )
        return {"listed": listed, "location": location, "switch": switch,
                "collapsed": collapsed, "expanded": expanded, "compare": compare}  # fmt: skip

    # a fresh profile, left for pytest to remove with the rest of the session's files
    seen = asyncio.run(_with_page(scenario, tmp_path / "chromium-profile"))

    # The list's own link names no view; the training runs opened because diver's app
    # set the browser's switch (MLflow then writes the view into the address).
    assert seen["listed"].endswith(f"/#/experiments/{experiment_id}"), seen["listed"]
    assert seen["switch"] == json.dumps(TRAINING_WORKFLOW)
    assert f"/#/experiments/{experiment_id}/runs?" in seen["location"]
    assert not any(name.startswith("pretrain:") for name in seen["collapsed"])  # nested
    names = [n for n in seen["expanded"] if ":" in n or n in ("corpus", "report")]
    assert sorted(n for n in names if n.startswith("pretrain:")) == sorted(cells)
    assert not [n for n in names if n.split(":")[0] in ("corpus", "finetune", "scaling")]
    # the compare view: its parallel-coordinates plot starts with data_fraction and
    # epochs against val_loss, and its params table holds every axis of each run (its
    # metrics table scrolls: the metrics are checked through the API below)
    lines = seen["compare"].splitlines()
    picked = lines[lines.index("Parameters:") : lines.index("Clear All")]
    assert {"data_fraction", "epochs", "val_loss"} <= set(picked), picked
    for name in GRID_PARAMS:
        row = next((line for line in lines if line.startswith(f"{name}\t")), "")
        assert len(row.split("\t")) == 1 + len(grid), (name, row)


def test_diver_compare_matches_each_cells_metrics(default_run: Path) -> None:
    proc = _diver(
        default_run, "compare", "--config", "results/config/study.yaml", "--format", "json"
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert sorted(r["tags.mlflow.runName"] for r in rows) == sorted(_cells())
    losses = [r["metrics.val_loss"] for r in rows]
    assert losses == sorted(losses)
    client, _, _ = _study(default_run)
    results = default_run / "results" / "pretrain"
    for row in rows:
        cell = row["tags.mlflow.runName"].removeprefix("pretrain:")
        metrics = json.loads((results / cell / "metrics.json").read_text())
        assert row["status"] == "FINISHED"
        for name in GRID_PARAMS:
            expected = metrics[name] if metrics[name] is not None else "all"
            assert row[f"params.{name}"] == str(expected), (cell, name)
        for name in GRID_METRICS:
            assert row[f"metrics.{name}"] == pytest.approx(metrics[name], rel=1e-12), (cell, name)
        history = client.get_metric_history(row["run_id"], EPOCH_METRIC)
        assert sorted((m.step, m.value) for m in history) == [
            (e["epoch"], pytest.approx(e["val_loss"], rel=1e-12)) for e in metrics["val_by_epoch"]
        ]
    table = _diver(default_run, "compare", "--config", "results/config/study.yaml")
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == len(rows) + 3
    finetune = _diver(
        default_run, "compare", "--config", "results/config/study.yaml", "--stage", "finetune",
        "--format", "json",
    )  # fmt: skip
    assert finetune.returncode == 0, finetune.stderr
    runs = json.loads(finetune.stdout)
    assert {r["params.mode"] for r in runs} == {"linear-probe", "full"}
    for run in runs:
        assert all(run[f"params.{name}"] for name in FINETUNE_PARAMS)
        assert run["metrics.diver.balanced_accuracy"] is not None
