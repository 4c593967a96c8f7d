"""Load a pretrained DIVER-1 model (``model.pt``) for features or fine-tuning.

``diver pretrain`` (and ``diver model import``) writes ``model.pt``: a plain
``torch.save`` dict with ``state_dict`` (consolidated fp32 weights), ``model_config``
(the :class:`~diver.model.config.ModelConfig` fields) and ``step``.  The authors'
checkpoints (their released files, DeepSpeed's ``{"module": ...}``, a bare state dict;
see :mod:`diver.model.official`) load the same way.  Loading needs neither DeepSpeed
nor the corpus, and never unpickles objects (``weights_only=True``)::

    from diver.model import EncoderInputs, load_encoder, pool_tokens

    encoder = load_encoder("results/pretrain/tiny/1s/f1_e8/model.pt")   # eval mode
    inputs = EncoderInputs(patches, coords_mm, type_ids, subtype_ids, channel_mask, patch_mask)
    tokens = encoder(inputs)
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

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from diver.atomic import replacing
from diver.errors import CheckpointError
from diver.model import official
from diver.model.config import ModelConfig
from diver.model.encoder import DiverEncoder
from diver.model.pretrain import DiverPretrainModel

__all__ = [
    "CheckpointError",
    "load_checkpoint",
    "load_encoder",
    "load_pretrained",
    "load_weights",
    "pool_tokens",
    "save_model_file",
]


def load_checkpoint(
    path: Path | str,
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(model config, state dict, other fields such as ``step``) of a ``model.pt`` or of
    one of the authors' checkpoints (then ``{"source": "authors"}`` is the other field)."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"model file {path} does not exist") from exc
    except Exception as exc:  # torch raises pickling/zip errors of many types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"model file {path} cannot be read: {reason}") from exc
    if not isinstance(payload, dict) or not {"state_dict", "model_config"} <= set(payload):
        state = official.unwrap(payload)
        source = "authors"
        if state is not None and official.is_braindecode_state_dict(state):
            state, source = official.from_braindecode(state), "braindecode"
        if state is None or not official.is_official_state_dict(state):
            raise CheckpointError(
                f"model file {path} is not a diver model (state_dict and model_config) nor "
                "a DIVER-1 checkpoint of the authors' code (a state dict with keys such as "
                "'encoder.encoder.layers.0...', bare or under 'model_state_dict' or 'module')"
            )
        config = official.infer_config(state, path)
        state = official.to_diver_state_dict(state, path)
        extra: dict[str, Any] = {"source": source}
        if source == "braindecode":  # encoder only: the pretraining heads start fresh
            extra["initialised"] = _initialise_missing(config, state)
        return config, state, extra
    try:
        config = ModelConfig(**payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"model file {path}: bad model_config: {exc}") from exc
    extra = {k: v for k, v in payload.items() if k not in ("state_dict", "model_config")}
    return config, payload["state_dict"], extra


def _initialise_missing(config: ModelConfig, state: dict[str, torch.Tensor]) -> list[str]:
    """Fill the pretraining model's tensors ``state`` lacks (heads, mask token) from a
    freshly initialised muP model (seed 0); returns their names."""
    from diver.model.mup_setup import build_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        fresh = build_model(config).state_dict()
    missing = sorted(set(fresh) - set(state))
    for key in missing:
        state[key] = fresh[key]
    return missing


def save_model_file(
    path: Path | str, config: ModelConfig, state_dict: dict[str, torch.Tensor], **extra: Any
) -> None:
    """Write a ``model.pt`` (the layout :func:`load_checkpoint` reads) atomically: a
    temporary name in the same folder, then a rename, so a reader never sees half a file."""
    with replacing(path) as tmp:
        torch.save({"state_dict": state_dict, "model_config": asdict(config), **extra}, tmp)


def load_pretrained(path: Path | str, *, device: torch.device | str = "cpu") -> DiverPretrainModel:
    """The whole pretraining model (encoder + reconstruction heads), muP shapes attached,
    in eval mode."""
    from diver.model.mup_setup import attach_base_shapes

    config, state, _ = load_checkpoint(path)
    model = DiverPretrainModel(config)
    load_weights(model, state, path)
    attach_base_shapes(model)
    return model.to(device).eval()


def load_weights(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    path: Path | str,
    *,
    check_only: bool = False,
) -> None:
    """``model.load_state_dict(state)``, refusing with the missing, unexpected and
    mis-shaped keys named (and nothing loaded) when they do not fit; ``check_only``
    checks without loading (``model`` may then live on the meta device)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    if missing or unexpected or shapes:
        problems = [
            f"{label}: {items[:10]}{' ...' if len(items) > 10 else ''}"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shapes that differ", shapes),
            )
            if items
        ]
        raise CheckpointError(
            f"model file {path}: weights do not fit the model ({'; '.join(problems)})"
        )
    if not check_only:
        model.load_state_dict(state)


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


def import_checkpoint(source: Path | str, out: Path | str) -> ModelConfig:
    """``diver model import``: one of the authors' checkpoints (or a diver ``model.pt``)
    -> a diver ``model.pt`` at ``out``, after checking that it loads.  Nothing is
    written when it does not."""
    config, state, extra = load_checkpoint(source)
    with torch.device("meta"):
        model = DiverPretrainModel(config)
    load_weights(model, state, source, check_only=True)  # names and shapes
    save_model_file(
        out, config, state, step=int(extra.get("step", 0)), imported_from=str(Path(source))
    )
    return config
