"""Model configuration and the one size registry of the DIVER-1 family (SPEC §2).

Published sizes ``tiny small base large xl xxl`` (d = 256 ... 3072, depth 12, head
dim 32) in both patch variants, plus a ``debug`` ladder (``debug``, ``debug-2x``,
``debug-4x``: widths 64, 128, 256 at depth 2) that trains in seconds on a CPU, so the
embedded default grid can fit a law across sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PATCH_SAMPLES = {"1s": 500, "0.1s": 50}  # at 500 Hz (SPEC §2)

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
    stcpe_fold: str = "mean"  # code: average of overlapping windows; paper Eq. 3: "sum"
    spectral_input: str = "token"  # code: FFT of the CNN token; paper prose: "patch"
    stft_set: str = "code"  # "code": n_fft 200/50; "paper": n_fft 200/100
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
        if self.stcpe_fold not in ("mean", "sum"):
            raise ValueError(f"stcpe_fold must be 'mean' or 'sum', got {self.stcpe_fold!r}")
        if self.spectral_input not in ("token", "patch"):
            raise ValueError(
                f"spectral_input must be 'token' or 'patch', got {self.spectral_input!r}"
            )
        if self.stft_set not in ("code", "paper"):
            raise ValueError(f"stft_set must be 'code' or 'paper', got {self.stft_set!r}")

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
        """max(1, d/256) heads (SPEC §2), so widths below 256 still work."""
        return max(1, self.d_model // 256)

    @property
    def stcpe_ff(self) -> int:
        """STCPE feed-forward width d/2 (SPEC §2)."""
        return self.d_model // 2

    @property
    def cnn_channels(self) -> int:
        """Per-patch CNN width: d/8 for 1 s patches (8 positions), d/16 for 0.1 s (16)."""
        return self.d_model // 8 if self.patch == "1s" else self.d_model // 16

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

# SPEC §2's table: parameters including reconstruction heads (and mask token).
PUBLISHED_PARAMS: dict[tuple[str, str], float] = {
    ("tiny", "0.1s"): 12.72e6,
    ("tiny", "1s"): 13.03e6,
    ("small", "0.1s"): 50.75e6,
    ("small", "1s"): 51.36e6,
    ("base", "0.1s"): 114.07e6,
    ("base", "1s"): 115.00e6,
    ("large", "0.1s"): 202.70e6,
    ("large", "1s"): 203.95e6,
    ("xl", "0.1s"): 810.19e6,
    ("xl", "1s"): 812.85e6,
    ("xxl", "0.1s"): 1.82e9,
    ("xxl", "1s"): 1.83e9,
}
TINY_1S_ENCODER_PARAMS = 12.67e6  # SPEC §2: encoder-only Tiny-1s


def model_config(size: str, patch: str = "1s", **overrides: object) -> ModelConfig:
    """The registered configuration of ``size`` with ``patch``; keyword overrides allowed."""
    try:
        dims = SIZES[size]
    except KeyError:
        raise ValueError(f"unknown model size {size!r}; sizes: {', '.join(SIZES)}") from None
    return replace(ModelConfig(**dims, patch=patch), **overrides)  # type: ignore[arg-type]
