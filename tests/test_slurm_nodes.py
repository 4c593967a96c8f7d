"""Two simulated nodes of the local cluster (``diver localslurm --nodes 2``, issue 14).

The cluster is the SLURM tests' shared one (``slurm_cluster`` in conftest: two nodes);
its teardown checks that ``stop`` left nothing behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from diver import localnodes, localslurm
from diver.launch.slurm import job_state
from tests.conftest import CLUSTER_NODES, built_once, shared_dir
from tests.test_slurm import (
    BIN,
    ENV,
    SITE,
    _job_record,
    _running_job,
    _snakemake,
    _train_steps,
    _wait_for,
    _write_study,
    build_finished_study,
    requeue_mid_run,
)

pytestmark = [pytest.mark.slow]


def test_a_step_over_both_nodes_runs_on_each(slurm_cluster: None) -> None:
    nodes = localnodes.plan(CLUSTER_NODES)
    out = subprocess.run(
        ["srun", "-N", str(CLUSTER_NODES), "--ntasks-per-node=1", "--mem=100M", "-t", "2",
         "sh", "-c", 'echo "$(hostname) $SLURM_NODEID $SLURM_PROCID"'],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    seen = sorted(line.split() for line in out.stdout.splitlines())
    assert seen == [[n.name, str(i), str(i)] for i, n in enumerate(nodes)]
    hosts = Path("/etc/hosts").read_text()
    assert all(f"{n.address} {n.name} {localnodes.HOSTS_MARKER}" in hosts for n in nodes)
    running = localslurm.status()
    assert all(running[f"slurmd@{n.name}"] for n in nodes)


# --- multi-node training cells --------------------------------------------------------

EPOCHS = 12  # long enough to requeue the job mid-run (as in test_slurm's requeue test)


def _site(tmp: Path, name: str, **debug: int) -> Path:
    """The profile's site file with the debug size's resources replaced."""
    site = yaml.safe_load(SITE.read_text())
    site["sizes"] = {**(site.get("sizes") or {}), "debug": {
        "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 3, **debug}}  # fmt: skip
    path = tmp / f"site_{name}.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def _launch(
    study: Path, site: Path, out: Path, log: Path, epochs: int = EPOCHS, *extra: str
) -> subprocess.Popen:
    """``diver launch`` of a debug cell of ``epochs`` epochs with ``site``'s resources
    (``extra``: more ``diver pretrain`` flags)."""
    config = study / "results" / "config" / "study.yaml"
    cmd = [
        str(BIN / "diver"), "launch", "--config", str(config), "--backend", "slurm",
        "--site", str(site), "--poll-seconds", "1", "--out", str(out), "--size", "debug",
        "--name", f"nodes-{out.name}", "--", "pretrain", "--config", str(config),
        "--corpus", str(study / "results" / "corpus"), "--family", "eeg", "--size", "debug",
        "--epochs", str(epochs), "--out", str(out), *extra,
    ]  # fmt: skip
    return subprocess.Popen(cmd, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def finished_study(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_slurm's 2-cell study (built once per session): its corpus and config."""
    return build_finished_study(tmp_path_factory)


@pytest.fixture(scope="module")
def two_node_cell(finished_study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug cell whose size asks for 2 nodes x 1 rank, run through the SLURM profile
    once per session (both tests here read it): the cell folder."""
    with built_once(tmp_path_factory, "two-node-study") as workdir:
        if workdir is not None:
            shutil.copytree(
                finished_study, workdir, symlinks=True, dirs_exist_ok=True,
                ignore=shutil.ignore_patterns(".lock", ".done"),  # the build markers
            )
            entry = {"family": "eeg", "size": "debug", "epochs": EPOCHS, "fraction": 1.0}
            _write_study(workdir, [entry])
            site = _site(workdir, "two_nodes", nodes=2, tasks_per_node=1)
            proc = _snakemake(workdir, "--config", f"launcher={{backend: slurm, site: {site}}}")
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    workdir = shared_dir(tmp_path_factory, "two-node-study")
    return workdir / f"results/pretrain/eeg/1s/debug/f1.0_e{EPOCHS}"


def test_a_two_node_cell_matches_one_node_with_the_same_ranks(
    two_node_cell: Path, finished_study: Path, tmp_path: Path
) -> None:
    """2 nodes x 1 rank through the profile (gloo across the simulated nodes, ZeRO-2)
    gives the val_loss of 1 node x 2 ranks, within fp32 reduction tolerance."""
    record = _job_record(two_node_cell)
    nodes = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", record["job_id"], "-o", "NodeList,AllocNodes"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert nodes == [f"dnode[1-{CLUSTER_NODES}]|{CLUSTER_NODES}"], nodes
    logs = [two_node_cell / "slurm" / f"{record['job_id']}_{task}_log.out" for task in (0, 1)]
    hosts = {host for log in logs for host in re.findall(r"hostname=(\w+)", log.read_text())}
    assert hosts == {"dnode1", "dnode2"}  # one log per rank, each on its node
    one_node = tmp_path / "one_node"
    site = _site(tmp_path, "one_node", nodes=1, tasks_per_node=2)
    proc = _launch(finished_study, site, one_node, tmp_path / "one_node.log")
    assert proc.wait(timeout=900) == 0, (tmp_path / "one_node.log").read_text()[-3000:]
    across = json.loads((two_node_cell / "metrics.json").read_text())
    within = json.loads((one_node / "metrics.json").read_text())
    assert across["world_size"] == within["world_size"] == 2
    assert across["steps"] == within["steps"]
    assert across["val_loss"] == pytest.approx(within["val_loss"], rel=1e-5)


def test_zero3_across_two_nodes_matches_one_node(finished_study: Path, tmp_path: Path) -> None:
    """ZeRO-3 partitions the parameters themselves across the ranks: on two nodes the
    gathers cross the bridge, and the val_loss still equals one node's with 2 ranks."""
    runs = {}
    for name, resources in (("two_nodes", {"nodes": 2}), ("one_node", {"nodes": 1})):
        site = _site(tmp_path, name, tasks_per_node=3 - resources["nodes"], **resources)
        out, log = tmp_path / f"zero3_{name}", tmp_path / f"zero3_{name}.log"
        proc = _launch(finished_study, site, out, log, 3, "--zero-stage", "3")
        assert proc.wait(timeout=900) == 0, log.read_text()[-3000:]
        runs[name] = json.loads((out / "metrics.json").read_text())
    assert runs["two_nodes"]["world_size"] == runs["one_node"]["world_size"] == 2
    assert runs["two_nodes"]["val_loss"] == pytest.approx(runs["one_node"]["val_loss"], rel=1e-5)


def test_a_requeued_two_node_job_resumes_to_the_uninterrupted_val_loss(
    two_node_cell: Path, finished_study: Path, tmp_path: Path
) -> None:
    """``scontrol requeue`` of a 2-node job: every rank on both nodes checkpoints, the job
    comes back and ends on the val_loss of the uninterrupted 2-node run."""
    requeued = tmp_path / "requeued"
    site = _site(tmp_path, "two_nodes", nodes=2, tasks_per_node=1)
    proc = _launch(finished_study, site, requeued, tmp_path / "requeued.log")
    requeue_mid_run(requeued, steps=5)
    assert proc.wait(timeout=900) == 0, (tmp_path / "requeued.log").read_text()[-3000:]
    resumed = json.loads((requeued / "metrics.json").read_text())
    baseline = json.loads((two_node_cell / "metrics.json").read_text())
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] >= 5
    assert resumed["steps"] == baseline["steps"]
    assert resumed["val_loss"] == baseline["val_loss"]


def _rank_processes(job: str, rank: int) -> list[int]:
    """PIDs of the submitit task running ``rank`` of SLURM job ``job`` (from /proc)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        wanted = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_PROCID={rank}".encode()}
        if wanted <= env and b"submitit.core._submit" in cmd:
            found.append(int(proc.name))
    return found


def test_a_rank_killed_on_one_node_fails_the_cell_with_that_ranks_log(
    finished_study: Path, tmp_path: Path
) -> None:
    out, log = tmp_path / "killed", tmp_path / "killed.log"
    site = _site(tmp_path, "two_nodes", nodes=2, tasks_per_node=1)
    proc = _launch(finished_study, site, out, log)
    job = _wait_for(lambda: _running_job(out), 180, "the job to run")
    _wait_for(lambda: _train_steps(out) >= 2, 180, "2 training steps", 0.3)
    victims = _wait_for(lambda: _rank_processes(job, 1), 30, "rank 1's process")
    for pid in victims:  # as the OOM killer would
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=180) != 0
    text = log.read_text()
    assert f"SLURM job {job} for {out} ended FAILED" in text, text[-3000:]
    report = text.split("ended FAILED", 1)[1]
    assert report.index("rank 1 on dnode2 (left no result") < report.index("rank 0 on dnode1")


def test_the_corpus_fanned_out_over_slurm_jobs_equals_one_job(
    finished_study: Path, tmp_path: Path
) -> None:
    """The shared study's corpus was built through the SLURM profile as a plan, one SLURM
    job per chunk and a merge: it equals `diver corpus` run as one job."""
    results = finished_study / "results"
    plan = json.loads((results / "corpus_plan" / "plan.json").read_text())
    assert len(plan["chunks"]) >= 2
    # Snakemake's log names each chunk's SLURM job: one per chunk, each completed
    log = "".join(p.read_text() for p in (finished_study / ".snakemake" / "log").glob("*.log"))
    jobs = dict(re.findall(r"slurm_logs/rule_corpus_chunk/([^/]+)/(\d+)\.log", log))
    assert sorted(jobs) == sorted(chunk["name"] for chunk in plan["chunks"])
    assert {job_state(job) for job in jobs.values()} == {"COMPLETED"}
    single = tmp_path / "corpus"
    subprocess.run(
        [str(BIN / "diver"), "corpus", "--config", str(results / "config" / "study.yaml"),
         "--out", str(single), "--quiet"],
        cwd=finished_study, env=ENV, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    fanned = results / "corpus"
    for table in ("qc.csv", "channels.csv", "manifest.csv"):
        assert (fanned / table).read_bytes() == (single / table).read_bytes(), table
    shards = sorted(p.relative_to(single) for p in (single / "windows").rglob("*.parquet"))
    assert shards == sorted(p.relative_to(fanned) for p in (fanned / "windows").rglob("*.parquet"))
    assert all((fanned / s).read_bytes() == (single / s).read_bytes() for s in shards)
