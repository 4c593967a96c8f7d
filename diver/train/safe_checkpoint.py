"""DeepSpeed checkpoints read without running code from the files (issue 13).

Run folders get copied between users and clusters, and a pickle can run any code when
it is loaded.  DeepSpeed 0.19.8's ``TorchCheckpointEngine`` loads every checkpoint file
with ``torch.load(weights_only=False)``, so a replaced ``mp_rank_00_model_states.pt``
would run its payload on resume.  :class:`SafeCheckpointEngine` takes its place on the
engine and loads with ``weights_only=True``, allowing exactly the DeepSpeed classes its
ZeRO optimizer states hold (found by saving and loading checkpoints of every ZeRO
stage).  Anything else is refused with a message naming the file.  Hashes kept in the
same folder would not help: whoever replaces a file can replace its hash.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from diver.errors import CheckpointError

# What ZeRO's optimizer-state files pickle besides tensors and plain data.
ALLOWED_CLASSES = (LossScaler, ZeroStageEnum, fragment_address)


def load_weights_only(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` that unpickles tensors, plain data and :data:`ALLOWED_CLASSES` only."""
    try:
        with torch.serialization.safe_globals(list(ALLOWED_CLASSES)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and training state, and "
            f"loading it could run code ({reason}). Was the folder copied from someone "
            "else? Delete it to resume from an older checkpoint, or start over."
        ) from exc


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading through :func:`load_weights_only`."""

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_weights_only(path, map_location)


def install(engine: Any) -> None:
    """Put a :class:`SafeCheckpointEngine` in place of ``engine``'s (same serialisation)."""
    current = engine.checkpoint_engine
    if type(current) is not TorchCheckpointEngine:
        raise CheckpointError(
            f"DeepSpeed checkpoint engine {type(current).__name__} is not supported: diver "
            "loads checkpoints through its own weights-only torch engine"
        )
    safe = SafeCheckpointEngine.__new__(SafeCheckpointEngine)
    safe.__dict__.update(current.__dict__)
    engine.checkpoint_engine = safe
