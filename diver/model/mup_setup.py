"""muP for the DIVER-1 family (SPEC §2): base shapes from widths 256 and 512, MuAdamW.

Hyper-parameters are tuned at Small and transferred to every width (SPEC §3); with
``mup`` that needs (1) readouts as ``MuReadout`` (the reconstruction heads), (2)
attention scaled by 1/d_head (``layers.AnyVariateAttention``), (3) base shapes that say
which dimensions grow with width - read off the same architecture at d = 256 and
d = 512, built on the meta device so no memory is spent - and (4) ``MuAdam(W)``, which
scales each matrix-like parameter's learning rate by 1/width-multiplier.
"""

from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import torch
from mup import MuAdamW, make_base_shapes, set_base_shapes

from diver.model.config import ModelConfig
from diver.model.pretrain import DiverPretrainModel

BASE_WIDTH = 256
DELTA_WIDTH = 512


@lru_cache(maxsize=32)
def base_shapes(config: ModelConfig) -> dict:
    """Base shapes of ``config``'s architecture (its depth and patch) at widths 256 / 512."""
    with torch.device("meta"):
        base = DiverPretrainModel(replace(config, d_model=BASE_WIDTH))
        delta = DiverPretrainModel(replace(config, d_model=DELTA_WIDTH))
    return make_base_shapes(base, delta)


def build_model(
    config: ModelConfig, *, device: torch.device | str | None = None
) -> DiverPretrainModel:
    """A muP-parametrised pretraining model (readouts rescaled once, at construction)."""
    with torch.device(device or "cpu"):
        model = DiverPretrainModel(config)
    set_base_shapes(model, base_shapes(config), rescale_params=True)
    return model


def attach_base_shapes(model: DiverPretrainModel) -> DiverPretrainModel:
    """Re-attach base shapes to a model loaded from a checkpoint (weights untouched)."""
    set_base_shapes(model, base_shapes(model.config), rescale_params=False)
    return model


def make_optimizer(
    model: torch.nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
) -> torch.optim.Optimizer:
    """MuAdamW over the trainable parameters (not the frozen mask token); per-group
    learning rates carry the muP scaling."""
    params = [p for p in model.parameters() if p.requires_grad]
    return MuAdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)


def count_parameters(config: ModelConfig, *, part: str = "total") -> int:
    """Parameters of ``config`` counted on the meta device (no memory allocated).

    ``part`` is ``total`` (encoder + reconstruction heads, SPEC §2's table) or
    ``encoder``.
    """
    with torch.device("meta"):
        model = DiverPretrainModel(config)
    module = model.encoder if part == "encoder" else model
    if part not in ("total", "encoder"):
        raise ValueError(f"part must be 'total' or 'encoder', got {part!r}")
    return sum(p.numel() for p in module.parameters())
