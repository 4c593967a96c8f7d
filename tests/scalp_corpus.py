"""Helpers for the dataset tests (HBN, PEERS): a signal whose amplitude names its channel,
reading a built corpus back, and a dataset as its shipped preset makes it.

Every channel carries a 10 Hz rhythm of its own amplitude, so a window's channel can
be checked against what was written -- by name and by scale (the corpus stores EEG
as µV / 100) -- after the high-pass, notch and resampling, which leave 10 Hz alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads

from diver.config import DatasetConfig, config_from_dict
from diver.corpus.shards import coords_of, signals_of

RHYTHM_HZ = 10.0
NOISE_UV = 2.0


def amplitudes_uv(n_channels: int) -> np.ndarray:
    """A distinct 10 Hz amplitude per channel: 20 µV, 20.1 µV, ... (well below clipping)."""
    return 20.0 + 0.1 * np.arange(n_channels)


def rhythm_uv(n_channels: int, sfreq: float, seconds: float, seed: int = 0) -> np.ndarray:
    """``(n_channels, samples)`` in µV: each channel's 10 Hz rhythm plus a little noise."""
    t = np.arange(round(sfreq * seconds)) / sfreq
    rng = np.random.default_rng(seed)
    phases = rng.uniform(0.0, 2.0 * np.pi, n_channels)
    amps = amplitudes_uv(n_channels)
    signal = amps[:, None] * np.sin(2.0 * np.pi * RHYTHM_HZ * t[None, :] + phases[:, None])
    return signal + rng.normal(0.0, NOISE_UV, signal.shape)


def rhythm_amplitude(signal: np.ndarray, sfreq: float) -> np.ndarray:
    """Amplitude of the 10 Hz component of each row (a whole number of cycles long)."""
    x = np.asarray(signal, dtype=np.float64)
    t = np.arange(x.shape[-1]) / sfreq
    sin, cos = np.sin(2.0 * np.pi * RHYTHM_HZ * t), np.cos(2.0 * np.pi * RHYTHM_HZ * t)
    n = x.shape[-1]
    return 2.0 / n * np.hypot(x @ sin, x @ cos)


def read_windows(out: Path) -> pd.DataFrame:
    """One row per window of a built corpus, with its signal and coordinates as arrays."""
    table = pads.dataset(out / "windows").to_table()
    frame = table.drop_columns(["signal", "coords_mm"]).to_pandas()
    frame["signal"] = [np.asarray(s, dtype=np.float64) for s in signals_of(table)]
    frame["coords"] = coords_of(table)
    return frame.sort_values(["recording", "window_index"]).reset_index(drop=True)


def read_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The corpus's qc.csv and channels.csv."""
    qc = pd.read_csv(out / "qc.csv", keep_default_na=False)
    channels = pd.read_csv(out / "channels.csv", keep_default_na=False)
    return qc, channels


def preset_dataset(preset: str, name: str, inputs: Sequence[Path]) -> DatasetConfig:
    """Dataset ``name`` as the shipped preset ``config/datasets/<preset>.yaml`` makes it,
    loaded through :mod:`diver.config` as a study config would.

    The tests build their corpus from the preset, so the preset is what is tested end
    to end; their own settings are the reference it is compared with.
    """
    entry = {"name": name, "preset": preset, "inputs": [str(p) for p in inputs]}
    (dataset,) = config_from_dict({"corpus": {"datasets": [entry]}}).corpus.datasets
    return dataset


SETTINGS = ("modality", "line_freq", "highpass", "montage", "subject_pattern", "channel_types")


def settings_of(dataset: DatasetConfig) -> dict[str, object]:
    """The dataset keys these tests depend on."""
    return {key: getattr(dataset, key) for key in SETTINGS}
