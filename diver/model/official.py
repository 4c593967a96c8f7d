"""The authors' DIVER-1 checkpoints and inputs in diver's modules.

The authors' code (DIVER-Project/DIVER-1, ``models/diver.py`` class ``DIVER``) and
``diver.model`` compute the same function (SPEC §2; ``tests/test_parity.py`` checks
outputs to 1e-5); only the parameter names and a few shapes differ.  This module reads
their checkpoint layouts and turns them into a diver state dict:

- ``{"model_state_dict": ...}`` (their released files), DeepSpeed's ``{"module": ...}``,
  a ``{"state_dict": ...}`` dict, or a bare state dict; keys may carry a ``module.``
  (DataParallel / DeepSpeed) or ``backbone.`` (their fine-tuning model) prefix;
- float32 or bfloat16 (converted to float32);
- width, depth and patch (1 s / 0.1 s) read off the tensor shapes, so any depth loads;
- braindecode's ``DIVER1`` naming (its port of the same encoder: a pure renaming, see
  :data:`BRAINDECODE_NAMES`); such files hold no pretraining heads, so diver initialises
  those (seeded) and says so.

Anything else is refused with a :class:`~diver.errors.CheckpointError` that names
the file and the missing or unexpected keys.

:func:`official_inputs` turns their ``data_info_list`` style of input (per sample a
``modality`` of "EEG"/"iEEG", optional ``coord_subtype`` names, ``xyz_id`` coordinates)
into diver's tensors, with their rules for subtype names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from diver.errors import CheckpointError
from diver.model.config import PATCH_SAMPLES, ModelConfig
from diver.model.embedding import SUBTYPE_FIRST, TYPE_ECOG, TYPE_EEG, TYPE_SEEG
from diver.model.inputs import EncoderInputs

NO_SUBTYPE = SUBTYPE_FIRST - 1  # diver.data's "no subtype" id (tests/test_model.py checks)

# Their names -> diver's, per component; "{i}" is a layer index.
_LAYER = {
    "self_attn.var_attn_bias.emb.weight": "attn.channel_bias",
    "self_attn.q_norm.weight": "attn.q_norm.weight",
    "self_attn.k_norm.weight": "attn.k_norm.weight",
    "self_attn.out_proj.weight": "attn.out.weight",
    "ffn.fc_gate.weight": "ffn.w1.weight",
    "ffn.fc1.weight": "ffn.w3.weight",
    "ffn.fc2.weight": "ffn.w2.weight",
    "norm1.weight": "norm1.weight",
    "norm2.weight": "norm2.weight",
}
_QKV = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
_FIXED = {
    "mask_encoding": "mask_token",
    "embedding.1.embedding.spectral_proj.0.weight": "encoder.embed.spectral.proj.weight",
    "embedding.1.embedding.spectral_proj.0.bias": "encoder.embed.spectral.proj.bias",
    "embedding.2.embedding.embedding2.models.0.embedding.weight": (
        "encoder.embed.modality.type_embedding.weight"
    ),
    "embedding.2.embedding.embedding2.models.1.embedding.weight": (
        "encoder.embed.modality.subtype_embedding.weight"
    ),
    "embedding.3.embedding.0.module.weight": "encoder.stcpe.proj_in.weight",
    "embedding.3.embedding.0.module.bias": "encoder.stcpe.proj_in.bias",
    "embedding.3.embedding.1.model.encoder.norm.weight": "encoder.stcpe.norm.weight",
    "embedding.3.embedding.2.module.weight": "encoder.stcpe.proj_out.weight",
    "embedding.3.embedding.2.module.bias": "encoder.stcpe.proj_out.bias",
    "encoder.encoder.norm.weight": "encoder.norm.weight",
    "token_manager.special_tokens.N_token.param": "encoder.channel_register",
    "token_manager.special_tokens.C_token.param": "encoder.patch_register",
    "token_manager.special_tokens.NC_token.param": "encoder.corner_register",
}
for _i, _j in ((0, 0), (3, 1), (6, 2)):  # Sequential(conv, norm, GELU) x 3
    for _p in ("weight", "bias"):
        _FIXED[f"embedding.0.proj_in.{_i}.{_p}"] = f"encoder.embed.cnn.convs.{_j}.{_p}"
        _FIXED[f"embedding.0.proj_in.{_i + 1}.{_p}"] = f"encoder.embed.cnn.norms.{_j}.{_p}"
_HEADS = {
    "time_head": "time",
    "fft_amplitude_head": "fft",
    "multiscale_stft_amplitude_head": "stft",
}
for _theirs, _ours in _HEADS.items():
    for _p in ("weight", "bias"):
        _FIXED[f"heads.org.heads.{_theirs}.module.{_p}"] = f"heads.{_ours}.{_p}"

# braindecode's DIVER1 (braindecode/models/diver1.py, PR #1170) -> the authors' names:
# prefix renames; inside both encoders only the channel bias is named differently.
BRAINDECODE_NAMES = (
    ("patch_register", "token_manager.special_tokens.N_token.param"),
    ("chan_register", "token_manager.special_tokens.C_token.param"),
    ("global_register", "token_manager.special_tokens.NC_token.param"),
    ("patch_cnn.proj_in.", "embedding.0.proj_in."),
    ("spectral_emb.spectral_proj.", "embedding.1.embedding.spectral_proj."),
    ("chan_emb.type_emb.", "embedding.2.embedding.embedding2.models.0.embedding."),
    ("chan_emb.subtype_emb.", "embedding.2.embedding.embedding2.models.1.embedding."),
    ("stcpe.down.", "embedding.3.embedding.0.module."),
    ("stcpe.up.", "embedding.3.embedding.2.module."),
    ("stcpe.encoder.", "embedding.3.embedding.1.model.encoder."),
    ("encoder.", "encoder.encoder."),
)
BRAINDECODE_CLASSIFIER = "final_layer."  # its task head: not part of the pretrained model

_STCPE_LAYER = "embedding.3.embedding.1.model.encoder.layers.0."
_ENCODER_LAYER = re.compile(r"encoder\.encoder\.layers\.(\d+)\.(.+)")
_WIDTH_KEY = "token_manager.special_tokens.N_token.param"

# Their electrode-group labels per iEEG subtype (a sample's ``coord_subtype`` names);
# anything else is unknown (a zero subtype embedding).
_DEPTH = "Depth depth LID RDA RDP LAD LPD RFD RPTD AHD AID MHD MID PID LTPD LATD LMTD PHD RATD"
_STRIP = "Strip strip LAT LMT LPT LTO RST RAT RMT RPT RF RTP LO ROF LF LOF LTP"
_SUBTYPE_NAMES = {
    "depth": frozenset(_DEPTH.split(" ")),
    "strip": frozenset(_STRIP.split(" ")),
    "grid": frozenset(("Grid", "grid", "GRID", "L Grid", "RFGRID")),
}
_SUBTYPE_IDS = {"grid": SUBTYPE_FIRST, "strip": SUBTYPE_FIRST + 1, "depth": SUBTYPE_FIRST + 2}


def is_official_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` (prefixes already removed) is in the authors' naming."""
    return _WIDTH_KEY in state or any(k.startswith("encoder.encoder.layers.") for k in state)


def is_braindecode_state_dict(state: Mapping[str, Any]) -> bool:
    """Whether ``state`` is in braindecode's ``DIVER1`` naming."""
    return "patch_register" in state and "patch_cnn.proj_in.0.weight" in state


def from_braindecode(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """braindecode's ``DIVER1`` names -> the authors' (its classifier dropped)."""
    out = {}
    for key, value in state.items():
        if key.startswith(BRAINDECODE_CLASSIFIER):
            continue
        for theirs, authors in BRAINDECODE_NAMES:
            if key == theirs or (theirs.endswith(".") and key.startswith(theirs)):
                key = authors + key.removeprefix(theirs)
                break
        bias = ".self_attn.channel_bias.weight"
        out[key.replace(bias, ".self_attn.var_attn_bias.emb.weight")] = value
    return out


def unwrap(payload: object) -> dict[str, torch.Tensor] | None:
    """The state dict inside one of the authors' checkpoint layouts, prefixes removed;
    None when ``payload`` holds no (non-empty) state dict of tensors."""
    state = payload
    if isinstance(payload, Mapping):
        for key in ("model_state_dict", "module", "state_dict"):
            if isinstance(payload.get(key), Mapping):
                state = payload[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        return None
    # Non-tensor entries carry no weights (a released file's "module" may hold some;
    # braindecode's converter drops them the same way).
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        return None
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def infer_config(state: Mapping[str, torch.Tensor], path: Path | str) -> ModelConfig:
    """Width, depth and patch of an authors' state dict, from its tensor shapes: width
    from a register token, depth from the encoder layers, patch from the CNN (d / its
    width output positions: 8 for 1 s, 16 for 0.1 s)."""
    conv = "embedding.0.proj_in.0.weight"
    if _WIDTH_KEY not in state or conv not in state:
        missing = [k for k in (_WIDTH_KEY, conv) if k not in state]
        raise _error(path, f"is not a DIVER-1 checkpoint: missing keys {missing}")
    d_model = int(state[_WIDTH_KEY].shape[-1])
    layers = {int(m.group(1)) for k in state if (m := _ENCODER_LAYER.fullmatch(k))}
    if not layers or layers != set(range(max(layers) + 1)):
        raise _error(path, f"has encoder layers {sorted(layers)}; expected 0 .. L-1")
    positions = d_model // max(int(state[conv].shape[0]), 1)
    patch = {8: "1s", 16: "0.1s"}.get(positions)
    if patch is None:
        raise _error(
            path,
            f"has a patch CNN of {state[conv].shape[0]} channels for width {d_model}: "
            "DIVER-1 uses d/8 (1 s patches) or d/16 (0.1 s)",
        )
    mask = state.get("mask_encoding")
    if mask is not None and mask.shape != (PATCH_SAMPLES[patch],):
        raise _error(
            path,
            f"has a mask token of {tuple(mask.shape)} samples for {patch} patches "
            f"({PATCH_SAMPLES[patch]} at 500 Hz)",
        )
    try:
        return ModelConfig(d_model=d_model, depth=max(layers) + 1, patch=patch)
    except ValueError as exc:
        raise _error(path, f"has an unsupported shape: {exc}") from exc


def to_diver_state_dict(
    state: Mapping[str, torch.Tensor], path: Path | str
) -> dict[str, torch.Tensor]:
    """The authors' keys renamed (and reshaped) to diver's, as float32; keys this
    mapping does not know are refused."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    layer_qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        value = value.detach().to(torch.float32)
        if key in _FIXED:
            target = _FIXED[key]
            if target.endswith("_register"):
                value = value.reshape(-1)
            out[target] = value
            continue
        if key.startswith(_STCPE_LAYER):
            prefix, rest = "encoder.stcpe.block.", key.removeprefix(_STCPE_LAYER)
        elif m := _ENCODER_LAYER.fullmatch(key):
            prefix, rest = f"encoder.blocks.{m.group(1)}.", m.group(2)
        else:
            unknown.append(key)
            continue
        if rest in _QKV:
            layer_qkv.setdefault(prefix, {})[rest] = value
        elif rest in _LAYER:
            out[prefix + _LAYER[rest]] = value
        else:
            unknown.append(key)
    for prefix, parts in layer_qkv.items():
        if set(parts) != set(_QKV):
            unknown.extend(prefix + p for p in sorted(set(_QKV) - set(parts)))
            continue
        out[prefix + "attn.qkv.weight"] = torch.cat([parts[name] for name in _QKV], dim=0)
    if unknown:
        raise _error(path, f"has keys a DIVER-1 model does not have: {sorted(unknown)[:20]}")
    return out


def official_inputs(
    x: torch.Tensor,
    coords: torch.Tensor,
    batch: Sequence[Mapping[str, Any]],
    patch: str,
) -> EncoderInputs:
    """diver's encoder inputs for the authors' ``model(x, data_info_list)``.

    ``x`` (B, C, T) signal (scaled as for pretraining); ``coords`` (C, 3) shared or
    (B, C, 3) per sample, mm, NaN unknown; ``batch`` per sample ``{"modality": "EEG" |
    "iEEG", "coord_subtype": [name per channel] (optional)}``.  As in their code, T is
    cut into whole patches (a remainder is dropped), a subtype list whose length is not
    C counts as absent, and names outside their tables are unknown subtypes.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be (B, C, T), got shape {tuple(x.shape)}")
    b, c, _ = x.shape
    if len(batch) != b:
        raise ValueError(f"batch describes {len(batch)} samples, x has {b}")
    samples = PATCH_SAMPLES[patch]
    patches = x.unfold(-1, samples, samples).float()
    if patches.shape[2] == 0:
        raise ValueError(f"x has {x.shape[-1]} samples, fewer than one {patch} patch")
    coords = coords.float()
    coords = coords.expand(b, c, 3) if coords.ndim == 2 else coords
    if coords.shape != (b, c, 3):
        raise ValueError(f"coords must be (C, 3) or (B, C, 3), got {tuple(coords.shape)}")
    type_ids = torch.empty(b, c, dtype=torch.long)
    subtype_ids = torch.full((b, c), NO_SUBTYPE, dtype=torch.long)
    for i, info in enumerate(batch):
        modality = info.get("modality")
        if modality not in ("EEG", "iEEG"):
            raise ValueError(f"sample {i}: modality must be 'EEG' or 'iEEG', got {modality!r}")
        names = info.get("coord_subtype")
        kinds = [_subtype(n) for n in names] if names is not None and len(names) == c else []
        for j in range(c):
            kind = kinds[j] if kinds else None
            if modality == "EEG":
                type_ids[i, j] = TYPE_EEG
            else:
                type_ids[i, j] = TYPE_ECOG if kind in ("grid", "strip") else TYPE_SEEG
            if kind is not None:
                subtype_ids[i, j] = _SUBTYPE_IDS[kind]
    return EncoderInputs(
        patches=patches,
        coords_mm=coords,
        type_ids=type_ids,
        subtype_ids=subtype_ids,
        channel_mask=torch.ones(b, c, dtype=torch.bool),
        patch_mask=torch.ones(b, patches.shape[2], dtype=torch.bool),
    )


def _subtype(name: object) -> str | None:
    return next((kind for kind, names in _SUBTYPE_NAMES.items() if name in names), None)


def _error(path: Path | str, problem: str) -> CheckpointError:
    return CheckpointError(f"model file {path} {problem}")
