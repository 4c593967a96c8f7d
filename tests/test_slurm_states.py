"""The launcher's SLURM job-state logic against outputs recorded from a real SLURM.

The outputs below were captured from ``diver localslurm`` (SLURM 24): squeue's ``%T``
column, sacct's parsable ``JobID|State`` (a cancelled job reads ``CANCELLED by 0``), and
squeue's failure for a job slurmctld no longer knows (exit 1, "Invalid job id
specified" on stderr, nothing on stdout).  The real-cluster tests (``test_slurm.py``,
slow) cover the same paths end to end; these run in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from diver.launch.site import load_site
from diver.launch.slurm import JobRecord, LaunchError, SlurmLauncher, job_state, log_tail
from tests.conftest import REPO_ROOT


class Recorded:
    """A SLURM client that answers from recorded outputs, in order, per command."""

    def __init__(self, answers: dict[str, list[tuple[int, str]]]):
        self.answers = {cmd: list(outs) for cmd, outs in answers.items()}
        self.calls: list[list[str]] = []

    def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.calls.append(list(argv))
        outs = self.answers[argv[0]]
        return outs.pop(0) if len(outs) > 1 else outs[0]  # the last answer repeats


SQUEUE_FORGOT = (1, "")  # "slurm_load_jobs error: Invalid job id specified" on stderr


@pytest.mark.parametrize(
    ("squeue", "sacct", "state"),
    [
        ((0, "PENDING\n"), (0, ""), "PENDING"),
        ((0, "RUNNING\n"), (0, "98|RUNNING\n"), "RUNNING"),
        ((0, "COMPLETED\n"), (0, "98|COMPLETED\n"), "COMPLETED"),
        (SQUEUE_FORGOT, (0, "97|CANCELLED by 0\n"), "CANCELLED"),
        (SQUEUE_FORGOT, (0, "99|FAILED\n"), "FAILED"),
        (SQUEUE_FORGOT, (0, "98|RUNNING+\n"), "RUNNING"),
        (SQUEUE_FORGOT, (0, ""), "UNKNOWN"),  # just submitted: accounting lags
        ((0, ""), (1, ""), "UNKNOWN"),
    ],
)
def test_job_state(squeue: tuple[int, str], sacct: tuple[int, str], state: str) -> None:
    job = sacct[1].partition("|")[0] or "97"
    run = Recorded({"squeue": [squeue], "sacct": [sacct]})
    assert job_state(job, run) == state
    asked = [call[0] for call in run.calls]
    assert asked == (["squeue"] if squeue[1].strip() else ["squeue", "sacct"])


def test_sacct_lines_of_other_jobs_are_ignored() -> None:
    run = Recorded({"squeue": [SQUEUE_FORGOT], "sacct": [(0, "970|COMPLETED\n97|TIMEOUT\n")]})
    assert job_state("97", run) == "TIMEOUT"


def _launcher(run: Recorded, grace: float = 60.0) -> SlurmLauncher:
    site = load_site(REPO_ROOT / "cluster_profiles" / "slurm" / "site.yaml")
    return SlurmLauncher(site, poll_seconds=0, grace_seconds=grace, run=run)


def _record(tmp_path: Path, job: str = "98") -> JobRecord:
    return JobRecord(job_id=job, argv=["pretrain"], folder=str(tmp_path / "slurm"), submitted=0)


def test_wait_follows_the_job_to_completion(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = Recorded({"squeue": [(0, "PENDING\n"), (0, "PENDING\n"), (0, "RUNNING\n"),
                               (0, "COMPLETED\n")], "sacct": [(0, "")]})
    assert _launcher(run).wait(_record(tmp_path), tmp_path) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"SLURM job 98: {s}" for s in ("PENDING", "RUNNING", "COMPLETED")]


def test_a_failed_job_raises_with_its_log_tail(tmp_path: Path) -> None:
    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "99_0_log.err").write_text("Traceback ...\nValueError: bad corpus\n")
    run = Recorded({"squeue": [(0, "RUNNING\n"), SQUEUE_FORGOT], "sacct": [(0, "99|FAILED\n")]})
    with pytest.raises(LaunchError, match="ended FAILED") as err:
        _launcher(run).wait(_record(tmp_path, "99"), tmp_path)
    assert "ValueError: bad corpus" in str(err.value)



def test_the_log_tail_leads_with_the_rank_that_died_and_names_its_node(tmp_path: Path) -> None:
    """A multi-node job whose rank 1 was killed: rank 0's traceback (a connection reset
    by rank 1) is a consequence; the rank that left no result file is the cause."""
    logs = tmp_path / "slurm"
    logs.mkdir()
    for task, host in ((0, "dnode1"), (1, "dnode2")):
        (logs / f"7_{task}_log.out").write_text(
            f"submitit INFO - Starting with JobEnvironment(job_id=7, hostname={host}, "
            f"local_rank=0(1), node={task}(2), global_rank={task}(2))\n"
        )
    (logs / "7_0_log.err").write_text("RuntimeError: Connection reset by peer\n")
    (logs / "7_0_result.pkl").write_bytes(b"not read")
    (logs / "7_1_log.err").write_text("step 12\n")
    tail = log_tail(logs, "7")
    first, second = tail.index("rank 1 on dnode2"), tail.index("rank 0 on dnode1")
    assert first < second
    assert "rank 1 on dnode2 (left no result" in tail
    assert "rank 0 on dnode1 (left no result" not in tail

def test_a_job_no_one_knows_fails_after_the_grace_period(tmp_path: Path) -> None:
    run = Recorded({"squeue": [SQUEUE_FORGOT], "sacct": [(0, "")]})
    with pytest.raises(LaunchError, match="unknown to sacct and squeue"):
        _launcher(run, grace=0).wait(_record(tmp_path), tmp_path)


def test_a_rerun_reattaches_to_its_running_job(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _record(tmp_path).save(tmp_path)
    run = Recorded({"squeue": [(0, "RUNNING\n"), (0, "RUNNING\n"), (0, "COMPLETED\n")],
                    "sacct": [(0, "")]})
    launcher = _launcher(run)
    assert launcher.run(["pretrain"], tmp_path, launcher.site.resources("debug"), 10, "x") == 0
    assert "re-attaching to SLURM job 98 (RUNNING)" in capsys.readouterr().out
    assert not [call for call in run.calls if call[0] in ("scancel", "sbatch")]


def test_a_reused_job_id_is_never_reattached_to_or_cancelled(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The recorded job id now names someone else's job (a fresh cluster restarted the
    numbering): the launcher leaves it alone and submits its own."""
    record = JobRecord(job_id="98", argv=["pretrain"], folder=str(tmp_path / "slurm"),
                       submitted=0, name="diver-eeg-1s-debug-f1.0-e30")  # fmt: skip
    record.save(tmp_path)
    calls: list[list[str]] = []

    def slurm(argv: Sequence[str]) -> tuple[int, str]:
        calls.append(list(argv))
        if argv[0] == "squeue":
            return 0, ("RUNNING\n" if argv[-1] == "%T" else "someone-elses-job\n")
        return 0, ""

    launcher = _launcher(slurm)  # type: ignore[arg-type]
    submitted: list[str] = []

    def submit(argv, folder, resources, minutes, name):  # type: ignore[no-untyped-def]
        submitted.append(name)  # stands in for sbatch: the decision is what is tested
        raise LaunchError("not submitting in a test")

    launcher.submit = submit  # type: ignore[method-assign]
    with pytest.raises(LaunchError, match="not submitting"):
        launcher.run(["pretrain"], tmp_path, launcher.site.resources("debug"), 10, "diver-x")
    assert submitted == ["diver-x"]
    assert not [call for call in calls if call[0] == "scancel"]
    assert "is now 'someone-elses-job'" in capsys.readouterr().out
