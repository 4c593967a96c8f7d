"""Token embedding of DIVER-1 (SPEC §2): Y_CNN + E_spectral + [E_position, E_modality].

One token per (channel, patch).  The CNN and spectral parts see the patch; the
position (3/4 of d) and modality (1/4 of d) parts are per channel and broadcast over
the patches.  Unknown coordinates (NaN) and unknown subtypes give zero vectors.

Channel-id conventions shared with ``diver.data`` (a test checks they agree):
type ids 0 pad, 1 eeg, 2 seeg, 3 ecog, 4 other; subtype ids 0 pad, 1 none, 2 grid,
3 strip, 4 depth.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diver.model.config import ModelConfig

TYPE_EEG, TYPE_SEEG, TYPE_ECOG = 1, 2, 3
SUBTYPE_FIRST = 2  # grid; strip = 3, depth = 4


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(4 if channels % 4 == 0 else 1, channels)


class PatchCNN(nn.Module):
    """Per-patch 3-layer CNN (SPEC §2), flattened to d.

    1 s: pad 6 + 6 to 512 samples, Conv(k 63, stride 64, pad 31) to d/8 channels
    -> 8 positions; 0.1 s: pad 7 + 7 to 64, Conv(k 7, stride 4, pad 3) to d/16 -> 16
    positions (the kernel of the 0.1 s variant is not given by the paper; 7 keeps the
    same overlap ratio as the 1 s layer).  Each conv is followed by GroupNorm and GELU;
    two more Conv(k 3) layers keep the shape.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        h = config.cnn_channels
        if config.patch == "1s":
            self.pad, kernel, stride = 6, 63, 64
        else:
            self.pad, kernel, stride = 7, 7, 4
        self.layers = nn.Sequential(
            nn.Conv1d(1, h, kernel, stride=stride, padding=kernel // 2),
            _group_norm(h),
            nn.GELU(),
            nn.Conv1d(h, h, 3, padding=1),
            _group_norm(h),
            nn.GELU(),
            nn.Conv1d(h, h, 3, padding=1),
            _group_norm(h),
            nn.GELU(),
        )
        self.d_model = config.d_model

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``patches`` (..., P) -> (..., d)."""
        lead = patches.shape[:-1]
        x = F.pad(patches.reshape(-1, 1, patches.shape[-1]), (self.pad, self.pad))
        return self.layers(x).reshape(*lead, self.d_model)


class SpectralEmbedding(nn.Module):
    """|rFFT| -> Linear -> Dropout (SPEC §2), of the CNN token (code) or the raw patch (paper).

    The rFFT is orthonormal (``norm="ortho"``, Parseval: same RMS in and out).  Unnormalised,
    the |rFFT| of the d-wide CNN token has coordinates of order sqrt(d) (its DC bin of
    order d), so E_spectral - and with it every token - grew as sqrt(d) with width,
    against muP's O(1) activations (tests/test_mup.py's coordinate check); at a fixed
    width the scale is a constant absorbed by the Linear.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        n = config.d_model if config.spectral_input == "token" else config.patch_samples
        self.proj = nn.Linear(n // 2 + 1, config.d_model)
        self.drop = nn.Dropout(config.spectral_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(torch.fft.rfft(x, dim=-1, norm="ortho").abs()))


def sinusoidal_position(coords_mm: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    """PopT-style encoding of MNI x, y, z in mm: ``dim`` values (dim/3 per axis).

    Each axis is scaled by 2 pi / 256 and encoded with sin/cos at frequencies
    ``temperature ** (-2i / (dim/3))``; a channel with any NaN coordinate gets zeros.
    """
    per_axis = dim // 3
    half = per_axis // 2
    freqs = temperature ** (
        -torch.arange(half, device=coords_mm.device, dtype=torch.float32) / half
    )
    known = torch.isfinite(coords_mm).all(dim=-1, keepdim=True)
    scaled = torch.nan_to_num(coords_mm.float()) * (2 * math.pi / 256)
    angles = scaled[..., None] * freqs  # (..., 3, half)
    enc = torch.cat([angles.sin(), angles.cos()], dim=-1).flatten(-2)  # (..., 3 * per_axis)
    enc = F.pad(enc, (0, dim - enc.shape[-1]))
    return enc * known


class ModalityEmbedding(nn.Module):
    """Learned type (EEG / iEEG) plus learned iEEG subtype (grid / strip / depth), d/4 wide."""

    def __init__(self, dim: int):
        super().__init__()
        self.type_embedding = nn.Embedding(2, dim)
        self.subtype_embedding = nn.Embedding(3, dim)

    def forward(self, type_ids: torch.Tensor, subtype_ids: torch.Tensor) -> torch.Tensor:
        is_ieeg = (type_ids == TYPE_SEEG) | (type_ids == TYPE_ECOG)
        known_type = (type_ids == TYPE_EEG) | is_ieeg
        out = self.type_embedding(is_ieeg.long()) * known_type[..., None]
        sub = subtype_ids - SUBTYPE_FIRST
        known_sub = (sub >= 0) & (sub < 3)
        return out + self.subtype_embedding(sub.clamp(0, 2)) * known_sub[..., None]


class TokenEmbedding(nn.Module):
    """Y_CNN + E_spectral + [E_position (3/4 d), E_modality (d/4)] for every token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.cnn = PatchCNN(config)
        self.spectral = SpectralEmbedding(config)
        self.position_dim = 3 * config.d_model // 4
        self.modality = ModalityEmbedding(config.d_model - self.position_dim)

    def forward(
        self,
        patches: torch.Tensor,
        coords_mm: torch.Tensor,
        type_ids: torch.Tensor,
        subtype_ids: torch.Tensor,
    ) -> torch.Tensor:
        """``patches`` (B, C, N, P) (masked ones already zero) -> tokens (B, C, N, d)."""
        tokens = self.cnn(patches)
        source = tokens if self.config.spectral_input == "token" else patches
        tokens = tokens + self.spectral(source)
        position = sinusoidal_position(
            coords_mm, self.position_dim, self.config.position_temperature
        )
        if not self.config.use_position:
            position = torch.zeros_like(position)
        channel = torch.cat([position.to(tokens.dtype), self.modality(type_ids, subtype_ids)], -1)
        return tokens + channel[:, :, None, :]
