"""Spatio-temporal conditional positional encoding, STCPE (SPEC §2).

Tokens are projected to a d/8 bottleneck; a temporal window of w = 7 patches slides
(stride 1) over the patches of *all* channels; inside each window a one-layer
any-variate transformer (d/8 wide, max(1, d/256) heads, SwiGLU d/2) mixes the C x w
tokens; each token's outputs from the windows that contain it are folded back (the
authors' code averages them, the paper's Eq. 3 sums them) and projected back to d.
No absolute position enters, so the encoding is translation-equivariant in time and
permutation-equivariant across channels.

Padding never changes a sample's result: a window counts for a sample only when it
lies inside that sample's patches (or, for a sample shorter than w, is its first
window), exactly the windows the sample would have on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from diver.model.config import ModelConfig
from diver.model.layers import Block


class STCPE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        e = config.stcpe_dim
        self.window = config.stcpe_window
        self.fold = config.stcpe_fold
        self.proj_in = nn.Linear(config.d_model, e)
        self.block = Block(e, config.stcpe_heads, config.stcpe_ff, dropout=config.dropout)
        self.proj_out = nn.Linear(e, config.d_model)

    def forward(
        self, x: torch.Tensor, channel_mask: torch.Tensor, patch_mask: torch.Tensor
    ) -> torch.Tensor:
        """``x`` (B, C, N, d); masks (B, C) and (B, N) bool -> encoding (B, C, N, d)."""
        b, c, n, _ = x.shape
        w = min(self.window, n)
        starts = torch.arange(n - w + 1, device=x.device)  # (S,)
        s = starts.numel()
        idx = starts[:, None] + torch.arange(w, device=x.device)  # (S, w)
        h = self.proj_in(x)  # (B, C, N, e)
        e = h.shape[-1]
        win = h[:, :, idx]  # (B, C, S, w, e)
        win = win.permute(0, 2, 1, 3, 4).reshape(b * s, c * w, e)
        chan = torch.arange(c, device=x.device).repeat_interleave(w)  # (C*w,)
        pos = torch.arange(w, device=x.device).repeat(c)
        valid = channel_mask[:, :, None] & patch_mask[:, None, :]  # (B, C, N)
        win_valid = valid[:, :, idx].permute(0, 2, 1, 3).reshape(b * s, c * w)
        out = self.block(
            win,
            pos.expand(b * s, -1),
            chan.expand(b * s, -1),
            win_valid | ~win_valid.any(dim=-1, keepdim=True),  # all-padding windows: no NaN
        )
        # Which windows count for each sample (see the module docstring).
        n_valid = patch_mask.sum(dim=-1)  # (B,)
        last_start = (n_valid - w).clamp(min=0)
        counted = (starts[None, :] <= last_start[:, None]).to(out.dtype)  # (B, S)
        out = out.view(b, s, c, w, e) * counted[:, :, None, None, None]
        folded = h.new_zeros(b, c, n, e)
        folded.index_add_(2, idx.reshape(-1), out.permute(0, 2, 1, 3, 4).reshape(b, c, s * w, e))
        if self.fold == "mean":
            ones = counted[:, :, None].expand(b, s, w).reshape(b, s * w)
            counts = h.new_zeros(b, n).index_add_(1, idx.reshape(-1), ones)
            folded = folded / counts.clamp(min=1)[:, None, :, None]
        return self.proj_out(folded)
