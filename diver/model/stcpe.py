"""Spatio-temporal conditional positional encoding, STCPE (SPEC §2).

Tokens are projected to a d/8 bottleneck; a temporal window of w = 7 patches slides
(stride 1) over the patches of *all* channels; inside each window a one-layer
any-variate transformer (d/8 wide, max(1, d/256) heads, SwiGLU d/2, dropout 0, a final
RMSNorm) mixes the C x w tokens; each token's outputs from the w windows that contain
it are folded back and projected back to d.

As in the authors' code, the time axis is zero-padded by w - 1 patches on both sides,
so there are N + w - 1 windows and every patch lies in exactly w of them; the padding
tokens are zeros that take part in attention like any other token.  The fold is the
sum of the w outputs divided by w (``stcpe_fold = "mean"``, the code) or the plain sum
(``"sum"``, the paper's Eq. 3).  No absolute position enters, so the encoding is
translation-equivariant in time and permutation-equivariant across channels.

Padding never changes a sample's result: a padded patch of a shorter sample is zeroed
(exactly the code's zero padding of the time axis, which only windows that also hold
the sample's last patches see), and a padded channel is never attended to.
"""

from __future__ import annotations

import torch
from torch import nn

from diver.model.config import ModelConfig
from diver.model.layers import Block, rms_norm


class STCPE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        e = config.stcpe_dim
        self.window = config.stcpe_window
        self.fold = config.stcpe_fold
        self.proj_in = nn.Linear(config.d_model, e)
        self.block = Block(e, config.stcpe_heads, config.stcpe_ff, dropout=0.0)
        self.norm = rms_norm(e)
        self.proj_out = nn.Linear(e, config.d_model)

    def forward(
        self, x: torch.Tensor, channel_mask: torch.Tensor, patch_mask: torch.Tensor
    ) -> torch.Tensor:
        """``x`` (B, C, N, d); masks (B, C) and (B, N) bool -> encoding (B, C, N, d)."""
        b, c, n, _ = x.shape
        w = self.window
        valid = channel_mask[:, :, None] & patch_mask[:, None, :]  # (B, C, N)
        h = self.proj_in(x) * valid[..., None].to(x.dtype)
        e = h.shape[-1]
        padded = nn.functional.pad(h, (0, 0, w - 1, w - 1))  # (B, C, N + 2(w-1), e)
        s = n + w - 1  # windows
        win = padded.unfold(2, w, 1)  # (B, C, S, e, w)
        win = win.permute(0, 2, 1, 4, 3).reshape(b * s, c * w, e)
        chan = torch.arange(c, device=x.device).repeat_interleave(w)  # (C*w,)
        pos = torch.arange(w, device=x.device).repeat(c)
        keys = channel_mask.repeat_interleave(w, dim=1)  # (B, C*w): padded channels never
        keys = keys[:, None].expand(b, s, c * w).reshape(b * s, c * w)
        out = self.norm(self.block(win, pos.expand(b * s, -1), chan.expand(b * s, -1), keys))
        # Fold: window i holds padded positions i .. i + w - 1.
        out = out.view(b, s, c, w, e).permute(0, 2, 1, 3, 4).reshape(b, c, s * w, e)
        index = torch.arange(s, device=x.device)[:, None] + torch.arange(w, device=x.device)
        folded = padded.new_zeros(b, c, n + 2 * (w - 1), e)
        folded.index_add_(2, index.reshape(-1), out)
        folded = folded[:, :, w - 1 : w - 1 + n]
        if self.fold == "mean":
            folded = folded / w
        return self.proj_out(folded)
