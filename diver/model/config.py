"""Model configuration and the one size registry of the DIVER-1 family (SPEC §2).

Published sizes ``tiny small base large xl xxl`` (d = 256 ... 3072, depth 12, head
dim 32) in both patch variants, plus a ``debug`` ladder (``debug``, ``debug-2x``,
``debug-4x``: widths 64, 128, 256 at depth 2) that trains in seconds on a CPU, so the
embedded default grid can fit a law across sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

PATCH_SAMPLES = {"1s": 500, "0.1s": 50}  # at 500 Hz (SPEC §2)

MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "spectral_input": ("token", "patch"),
    "spectral_norm": ("forward", "ortho"),
    "stcpe_fold": ("mean", "sum"),
    "stft_set": ("code", "paper"),
    "target_spectrum": ("real-part", "magnitude"),
}
"""The :class:`ModelConfig` fields where the paper's prose and the authors' code differ
(SPEC §2), with their allowed values: a study's ``model`` section sets them for every
cell (README table)."""

NORM_EPS = 1e-5
"""RMSNorm (and QK-norm) epsilon of the authors' code everywhere (SPEC §2); torch's
``nn.RMSNorm`` default would be float32's machine epsilon."""

# Loss weights (time, FFT, STFT) per patch variant (SPEC §2).
LOSS_WEIGHTS = {"1s": (1.0, 0.1, 1.0), "0.1s": (1.0, 1.0, 0.0)}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a DIVER-1 model; frozen so it can key caches and checkpoints."""

    d_model: int
    depth: int = 12
    head_dim: int = 32
    patch: str = "1s"
    ffn_mult: int = 4
    dropout: float = 0.1
    spectral_dropout: float = 0.1
    stcpe_window: int = 7
    # Where the paper's prose and the authors' code differ (SPEC §2), the code is the
    # default and the prose an option (MODEL_OPTIONS; the README's model section lists them).
    stcpe_fold: str = "mean"  # code: overlapping windows summed / w; paper Eq. 3: "sum"
    spectral_input: str = "token"  # code: FFT of the CNN token; paper prose: "patch"
    spectral_norm: str = "forward"  # code: rFFT / n; "ortho": rFFT / sqrt(n) (width-stable)
    stft_set: str = "code"  # "code": n_fft 200/50; "paper": n_fft 200/100
    target_spectrum: str = "real-part"  # code: |Re X| (complex cast to real); paper: |X|
    mask_prob: float = 0.5
    position_temperature: float = 2000.0
    use_position: bool = True  # MNI position embedding (off: an ablation, and channel tests)
    max_channels: int = 32
    max_patches: int = 30

    def __post_init__(self) -> None:
        if self.patch not in PATCH_SAMPLES:
            raise ValueError(f"patch must be one of {sorted(PATCH_SAMPLES)}, got {self.patch!r}")
        if self.d_model % self.head_dim or self.d_model % 16:
            raise ValueError(
                f"d_model={self.d_model} must be a multiple of head_dim={self.head_dim} and of 16"
            )
        for name, allowed in MODEL_OPTIONS.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} must be one of {', '.join(map(repr, allowed))}, "
                    f"got {getattr(self, name)!r}"
                )

    @property
    def patch_samples(self) -> int:
        return PATCH_SAMPLES[self.patch]

    @property
    def n_heads(self) -> int:
        return self.d_model // self.head_dim

    @property
    def d_ff(self) -> int:
        return self.ffn_mult * self.d_model

    @property
    def stcpe_dim(self) -> int:
        """STCPE bottleneck width d/8 (SPEC §2)."""
        return self.d_model // 8

    @property
    def stcpe_heads(self) -> int:
        """(d/8)/32 = d/256 heads (SPEC §2; the code's head width 32), at least one, so
        the debug widths below 256 still work."""
        return max(1, self.d_model // 256)

    @property
    def stcpe_ff(self) -> int:
        """STCPE feed-forward width d/2 (SPEC §2)."""
        return self.d_model // 2

    @property
    def cnn_positions(self) -> int:
        """Output positions of the patch CNN: 8 for 1 s patches, 16 for 0.1 s (SPEC §2)."""
        return 8 if self.patch == "1s" else 16

    @property
    def cnn_channels(self) -> int:
        """Per-patch CNN width: d/8 for 1 s patches, d/16 for 0.1 s, so positions x
        width = d."""
        return self.d_model // self.cnn_positions

    @property
    def cnn_groups(self) -> int:
        """GroupNorm groups of the patch CNN: one per output position in the code (8 for
        1 s, 16 for 0.1 s, SPEC §2).  The debug widths have fewer CNN channels than that
        at 0.1 s (d = 64: 4); they take the largest count that divides the width."""
        return math.gcd(self.cnn_positions, self.cnn_channels)

    @property
    def loss_weights(self) -> tuple[float, float, float]:
        return LOSS_WEIGHTS[self.patch]


# Width and depth per size; everything else follows from ModelConfig's defaults.
SIZES: dict[str, dict[str, int]] = {
    "debug": {"d_model": 64, "depth": 2},
    "debug-2x": {"d_model": 128, "depth": 2},
    "debug-4x": {"d_model": 256, "depth": 2},
    "tiny": {"d_model": 256, "depth": 12},
    "small": {"d_model": 512, "depth": 12},
    "base": {"d_model": 768, "depth": 12},
    "large": {"d_model": 1024, "depth": 12},
    "xl": {"d_model": 2048, "depth": 12},
    "xxl": {"d_model": 3072, "depth": 12},
}
PUBLISHED_SIZES = ("tiny", "small", "base", "large", "xl", "xxl")

# SPEC §2's table: parameters including reconstruction heads and the mask token, the
# exact totals of the authors' code (the paper's Table 2 rounds these).
PUBLISHED_PARAMS: dict[tuple[str, str], int] = {
    ("tiny", "0.1s"): 12_724_846,
    ("tiny", "1s"): 13_026_606,
    ("small", "0.1s"): 50_748_528,
    ("small", "1s"): 51_359_664,
    ("base", "0.1s"): 114_072_178,
    ("base", "1s"): 115_001_906,
    ("large", "0.1s"): 202_695_796,
    ("large", "1s"): 203_953_332,
    ("xl", "0.1s"): 810_189_948,
    ("xl", "1s"): 812_850_876,
    ("xxl", "0.1s"): 1_822_483_588,
    ("xxl", "1s"): 1_826_695_364,
}
TINY_1S_ENCODER_PARAMS = 12_666_306  # SPEC §2: encoder-only Tiny-1s (authors' code)


def model_config(size: str, patch: str = "1s", **overrides: object) -> ModelConfig:
    """The registered configuration of ``size`` with ``patch``; keyword overrides allowed."""
    try:
        dims = SIZES[size]
    except KeyError:
        raise ValueError(f"unknown model size {size!r}; sizes: {', '.join(SIZES)}") from None
    return replace(ModelConfig(**dims, patch=patch), **overrides)  # type: ignore[arg-type]
