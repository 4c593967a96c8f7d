"""Shared fixtures.

Real recordings live outside the repo (``../shared/data`` beside the clone); one
setting, the ``DIVER_SHARED_DATA`` environment variable, points elsewhere.  Likewise the
authors' parity fixtures (``../shared/official_parity``, ``DIVER_PARITY_DATA``).  When
such a folder is missing, tests that need it skip with a clear message on a user's
clone, and fail under CI (``CI=true``), where its absence is a broken setup.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    return Path(os.environ.get("DIVER_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def missing_data(message: str) -> None:
    """Skip on a user's clone, fail under CI (a broken setup there)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        found.append((int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return found


def alive(pgid: int, pids: Collection[int] = ()) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid`` or among ``pids``."""
    return [
        pid
        for pid, state, _, group in processes()
        if (pid in pids or group == pgid) and state != "Z"
    ]


def chromium(check: str) -> str:
    """Debian's headless-capable ``chromium`` for the browser check ``check`` (missing:
    skipped on a user's clone, failed under CI)."""
    path = shutil.which("chromium")
    if path is None:
        missing_data(
            "chromium not found: install Debian's package (apt-get install -y chromium, "
            f"or make system-deps) for {check}"
        )
    return str(path)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real sample recordings (see its SOURCES.md)."""
    path = shared_data_dir()
    if not (path / "SOURCES.md").exists():
        missing_data(
            f"real sample recordings not found at {path}; set DIVER_SHARED_DATA to the "
            "folder holding SOURCES.md"
        )
    return path


def parity_data_dir() -> Path:
    """The authors' parity fixtures (``NAME.ckpt.pt``, ``NAME.io.pt``, ``NAME.json``)."""
    default = REPO_ROOT.parent / "shared" / "official_parity"
    return Path(os.environ.get("DIVER_PARITY_DATA", default))


@pytest.fixture(scope="session")
def parity_data() -> Path:
    path = parity_data_dir()
    if not any(path.glob("*.ckpt.pt")):
        missing_data(f"no parity fixtures (*.ckpt.pt) in {path}; set DIVER_PARITY_DATA")
    return path


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a test module (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): the CI runs ``pytest -n 2`` on 2 cores, and
    two workers with two OpenMP threads each spin against each other (measured on a busy
    2-core box: 40 debug steps took 9 s CPU with 2 threads, 0.5 s with 1).  These models
    are too small to gain from a second thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The repo's Snakefile on ``workdir``, its rules' `diver` from this interpreter."""
    bin_dir = Path(sys.executable).parent
    return subprocess.run(
        [str(bin_dir / "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile"),
         "--directory", str(workdir), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
    )


# ---------------------------------------------------------- sharing across xdist workers
# pytest-xdist's ``xdist_group`` cannot keep tests together under pytest 9 (it renames
# ``item._nodeid``, which pytest 9's nodes no longer read), so a fixture that several
# workers may need at once coordinates through files in the session's shared folder.


def shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder shared by every xdist worker of this test session (or this session's
    own when not under xdist)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the workers' basetemps are popen-gwN under one session root
    root = base / name
    root.mkdir(exist_ok=True)
    return root


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """An exclusive lock on ``root`` across processes."""
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


@contextmanager
def built_once(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Path | None]:
    """A folder built once per test session, even across pytest-xdist workers.

    Yields the folder to build into, or None when another worker (or an earlier
    fixture) already built it; the lock serialises the builders, and the ``.done``
    marker is written only when the build returned without error.
    """
    root = shared_dir(tmp_path_factory, name)
    with locked(root):
        if (root / ".done").exists():
            yield None
            return
        yield root
        (root / ".done").touch()


def unprivileged(argv: list[str]) -> list[str]:
    """``argv`` run without root's permission-bypass capabilities (the tests run as root,
    which reads a mode-000 file anyway): how a test makes a file or folder unreadable."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        missing_data("needs root and setpriv to drop the permission-bypass capabilities")
    drop = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}", *argv]


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working folder of one finished run of the default DAG (``snakemake --profile
    cluster_profiles/local``), built once a session and shared by every slow test that
    reads a finished default run (the run takes minutes: never one per test)."""
    with built_once(tmp_path_factory, "default-dag") as root:
        if root is not None:
            proc = run_snakemake(root, "--profile", "cluster_profiles/local")
            assert proc.returncode == 0, proc.stderr[-4000:]
            (root / "snakemake.stdout").write_text(proc.stdout)
    return shared_dir(tmp_path_factory, "default-dag")


# The SLURM tests' cluster: two simulated nodes (diver localslurm --nodes 2), so the
# single-node tests and the multi-node ones share one cluster and one start.
CLUSTER_NODES = 2


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The local cluster, started for the tests and stopped after unless it was up before.

    Several xdist workers may run SLURM tests at once (``xdist_group`` does not hold
    under pytest 9), so the workers count their users of the cluster in a shared folder
    and the last one out stops it, and then checks that the stop left nothing behind
    (daemons, namespaces, the bridge, /etc/hosts lines, /etc/slurm links).
    """
    from diver import localnodes, localslurm

    reason = localslurm.missing_requirements()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests: {reason}")
        pytest.skip(reason)
    root = shared_dir(tmp_path_factory, "slurm-cluster")
    users, was_up = root / "users", root / "was_up"
    with locked(root):
        count = int(users.read_text()) if users.exists() else 0
        if count == 0:  # the first user: remember whether someone else had it up
            was_up.write_text(str(all(localslurm.status().values())))
        localslurm.start(nodes=CLUSTER_NODES)
        users.write_text(str(count + 1))
    yield
    with locked(root):
        count = int(users.read_text()) - 1
        users.write_text(str(count))
        if count == 0 and was_up.read_text() == "False":
            localslurm.stop()
            left = [name for name, up in localslurm.status().items() if up and name != "munged"]
            netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
            nodes = localnodes.plan(CLUSTER_NODES)
            left += [n.namespace for n in nodes if n.namespace in netns.stdout]
            bridge = subprocess.run(["ip", "link", "show", localnodes.BRIDGE], capture_output=True)
            if bridge.returncode == 0:
                left.append(localnodes.BRIDGE)
            hosts = Path("/etc/hosts").read_text().splitlines()
            if any(localnodes.hosts_line(n) in hosts for n in nodes):
                left.append("/etc/hosts lines")
            left += [str(p) for p in Path("/etc/slurm").glob("*.conf") if p.is_symlink()]
            assert not left, f"diver localslurm stop left {left} behind"


def build_synthetic_corpus(root: Path, hours: float, seed: int = 0) -> Path:
    """``diver synth``'s scalp-EEG + iEEG recordings under ``root/synth``, built into a
    corpus at ``root/corpus`` (returned) as the default config's two datasets are."""
    from diver.config import CorpusConfig, DatasetConfig
    from diver.corpus.build import build_corpus
    from diver.corpus.synth.corpus import write_synthetic_corpus

    write_synthetic_corpus(root / "synth", hours=hours, seed=seed)
    datasets = [
        DatasetConfig(
            name="synth_eeg",
            inputs=(str(root / "synth" / "eeg"),),
            modality="eeg",
            subject_pattern=r"sub-(\d+)_",
        ),
        DatasetConfig(
            name="synth_ieeg",
            inputs=(str(root / "synth" / "ieeg"),),
            modality="ieeg",
            highpass=0.5,
        ),
    ]
    build_corpus(datasets, CorpusConfig(), root / "corpus", progress=False)
    return root / "corpus"
