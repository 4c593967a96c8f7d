"""Reconstruction targets (SPEC §2, "Heads") against sizes from the paper and numpy.

The numpy references are written independently of the module: a plain per-frame loop,
``np.fft.rfft`` and a periodic Hann window built from its formula.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diver.model.targets import STFT_SETS, TargetSpec, compute_targets

SFREQ = 500.0
TOL = 1e-5
SINE_ATOL = 5e-5
"""Absolute tolerance against float64 numpy for pure sinusoids.  The module works in
float32; a unit sinusoid puts |X| = 250 in one bin, and float32 FFT rounding (about
1e-7 of that) leaves up to ~3e-5 in the near-zero bins beside it (measured over a
0..250 Hz sweep).  Noise inputs, with no such dynamic range, hold ``TOL``."""
CODE_1S = TargetSpec(patch_samples=500)
PAPER_1S = TargetSpec(patch_samples=500, stft_set="paper")
CODE_01S = TargetSpec(patch_samples=50)
MAGNITUDE_1S = TargetSpec(patch_samples=500, spectrum="magnitude")


def periodic_hann(n: int) -> np.ndarray:
    return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)


def amplitude(spectrum: np.ndarray, kind: str) -> np.ndarray:
    """log1p of |Re X| (the authors' code casts complex to real) or of |X|."""
    return np.log1p(np.abs(spectrum.real if kind == "real-part" else spectrum))


def numpy_fft_target(x: np.ndarray, kind: str = "real-part") -> np.ndarray:
    return amplitude(np.fft.rfft(x, n=500)[:200], kind)  # bins below 200 Hz


def numpy_stft(x: np.ndarray, n_fft: int, hop: int, kind: str = "real-part") -> np.ndarray:
    """(bins below 200 Hz, frames): center=False, periodic Hann, normalized (/ sqrt n_fft)."""
    bins = int(200 // (SFREQ / n_fft))
    frames = [x[start : start + n_fft] for start in range(0, len(x) - n_fft + 1, hop)]
    spectra = np.stack([np.fft.rfft(f * periodic_hann(n_fft))[:bins] for f in frames], axis=-1)
    return amplitude(spectra / np.sqrt(n_fft), kind)


def numpy_stft_target(x: np.ndarray, stft_set: str, kind: str = "real-part") -> np.ndarray:
    """Set by set, frequency-major (the code's flattening of torch.stft's (bins, frames))."""
    return np.concatenate(
        [numpy_stft(x, n_fft, hop, kind).ravel() for n_fft, hop in STFT_SETS[stft_set]]
    )


def sinusoid(freq: float, n: int = 500, phase: float = 0.3) -> np.ndarray:
    """A sinusoid rounded to float32 (the module's dtype), held in float64 for numpy."""
    x = np.sin(2 * np.pi * freq * np.arange(n) / SFREQ + phase)
    return x.astype(np.float32).astype(np.float64)


def split_stft(stft: torch.Tensor, spec: TargetSpec) -> list[np.ndarray]:
    """Undo the documented set-by-set, frequency-major flattening: (..., bins, frames)."""
    parts, offset = [], 0
    for window in spec.stft_layout:
        chunk = stft[..., offset : offset + window.size]
        parts.append(chunk.reshape(*stft.shape[:-1], window.bins, window.frames).numpy())
        offset += window.size
    assert offset == stft.shape[-1]
    return parts


# --- sizes (SPEC §2 parameter check) ------------------------------------------------


def test_code_set_1s_sizes_total_1400() -> None:
    assert CODE_1S.sizes == {"time": 500, "fft": 200, "stft": 4 * 80 + 19 * 20}
    assert sum(CODE_1S.sizes.values()) == 1400  # SPEC §2: 500 + 200 + 700
    assert [(w.n_fft, w.hop, w.frames, w.bins) for w in CODE_1S.stft_layout] == [
        (200, 100, 4, 80),
        (50, 25, 19, 20),
    ]
    assert MAGNITUDE_1S.sizes == CODE_1S.sizes


def test_01s_sizes_total_250_without_stft() -> None:
    assert CODE_01S.sizes == {"time": 50, "fft": 200}
    assert sum(CODE_01S.sizes.values()) == 250
    assert not CODE_01S.has_stft
    assert TargetSpec(patch_samples=50, stft_set="paper").sizes == {"time": 50, "fft": 200}


def test_paper_set_1s_sizes() -> None:
    # n_fft 200/hop 100: 4 frames x 80 bins (2.5 Hz); n_fft 100/hop 50: 9 frames x 40 (5 Hz).
    assert [(w.n_fft, w.hop, w.frames, w.bins) for w in PAPER_1S.stft_layout] == [
        (200, 100, 4, 80),
        (100, 50, 9, 40),
    ]
    assert PAPER_1S.sizes == {"time": 500, "fft": 200, "stft": 320 + 360}


@pytest.mark.parametrize("spec", [CODE_1S, PAPER_1S, CODE_01S, MAGNITUDE_1S])
def test_output_shapes_match_sizes(spec: TargetSpec) -> None:
    out = compute_targets(torch.randn(3, spec.patch_samples), spec)
    assert {k: v.shape for k, v in out.items()} == {
        k: torch.Size([3, n]) for k, n in spec.sizes.items()
    }


def test_invalid_specs_and_inputs_rejected() -> None:
    with pytest.raises(ValueError, match="stft_set"):
        TargetSpec(patch_samples=500, stft_set="other")
    with pytest.raises(ValueError, match="spectrum"):
        TargetSpec(patch_samples=500, spectrum="power")
    with pytest.raises(ValueError, match="patch_samples"):
        TargetSpec(patch_samples=501)
    with pytest.raises(ValueError, match="end in 500"):
        compute_targets(torch.zeros(2, 499), CODE_1S)
    with pytest.raises(TypeError, match="floating-point"):
        compute_targets(torch.zeros(2, 500, dtype=torch.int64), CODE_1S)


# --- hand-computed values -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["real-part", "magnitude"])
@pytest.mark.parametrize("freq", [10.0, 37.5, 120.0, 197.5])
def test_sinusoid_values_match_numpy(freq: float, kind: str) -> None:
    x = sinusoid(freq)
    spec = TargetSpec(patch_samples=500, spectrum=kind)
    out = compute_targets(torch.tensor(x, dtype=torch.float32), spec)
    np.testing.assert_allclose(out["fft"].numpy(), numpy_fft_target(x, kind), atol=SINE_ATOL)
    stft_200, stft_50 = split_stft(out["stft"], spec)
    np.testing.assert_allclose(stft_200, numpy_stft(x, 200, 100, kind), atol=SINE_ATOL)
    np.testing.assert_allclose(stft_50, numpy_stft(x, 50, 25, kind), atol=SINE_ATOL)
    if kind == "magnitude":
        # 1 Hz bins: the peak sits at index == frequency (37.5 Hz falls between 37 and 38);
        # every STFT frame at freq / 2.5 (n_fft 200) and freq / 10 (n_fft 50).
        assert int(np.argmax(out["fft"].numpy())) in {math.floor(freq), math.ceil(freq)}
        peaks_200 = np.argmax(stft_200, axis=0)
        assert set(peaks_200.tolist()) <= {math.floor(freq / 2.5), math.ceil(freq / 2.5)}
        assert set(np.argmax(stft_50, axis=0).tolist()) <= {
            math.floor(freq / 10),
            math.ceil(freq / 10),
        }


def test_real_part_is_not_the_magnitude() -> None:
    """The code's target keeps Re X: a sine of phase 0.3 at a whole bin has |Re X| =
    N/2 sin(0.3), a cosine N/2 (SPEC §2: "casts the complex spectrum to the real dtype")."""
    sine = compute_targets(torch.tensor(sinusoid(40.0), dtype=torch.float32), CODE_1S)["fft"]
    cosine = sinusoid(40.0, phase=math.pi / 2)
    cos_out = compute_targets(torch.tensor(cosine, dtype=torch.float32), CODE_1S)["fft"]
    assert float(sine[40]) == pytest.approx(math.log1p(250 * math.sin(0.3)), rel=1e-4)
    assert float(cos_out[40]) == pytest.approx(math.log1p(250), rel=1e-4)
    magnitude = compute_targets(torch.tensor(sinusoid(40.0), dtype=torch.float32), MAGNITUDE_1S)
    assert float(magnitude["fft"][40]) == pytest.approx(math.log1p(250), rel=1e-4)


def test_paper_set_matches_numpy() -> None:
    x = sinusoid(40.0) + 0.5 * sinusoid(85.0, phase=1.1)
    out = compute_targets(torch.tensor(x, dtype=torch.float32), PAPER_1S)
    np.testing.assert_allclose(
        out["stft"].numpy(), numpy_stft_target(x, "paper"), rtol=TOL, atol=SINE_ATOL
    )


def test_stft_agrees_with_torch_stft_convention() -> None:
    """Same numbers as torch.stft (periodic Hann, center=False, normalized) flattened
    frequency-major, of the spectrum's real part."""
    x = torch.randn(6, 500)
    ours = split_stft(compute_targets(x, CODE_1S)["stft"], CODE_1S)
    for (n_fft, hop), part in zip(STFT_SETS["code"], ours, strict=True):
        ref = torch.stft(
            x,
            n_fft=n_fft,
            hop_length=hop,
            window=torch.hann_window(n_fft),
            center=False,
            normalized=True,
            return_complex=True,
        )  # (batch, freq, frames)
        bins = part.shape[1]
        expected = torch.log1p(ref.real.abs()[:, :bins, :]).numpy()
        np.testing.assert_allclose(part, expected, rtol=TOL, atol=TOL)


def test_01s_patch_zero_padded_to_500() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 50)).astype(np.float32).astype(np.float64)
    out = compute_targets(torch.tensor(x, dtype=torch.float32), CODE_01S)
    np.testing.assert_allclose(
        out["fft"].numpy(),
        np.stack([numpy_fft_target(row) for row in x]),
        rtol=TOL,
        atol=TOL,
    )
    np.testing.assert_array_equal(out["time"].numpy(), x.astype(np.float32))
    assert "stft" not in out


def test_frequencies_from_200_hz_excluded() -> None:
    # 230 Hz (below Nyquist, so no aliasing) is 230 whole cycles per 500 samples, 92
    # per 200 and 23 per 50: its energy lands in bins 230, 92 and 23 (+-1 for Hann),
    # all beyond the kept ranges 0..199, 0..79 and 0..19 (bins *below* 200 Hz).
    high = compute_targets(torch.tensor(sinusoid(230.0), dtype=torch.float32), MAGNITUDE_1S)
    kept = compute_targets(torch.tensor(sinusoid(190.0), dtype=torch.float32), MAGNITUDE_1S)
    assert float(high["fft"].max()) < 1e-3
    assert float(high["stft"].max()) < 1e-3
    assert float(kept["fft"].max()) > 5.0  # log1p(250)
    assert float(kept["stft"].max()) > 1.4  # log1p(200 / 4 / sqrt(200)): Hann, normalized
    # 200 Hz itself is the first bin left out
    edge = compute_targets(torch.tensor(sinusoid(200.0), dtype=torch.float32), MAGNITUDE_1S)
    assert float(edge["fft"].max()) < 1e-3


# --- batching -----------------------------------------------------------------------


@pytest.mark.parametrize("spec", [CODE_1S, PAPER_1S, CODE_01S, MAGNITUDE_1S])
def test_leading_dims_equal_per_token(spec: TargetSpec) -> None:
    patches = torch.randn(2, 3, 4, spec.patch_samples)
    batched = compute_targets(patches, spec)
    for key, value in batched.items():
        assert value.shape == (2, 3, 4, spec.sizes[key])
        assert value.dtype == torch.float32
    for b, c, n in np.ndindex(2, 3, 4):
        single = compute_targets(patches[b, c, n], spec)
        for key, value in single.items():
            torch.testing.assert_close(batched[key][b, c, n], value, rtol=1e-6, atol=1e-6)


def test_targets_detached_and_float32() -> None:
    patches = torch.randn(2, 500, dtype=torch.float64, requires_grad=True)
    out = compute_targets(patches, CODE_1S)
    for value in out.values():
        assert value.dtype == torch.float32
        assert not value.requires_grad
    out["time"].zero_()  # the time target is a copy, not a view of the input
    assert bool(patches.detach().abs().sum() > 0)
