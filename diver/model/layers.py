"""Transformer parts of DIVER-1 (SPEC §2): RMSNorm, SwiGLU, RoPE, any-variate attention.

Any-variate attention (MOIRAI) scores a query/key pair as
``q_i^T R_(i-j) k_j + u1 [same channel] + u2 [different channel]``: rotary position
on the *patch* index only (adjacent coordinates rotated as pairs, as in the authors'
code), and a learned binary bias per head and layer for whether the two tokens share a
channel.  Channels get no identity of their own, so the layer
is equivariant to any permutation of the channels and accepts any channel count.
Scores are scaled by 1/d_head (muP, SPEC §2), not 1/sqrt(d_head).  Every RMSNorm has
the code's epsilon 1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diver.model.config import NORM_EPS


def rms_norm(dim: int) -> nn.RMSNorm:
    """RMSNorm with a gain and the code's epsilon (SPEC §2)."""
    return nn.RMSNorm(dim, eps=NORM_EPS)


class SwiGLU(nn.Module):
    """Gated feed-forward ``W2 drop(silu(W1 x) * W3 x)`` without biases.

    ``w1`` is the gate (the code's ``fc_gate``), ``w3`` the linear branch (``fc1``),
    ``w2`` the output (``fc2``); the code drops out the gated hidden units too.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.drop(F.silu(self.w1(x)) * self.w3(x)))


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate adjacent pairs ``(x[2i], x[2i+1])`` of ``x`` (..., T, D) by the angle
    ``positions * base**(-2i/D)`` (``positions`` (..., T)): RoPE with interleaved pairs,
    as the authors' code (MOIRAI's) rotates them."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"rotary needs an even width, got {d}")
    freqs = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = positions.to(torch.float32)[..., None] * freqs  # (..., T, D/2)
    cos, sin = angles.cos(), angles.sin()
    pairs = x.float().unflatten(-1, (d // 2, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(-2).to(x.dtype)


class AnyVariateAttention(nn.Module):
    """Multi-head self-attention over channel x patch tokens (see the module docstring)."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.q_norm = rms_norm(self.head_dim)
        self.k_norm = rms_norm(self.head_dim)
        # [cross-channel, same-channel] bias per head (u2, u1 of SPEC §2; the code's order)
        self.channel_bias = nn.Parameter(torch.zeros(2, n_heads))
        self.dropout = dropout

    def forward(
        self,
        x: torch.Tensor,
        patch_pos: torch.Tensor,
        channel_id: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        """``x`` (B, T, dim); ``patch_pos``/``channel_id`` (B, T) ints; ``valid`` (B, T) bool."""
        b, t, dim = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).unbind(dim=2)
        q = rotary(self.q_norm(q).transpose(1, 2), patch_pos[:, None, :])
        k = rotary(self.k_norm(k).transpose(1, 2), patch_pos[:, None, :])
        v = v.transpose(1, 2)
        same = channel_id[:, :, None] == channel_id[:, None, :]  # (B, T, T)
        u_cross, u_same = self.channel_bias[0], self.channel_bias[1]
        bias = torch.where(same[:, None], u_same[None, :, None, None], u_cross[None, :, None, None])
        bias = bias.masked_fill(~valid[:, None, None, :], float("-inf")).to(q.dtype)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias,
            dropout_p=self.dropout if self.training else 0.0,
            scale=1.0 / self.head_dim,  # muP: 1/d_head (SPEC §2)
        )
        return self.out(y.transpose(1, 2).reshape(b, t, dim))


class Block(nn.Module):
    """Pre-norm transformer block: any-variate attention and SwiGLU, RMSNorm, no biases."""

    def __init__(self, dim: int, n_heads: int, ffn_hidden: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = rms_norm(dim)
        self.attn = AnyVariateAttention(dim, n_heads, dropout=dropout)
        self.norm2 = rms_norm(dim)
        self.ffn = SwiGLU(dim, ffn_hidden, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        patch_pos: torch.Tensor,
        channel_id: torch.Tensor,
        valid: torch.Tensor,
    ) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), patch_pos, channel_id, valid))
        return x + self.drop(self.ffn(self.norm2(x)))
