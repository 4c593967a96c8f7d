"""muP for the DIVER-1 family (SPEC §2): a coordinate check and the base-shape contract.

The coordinate check is the ``mup`` package's own (``mup.coord_check``): train models
of widths 128 ... 1024 (the ``debug`` depth, 2 blocks) on one fixed batch for a few
steps and record the mean |x| of each recorded module's output at every step.  Under
muP those curves are flat in width; a standard-parametrisation control (plain
``torch.optim.AdamW`` at the same lr, readouts not rescaled) on the same models, data
and lr grows with width, which is what shows the check can fail.

Dropout is off in these models: ``mup`` trains in ``train()`` mode, and dropout noise
is not what is being measured.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from mup import set_base_shapes
from mup.coord_check import _get_coord_data
from torch import nn

from diver.model.config import model_config
from diver.model.inputs import EncoderInputs
from diver.model.mup_setup import (
    BASE_WIDTH,
    attach_base_shapes,
    build_model,
    make_optimizer,
)
from diver.model.pretrain import DiverPretrainModel

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTHS = (128, 256, 512, 1024)
LR = 3e-3
"""Large enough that standard parametrisation blows up measurably within 3 updates
(slopes 0.6-1.1 in log-log at lr 3e-3; 0.2-0.7 at 1e-3), small enough that the muP
runs stay smooth (at 1e-2 the heads' outputs jump around from step to step)."""
BETAS = (0.9, 0.95)
HIDDEN_SLOPE = 0.2  # muP: |d log(mean |x|) / d log(width)| of hidden modules
HIDDEN_RATIO = 1.6  # muP: max / min of mean |x| over widths, hidden modules
HEAD_SLOPE = 0.25  # muP readouts may shrink with width (1/sqrt(width) at init), not grow
SP_SLOPE = 0.4  # the control: blocks' mean slope after updates must exceed this


class _LossOnly(nn.Module):
    """The pretraining model with a ``{"loss": ...}`` output, as ``mup``'s check reads it."""

    def __init__(self, model: DiverPretrainModel):
        super().__init__()
        self.model = model

    def forward(self, **batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": self.model(*inputs_and_mask(batch)).loss}


def inputs_and_mask(batch: dict[str, torch.Tensor]) -> tuple[EncoderInputs, torch.Tensor]:
    """``coord_batch``'s dict (mup's loader hands it over as keywords) as model arguments."""
    mask = batch["mask"]
    return EncoderInputs(**{k: v for k, v in batch.items() if k != "mask"}), mask


def _config(width: int, patch: str):
    return model_config("debug", patch, d_model=width, dropout=0.0, spectral_dropout=0.0)


def _mup_model(width: int, patch: str) -> _LossOnly:
    return _LossOnly(build_model(_config(width, patch)))


def _sp_model(width: int, patch: str) -> _LossOnly:
    model = DiverPretrainModel(_config(width, patch))
    set_base_shapes(model, None)  # every width multiplier 1: MuReadout is a plain Linear
    return _LossOnly(model)


def _mup_optimizer(wrapper: _LossOnly) -> torch.optim.Optimizer:
    return make_optimizer(wrapper.model, lr=LR, weight_decay=0.0, betas=BETAS)


def _sp_optimizer(wrapper: _LossOnly) -> torch.optim.Optimizer:
    return torch.optim.AdamW(wrapper.parameters(), lr=LR, weight_decay=0.0, betas=BETAS)


def _recorded(name: str) -> bool:
    """Token embedding, STCPE, each encoder block, each reconstruction head."""
    parts = name.split(".")
    return (
        name in ("model.encoder.embed", "model.encoder.stcpe")
        or (len(parts) == 4 and parts[:3] == ["model", "encoder", "blocks"])
        or (len(parts) == 3 and parts[:2] == ["model", "heads"])
    )


def coord_batch(patch: str) -> dict[str, torch.Tensor]:
    """A small fixed window batch (2 x 4 channels x 6 patches) with a fixed mask."""
    g = torch.Generator().manual_seed(0)
    b, c, n = 2, 4, 6
    p = 500 if patch == "1s" else 50
    t = torch.arange(n * p) / 500.0
    freqs = 2 + 40 * torch.rand(b, c, 1, generator=g)
    signal = torch.sin(2 * math.pi * freqs * t) + 0.3 * torch.randn(b, c, n * p, generator=g)
    return {
        "patches": 0.5 * signal.view(b, c, n, p),
        "coords_mm": 40 * torch.randn(b, c, 3, generator=g),
        "type_ids": torch.full((b, c), 2),
        "subtype_ids": torch.full((b, c), 4),
        "channel_mask": torch.ones(b, c, dtype=torch.bool),
        "patch_mask": torch.ones(b, n, dtype=torch.bool),
        "mask": torch.rand(b, c, n, generator=g) < 0.5,
    }


def coord_data(mup: bool, patch: str, nsteps: int, nseeds: int = 1) -> pd.DataFrame:
    """Mean |x| per (module, step) row and width column, averaged over seeds.

    ``mup.coord_check._get_coord_data`` is what ``get_coord_data`` wraps; it takes an
    optimizer factory, so the check runs the project's own ``make_optimizer`` (the
    public wrapper only builds ``MuAdamW(params, lr=lr)`` itself).  Step t's record is
    the forward pass before update t, so t = 1 is the initialisation.
    """
    make = _mup_model if mup else _sp_model
    df = _get_coord_data(
        {w: partial(make, w, patch) for w in WIDTHS},
        [coord_batch(patch)],
        _mup_optimizer if mup else _sp_optimizer,
        nsteps=nsteps,
        dict_in_out=True,
        output_name="loss",
        cuda=False,
        nseeds=nseeds,
        filter_module_by_name=_recorded,
        show_progress=False,
    )
    table = df.groupby(["module", "t", "width"])["l1"].mean().unstack("width")
    assert list(table.columns) == list(WIDTHS)
    return table


def slopes(table: pd.DataFrame) -> pd.Series:
    """Least-squares slope of log(mean |x|) against log(width), per row."""
    x = np.log(np.asarray(WIDTHS, dtype=float))
    return table.apply(lambda row: np.polyfit(x, np.log(row.to_numpy()), 1)[0], axis=1)


def _is_head(module: str) -> bool:
    return module.startswith("model.heads.")


def assert_mup_flat(table: pd.DataFrame) -> None:
    modules = set(table.index.get_level_values("module"))
    assert {"model.encoder.embed", "model.encoder.stcpe", "model.heads.time"} <= modules
    assert {"model.encoder.blocks.0", "model.encoder.blocks.1"} <= modules
    slope = slopes(table)
    ratio = table.max(axis=1) / table.min(axis=1)
    for (module, t), s in slope.items():
        where = f"{module} at step {t}: slope {s:.3f}, max/min {ratio[(module, t)]:.2f}"
        if _is_head(module):
            assert s < HEAD_SLOPE, where
        else:
            assert abs(s) < HIDDEN_SLOPE, where
            assert ratio[(module, t)] < HIDDEN_RATIO, where


def assert_sp_grows(table: pd.DataFrame) -> None:
    slope = slopes(table)
    updated = slope[slope.index.get_level_values("t") > 1]  # after at least one update
    for block in ("model.encoder.blocks.0", "model.encoder.blocks.1"):
        mean_slope = updated.xs(block, level="module").mean()
        assert mean_slope > SP_SLOPE, f"{block}: mean slope {mean_slope:.3f}"


def test_coordinate_check_mup_flat_sp_grows() -> None:
    """4 widths x 4 steps, 1 s patches: flat under muP, growing under SP.

    Measured (lr 3e-3): muP hidden slopes within +-0.14 at every step, max/min <= 1.34;
    SP blocks' slopes 0.58-1.12 after the first update.
    """
    mup_table = coord_data(mup=True, patch="1s", nsteps=4)
    # hidden activations are O(1) at initialisation (measured 0.35-1.06)
    init = mup_table.xs(1, level="t")
    hidden = init.drop(index=[m for m in init.index if _is_head(m)])
    assert ((hidden > 0.1) & (hidden < 10)).all().all()
    assert_mup_flat(mup_table)
    assert_sp_grows(coord_data(mup=False, patch="1s", nsteps=4))


@pytest.mark.slow
@pytest.mark.parametrize("patch", ["1s", "0.1s"])
def test_coordinate_check_longer(patch: str) -> None:
    """Both patch variants, 3 seeds, 8 steps."""
    assert_mup_flat(coord_data(mup=True, patch=patch, nsteps=8, nseeds=3))
    assert_sp_grows(coord_data(mup=False, patch=patch, nsteps=8, nseeds=3))


@pytest.mark.parametrize(("norm", "low", "high"), [("ortho", 0.7, 1.4), ("forward", 0.25, 0.5)])
def test_spectral_embedding_scale_with_width(norm: str, low: float, high: float) -> None:
    """The data-dependent part of E_spectral (bias removed) from d = 128 to 1024.

    ``"ortho"`` (rFFT / sqrt(d)) keeps it width-flat (measured ratio 1.06).  The authors'
    ``"forward"`` (rFFT / d, the default) is *not* width-stable: it shrinks as 1/sqrt(d)
    (measured 0.37; sqrt(1/8) = 0.35), so at large widths the spectral path fades into
    its bias.  It shrinks rather than grows and is small beside the CNN token (0.03 vs
    0.39 mean |x| at d = 128), which is why the coordinate check above, over the whole
    token embedding, still passes with it.
    """
    scales = []
    for width in (128, 1024):
        torch.manual_seed(0)
        model = build_model(replace(_config(width, "1s"), spectral_norm=norm)).eval()
        spectral = model.encoder.embed.spectral
        with torch.no_grad():
            token = model.encoder.embed.cnn(coord_batch("1s")["patches"])
            scales.append((spectral(token) - spectral.proj.bias).abs().mean().item())
    assert low < scales[1] / scales[0] < high, scales


def test_base_shapes_and_learning_rates() -> None:
    """Width multipliers are d / 256; MuAdamW divides hidden matrices' lr by them."""
    base = build_model(model_config("debug-4x"))  # d = 256 = BASE_WIDTH
    assert base.config.d_model == BASE_WIDTH
    assert {p.infshape.width_mult() for p in base.parameters()} == {1.0}

    model = build_model(model_config("debug", d_model=1024))
    optimizer = make_optimizer(model, lr=1e-2, weight_decay=0.1)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert set(lr_of) == {id(p) for p in model.parameters() if p.requires_grad}
    assert id(model.mask_token) not in lr_of  # frozen: no optimizer state at all
    hidden = (  # both dimensions grow with width
        "encoder.blocks.0.attn.qkv.weight",
        "encoder.blocks.1.ffn.w2.weight",
        "encoder.embed.spectral.proj.weight",
        "encoder.embed.cnn.convs.1.weight",
        "encoder.stcpe.proj_in.weight",
        "encoder.stcpe.block.ffn.w1.weight",
    )
    vector = (  # one dimension grows: inputs, biases, norms, readouts
        "encoder.embed.cnn.convs.0.weight",
        "encoder.embed.modality.type_embedding.weight",
        "encoder.blocks.0.norm1.weight",
        "encoder.blocks.0.attn.channel_bias",
        "encoder.channel_register",
        "heads.time.weight",
        "heads.fft.bias",
    )
    params = dict(model.named_parameters())
    for name in hidden:
        # fan-in ratio: 4 exactly, or 513 / 129 for the spectral projection (d/2 + 1 bins)
        mult = params[name].infshape.width_mult()
        assert mult == pytest.approx(4.0, rel=0.01), name
        assert lr_of[id(params[name])] == pytest.approx(1e-2 / mult), name
        assert wd_of[id(params[name])] == pytest.approx(0.1 * mult), name  # lr x wd fixed
    for name in vector:
        assert lr_of[id(params[name])] == pytest.approx(1e-2), name
    # readouts: output multiplier 1 / width_mult
    assert model.heads["time"].width_mult() == 4.0


def test_attach_base_shapes_restores_a_checkpoint_exactly() -> None:
    """Re-attaching base shapes to loaded weights must not rescale the readouts again."""
    torch.manual_seed(0)
    config = model_config("debug-2x", dropout=0.0, spectral_dropout=0.0)
    model = build_model(config).eval()
    batch = coord_batch("1s")
    with torch.no_grad():
        want = model(*inputs_and_mask(batch)).loss
        loaded = DiverPretrainModel(config).eval()
        loaded.load_state_dict(model.state_dict())
        attach_base_shapes(loaded)
        got = loaded(*inputs_and_mask(batch)).loss
    assert torch.equal(got, want)
    assert loaded.heads["time"].width_mult() == 0.5
