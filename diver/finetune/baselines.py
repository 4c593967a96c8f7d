"""The Linear baseline reported beside every result (SPEC §5, Neuroprobe's "Linear").

Features: the STFT of each trial's signal as the task set holds it (500 Hz, scaled,
Laplacian re-referenced for iEEG tasks), with the model's STFT target settings
(SPEC §2): periodic Hann windows of n_fft = 200 samples (0.4 s), hop 100, no padding,
magnitudes of the bins up to 200 Hz, ``log1p``; flattened over channels (on the task's
channel layout), frames and bins.  Model: standardised features into an L2
logistic regression (scikit-learn).  Its inverse regularisation ``C`` is chosen on the
validation split from :data:`C_GRID`, then the model is scored on test.  The fit is
deterministic, so the baseline runs once per fold (seeds would repeat it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from diver.finetune.metrics import classification_metrics

STFT_N_FFT = 200  # SPEC §2's STFT target (the larger window of both sets)
STFT_HOP = 100
MAX_FREQ_HZ = 200.0
SFREQ = 500.0
C_GRID = (1e-3, 1e-2, 1e-1, 1.0)


def stft_features(signal: np.ndarray, sfreq: float = SFREQ) -> np.ndarray:
    """``(T, C, S)`` trials -> ``(T, C * frames * bins)`` log-magnitude STFT features."""
    if signal.shape[-1] < STFT_N_FFT:
        raise ValueError(f"trials of {signal.shape[-1]} samples are shorter than one STFT frame")
    n = np.arange(STFT_N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / STFT_N_FFT)  # periodic Hann
    frames = sliding_window_view(signal, STFT_N_FFT, axis=-1)[..., ::STFT_HOP, :]
    spectrum = np.abs(np.fft.rfft(frames * window, axis=-1))
    bins = min(math.floor(MAX_FREQ_HZ * STFT_N_FFT / sfreq + 1e-9), STFT_N_FFT // 2) + 1
    feats = np.log1p(spectrum[..., :bins]).astype(np.float32)
    return feats.reshape(signal.shape[0], -1)


@dataclass(frozen=True)
class LinearResult:
    proba: np.ndarray  # (n_test, n_classes)
    c: float  # chosen regularisation
    val_score: float


def linear_baseline(
    features: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    n_classes: int,
    metric: str,
) -> LinearResult:
    """Fit on ``train`` for each C, keep the best on ``val`` by ``metric``, predict ``test``."""
    best: tuple[float, float, object] | None = None
    for c in C_GRID:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
        model.fit(features[train], labels[train])
        score = classification_metrics(
            labels[val], _proba(model, features[val], n_classes), n_classes
        )[metric]
        score = score if math.isfinite(score) else -math.inf
        if best is None or score > best[0]:
            best = (score, c, model)
    assert best is not None
    score, c, model = best
    return LinearResult(_proba(model, features[test], n_classes), c, score)


def _proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Probabilities over all ``n_classes`` (a class absent from training gets 0)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out
