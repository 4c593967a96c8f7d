"""Pretraining-cell outputs written from a known scaling law, for the scaling and report tests.

Each cell gets what ``diver pretrain`` writes and the later stages read - ``metrics.json``
(the same keys), ``train_log.csv`` and ``val_log.csv`` (the same columns) - with losses
from :func:`diver.scaling.laws.predict` of a known law plus small multiplicative noise,
so a fit has a truth to find and a report has curves to draw.  Parameter counts are the
real ``debug`` family's (``diver model params``); unique tokens are U_D of a small corpus.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diver.scaling.laws import DIVER1_IEEG_1S, LawParams, predict

#: ``diver model params --size debug --size debug-2x --size debug-4x`` (1 s patches).
DEBUG_PARAMS = {"debug": 229_650, "debug-2x": 728_850, "debug-4x": 2_540_562}
#: U_D of the whole training split of a small synthetic corpus (tokens, SPEC §1).
CORPUS_TOKENS = 4.0e5
STEPS_PER_EPOCH = 6


def cell_metrics(
    size: str,
    fraction: float,
    epochs: int,
    *,
    law: LawParams = DIVER1_IEEG_1S,
    family: str = "mixed",
    patch: str = "1s",
    subjects: int | None = None,
    noise: float = 0.01,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """A ``metrics.json`` of one cell, its loss at every epoch end from ``law``."""
    rng = rng if rng is not None else np.random.default_rng(0)
    n = DEBUG_PARAMS[size]
    unique = fraction * CORPUS_TOKENS
    by_epoch = []
    for e in range(1, epochs + 1):
        loss = float(predict(law, n, e * unique, unique)) * (1 + noise * rng.standard_normal())
        by_epoch.append({"epoch": e, "tokens": e * unique, "val_loss": loss})
    tokens = epochs * unique
    return {
        "d_model": 64,
        "data_fraction": fraction,
        "epochs": epochs,
        "family": family,
        "flops": 10.0 * n * tokens,
        "flops_6nd": 6.0 * n * tokens,
        "n_params": n,
        "patch": patch,
        "size": size,
        "steps": epochs * STEPS_PER_EPOCH,
        "subjects": subjects,
        "tokens": tokens,
        "tokens_seen": tokens * 0.9,
        "train_loss": by_epoch[-1]["val_loss"] * 1.1,
        "unique_tokens": unique,
        "val_by_epoch": by_epoch,
        "val_loss": by_epoch[-1]["val_loss"],
        "world_size": 1,
        "zero_stage": 2,
    }


def write_cell(folder: Path, metrics: dict[str, Any]) -> Path:
    """The cell's metrics.json, train_log.csv and val_log.csv in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = metrics["steps"]
    per_step = metrics["tokens"] / steps
    final = metrics["val_loss"]
    with (folder / "train_log.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "epoch", "loss", "lr", "tokens"])
        for step in range(1, steps + 1):
            loss = final * (1.1 + 2.0 * np.exp(-step / 3))
            writer.writerow([step, (step - 1) // STEPS_PER_EPOCH, loss, 1e-3, step * per_step])
    with (folder / "val_log.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["epoch", "step", "tokens", "val_loss"])
        writer.writerow([0, 0, 0.0, final * 10])
        for entry in metrics["val_by_epoch"]:
            step = entry["epoch"] * STEPS_PER_EPOCH
            writer.writerow([entry["epoch"], step, entry["tokens"], entry["val_loss"]])
    path = folder / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2))
    return path


def write_grid(
    root: Path,
    sizes: Sequence[str],
    fractions: Sequence[float],
    epochs: Sequence[int],
    *,
    family: str = "mixed",
    patch: str = "1s",
    law: LawParams = DIVER1_IEEG_1S,
    seed: int = 0,
) -> list[Path]:
    """Every cell of a size x fraction x epochs grid under ``root``; their metrics.json."""
    rng = np.random.default_rng(seed)
    paths = []
    for size in sizes:
        for fraction in fractions:
            for e in epochs:
                metrics = cell_metrics(
                    size, fraction, e, law=law, family=family, patch=patch, rng=rng
                )
                folder = root / family / patch / size / f"f{fraction!r}_e{e}"
                paths.append(write_cell(folder, metrics))
    return paths
