"""Worker death (issue 13, item 7): a worker killed on a recording (as the OOM killer
does) quarantines that recording and the run goes on; workers die with their parent.

The first two run ``diver corpus --jobs 2`` as a subprocess on a folder of three
recordings, one of them an hour long.  Its worker is found by the name of the shard it
is writing (``<recording>.parquet.tmp-<pid>``, see
:class:`diver.corpus.shards.ShardWriter`), which ties the process killed to the
recording that has to be quarantined.  Processes are read from ``/proc``: Linux only,
as is the parent-death signal being tested.  The rest check
:func:`diver.corpus.workers.run_in_workers` itself with standard-library tasks (workers
are spawned: a task must be importable by name).
"""

from __future__ import annotations

import contextlib
import operator
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mne
import numpy as np
import pandas as pd
import pytest

from diver.corpus.workers import RemoteTraceback, WorkerDied, run_in_workers

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux's"
)

LONG = "long_raw"  # ~2.5 s of processing on one core; the tests stop it long before the end
SMALL = {
    "rest.fif": ("resting_yasa", "data_resting_EO_200Hz_raw.fif"),
    "run.edf": ("eegmmidb_128hz_run", "test_edf_overlapping_annotations.edf"),
}


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An hour of 8-channel noise at 250 Hz (29 MB): six 20-window blocks, so its worker
    is still busy well after the first block's windows are in the shard."""
    names = ["Fz", "Cz", "Pz", "Oz", "C3", "C4", "F3", "F4"]
    sfreq = 250.0
    data = np.random.default_rng(0).standard_normal((len(names), int(3600 * sfreq))) * 20e-6
    raw = mne.io.RawArray(data, mne.create_info(names, sfreq, "eeg"), verbose="error")
    path = tmp_path_factory.mktemp("long") / f"{LONG}.fif"
    raw.save(path, verbose="error")
    return path


@pytest.fixture()
def inputs(shared_data: Path, long_recording: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(long_recording, folder / long_recording.name)
    for name, parts in SMALL.items():
        shutil.copy(shared_data.joinpath(*parts), folder / name)
    return folder


def _corpus_command(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "diver", "corpus", "--input", f"ds={folder}",
            "--out", str(out), "--jobs", "2", "--quiet"]  # fmt: skip


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from the kernel's per-thread child lists)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread or the process ended meanwhile
            continue
        for child in map(int, children):
            found |= {child} | _descendants(child)
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting to be reaped is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _worker_writing(out: Path, proc: subprocess.Popen, recording: str) -> int:
    """The pid of the process writing ``recording``'s shard, once it has begun."""
    folder = out / "windows" / "ds"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for tmp in folder.glob(f"{recording}.parquet.tmp-*"):
            pid = int(tmp.name.rsplit("-", 1)[1])
            assert pid in _descendants(proc.pid), "the shard's writer is not a worker of the run"
            return pid
        time.sleep(0.01)
    raise AssertionError(f"no worker began writing {recording} (exit status {proc.poll()})")


@pytest.fixture()
def cleanup() -> Iterator[list[subprocess.Popen]]:
    """Kills what the test started, whatever happened (its workers too: a parent killed
    on code without the fix leaves them running for good)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        with contextlib.suppress(ProcessLookupError):  # the run's session: parent, workers
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _qc(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "qc.csv", keep_default_na=False).set_index("recording")


def test_a_killed_worker_quarantines_its_recording_and_the_run_goes_on(
    inputs: Path, tmp_path: Path, cleanup: list[subprocess.Popen]
) -> None:
    out = tmp_path / "corpus"
    proc = subprocess.Popen(
        _corpus_command(inputs, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    cleanup.append(proc)
    os.kill(_worker_writing(out, proc, LONG), signal.SIGKILL)  # as the OOM killer would
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "3 recordings (3 processed, 0 already done), 1 quarantined" in stdout
    qc = _qc(out)
    assert qc.loc[LONG, "status"] == "quarantined"
    assert qc.loc[LONG, "reason"] == "worker died: signal 9, probably out of memory"
    assert qc.loc["rest", "status"] == "kept"  # the others were processed as usual
    assert qc.loc["run", "status"] == "qc_rejected"
    assert (out / "receipts" / "ds" / f"{LONG}.json").exists()
    assert not (out / "windows" / "ds" / f"{LONG}.parquet").exists()
    assert not list(out.rglob("*.tmp-*"))  # the dead worker's partial shard is gone
    # The receipt holds: a rerun does not try the recording again (until its file changes).
    rerun = subprocess.run(_corpus_command(inputs, out), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(0 processed, 3 already done), 1 quarantined" in rerun.stdout


def test_workers_die_with_their_parent(
    inputs: Path, tmp_path: Path, cleanup: list[subprocess.Popen]
) -> None:
    out = tmp_path / "corpus"
    proc = subprocess.Popen(
        _corpus_command(inputs, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cleanup.append(proc)
    _worker_writing(out, proc, LONG)  # the workers are up, one of them busy
    workers = _descendants(proc.pid)
    assert workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(_running, workers)):
        time.sleep(0.05)
    assert not [pid for pid in workers if _running(pid)], "orphaned workers"
    # Killed, not merely done: the busy worker never finished (and published) its shard.
    assert not (out / "windows" / "ds" / f"{LONG}.parquet").exists()


@pytest.mark.parametrize(
    ("exitcode", "reason"),
    [
        (-signal.SIGKILL, "worker died: signal 9, probably out of memory"),
        (-signal.SIGSEGV, "worker died: signal 11 (SIGSEGV)"),
        (-signal.SIGABRT, "worker died: signal 6 (SIGABRT)"),
        (3, "worker died: exit code 3"),
    ],
)
def test_the_reason_names_how_the_worker_died(exitcode: int, reason: str) -> None:
    assert WorkerDied(exitcode).reason == reason


def test_a_dead_worker_fails_only_its_task_and_a_fresh_one_goes_on() -> None:
    tasks = [
        (signal.raise_signal, signal.SIGKILL),
        (abs, -2),
        (signal.raise_signal, signal.SIGTERM),
        (abs, -3),
    ]
    with contextlib.closing(run_in_workers(operator.call, tasks, jobs=1)) as outcomes:
        assert dict(outcomes) == {0: WorkerDied(-9), 1: 2, 2: WorkerDied(-15), 3: 3}


def test_an_exception_in_a_task_is_raised_with_the_workers_traceback() -> None:
    tasks = [(operator.truediv, 1, 0)]
    with (
        pytest.raises(ZeroDivisionError) as raised,
        contextlib.closing(run_in_workers(operator.call, tasks, jobs=2)) as outcomes,
    ):
        list(outcomes)
    assert isinstance(raised.value.__cause__, RemoteTraceback)
    assert "in _answer" in str(raised.value.__cause__)


def test_an_answer_that_cannot_be_sent_back_is_an_error_not_a_death() -> None:
    tasks = [(threading.Lock,)]  # a lock cannot be pickled
    with (
        pytest.raises(RuntimeError, match="could not send back its lock"),
        contextlib.closing(run_in_workers(operator.call, tasks, jobs=1)) as outcomes,
    ):
        list(outcomes)
