"""Preprocessing chain and block-wise processing (SPEC §1 filters and 500 Hz)."""

from __future__ import annotations

from pathlib import Path

import mne
import numpy as np
import pyarrow.dataset as pads
import pytest

from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.build import build_corpus
from diver.corpus.preprocess import HighPass, Notch, Resample, build_chain, notch_frequencies
from diver.corpus.shards import signals_of


def test_chain_filters_at_the_lower_rate() -> None:
    down = build_chain(sfreq_in=2048, sfreq_out=500, highpass=0.5, line_freq=60, harmonics=True)
    assert isinstance(down[0], Resample)
    assert isinstance(down[1], HighPass)
    assert down[2] == Notch((60.0, 120.0, 180.0, 240.0))
    up = build_chain(sfreq_in=160, sfreq_out=500, highpass=0.3, line_freq=60, harmonics=False)
    assert [type(s) for s in up] == [HighPass, Notch, Resample]
    assert up[1] == Notch((60.0,))
    same = build_chain(sfreq_in=500, sfreq_out=500, highpass=0.3, line_freq=50, harmonics=False)
    assert [type(s) for s in same] == [HighPass, Notch]
    assert [s.to_dict()["step"] for s in down] == ["resample", "highpass", "notch"]


def test_notch_frequencies_stay_below_nyquist() -> None:
    assert notch_frequencies(60, 64, harmonics=True) == (60.0,)
    assert notch_frequencies(60, 50, harmonics=True) == ()
    assert notch_frequencies(50, 250, harmonics=True) == (50.0, 100.0, 150.0, 200.0)


def _write_fif(path: Path, data: np.ndarray, sfreq: float, names: list[str]) -> Path:
    info = mne.create_info(names, sfreq, "eeg")
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.save(path, overwrite=True, verbose="error")
    return path


def _read_corpus(out: Path):
    table = pads.dataset(out / "windows").to_table().sort_by("window_index")
    return table, signals_of(table)


def _phase_and_amplitude(x: np.ndarray, t: np.ndarray, freq: float) -> tuple[float, float]:
    """Least-squares fit of a sinusoid of known frequency: (phase in seconds, amplitude)."""
    design = np.column_stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)])
    (a, b), *_ = np.linalg.lstsq(design, x, rcond=None)
    return float(np.arctan2(b, a) / (2 * np.pi * freq)), float(np.hypot(a, b))


@pytest.mark.parametrize(("sfreq", "block_windows"), [(999.41, 1), (999.41, 20), (5000.0, 2)])
def test_resample_keeps_phase(tmp_path: Path, sfreq: float, block_windows: int) -> None:
    """A 10 Hz sine at 999.41 Hz or 5 kHz lands on the 500 Hz grid with the right phase.

    MNE's FFT resampler maps a block onto a whole number of output samples and, for a
    non-integer ratio, its time base is off by a fraction of an output sample (about
    0.8-1.2 ms here, the same with plain ``raw.resample`` on the whole recording); the
    fitted phase must stay within one output sample (2 ms), and the amplitude within
    1 %, in every window - a window misplaced by even one sample fails.
    """
    seconds = 95.0
    t = np.arange(int(seconds * sfreq)) / sfreq
    sine = 40e-6 * np.sin(2 * np.pi * 10.0 * t)
    data = np.vstack([sine, 0.5 * sine, np.cos(2 * np.pi * 10.0 * t) * 30e-6])
    rec = tmp_path / "in" / "rec.fif"
    rec.parent.mkdir()
    _write_fif(rec, data, sfreq, ["Cz", "Pz", "Oz"])
    corpus = CorpusConfig(block_windows=block_windows, signal_dtype="float32")
    result = build_corpus(
        [DatasetConfig(name="d", inputs=(str(rec.parent),))],
        corpus,
        tmp_path / "out",
        progress=False,
    )
    assert result.windows == 3  # 95 s -> three 30 s windows
    table, signals = _read_corpus(tmp_path / "out")
    assert table.column("sfreq").to_pylist() == [500.0] * 3
    for w, sig in enumerate(signals):
        assert sig.shape == (3, 15000)
        tt = w * 30.0 + np.arange(15000) / 500.0
        steady = tt >= 3.0  # the recording's first seconds carry the high-pass transient
        for channel, amplitude in ((0, 0.4), (1, 0.2)):  # 40 µV / 100 µV scale
            phase, amp = _phase_and_amplitude(sig[channel][steady], tt[steady], 10.0)
            assert abs(phase) <= 0.002, (w, channel, phase)
            assert amp == pytest.approx(amplitude, rel=0.01)
        phase, _ = _phase_and_amplitude(sig[2][steady], tt[steady], 10.0)
        assert abs(abs(phase) - 0.025) <= 0.002  # the cosine leads by a quarter period


def test_blockwise_equals_whole_signal(tmp_path: Path) -> None:
    """Blocks of one window give the same windows as one block over the whole recording."""
    rng = np.random.default_rng(3)
    sfreq = 256.0
    n = int(185 * sfreq)
    data = np.cumsum(rng.normal(0, 2e-6, (4, n)), axis=1) + rng.normal(0, 10e-6, (4, n))
    data += 20e-6 * np.sin(2 * np.pi * 60 * np.arange(n) / sfreq)
    rec = tmp_path / "in" / "rec.fif"
    rec.parent.mkdir()
    _write_fif(rec, data, sfreq, ["C3", "C4", "Fz", "Pz"])
    ds = DatasetConfig(name="d", inputs=(str(rec.parent),))
    outs = []
    for blocks in (1, 50):
        out = tmp_path / f"out{blocks}"
        build_corpus(
            [ds], CorpusConfig(block_windows=blocks, signal_dtype="float32"), out, progress=False
        )
        outs.append(_read_corpus(out)[1])
    assert len(outs[0]) == len(outs[1]) == 6
    for a, b in zip(*outs, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_line_noise_and_drift_removed(tmp_path: Path) -> None:
    sfreq = 1000.0
    n = int(65 * sfreq)
    t = np.arange(n) / sfreq
    alpha = 20e-6 * np.sin(2 * np.pi * 10 * t)
    data = np.vstack([alpha + 30e-6 * np.sin(2 * np.pi * 60 * t) + 40e-6 * t / t[-1]] * 2)
    rec = tmp_path / "in" / "rec.fif"
    rec.parent.mkdir()
    _write_fif(rec, data, sfreq, ["O1", "O2"])
    build_corpus(
        [DatasetConfig(name="d", inputs=(str(rec.parent),))],
        CorpusConfig(signal_dtype="float32"),
        tmp_path / "out",
        progress=False,
    )
    _, signals = _read_corpus(tmp_path / "out")
    spectrum = np.abs(np.fft.rfft(signals[0][0]))
    freqs = np.fft.rfftfreq(15000, 1 / 500)
    at = {f: spectrum[np.argmin(np.abs(freqs - f))] for f in (10.0, 60.0)}
    assert at[60.0] < 0.01 * at[10.0]
    assert abs(signals[0][0].mean()) < 0.02
