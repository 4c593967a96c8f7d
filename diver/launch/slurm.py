"""Run one ``diver`` command as a SLURM job through submitit, and wait for it.

A Snakemake training rule is a *local* rule that calls ``diver launch``; with the
slurm backend that process submits the job and polls its state until it ends:

* **Re-attach.**  The job id is written beside the run's outputs
  (``<out>/.slurm_job.json``, not a declared output, so ``--rerun-incomplete`` never
  deletes it).  A restarted Snakemake finds the job still pending or running and waits
  for it instead of submitting the cell twice.  A job submitted for a different
  command (the cell's settings changed) is cancelled and replaced.
* **Prompt failure.**  The state is polled with ``squeue`` (``sacct`` once slurmctld has
  forgotten the job) every few seconds — submitit's own watcher backs off to minutes —
  and a failed, cancelled or timed-out job fails the rule with the tail of its log.
* **Requeue.**  Each task runs :class:`DiverTask`, a ``submitit.helpers.Checkpointable``:
  on the preemption / time-limit signal (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default)
  ``diver pretrain`` writes a checkpoint and hands the signal to submitit, which
  requeues the job; the requeued job resumes from that checkpoint.  A job requeued
  from outside (``scontrol requeue``, SIGTERM) checkpoints the same way.
* **Ranks.**  One task per GPU; each exports ``TorchDistributedEnvironment`` (RANK,
  WORLD_SIZE, MASTER_ADDR, ...) before ``deepspeed.init_distributed``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import submitit

from diver.atomic import write_text_atomic
from diver.errors import DiverError
from diver.exitcodes import EXIT_PREEMPTED
from diver.launch.site import Resources, Site

JOB_FILE = ".slurm_job.json"
PREEMPT_SIGNAL = "USR2"
ACTIVE = {
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
    "SUSPENDED", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD",
}


class LaunchError(DiverError, RuntimeError):
    """A launched job failed, was cancelled or could not be submitted."""


class DiverTask(submitit.helpers.Checkpointable):
    """The callable each SLURM task runs: one rank of a ``diver`` command.

    ``Checkpointable``'s default ``checkpoint`` resubmits the same command, which is
    right because the command itself resumes from the checkpoints in its folder.
    """

    def __call__(self, argv: Sequence[str]) -> int:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        code = diver_command()(list(argv))
        if code == EXIT_PREEMPTED:
            # SIGTERM from SLURM (scontrol requeue, preemption): the checkpoint is written
            # and SLURM puts the job back in the queue; this incarnation did not finish.
            raise LaunchError("preempted after writing a checkpoint; the requeued job resumes")
        if code != 0:
            raise LaunchError(f"`diver {shlex.join(argv)}` exited with status {code}")
        return code


def diver_command() -> Callable[[list[str]], int]:
    """The installed ``diver`` console script's function, which a task runs in-process.

    Looked up by its published entry point rather than imported, so that launching sits
    below the commands it launches (``diver.cli`` imports this package, not the reverse)
    and a job runs exactly what ``diver ...`` would run on the node's shell.
    """
    found = entry_points(group="console_scripts", name="diver")
    if not found:
        raise LaunchError(
            "the `diver` command is not installed in this environment (pip install the "
            "project), so a job has nothing to run"
        )
    return next(iter(found)).load()


@dataclass(frozen=True)
class JobRecord:
    """What ``<out>/.slurm_job.json`` remembers about the submitted job."""

    job_id: str
    argv: list[str]
    folder: str
    submitted: float
    name: str | None = None  # the SLURM job name (records of older versions have none)

    def save(self, out: Path) -> None:
        write_text_atomic(out / JOB_FILE, json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def load(cls, out: Path) -> JobRecord | None:
        path = out / JOB_FILE
        if not path.exists():
            return None
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise LaunchError(f"{path} is not a job record ({exc}); delete it to resubmit") from exc


Runner = Callable[[Sequence[str]], tuple[int, str]]
"""Runs a SLURM client command: argv -> (exit status, standard output).  The launcher's
only contact with SLURM besides submitit's ``sbatch``, so its job-state logic can be
tested against recorded outputs as well as a real cluster."""


def run_command(argv: Sequence[str]) -> tuple[int, str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    return proc.returncode, proc.stdout


def job_state(job_id: str, run: Runner = run_command) -> str:
    """The job's SLURM state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ...).

    ``squeue`` first: slurmctld is the live truth, while accounting (``sacct``) can
    lag it by seconds and report a running job as still PENDING.  ``sacct`` for jobs
    slurmctld has already forgotten (older than ``MinJobAge``; squeue then fails with
    "Invalid job id specified").  ``UNKNOWN`` when neither knows the job (just
    submitted).
    """
    code, out = run(["squeue", "-h", "-j", job_id, "--states=all", "-o", "%T"])
    if code == 0 and out.strip():
        return out.split()[0]
    code, out = run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State"])
    if code == 0:
        for line in out.splitlines():
            jid, _, state = line.partition("|")
            if jid == job_id and state:
                return state.split()[0].rstrip("+")  # "CANCELLED by 0", "RUNNING+"
    return "UNKNOWN"


def job_name(job_id: str, run: Runner = run_command) -> str | None:
    """The name of a job slurmctld knows (None when it does not know the id)."""
    code, out = run(["squeue", "-h", "-j", job_id, "--states=all", "-o", "%j"])
    if code != 0 or not out.strip():
        return None
    return out.strip()


def cancel(job_id: str, run: Runner = run_command) -> None:
    run(["scancel", job_id])


_TASK_START = re.compile(r"JobEnvironment\(.*hostname=([^,\s]+).*global_rank=(\d+)")


def log_tail(folder: Path, job_id: str, lines: int = 30) -> str:
    """The last lines of each rank's submitit logs (stderr, then stdout), each headed
    by the rank and the node it ran on.

    A rank that left no result file died without reporting (a signal, the OOM killer,
    a lost node): its logs come first and say so, since the other ranks' tracebacks
    (a broken connection to it) are consequences, not the cause.  Only whether the
    result file exists is looked at; it is never unpickled.
    """
    tasks = sorted({path.name.split("_")[1] for path in folder.glob(f"{job_id}_*_log.*")}, key=int)
    died = [t for t in tasks if not (folder / f"{job_id}_{t}_result.pkl").exists()]
    parts = []
    for task in [*died, *(t for t in tasks if t not in died)]:
        out = folder / f"{job_id}_{task}_log.out"
        starts = _TASK_START.findall(out.read_text(errors="replace")) if out.exists() else []
        where = f"rank {starts[-1][1]} on {starts[-1][0]}" if starts else f"task {task}"
        if task in died:
            where += " (left no result: killed by a signal, out of memory, or its node lost)"
        for path in (folder / f"{job_id}_{task}_log.err", out):
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            if text:
                parts.append(f"--- {where}: {path} (last {len(text)} lines)\n" + "\n".join(text))
    return "\n".join(parts) or f"(no log under {folder} for job {job_id})"


def sbatch_parameters(site: Site, resources: Resources, minutes: int, name: str) -> dict[str, Any]:
    """submitit ``SlurmExecutor.update_parameters`` for one training job."""
    params: dict[str, Any] = {
        "job_name": name,
        "nodes": resources.nodes,
        "ntasks_per_node": resources.ranks_per_node,
        "cpus_per_task": resources.cpus_per_task,
        "mem": f"{int(resources.mem_gb * 1024)}M",
        "time": minutes,
        "signal_delay_s": site.signal_delay_s,
    }
    if resources.gpus_per_node:
        gpus = resources.gpus_per_node
        params["gpus_per_node"] = f"{site.gpu_type}:{gpus}" if site.gpu_type else gpus
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(site, key)
        if value:
            params[key] = value
    return params


class SlurmLauncher:
    """Submit (or re-attach to) the job of one output folder and wait for its end."""

    def __init__(
        self,
        site: Site,
        poll_seconds: float = 5.0,
        grace_seconds: float = 60.0,
        run: Runner = run_command,
    ):
        self.site = site
        self.poll_seconds = poll_seconds
        self.grace_seconds = grace_seconds
        self.run_slurm = run

    def run(
        self, argv: Sequence[str], out: Path, resources: Resources, minutes: int, name: str
    ) -> int:
        out.mkdir(parents=True, exist_ok=True)
        folder = out / "slurm"
        record = JobRecord.load(out)
        if record is not None:
            state = job_state(record.job_id, self.run_slurm)
            # A job SLURM no longer knows (UNKNOWN), or one that ended, is not waited for:
            # a new one is submitted and resumes from the folder's checkpoints.  Nor is
            # one whose id now names another job (ids restart with a new cluster): that
            # job is someone else's, never re-attached to or cancelled.
            if state in ACTIVE and record.name is not None:
                current = job_name(record.job_id, self.run_slurm)
                if current != record.name:
                    print(
                        f"SLURM job {record.job_id} is now {current!r}, not this folder's "
                        f"{record.name!r}; leaving it alone and submitting anew",
                        flush=True,
                    )
                    state = "REUSED"
            if state in ACTIVE:
                if list(record.argv) == list(argv):
                    print(f"re-attaching to SLURM job {record.job_id} ({state})", flush=True)
                    return self.wait(record, out)
                print(
                    f"SLURM job {record.job_id} ({state}) runs another command for {out}; "
                    "cancelling it and submitting the current one",
                    flush=True,
                )
                cancel(record.job_id, self.run_slurm)
        record = self.submit(argv, folder, resources, minutes, name)
        record.save(out)
        print(
            f"submitted SLURM job {record.job_id}: {resources.nodes} node(s) x "
            f"{resources.ranks_per_node} rank(s), --time {minutes} min, logs {folder}",
            flush=True,
        )
        return self.wait(record, out)

    def submit(
        self, argv: Sequence[str], folder: Path, resources: Resources, minutes: int, name: str
    ) -> JobRecord:
        os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", PREEMPT_SIGNAL)
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=30)
        executor.update_parameters(**sbatch_parameters(self.site, resources, minutes, name))
        try:
            job = executor.submit(DiverTask(), list(argv))
        except Exception as exc:  # submitit raises bare errors with sbatch's message
            raise LaunchError(f"sbatch refused the job for {folder.parent}: {exc}") from exc
        return JobRecord(
            job_id=str(job.job_id),
            argv=list(argv),
            folder=str(folder),
            submitted=time.time(),
            name=name,
        )

    def wait(self, record: JobRecord, out: Path) -> int:
        """Poll until the job ends; 0 when it completed, else a LaunchError with its log."""
        folder = Path(record.folder)
        last = None
        start = time.monotonic()

        def stop(signum: int, frame: Any) -> None:
            cancel(record.job_id, self.run_slurm)
            print(f"signal {signum}: cancelled SLURM job {record.job_id}", flush=True)
            sys.exit(128 + signum)

        previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            while True:
                state = job_state(record.job_id, self.run_slurm)
                if state != last:
                    print(f"SLURM job {record.job_id}: {state}", flush=True)
                    last = state
                if state == "COMPLETED":
                    return 0
                if state == "UNKNOWN" and time.monotonic() - start > self.grace_seconds:
                    raise LaunchError(
                        f"SLURM job {record.job_id} ({out}) is unknown to sacct and squeue"
                    )
                if state not in ACTIVE and state != "UNKNOWN":
                    raise LaunchError(
                        f"SLURM job {record.job_id} for {out} ended {state}\n"
                        + log_tail(folder, record.job_id)
                    )
                time.sleep(self.poll_seconds)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
