"""Does muP transfer the sweep's learning rate across widths?  ``diver hpsearch transfer``.

The sweep tunes at one width and the grid trusts muP to carry the result to every other
(SPEC §3); this module measures whether that holds for this model.  The same grid of
learning rates (at least 7, at most 2x apart) is run at each width of the debug ladder,
under muP (``diver.model.mup_setup``: MuAdamW, readouts rescaled) and under standard
parametrisation (plain AdamW, every width multiplier 1), with the same data, the same
number of steps and the same seeds.  A run's loss is the fixed validation loss (fixed
windows, fixed masks) after training, averaged over seeds.  Under muP the best learning
rate should agree across widths within one grid step; under standard parametrisation it
is expected to drift (smaller at larger widths).

It trains the real pretraining model in this process rather than through
``diver pretrain`` (each point would otherwise pay a DeepSpeed start-up, and there are
width x lr x seed x parametrisation of them): the same model, MuAdamW and the study's
data, but windows cut to a few channels and patches so that a CPU runs the whole check
in minutes.  The check runs with the model's default options and, because the
coordinate check (``tests/test_mup.py``) finds the authors' ``spectral_norm: forward``
not width-stable, also with the width-flat ``ortho`` (``hpsearch.transfer.spectral_norm``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diver.atomic import write_text_atomic
from diver.config import StudyConfig, TransferConfig
from diver.data.dataset import WindowBatch

MAX_CHANNELS = 4
MAX_PATCHES = 6
VAL_WINDOWS = 16
BETAS = (0.9, 0.95)
RESULT = "transfer.json"
FIGURE = "transfer.png"


@dataclass(frozen=True)
class TransferPoint:
    """One (option, parametrisation, size, lr): the validation loss per seed and its mean."""

    spectral_norm: str
    parametrisation: str  # "mup" or "sp"
    size: str
    width: int
    lr: float
    losses: tuple[float, ...]

    @property
    def loss(self) -> float:
        values = [v if math.isfinite(v) else math.inf for v in self.losses]
        return float(np.mean(values))


def _crop(batch: WindowBatch) -> WindowBatch:
    """The batch cut to its first channels and patches (the check's CPU budget)."""
    c, n = MAX_CHANNELS, MAX_PATCHES
    return replace(
        batch,
        signal=batch.signal[:, :c, :n].contiguous(),
        channel_mask=batch.channel_mask[:, :c].contiguous(),
        patch_mask=batch.patch_mask[:, :n].contiguous(),
        coords=batch.coords[:, :c].contiguous(),
        channel_type_ids=batch.channel_type_ids[:, :c].contiguous(),
        channel_subtype_ids=batch.channel_subtype_ids[:, :c].contiguous(),
    )


def fixed_batches(
    study: StudyConfig, corpus: str | Path, family: str, patch: str, config: TransferConfig
) -> tuple[list[WindowBatch], list[WindowBatch]]:
    """``steps`` training batches of ``batch`` windows (the family's training split, in a
    seeded order, epoch after epoch) and the validation batches, every one cropped.

    Read once and reused by every run, so widths, learning rates and parametrisations
    see exactly the same data."""
    from torch.utils.data import DataLoader

    from diver.data import WindowDataset, collate_windows, make_splits
    from diver.data.resample import ResampleConfig

    fam = study.families[family]
    splits = make_splits(
        corpus, 1.0, study.pretrain.validation, modalities=fam.modalities, datasets=fam.datasets
    )
    patch_samples = 500 if patch == "1s" else 50
    train = WindowDataset(splits.train, patch_samples, seed=0, rank=0, world_size=1)
    batches: list[WindowBatch] = []
    epoch = 0
    while len(batches) < config.steps:
        train.set_epoch(epoch)
        loader = DataLoader(train, batch_size=config.batch, collate_fn=collate_windows)
        before = len(batches)
        for batch in loader:
            if len(batch) == config.batch:
                batches.append(_crop(batch))
            if len(batches) == config.steps:
                break
        if len(batches) == before:
            raise ValueError(
                f"the training split ({len(splits.train)} windows) has no full batch of "
                f"{config.batch}: lower hpsearch.transfer.batch"
            )
        epoch += 1
    val = WindowDataset(
        splits.val, patch_samples, resample=ResampleConfig(enabled=False), shuffle=False,
        rank=0, world_size=1,
    )  # fmt: skip
    val_batches = [
        _crop(b) for b in DataLoader(val, batch_size=config.batch, collate_fn=collate_windows)
    ]
    take = max(1, math.ceil(VAL_WINDOWS / config.batch))
    return batches, val_batches[:take]


def _model(size: str, patch: str, spectral_norm: str, mup: bool, study: StudyConfig) -> Any:
    """The pretraining model at ``size``: muP-parametrised, or standard (multipliers 1)."""
    from mup import set_base_shapes

    from diver.model.config import model_config
    from diver.model.mup_setup import build_model
    from diver.model.pretrain import DiverPretrainModel

    options = {**dict(study.model), "spectral_norm": spectral_norm}
    config = model_config(size, patch, **options)
    if mup:
        return build_model(config)
    model = DiverPretrainModel(config)
    set_base_shapes(model, None)  # every width multiplier 1: MuReadout is a plain Linear
    return model


def _val_loss(model: Any, batches: Sequence[WindowBatch]) -> float:
    """Mean validation loss over the fixed batches, each with its own fixed masks."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i, batch in enumerate(batches):
            generator = torch.Generator().manual_seed(10_000 + i)
            total += float(model(batch.encoder_inputs(), generator=generator).loss)
    model.train()
    return total / len(batches)


def train_point(
    study: StudyConfig,
    *,
    size: str,
    patch: str,
    spectral_norm: str,
    mup: bool,
    lr: float,
    seed: int,
    train: Sequence[WindowBatch],
    val: Sequence[WindowBatch],
) -> float:
    """Train one model for ``len(train)`` steps at ``lr`` (cosine to 1 % as in the grid,
    no weight decay) and return its validation loss (inf once it diverged)."""
    from diver.model.mup_setup import make_optimizer

    torch.manual_seed(seed)
    model = _model(size, patch, spectral_norm, mup, study)
    model.train()
    if mup:
        optimizer = make_optimizer(model, lr=lr, weight_decay=0.0, betas=BETAS)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=BETAS)
    steps = len(train)
    base = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(seed)
    for step, batch in enumerate(train):
        factor = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group, lr0 in zip(optimizer.param_groups, base, strict=True):
            group["lr"] = lr0 * factor
        loss = model(batch.encoder_inputs(), generator=generator).loss
        if not torch.isfinite(loss):
            return math.inf
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), study.pretrain.optimiser.grad_clip)
        optimizer.step()
    value = _val_loss(model, val)
    return value if math.isfinite(value) else math.inf


def run_transfer(
    study: StudyConfig,
    corpus: str | Path,
    *,
    family: str | None = None,
    patch: str = "1s",
    config: TransferConfig | None = None,
    say: Callable[[str], None] = print,
) -> list[TransferPoint]:
    """Every (spectral_norm, parametrisation, size, lr) point of the check."""
    from diver.model.config import SIZES
    from diver.model.mup_setup import BASE_WIDTH

    config = config or study.hpsearch.transfer
    family = family or next(iter(study.families))
    train, val = fixed_batches(study, corpus, family, patch, config)
    points = []
    for norm in config.spectral_norm:
        for mup in (True, False):
            for size in config.sizes:
                started = time.monotonic()
                width = int(SIZES[size]["d_model"])
                name = "mup" if mup else "sp"
                for lr in config.lrs:
                    if not mup and width == BASE_WIDTH:
                        # At the base width every muP multiplier is 1: MuAdamW is AdamW and
                        # nothing is rescaled, so the run is the muP one, bit for bit.
                        same = next(
                            p for p in points
                            if (p.spectral_norm, p.parametrisation, p.size, p.lr)
                            == (norm, "mup", size, lr)
                        )  # fmt: skip
                        points.append(replace(same, parametrisation=name))
                        continue
                    losses = tuple(
                        train_point(
                            study, size=size, patch=patch, spectral_norm=norm, mup=mup, lr=lr,
                            seed=seed, train=train, val=val,
                        )
                        for seed in config.seeds
                    )  # fmt: skip
                    points.append(TransferPoint(norm, name, size, width, lr, losses))
                say(
                    f"spectral_norm {norm}, {'muP' if mup else 'SP'}, {size}: "
                    f"{len(config.lrs)} lrs x {len(config.seeds)} seeds in "
                    f"{time.monotonic() - started:.0f} s"
                )
    return points


def best_lrs(points: Sequence[TransferPoint]) -> dict[tuple[str, str], dict[str, float]]:
    """(spectral_norm, parametrisation) -> size -> the learning rate of lowest loss."""
    best: dict[tuple[str, str], dict[str, float]] = {}
    for p in points:
        key = (p.spectral_norm, p.parametrisation)
        current = best.setdefault(key, {})
        others = [q for q in points if (q.spectral_norm, q.parametrisation, q.size) ==
                  (*key, p.size)]  # fmt: skip
        current[p.size] = min(others, key=lambda q: (q.loss, q.lr)).lr
    return best


def grid_steps(lrs: Sequence[float], chosen: dict[str, float]) -> int:
    """How many grid steps apart the widths' best learning rates are (max - min index)."""
    order = sorted(lrs)
    index = [order.index(v) for v in chosen.values()]
    return max(index) - min(index)


def summarise(points: Sequence[TransferPoint], config: TransferConfig) -> dict[str, Any]:
    """transfer.json's content: the points, each curve's best lr, and the verdict."""
    best = best_lrs(points)
    verdicts = {}
    for (norm, param), chosen in best.items():
        steps = grid_steps(config.lrs, chosen)
        verdicts[f"{norm}/{param}"] = {
            "spectral_norm": norm,
            "parametrisation": param,
            "best_lr": chosen,
            "spread_grid_steps": steps,
            "transfers": steps <= 1,
        }
    return {
        "config": asdict(config),
        "crop": {"channels": MAX_CHANNELS, "patches": MAX_PATCHES},
        "points": [{**asdict(p), "loss": p.loss} for p in points],
        "verdicts": verdicts,
    }


def plot(summary: dict[str, Any]) -> bytes:
    """Loss against lr, one curve per width, a panel per (spectral_norm, parametrisation)."""
    import io

    from matplotlib.figure import Figure

    keys = list(summary["verdicts"])
    fig = Figure(figsize=(4.2 * len(keys), 3.6))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    points = summary["points"]
    for ax, key in zip(axes, keys, strict=True):
        verdict = summary["verdicts"][key]
        mine = [p for p in points if f"{p['spectral_norm']}/{p['parametrisation']}" == key]
        for size in dict.fromkeys(p["size"] for p in mine):
            curve = sorted((p["lr"], p["loss"]) for p in mine if p["size"] == size)
            width = next(p["width"] for p in mine if p["size"] == size)
            xs = [x for x, y in curve if math.isfinite(y)]
            ys = [y for x, y in curve if math.isfinite(y)]
            (line,) = ax.plot(xs, ys, marker="o", ms=3, label=f"{size} (d={width})")
            best = verdict["best_lr"][size]
            ax.axvline(best, color=line.get_color(), ls=":", lw=1)
        name = "muP" if verdict["parametrisation"] == "mup" else "standard"
        ok = "transfers" if verdict["transfers"] else "drifts"
        ax.set_title(
            f"{name}, spectral_norm {verdict['spectral_norm']}\n"
            f"best lr spread {verdict['spread_grid_steps']} grid step(s): {ok}",
            fontsize=9,
        )
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def write_transfer(summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """transfer.json and transfer.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / RESULT, json.dumps(summary, indent=1))
    figure = out / FIGURE
    tmp = figure.with_suffix(".png.tmp")
    tmp.write_bytes(plot(summary))
    tmp.replace(figure)
    return out / RESULT, figure
