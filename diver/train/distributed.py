"""Process-group set-up for training: one code path for a plain process, torchrun and
SLURM/submitit, on CPUs (gloo) and GPUs (nccl).

Why each piece is here:

- **World size 1 without a launcher.** ``deepspeed.init_distributed`` looks for the
  ``RANK``/``WORLD_SIZE``/``MASTER_*`` variables and, finding none, tries MPI discovery,
  which fails without ``mpi4py``.  A plain ``diver pretrain`` therefore exports a
  one-process world with a free local port first.
- **Launchers.** ``torchrun`` (and ``submitit.helpers.TorchDistributedEnvironment
  .export()``) set those variables already; they are left untouched.
- **Backend.** gloo on CPU, nccl with CUDA.  DeepSpeed's CPU accelerator builds its
  ``deepspeed_shm_comm`` extension at initialisation (~30 s once); the build is cached
  in ``TORCH_EXTENSIONS_DIR``, which defaults to the project's ``.cache/`` so reruns
  and CI reuse it.
- **No orphaned ranks.** torchrun starts every worker in a session of its own, so
  killing the launcher's process group (Ctrl-C on a hung job, a scheduler killing the
  job step) leaves the ranks running on, writing into the run folder while a rerun
  starts.  Under torchrun each rank asks the kernel for SIGKILL when its launcher dies
  (``PR_SET_PDEATHSIG``).  Only under a launcher: a plain ``diver pretrain`` left
  running by a closed terminal (``nohup``) must survive its parent.
- **Short timeouts.** DeepSpeed's default collective timeout is 10 minutes (torch's,
  30): a rank whose peer was killed would sit in an all-reduce that long.  A short one
  (``pretrain.dist_timeout_s``, 60 s by default) makes the survivors fail in seconds,
  so a crashed job frees its allocation at once.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

# torch.distributed.nn's functions take ``group=group.WORLD`` as a default argument:
# imported after initialisation (DeepSpeed does so lazily), they would hold the world
# group for good, and its gloo threads would run on into interpreter shutdown (see
# ``teardown_distributed``).  Imported before any group exists, the default is None.
import torch.distributed.nn

from diver.parent_death import die_with_parent

_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job: ranks, backend and the device it computes on."""

    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files, logs to MLflow and prints progress."""
        return self.rank == 0


def free_port() -> int:
    """A TCP port free on the loopback interface at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_extensions_dir() -> None:
    """Point ``TORCH_EXTENSIONS_DIR`` at the project's ``.cache/`` unless it is set.

    Only for a source checkout (a ``pyproject.toml`` beside the package); an installed
    package keeps torch's default (``~/.cache/torch_extensions``).
    """
    if "TORCH_EXTENSIONS_DIR" in os.environ:
        return
    if (PROJECT_ROOT / "pyproject.toml").is_file():
        os.environ["TORCH_EXTENSIONS_DIR"] = str(PROJECT_ROOT / ".cache" / "torch_extensions")


def export_single_process_env() -> bool:
    """Export a one-process world when no launcher did; True if it was exported.

    A partial set (say ``RANK`` without ``MASTER_PORT``) is a broken launcher
    environment, not a single process: refused with the missing names.
    """
    present = [name for name in _LAUNCHER_VARS if name in os.environ]
    if len(present) == len(_LAUNCHER_VARS):
        os.environ.setdefault("LOCAL_RANK", "0")
        return False
    if present:
        missing = [name for name in _LAUNCHER_VARS if name not in os.environ]
        raise RuntimeError(
            f"incomplete distributed environment: {present} set but {missing} missing "
            "(launch with torchrun, or unset them for a single process)"
        )
    os.environ.update(
        {
            "RANK": "0",
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "1",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(free_port()),
        }
    )
    return True


def die_with_launcher() -> bool:
    """Under torchrun (``TORCHELASTIC_RUN_ID`` set), get SIGKILL when the launcher dies.

    Linux only (``prctl(PR_SET_PDEATHSIG)``); returns whether it was armed.  If the
    launcher died before the call, the process ends at once.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return False
    return die_with_parent(os.getppid())


def setup_distributed(timeout_s: float = 60.0, backend: str | None = None) -> DistEnv:
    """Initialise (once per process) the default process group through DeepSpeed.

    ``backend`` defaults to nccl with CUDA, gloo otherwise.  Calling it again in an
    initialised process returns the existing world (pytest sessions, notebooks).
    """
    default_extensions_dir()
    export_single_process_env()
    die_with_launcher()
    cuda = torch.cuda.is_available()
    if not cuda:
        # Say it rather than let DeepSpeed probe for accelerators and warn about it.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    backend = backend or ("nccl" if cuda else "gloo")
    if not dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            timeout=timedelta(seconds=timeout_s),
            verbose=False,
        )
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistEnv(rank, local_rank, world_size, backend, device)


def teardown_distributed() -> None:
    """Destroy every process group and the last references to them (end of a command;
    not between pytest tests).

    A group outlives ``destroy_process_group`` while Python still holds it, and so do
    its gloo worker threads.  Left running into interpreter shutdown, they may touch
    Python objects mid-finalisation, which now and then aborted a job that had
    succeeded (``terminate called without an active exception``).  The engine is
    released by now (``TrainEngine.release``), and destroying through DeepSpeed also
    drops DeepSpeed's module-level references to its groups; one collection then frees
    the engine's leftover cycles, and the groups with them.
    """
    if not dist.is_initialized():
        return
    import deepspeed.comm

    deepspeed.comm.destroy_process_group()
    gc.collect()


def all_reduce_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64; identity for one rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when ``flag`` is true on at least one (a preemption signal may
    reach only some ranks, but all must stop at the same step to save together)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` of rank ``src`` on every rank (pickled; for small decisions only)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
