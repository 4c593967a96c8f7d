"""Signal generation of the synthetic recordings, in µV, as arrays.

Why frequency-domain shaping: it gives exact 1/f slopes and narrow-band rhythms whose
amplitude waxes and wanes on its own, like real oscillations, at the cost of one FFT
per source.  Scalp EEG (:func:`eeg_data`) has 1/f background, occipital alpha, central
mu with contralateral desynchronisation in ``left``/``right`` trials, blinks, ECG and
60 Hz mains; iEEG (:func:`ieeg_data`) a steep 1/f, theta and beta on some contacts, a
task-locked high-gamma increase and mains with harmonics.  :func:`plant_faults` then
writes the faults the QA/QC rules must catch.  Nothing here touches files: every
function draws from the random stream it is given, in a fixed order, which is what
makes a recording byte-identical given its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.fft
from scipy.signal import fftconvolve

from diver.corpus.synth.subjects import (
    CLASSES,
    DROPOUT_SECONDS,
    LINE_FREQ,
    SCALP,
    TRIAL_SECONDS,
    Job,
)


def _unit_gain(gain: np.ndarray, n: int) -> np.ndarray:
    """Scale a spectral gain (last axis: rfft bins of ``n`` samples) to unit output std.

    Unit-variance white noise filtered by ``g`` has variance
    ``(g_0^2 + 2 sum g_k^2 + g_nyq^2) / n`` (Parseval), so normalising the gain rather
    than the output lets several rhythms share one FFT with exact amplitudes.
    """
    power = 2.0 * np.sum(gain**2, axis=-1, keepdims=True) - gain[..., :1] ** 2
    if n % 2 == 0:
        power -= gain[..., -1:] ** 2
    power[power == 0] = 1.0
    return gain / np.sqrt(power / n)


def _freqs(n: int, sfreq: float) -> np.ndarray:
    """rfft bin frequencies for the FFT length ``shaped_noise`` uses for ``n`` samples."""
    return scipy.fft.rfftfreq(scipy.fft.next_fast_len(n, real=True), 1.0 / sfreq)


def shaped_noise(
    rng: np.random.Generator,
    n_rows: int,
    n: int,
    sfreq: float,
    gain: Callable[[np.ndarray], np.ndarray] | np.ndarray,
) -> np.ndarray:
    """White noise shaped in the frequency domain, unit std per row (in expectation).

    Shaping the spectrum directly gives exact 1/f slopes and narrow-band rhythms
    whose amplitude waxes and wanes on its own, like real oscillations.  ``gain`` is
    a function of frequency, or an array over ``_freqs(n, sfreq)`` (one row per output
    row for channel-specific spectra).  The FFT runs on a fast length and is cut to
    ``n``: recording lengths like 359 s x 1000 Hz have large prime factors.
    """
    if n_rows == 0:
        return np.zeros((0, n), dtype=np.float32)
    m = scipy.fft.next_fast_len(n, real=True)
    g = gain(_freqs(n, sfreq)) if callable(gain) else gain
    g = _unit_gain(np.asarray(g, dtype=np.float64), m).astype(np.float32)
    spec = scipy.fft.rfft(rng.standard_normal((n_rows, m), dtype=np.float32), axis=1)
    spec *= g
    return scipy.fft.irfft(spec, n=m, axis=1)[:, :n]


def _aperiodic(exponent: float, knee: float) -> Callable[[np.ndarray], np.ndarray]:
    """Amplitude gain for a PSD of 1 / (knee + f^exponent), no DC."""

    def gain(f: np.ndarray) -> np.ndarray:
        g = 1.0 / np.sqrt(knee + f**exponent)
        g[f == 0] = 0.0
        return g

    return gain


def bump(f0: float, width: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda f: np.exp(-0.5 * ((f - f0) / width) ** 2)


def _band(lo: float, hi: float, taper: float = 5.0) -> Callable[[np.ndarray], np.ndarray]:
    def gain(f: np.ndarray) -> np.ndarray:
        rise = np.clip((f - (lo - taper)) / taper, 0.0, 1.0)
        fall = np.clip(((hi + taper) - f) / taper, 0.0, 1.0)
        return np.sin(0.5 * np.pi * np.minimum(rise, fall)) ** 2

    return gain


def _correlated(
    rng: np.random.Generator,
    positions: np.ndarray,
    length: float,
    n: int,
    sfreq: float,
    gain: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Shaped noise whose channels correlate with distance (volume conduction)."""
    dist = np.linalg.norm(positions[:, None, :] - positions[None, :, :], axis=-1)
    cov = 0.7 * np.exp(-dist / length) + 0.3 * np.eye(len(positions))
    mix = np.linalg.cholesky(cov).astype(np.float32)
    return mix @ shaped_noise(rng, len(positions), n, sfreq, gain)


def trial_onsets(
    rng: np.random.Generator,
    duration: float,
    *,
    first: tuple[float, float] = (3.0, 6.0),
    gap: tuple[float, float] = (9.0, 11.0),
    classes: Sequence[str] = CLASSES,
) -> tuple[list[float], list[str]]:
    """Trial onsets (the first in ``first`` s, then every ``gap`` s: ~10 s for the
    corpus), the two classes balanced and shuffled."""
    onsets: list[float] = []
    t = float(rng.uniform(*first))
    while t + TRIAL_SECONDS < duration - 1.0:
        onsets.append(round(t, 3))
        t += float(rng.uniform(*gap))
    labels = [classes[i % 2] for i in range(len(onsets))]
    order = rng.permutation(len(labels))
    return onsets, [labels[i] for i in order]


def trial_mask(n: int, sfreq: float, onsets: Sequence[float]) -> np.ndarray:
    """1 inside the given trials, 0 outside, with 0.25 s raised-cosine edges."""
    mask = np.zeros(n, dtype=np.float32)
    ramp = max(1, round(0.25 * sfreq))
    edge = np.sin(0.5 * np.pi * np.arange(ramp) / ramp) ** 2
    for onset in onsets:
        a, b = round(onset * sfreq), min(n, round((onset + TRIAL_SECONDS) * sfreq))
        mask[a:b] = 1.0
        mask[a : min(b, a + ramp)] = edge[: min(b, a + ramp) - a]
        mask[max(a, b - ramp) : b] = edge[::-1][-(b - max(a, b - ramp)) :]
    return mask


def _events(
    rng: np.random.Generator,
    n: int,
    sfreq: float,
    rate_hz: float,
    amplitude: tuple[float, float],
    kernel: np.ndarray,
    regular: bool = False,
) -> np.ndarray:
    """A train of ``kernel`` waveforms (blinks, heartbeats) at a given mean rate."""
    train = np.zeros(n, dtype=np.float32)
    t = float(rng.uniform(0.0, 1.0 / rate_hz))
    while t < n / sfreq:
        train[min(n - 1, round(t * sfreq))] = rng.uniform(*amplitude)
        period = 1.0 / rate_hz
        t += float(rng.normal(period, 0.05 * period)) if regular else float(rng.exponential(period))
    return fftconvolve(train, kernel, mode="full")[len(kernel) // 2 : len(kernel) // 2 + n].astype(
        np.float32
    )


def _blink_kernel(sfreq: float) -> np.ndarray:
    t = np.arange(-0.4, 0.6, 1.0 / sfreq)
    return np.where(t < 0, np.exp(-0.5 * (t / 0.05) ** 2), np.exp(-0.5 * (t / 0.10) ** 2))


def _qrs_kernel(sfreq: float) -> np.ndarray:
    t = np.arange(-0.3, 0.5, 1.0 / sfreq)

    def g(centre: float, width: float) -> np.ndarray:
        return np.exp(-0.5 * ((t - centre) / width) ** 2)

    return -0.12 * g(-0.025, 0.008) + g(0.0, 0.010) - 0.25 * g(0.025, 0.010) + 0.3 * g(0.25, 0.045)


def _line_noise(
    rng: np.random.Generator,
    n_rows: int,
    n: int,
    sfreq: float,
    amplitudes: Sequence[float],
    scale: tuple[float, float],
) -> np.ndarray:
    """Mains at 60 Hz (and harmonics) with a per-channel amplitude and phase.

    Built as (rows x 2H coefficients) @ (2H sines/cosines x time): one matrix product
    instead of a sine per sample per channel.
    """
    t = np.arange(n) / sfreq
    per_channel = rng.uniform(*scale, size=n_rows)
    coefs: list[np.ndarray] = []
    basis: list[np.ndarray] = []
    for k, amp in enumerate(amplitudes, start=1):
        phase = rng.uniform(0, 2 * np.pi, size=n_rows)
        if k * LINE_FREQ < sfreq / 2 - 2.0:
            coefs += [amp * per_channel * np.cos(phase), amp * per_channel * np.sin(phase)]
            basis += [np.sin(2 * np.pi * k * LINE_FREQ * t), np.cos(2 * np.pi * k * LINE_FREQ * t)]
    if not coefs:
        return np.zeros((n_rows, n), dtype=np.float32)
    return (np.stack(coefs, axis=1) @ np.stack(basis)).astype(np.float32)


def eeg_data(
    job: Job, rng: np.random.Generator, n: int, onsets: Sequence[float], labels: Sequence[str]
) -> np.ndarray:
    """Scalp EEG in µV: 1/f background, alpha, mu with ERD, blinks, ECG, mains."""
    subject, sfreq = job.subject, job.recording.sfreq
    n_scalp = len(SCALP)
    pos = np.array([p for p in subject.positions[:n_scalp]], dtype=float)
    x, y = pos[:, 0], pos[:, 1]
    data = np.zeros((n_scalp + 2, n), dtype=np.float32)

    background = _correlated(rng, pos, 0.6, n, sfreq, _aperiodic(1.2, 1.0))
    data[:n_scalp] = background * rng.uniform(10.0, 16.0, size=(n_scalp, 1))

    # Alpha: one posterior generator plus local variation, strongest occipitally.
    alpha_hz, mu_hz = subject.rhythm_hz
    common = shaped_noise(rng, 1, n, sfreq, bump(alpha_hz, 0.7))
    local = shaped_noise(rng, n_scalp, n, sfreq, bump(alpha_hz, 0.7))
    weight = np.clip((0.2 - y) / 1.2, 0.05, 1.0)
    data[:n_scalp] += (
        (18.0 * rng.uniform(0.8, 1.3)) * weight[:, None] * (0.8 * common + 0.6 * local)
    )

    # Mu over C3 and C4, desynchronised by contralateral trials (the class effect).
    mu = shaped_noise(rng, 2, n, sfreq, bump(mu_hz, 0.8))
    left_mask = trial_mask(
        n, sfreq, [o for o, c in zip(onsets, labels, strict=True) if c == "left"]
    )
    right_mask = trial_mask(
        n, sfreq, [o for o, c in zip(onsets, labels, strict=True) if c == "right"]
    )
    for source, (cx, gate) in enumerate(((-0.47, right_mask), (0.47, left_mask))):
        spread = np.exp(-((x - cx) ** 2 + y**2) / (2 * 0.22**2))
        data[:n_scalp] += 11.0 * spread[:, None] * (mu[source] * (1.0 - 0.7 * gate))

    # Blinks: frontal, decaying backwards; the EOG channel sees them largest.
    blinks = _events(rng, n, sfreq, rng.uniform(0.2, 0.33), (60.0, 110.0), _blink_kernel(sfreq))
    data[:n_scalp] += np.exp(-(0.95 - y) / 0.35)[:, None] * blinks
    data[n_scalp + 1] = (
        1.8 * blinks + 15.0 * shaped_noise(rng, 1, n, sfreq, _aperiodic(1.5, 0.5))[0]
    )

    # Heart: a proper ECG channel, and a few µV of it everywhere on the scalp.
    ecg = _events(
        rng, n, sfreq, rng.uniform(1.0, 1.3), (0.9, 1.1), _qrs_kernel(sfreq), regular=True
    )
    data[n_scalp] = 900.0 * ecg + 10.0 * shaped_noise(rng, 1, n, sfreq, _aperiodic(1.0, 1.0))[0]
    data[:n_scalp] += rng.uniform(-2.0, 2.0, size=(n_scalp, 1)) * ecg

    data += _line_noise(rng, n_scalp + 2, n, sfreq, (1.0,), (1.0, 5.0))
    return data


def ieeg_data(
    job: Job, rng: np.random.Generator, n: int, onsets: Sequence[float], labels: Sequence[str]
) -> np.ndarray:
    """iEEG in µV: steep 1/f, theta and beta on some contacts, task high gamma, mains."""
    subject, sfreq = job.subject, job.recording.sfreq
    n_c = len(subject.channels) - 1
    pos = np.array(subject.positions[:n_c], dtype=float)
    data = np.zeros((n_c + 1, n), dtype=np.float32)

    background = _correlated(rng, pos, 10.0, n, sfreq, _aperiodic(2.0, 4.0))
    # Broadband amplitude: after the 0.5 Hz high-pass, most contacts sit well inside
    # the paper's 200 µV iEEG scale, as clinical recordings mostly do.
    data[:n_c] = background * rng.uniform(25.0, 50.0, size=(n_c, 1))
    theta_hz, beta_hz = subject.rhythm_hz
    # Theta on ~40 % of contacts, beta on ~30 %, a little high gamma (70-110 Hz)
    # everywhere: one FFT with a spectrum per contact.
    freqs = _freqs(n, sfreq)
    m = scipy.fft.next_fast_len(n, real=True)
    theta = (rng.random(n_c) < 0.4) * rng.uniform(30.0, 60.0, n_c)
    beta = (rng.random(n_c) < 0.3) * rng.uniform(10.0, 25.0, n_c)
    spectra = (
        theta[:, None] * _unit_gain(bump(theta_hz, 1.0)(freqs), m)
        + beta[:, None] * _unit_gain(bump(beta_hz, 2.0)(freqs), m)
        + 4.0 * _unit_gain(_band(70.0, 110.0)(freqs), m)
    )
    rhythms = shaped_noise(rng, n_c, n, sfreq, spectra)
    data[:n_c] += rhythms * np.sqrt(theta**2 + beta**2 + 16.0)[:, None]

    # Task contacts: high gamma rises to 3.5x in trials of their class.
    task = [
        (cls, name)
        for cls, names in (("left", subject.left_channels), ("right", subject.right_channels))
        for name in names
    ]
    extra = shaped_noise(rng, len(task), n, sfreq, _band(70.0, 110.0))
    masks = {
        cls: trial_mask(n, sfreq, [o for o, c in zip(onsets, labels, strict=True) if c == cls])
        for cls in CLASSES
    }
    for row, (cls, name) in enumerate(task):
        data[subject.channels.index(name)] += 10.0 * masks[cls] * extra[row]

    ecg = _events(
        rng, n, sfreq, rng.uniform(1.0, 1.3), (0.9, 1.1), _qrs_kernel(sfreq), regular=True
    )
    data[n_c] = 900.0 * ecg + 10.0 * shaped_noise(rng, 1, n, sfreq, _aperiodic(1.0, 1.0))[0]
    data[:n_c] += rng.uniform(0.0, 5.0, size=(n_c, 1)) * ecg

    data += _line_noise(rng, n_c + 1, n, sfreq, (10.0, 4.0, 2.0, 1.0), (0.5, 2.0))
    return data


def plant_faults(job: Job, rng: np.random.Generator, data: np.ndarray, rail: float) -> None:
    """Write the planned channel and stretch faults into ``data`` (µV) in place."""
    sfreq, channels = job.recording.sfreq, job.recording.channels
    n = data.shape[1]
    kinds = dict(job.recording.faults)
    duration = n / sfreq
    # Lead-off / paused acquisition near the end (applied last): every channel reads 0.
    usable = duration
    if "dropout" in kinds:
        usable = duration - DROPOUT_SECONDS - float(rng.uniform(2.0, 8.0))
    if "flat_channel" in kinds:
        # A disconnected input: a constant DC level, no signal at all.
        data[channels.index(kinds["flat_channel"])] = round(float(rng.uniform(-40.0, 40.0)), 1)
    if "clipping" in kinds:
        # Electrode pops / movement: slow swings several times the input range that
        # hold the amplifier at its rails for 3-6 s at a time (before any dropout).
        row = channels.index(kinds["clipping"])
        n_bursts = max(2, int(usable // 60))
        slot = usable / n_bursts
        for k in range(n_bursts):
            start = k * slot + float(rng.uniform(1.0, max(1.5, slot - 7.0)))
            length = float(rng.uniform(3.0, 6.0))
            a, b = round(start * sfreq), min(n, round((start + length) * sfreq))
            t = np.arange(b - a) / sfreq
            freq, phase = rng.uniform(0.3, 0.8), rng.uniform(0, 2 * np.pi)
            swing = rng.uniform(2.0, 4.0) * rail * np.sin(2 * np.pi * freq * t + phase)
            data[row, a:b] += swing.astype(np.float32)
    if "dropout" in kinds:
        data[:, round(usable * sfreq) : round((usable + DROPOUT_SECONDS) * sfreq)] = 0.0
