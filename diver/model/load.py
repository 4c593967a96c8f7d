"""Load a pretrained DIVER-1 model (``model.pt``) for features or fine-tuning.

``diver pretrain`` writes ``model.pt``: a plain ``torch.save`` dict with
``state_dict`` (consolidated fp32 weights), ``model_config`` (the
:class:`~diver.model.config.ModelConfig` fields) and ``step``.  Loading needs neither
DeepSpeed nor the corpus::

    from diver.model import load_encoder, pool_tokens

    encoder = load_encoder("results/pretrain/tiny/1s/f1_e8/model.pt")   # eval mode
    tokens = encoder(patches, coords_mm, type_ids, subtype_ids, channel_mask, patch_mask)
    features = pool_tokens(tokens, channel_mask, patch_mask)            # (B, d)

Inputs, as in pretraining (SPEC §1-§2): ``patches`` (B, C, N, P) of the 500 Hz signal
scaled by 1/100 µV (EEG) or 1/200 µV (iEEG) and clipped to ±1, P = 500 (1 s) or 50
(0.1 s) samples; ``coords_mm`` (B, C, 3) MNI millimetres, NaN where unknown;
``type_ids`` (B, C) 1 eeg, 2 seeg, 3 ecog (0 padding); ``subtype_ids`` (B, C)
1 none, 2 grid, 3 strip, 4 depth (0 padding); boolean ``channel_mask`` (B, C) and
``patch_mask`` (B, N), true on real channels and patches.  The encoder returns one
d-dimensional token per (channel, patch).  ``diver embed`` does all of this for
recordings on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diver.errors import DiverError
from diver.model.config import ModelConfig
from diver.model.encoder import DiverEncoder
from diver.model.pretrain import DiverPretrainModel

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_encoder",
    "load_pretrained",
    "pool_tokens",
]


class CheckpointError(DiverError, OSError):
    """A model file is missing or is not a ``diver pretrain`` model; names the file."""


def load_checkpoint(
    path: Path | str,
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(model config, state dict, other fields such as ``step``) of a ``model.pt``."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"model file {path} does not exist") from exc
    except Exception as exc:  # torch raises pickling/zip errors of many types
        raise CheckpointError(f"model file {path} cannot be read: {exc}") from exc
    if not isinstance(payload, dict) or not {"state_dict", "model_config"} <= set(payload):
        raise CheckpointError(
            f"model file {path} is not a diver model (needs state_dict and model_config)"
        )
    try:
        config = ModelConfig(**payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"model file {path}: bad model_config: {exc}") from exc
    extra = {k: v for k, v in payload.items() if k not in ("state_dict", "model_config")}
    return config, payload["state_dict"], extra


def load_pretrained(path: Path | str, *, device: torch.device | str = "cpu") -> DiverPretrainModel:
    """The whole pretraining model (encoder + reconstruction heads), muP shapes attached,
    in eval mode."""
    from diver.model.mup_setup import attach_base_shapes

    config, state, _ = load_checkpoint(path)
    model = DiverPretrainModel(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"model file {path}: weights do not fit its config: {exc}") from exc
    attach_base_shapes(model)
    return model.to(device).eval()


def load_encoder(path: Path | str, *, device: torch.device | str = "cpu") -> DiverEncoder:
    """Only the encoder (what features and fine-tuning use), in eval mode."""
    return load_pretrained(path, device=device).encoder


def pool_tokens(
    tokens: torch.Tensor, channel_mask: torch.Tensor, patch_mask: torch.Tensor
) -> torch.Tensor:
    """Mean of the (B, C, N, d) encoder tokens over real channels and patches -> (B, d)."""
    valid = (channel_mask[:, :, None] & patch_mask[:, None, :]).to(tokens.dtype)
    total = (tokens * valid[..., None]).sum(dim=(1, 2))
    return total / valid.sum(dim=(1, 2)).clamp(min=1)[:, None]
