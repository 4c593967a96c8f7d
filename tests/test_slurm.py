"""The grid on a real SLURM cluster (``diver localslurm``): submitit jobs, requeue, cancel,
re-attach after Snakemake is killed.

Runs where the local test cluster can run (root, Debian's slurm/munge/mariadb
packages, no site SLURM config); elsewhere it skips with the reason, and under CI it
fails instead, because CI must exercise it (``.ci/run`` installs the packages).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from diver.launch.slurm import JOB_FILE, job_state
from tests.conftest import REPO_ROOT, built_once, shared_dir

pytestmark = [pytest.mark.slow]

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
SITE = REPO_ROOT / "cluster_profiles" / "slurm" / "site.yaml"

STUDY = {
    "study": "slurm-test",
    "results_dir": "results",
    "synth": {"enabled": True, "hours": 0.1, "seed": 0},
    "corpus": {
        "jobs": 1,
        "chunk_hours": 0.1,  # the synthetic corpus in three chunks: three SLURM jobs
        "datasets": [
            {
                "name": "synth_eeg",
                "inputs": ["{results_dir}/synth/eeg"],
                "modality": "eeg",
                "line_freq": 60,
                "highpass": 0.3,
                "subject_pattern": r"sub-(\d+)_",
            }
        ],
    },
    "families": {"eeg": {"modalities": ["eeg"]}, "eeg_b": {"modalities": ["eeg"]}},
    "grid": [
        {"family": "eeg", "size": "debug", "epochs": 1, "fraction": 1.0},
        {"family": "eeg_b", "size": "debug", "epochs": 2, "fraction": 1.0},
    ],
    "pretrain": {"checkpoint_every": 5},
}


def _long_cell(epochs: int) -> tuple[dict, Path, str]:
    """A cell long enough (a minute or more) to act on while its job runs: the grid
    entry, its folder and its log (a distinct epoch count per test keeps job names apart)."""
    return (
        {"family": "eeg", "size": "debug", "epochs": epochs, "fraction": 1.0},
        Path(f"results/pretrain/eeg/1s/debug/f1.0_e{epochs}"),
        f"results/logs/pretrain/eeg_1s_debug_f1.0_e{epochs}.log",
    )


def _snakemake(workdir: Path, *args: str, **kwargs: object) -> subprocess.Popen | subprocess.CompletedProcess:  # noqa: E501
    cmd = [
        str(BIN / "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile"),
        "--directory", str(workdir), "--profile", "cluster_profiles/slurm",
        "--configfile", str(workdir / "study.yaml"), "--cores", "2", *args,
    ]
    if kwargs.get("background"):
        log = (workdir / "snakemake.out").open("w")
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=ENV, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True,
                          check=False, timeout=kwargs.get("timeout", 900))


def _write_study(workdir: Path, extra_cells: list[dict] | None = None) -> None:
    study = json.loads(json.dumps(STUDY))
    study["grid"] += extra_cells or []
    (workdir / "study.yaml").write_text(yaml.safe_dump(study))


@pytest.fixture(scope="module")
def finished_study(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-cell grid run to the end through the SLURM profile (test 1's subject)."""
    return build_finished_study(tmp_path_factory)


def build_finished_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-cell grid study, run once per session even when several xdist workers (and
    test modules: tests/test_slurm_nodes.py uses its corpus) ask for it."""
    with built_once(tmp_path_factory, "slurm-study") as workdir:
        if workdir is not None:
            _write_study(workdir)
            proc = _snakemake(workdir)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return shared_dir(tmp_path_factory, "slurm-study")


def _copy_study(src: Path, dst: Path, extra_cells: list[dict]) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    _write_study(dst, extra_cells)
    return dst


def _wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _job_record(cell_dir: Path) -> dict | None:
    path = cell_dir / JOB_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _running_job(cell_dir: Path) -> str | None:
    record = _job_record(cell_dir)
    if record and job_state(record["job_id"]) == "RUNNING":
        return record["job_id"]
    return None


def _train_steps(cell_dir: Path) -> int:
    log = cell_dir / "train_log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else 0



def requeue_mid_run(cell_dir: Path, steps: int) -> str:
    """``scontrol requeue`` the cell's job once it has trained ``steps`` steps, and let
    it start again at once (SLURM holds a requeued batch job ~2 min); its job id."""
    job = _wait_for(lambda: _running_job(cell_dir), 180, "the job to run")
    _wait_for(lambda: _train_steps(cell_dir) >= steps, 180, f"{steps} training steps", 0.3)
    subprocess.run(["scontrol", "requeue", job], check=True)
    _wait_for(lambda: job_state(job) == "PENDING", 120, "the requeued job to pend")
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    return job

def _jobs_named(name: str, since: str) -> list[str]:
    """Jobs of that name submitted since ``since`` (the accounting database outlives
    the cluster's restarts)."""
    proc = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,JobName", "--name", name, "-S", since],
        capture_output=True, text=True, check=True,
    )
    return [line.split("|")[0] for line in proc.stdout.splitlines() if line]


def test_two_cell_grid_runs_as_submitit_jobs_tracked_with_job_ids(finished_study: Path) -> None:
    results = finished_study / "results"
    cells = [results / "pretrain/eeg/1s/debug/f1.0_e1", results / "pretrain/eeg_b/1s/debug/f1.0_e2"]
    job_ids = []
    for cell in cells:
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["val_loss"] > 0
        record = _job_record(cell)
        assert record is not None and job_state(record["job_id"]) == "COMPLETED"
        assert (cell / "slurm" / f"{record['job_id']}_0_log.out").exists()
        job_ids.append(record["job_id"])
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("slurm-test")
    parent = (results / "tracking" / "parent_run_id.txt").read_text().strip()
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`diver.stage` = 'pretrain'",
    )
    assert sorted(r.data.tags["diver.slurm_job_id"] for r in runs) == sorted(job_ids)
    # Complete: a dry run has nothing to do, and asking for one cell's model runs nothing.
    again = _snakemake(finished_study, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-2000:]
    # Changing one family's learning rate reruns its cell and what depends on it.
    edited = json.loads(json.dumps(STUDY))
    edited["families"]["eeg_b"]["lr"] = 1e-3
    config = finished_study / "edited.yaml"
    config.write_text(yaml.safe_dump(edited))
    dry = _snakemake(finished_study, "-n", "--configfile", str(config), "--cores", "2")
    table = (dry.stdout + dry.stderr).split("Job stats:")[1].split("\n\n")[0]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE))
    # that cell, and downstream of it only the stages reading every cell (fit, report)
    assert jobs["pretrain"] == "1", table
    assert not {"synth", "corpus", "track_init"} & set(jobs), table
    assert "eeg_b/1s/debug/f1.0_e2" in dry.stdout

def test_requeued_job_resumes_to_the_uninterrupted_val_loss(
    finished_study: Path, tmp_path: Path
) -> None:
    corpus = finished_study / "results" / "corpus"
    config = finished_study / "results" / "config" / "study.yaml"

    def launch(out: Path) -> subprocess.Popen:
        cmd = [
            str(BIN / "diver"), "launch", "--config", str(config), "--backend", "slurm",
            "--site", str(SITE), "--poll-seconds", "1", "--out", str(out), "--size", "debug",
            "--name", f"requeue-{out.name}", "--", "pretrain", "--config", str(config),
            "--corpus", str(corpus), "--family", "eeg", "--size", "debug", "--epochs", "12",
            "--out", str(out),
        ]
        log = (tmp_path / f"{out.name}.log").open("w")
        return subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT)

    plain, requeued = tmp_path / "plain", tmp_path / "requeued"
    first, second = launch(plain), launch(requeued)
    job = requeue_mid_run(requeued, steps=8)
    assert second.wait(timeout=600) == 0, (tmp_path / "requeued.log").read_text()[-3000:]
    assert first.wait(timeout=600) == 0, (tmp_path / "plain.log").read_text()[-3000:]
    resumed = json.loads((requeued / "metrics.json").read_text())
    baseline = json.loads((plain / "metrics.json").read_text())
    assert resumed["resumed_from_step"] is not None and resumed["resumed_from_step"] >= 5
    assert resumed["val_loss"] == baseline["val_loss"]
    assert resumed["steps"] == baseline["steps"]
    history = subprocess.run(
        ["sacct", "-D", "-X", "-n", "-P", "-j", job, "-o", "State"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    assert "REQUEUED" in history and history[-1] == "COMPLETED", history


def test_cancelled_job_fails_its_rule_promptly_and_leaves_no_lock(
    finished_study: Path, tmp_path: Path
) -> None:
    entry, folder, log_name = _long_cell(150)
    workdir = _copy_study(finished_study, tmp_path / "study", [entry])
    proc = _snakemake(workdir, background=True)
    cell = workdir / folder
    job = _wait_for(lambda: _running_job(cell), 240, "the long cell's job to run")
    subprocess.run(["scancel", job], check=True)
    cancelled_at = time.monotonic()
    code = proc.wait(timeout=120)
    took = time.monotonic() - cancelled_at
    out = (workdir / "snakemake.out").read_text()
    assert code != 0
    assert took < 60, f"the rule failed {took:.0f} s after the cancel"
    log = (workdir / log_name).read_text()
    assert f"SLURM job {job}" in log and "CANCELLED" in log, log[-2000:]
    locks = workdir / ".snakemake" / "locks"
    assert not locks.exists() or not any(locks.iterdir()), out[-2000:]


def test_restarted_snakemake_reattaches_instead_of_resubmitting(
    finished_study: Path, tmp_path: Path
) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    entry, folder, log_name = _long_cell(30)
    workdir = _copy_study(finished_study, tmp_path / "study", [entry])
    proc = _snakemake(workdir, background=True)
    cell = workdir / folder
    job = _wait_for(lambda: _running_job(cell), 240, "the long cell's job to run")
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and its local rule's launcher
    proc.wait()
    assert job_state(job) == "RUNNING"
    unlock = _snakemake(workdir, "--unlock")
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = _snakemake(workdir, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    log = (workdir / log_name).read_text()
    assert f"re-attaching to SLURM job {job}" in log, log[-2000:]
    assert _jobs_named("diver-eeg-1s-debug-f1.0-e30", since) == [job]
    assert job_state(job) == "COMPLETED"
    assert (cell / "metrics.json").exists()
