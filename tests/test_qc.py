"""SPEC §1 QA/QC at its exact thresholds, on constructed signals."""

from __future__ import annotations

import numpy as np
import pytest

from diver.config import QCConfig
from diver.corpus.qc import qc_block
from diver.study.budget import window_tokens

S = 15000
QC = QCConfig()


def _quiet(n_channels: int, n_windows: int = 1, seed: int = 0) -> np.ndarray:
    """Realistic EEG-scale noise: 20 µV std, never near the 100 µV clip."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, 20, (n_windows, n_channels, S)), -90, 90)


@pytest.mark.parametrize(("n_clipped", "dropped"), [(499, False), (500, True)])
def test_clipped_fraction_edge(n_clipped: int, dropped: bool) -> None:
    x = _quiet(4)
    x[0, 1, :n_clipped] = 150.0  # 1.5 after the 100 µV scale: clipped
    v = qc_block(x, np.full(4, 100.0), QC)
    assert bool(v.clipped[0, 1]) is dropped
    assert bool(v.channel_ok[0, 1]) is not dropped
    assert v.window_ok[0]
    assert v.channel_ok[0, [0, 2, 3]].all()


def test_exactly_at_clip_is_not_clipped() -> None:
    x = _quiet(1)
    x[0, 0, :1000] = 100.0  # |x| / 100 == 1: on the boundary, not beyond it
    v = qc_block(x, np.array([100.0]), QC)
    assert not v.clipped[0, 0]


@pytest.mark.parametrize(("n_bad", "kept"), [(2, True), (3, False)])
def test_window_dropped_above_half_bad_channels(n_bad: int, kept: bool) -> None:
    x = _quiet(4)
    x[0, :n_bad, :600] = 500.0
    v = qc_block(x, np.full(4, 100.0), QC)
    assert bool(v.window_ok[0]) is kept
    assert v.kept_channels[0].sum() == (4 - n_bad if kept else 0)


def test_ieeg_scale_is_200_uv() -> None:
    x = _quiet(2)
    x[0, :, :600] = 150.0  # clipped as EEG (/100), not as iEEG (/200)
    v = qc_block(x, np.array([100.0, 200.0]), QC)
    assert v.clipped[0].tolist() == [True, False]
    np.testing.assert_allclose(v.scaled[0, 1, :600], 0.75, rtol=1e-6)
    assert v.scaled.max() <= 1.0
    assert v.scaled.min() >= -1.0


def test_flat_and_nan_channels_are_compromised() -> None:
    x = _quiet(5)
    x[0, 0] = 3.0  # flat: constant
    x[0, 1, 100] = np.nan
    v = qc_block(x, np.full(5, 100.0), QC)
    assert v.flat[0, 0]
    assert v.has_nan[0, 1]
    assert not v.channel_ok[0, :2].any()
    assert v.channel_ok[0, 2:].all()
    assert v.window_ok[0]
    assert np.isfinite(v.scaled).all()


def test_all_channels_bad_drops_window_even_with_lenient_threshold() -> None:
    x = np.zeros((1, 2, S))
    v = qc_block(x, np.full(2, 100.0), QCConfig(max_bad_channel_fraction=1.0))
    assert not v.window_ok[0]


def test_cbramod_rule_drops_any_sample_over_100_uv() -> None:
    x = _quiet(3, n_windows=2)
    x[1, 2, 7] = 101.0  # one sample: CBraMod drops the window, our rule keeps it all
    v = qc_block(x, np.full(3, 100.0), QC)
    assert v.cbramod_ok.tolist() == [True, False]
    assert v.window_ok.tolist() == [True, True]
    assert v.kept_channels[1].all()


def test_thresholds_come_from_config() -> None:
    x = _quiet(2)
    x[0, 0, :100] = 150.0
    strict = QCConfig(max_clipped_fraction=0.005)  # 75 samples
    assert qc_block(x, np.full(2, 100.0), strict).clipped[0, 0]
    assert not qc_block(x, np.full(2, 100.0), QC).clipped[0, 0]


def test_expected_tokens_spec_value() -> None:
    assert window_tokens(32) == 540
    assert window_tokens(64) == 540
    assert window_tokens(8) == pytest.approx(8 * 30 * 0.5625)
    assert window_tokens(32, 300) == 540  # 0.1 s patches: cropped to 30 as well (SPEC §2)
    assert list(window_tokens([4, 40], [30, 10])) == [4 * 30 * 0.5625, 32 * 10 * 0.5625]
