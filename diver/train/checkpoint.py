"""Resumable checkpoints: ``<out>/checkpoints/step-N/``, complete-marker last, keep k.

Layout of one checkpoint (torchtitan's convention: a folder per step, and a folder
counts only once its metadata is complete):

- DeepSpeed's files (``engine.save_checkpoint(<out>/checkpoints, tag="step-N")``,
  called on **every** rank - a rank-0-only save hangs): model states with the
  ``client_state`` (step, epoch, position in the epoch, data-loader state, rank 0's
  RNG states), and the ZeRO optimizer partitions of each rank;
- ``rng_rank<r>.pt``: each rank's python/numpy/torch RNG states (DeepSpeed stores the
  client state once, from rank 0; ranks' generators differ);
- ``diver_checkpoint.json``, written by rank 0 **after** a barrier that every rank
  reaches only once its files are written: step, epoch, world size and every file's
  size.  A folder without it (a save cut short by SIGKILL, a full disk) is incomplete.

Resuming takes the newest complete folder and checks its files' sizes against the
marker before DeepSpeed reads anything, so a truncated file is reported by name
instead of surfacing as an unpickling error.  Two situations are errors, never a
silent fresh start: ``checkpoints/`` holds step folders but none is complete, and
DeepSpeed's ``load_checkpoint`` returns ``(None, None)`` (it only warns when it finds
nothing).  The DeepSpeed ``latest`` file is written but not used: the tag is always
passed explicitly.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diver.atomic import write_text_atomic
from diver.errors import CheckpointError
from diver.train.distributed import DistEnv, barrier

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
MARKER = "diver_checkpoint.json"
MARKER_VERSION = 1
_STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    """One ``step-N`` folder; ``metadata`` is the parsed marker (None if incomplete)."""

    step: int
    path: Path
    metadata: Mapping[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.metadata is not None

    @property
    def tag(self) -> str:
        return self.path.name


def tag_for(step: int) -> str:
    """DeepSpeed tag and folder name of the checkpoint after ``step`` optimizer steps."""
    return f"step-{step}"


def _read_marker(folder: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("complete") is not True:
        return None
    return data


def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Every ``step-N`` folder under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_RE.match(child.name)
        if match and child.is_dir():
            found.append(CheckpointInfo(int(match.group(1)), child, _read_marker(child)))
    return sorted(found, key=lambda c: c.step)


def find_resume_checkpoint(root: Path) -> CheckpointInfo | None:
    """The newest complete checkpoint under ``root``; None when there is no step folder.

    Raises CheckpointError when step folders exist but none is complete, or when the
    newest complete one has a missing or truncated file (falling back to an older one
    silently would hide the damage; the message says which folder to delete).
    """
    found = list_checkpoints(root)
    if not found:
        return None
    complete = [c for c in found if c.complete]
    if not complete:
        names = ", ".join(c.tag for c in found)
        raise CheckpointError(
            f"{root} holds checkpoint folders ({names}) but none is complete (no valid "
            f"{MARKER}); refusing to start afresh over them. Delete {root} to start over."
        )
    newest = complete[-1]
    for incomplete in (c for c in found if not c.complete and c.step > newest.step):
        log.warning("ignoring incomplete checkpoint %s (a save cut short)", incomplete.path)
    verify_files(newest)
    return newest


def verify_files(info: CheckpointInfo) -> None:
    """Check every file the marker lists exists with its recorded size."""
    assert info.metadata is not None
    files = info.metadata.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"checkpoint {info.path}: {MARKER} lists no files")
    for name, size in files.items():
        path = info.path / name
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {info.path} is damaged: {name} is missing. Delete the folder to "
                "resume from an older checkpoint."
            )
        actual = path.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"checkpoint {info.path} is damaged: {name} has {actual} bytes, {size} were "
                "written. Delete the folder to resume from an older checkpoint."
            )


# ----------------------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy and torch (CPU and CUDA) generator states, as
    tensors and plain data only, so the file loads with ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "key": str(key),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state(
        (npy["key"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_file(rank: int) -> str:
    return f"rng_rank{rank}.pt"


# ---------------------------------------------------------------------- save / load


def save_checkpoint(
    engine: Any,
    root: Path,
    step: int,
    client_state: Mapping[str, Any],
    env: DistEnv,
    *,
    keep: int,
) -> Path:
    """Save the engine and ``client_state`` as ``root/step-N`` on every rank; rank 0
    writes the completion marker last and prunes to the newest ``keep`` checkpoints."""
    tag = tag_for(step)
    folder = root / tag
    if env.is_main and folder.exists():
        # A leftover of a save that was cut short at this very step: start clean.
        shutil.rmtree(folder)
    barrier()
    engine.save_checkpoint(str(root), tag=tag, client_state=dict(client_state))
    torch.save(capture_rng(), folder / _rng_file(env.rank))
    barrier()  # every rank's files are on disk before the marker says so
    if env.is_main:
        files = {
            p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MARKER
        }
        missing = [_rng_file(r) for r in range(env.world_size) if _rng_file(r) not in files]
        if missing:
            raise CheckpointError(f"checkpoint {folder}: rank files {missing} were not written")
        marker = {
            "complete": True,
            "version": MARKER_VERSION,
            "step": step,
            "epoch": client_state.get("epoch"),
            "batches_in_epoch": client_state.get("batches_in_epoch"),
            "world_size": env.world_size,
            "files": files,
        }
        write_text_atomic(folder / MARKER, json.dumps(marker, indent=1) + "\n")
        prune_checkpoints(root, keep)
    barrier()
    return folder


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` complete checkpoints, and incomplete folders
    older than the newest complete one (leftovers of interrupted saves)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    found = list_checkpoints(root)
    complete = [c for c in found if c.complete]
    if not complete:
        return
    newest = complete[-1].step
    doomed = complete[:-keep] + [c for c in found if not c.complete and c.step < newest]
    for info in doomed:
        shutil.rmtree(info.path, ignore_errors=True)


def load_checkpoint(engine: Any, info: CheckpointInfo, env: DistEnv) -> dict[str, Any]:
    """Load ``info`` into ``engine`` (module, optimizer, scheduler) on every rank, restore
    this rank's RNG states, and return the client state."""
    assert info.metadata is not None
    saved_world = info.metadata.get("world_size")
    if saved_world != env.world_size:
        raise CheckpointError(
            f"checkpoint {info.path} was written by {saved_world} ranks, this run has "
            f"{env.world_size}; resume with the same world size (ZeRO partitions are per rank)"
        )
    try:
        path, client_state = engine.load_checkpoint(
            str(info.path.parent),
            tag=info.tag,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
    except Exception as exc:  # DeepSpeed raises whatever torch.load or its asserts raise
        raise CheckpointError(
            f"cannot load checkpoint {info.path} ({type(exc).__name__}: {exc}). Delete the "
            "folder to resume from an older checkpoint."
        ) from exc
    if path is None or client_state is None:
        raise CheckpointError(
            f"DeepSpeed found no checkpoint in {info.path} (load_checkpoint returned None)"
        )
    rng_path = info.path / _rng_file(env.rank)
    try:
        rng = torch.load(rng_path, weights_only=True)  # never code from a copied folder
    except Exception as exc:
        raise CheckpointError(
            f"cannot read {rng_path} as RNG states (tensors and plain data only): {exc}"
        ) from exc
    restore_rng(rng)
    return dict(client_state)
