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
from diver.model.inputs import EncoderInputs

TYPE_EEG, TYPE_SEEG, TYPE_ECOG = 1, 2, 3
SUBTYPE_FIRST = 2  # grid; strip = 3, depth = 4


def _group_norm_over_tokens(
    x: torch.Tensor, norm: nn.GroupNorm, valid: torch.Tensor | None
) -> torch.Tensor:
    """GroupNorm of CNN features ``x`` (B, h, T, L) with statistics pooled over each
    sample's T tokens (the code's layout: a sample's C x N patches are one image),
    counting only ``valid`` (B, T) tokens (None: every token), so padding never shifts
    a real token."""
    if valid is None:
        return norm(x)
    b, h, t, length = x.shape
    g = norm.num_groups
    weight = valid.to(x.dtype)[:, None, None, :, None]  # (B, 1, 1, T, 1)
    grouped = x.view(b, g, h // g, t, length)
    count = weight.sum(dim=(2, 3, 4), keepdim=True) * (h // g) * length
    mean = (grouped * weight).sum(dim=(2, 3, 4), keepdim=True) / count
    var = ((grouped - mean) ** 2 * weight).sum(dim=(2, 3, 4), keepdim=True) / count
    out = ((grouped - mean) * torch.rsqrt(var + norm.eps)).view(b, h, t, length)
    return out * norm.weight[:, None, None] + norm.bias[:, None, None]


class PatchCNN(nn.Module):
    """Per-patch 3-layer CNN (SPEC §2), flattened to d.

    1 s: pad 6 + 6 to 512 samples, Conv(k 63, stride 64, pad 31) to d/8 channels -> 8
    positions; 0.1 s: pad 7 + 7 to 64, Conv(k 63, stride 4, pad 31) to d/16 -> 16
    positions.  Each conv is followed by GroupNorm (one group per output position: 8 or
    16) and GELU; two more Conv(k 3) layers keep the shape.  As in the authors' code, a
    sample's C x N patches form one image of height C N (the convolutions run along the
    patch only), so GroupNorm's statistics pool over all of the sample's patches; the
    weights have the code's Conv2d shapes (h, 1, 1, k), so its checkpoints load as they are.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        h, groups = config.cnn_channels, config.cnn_groups
        self.pad = 6 if config.patch == "1s" else 7
        stride = (config.patch_samples + 2 * self.pad) // config.cnn_positions
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(1, h, (1, 63), stride=(1, stride), padding=(0, 31)),
                nn.Conv2d(h, h, (1, 3), padding=(0, 1)),
                nn.Conv2d(h, h, (1, 3), padding=(0, 1)),
            ]
        )
        self.norms = nn.ModuleList(nn.GroupNorm(groups, h) for _ in range(3))
        self.d_model = config.d_model

    def forward(self, patches: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``patches`` (B, C, N, P), ``valid`` (B, C, N) bool or None -> (B, C, N, d)."""
        b, c, n, _ = patches.shape
        x = F.pad(patches.reshape(b, 1, c * n, -1), (self.pad, self.pad))
        # A batch without padding takes torch's GroupNorm (decided once per forward: the
        # check synchronises with the device).
        flat_valid = None if valid is None or bool(valid.all()) else valid.reshape(b, c * n)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.gelu(_group_norm_over_tokens(conv(x), norm, flat_valid))
        # (B, h, C N, L) -> (B, C, N, h L): channel-major, as the code flattens
        return x.permute(0, 2, 1, 3).reshape(b, c, n, self.d_model)


class SpectralEmbedding(nn.Module):
    """|rFFT| -> Linear -> Dropout (SPEC §2), of the CNN token (code) or the raw patch (paper).

    The code's rFFT is ``norm="forward"`` (divided by n): coordinates of order
    1/sqrt(n), so at a fixed width the scale is absorbed by the Linear, but E_spectral
    shrinks as 1/sqrt(d) with width (tests/test_mup.py measures it).  ``spectral_norm =
    "ortho"`` (divided by sqrt(n), Parseval: same RMS in and out) keeps it width-flat;
    a checkpoint ports between the two by scaling the Linear's weight by 1/sqrt(n).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        n = config.d_model if config.spectral_input == "token" else config.patch_samples
        self.norm = config.spectral_norm
        self.proj = nn.Linear(n // 2 + 1, config.d_model)
        self.drop = nn.Dropout(config.spectral_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        magnitude = torch.fft.rfft(x.float(), dim=-1, norm=self.norm).abs().to(x.dtype)
        return self.drop(self.proj(magnitude))


def sinusoidal_position(coords_mm: torch.Tensor, dim: int, temperature: float) -> torch.Tensor:
    """PopT-style encoding of MNI x, y, z in mm: ``dim`` values (dim/3 per axis, even).

    Each axis is scaled by 2 pi / 256 and encoded at frequencies
    ``temperature ** (-2i / (dim/3))``, sin and cos interleaved per frequency
    (``sin f0, cos f0, sin f1, ...``) as in the authors' code; axes x, y, z follow each
    other, zeros pad to ``dim``.  A channel with any NaN coordinate gets zeros.
    """
    per_axis = dim // 3 // 2 * 2
    half = per_axis // 2
    freqs = temperature ** (
        -2 * torch.arange(half, device=coords_mm.device, dtype=torch.float32) / per_axis
    )
    known = torch.isfinite(coords_mm).all(dim=-1, keepdim=True)
    scaled = torch.nan_to_num(coords_mm.float()) * (2 * math.pi / 256)
    angles = scaled[..., None] * freqs  # (..., 3, half)
    enc = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-3)  # (..., 3 * per_axis)
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

    def forward(self, inputs: EncoderInputs, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``inputs.patches`` (B, C, N, P) (masked ones already zero) -> tokens (B, C, N, d).

        ``valid`` (B, C, N) marks real tokens (None: all), the ones the CNN's GroupNorm
        pools its statistics over.
        """
        patches = inputs.patches
        tokens = self.cnn(patches, valid)
        source = tokens if self.config.spectral_input == "token" else patches
        tokens = tokens + self.spectral(source)
        position = sinusoidal_position(
            inputs.coords_mm, self.position_dim, self.config.position_temperature
        )
        if not self.config.use_position:
            position = torch.zeros_like(position)
        modality = self.modality(inputs.type_ids, inputs.subtype_ids)
        channel = torch.cat([position.to(tokens.dtype), modality], -1)
        return tokens + channel[:, :, None, :]
