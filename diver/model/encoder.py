"""The DIVER-1 encoder (SPEC §2): tokens + STCPE, register tokens, 12 any-variate blocks.

The (C, N) token grid becomes (C + 1) x (N + 1) with register tokens - one per
channel, one per patch and a corner token, learned and shared - whose outputs are
discarded.  Registers sit at patch index 0 and "channel" 0, real tokens at 1..N and
1..C, so rotary positions and same-channel biases treat them like any other token.
"""

from __future__ import annotations

import torch
from torch import nn

from diver.model.config import ModelConfig
from diver.model.embedding import TokenEmbedding
from diver.model.inputs import EncoderInputs
from diver.model.layers import Block, rms_norm
from diver.model.stcpe import STCPE


class DiverEncoder(nn.Module):
    """Patches of a batch of windows -> one d-dim output per (channel, patch) token."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = TokenEmbedding(config)
        self.stcpe = STCPE(config)
        self.channel_register = nn.Parameter(torch.zeros(d))
        self.patch_register = nn.Parameter(torch.zeros(d))
        self.corner_register = nn.Parameter(torch.zeros(d))
        for register in (self.channel_register, self.patch_register, self.corner_register):
            nn.init.normal_(register, std=0.02)
        self.blocks = nn.ModuleList(
            Block(d, config.n_heads, config.d_ff, dropout=config.dropout)
            for _ in range(config.depth)
        )
        self.norm = rms_norm(d)

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        """``inputs.patches`` (B, C, N, P), masked patches already zero -> (B, C, N, d)."""
        b, c, n, _ = inputs.patches.shape
        d = self.config.d_model
        channel_mask, patch_mask = inputs.channel_mask, inputs.patch_mask
        x = self.embed(inputs, inputs.valid_tokens())
        x = x + self.stcpe(x, channel_mask, patch_mask)

        grid = x.new_empty(b, c + 1, n + 1, d)
        grid[:, 1:, 1:] = x
        grid[:, 1:, 0] = self.channel_register
        grid[:, 0, 1:] = self.patch_register
        grid[:, 0, 0] = self.corner_register
        ones = channel_mask.new_ones(b, 1)
        ch_valid = torch.cat([ones, channel_mask], dim=1)
        pt_valid = torch.cat([ones, patch_mask], dim=1)
        valid = (ch_valid[:, :, None] & pt_valid[:, None, :]).reshape(b, -1)
        channel_id = torch.arange(c + 1, device=x.device).repeat_interleave(n + 1)
        patch_pos = torch.arange(n + 1, device=x.device).repeat(c + 1)
        channel_id = channel_id.expand(b, -1)
        patch_pos = patch_pos.expand(b, -1)

        h = grid.reshape(b, -1, d)
        for block in self.blocks:
            h = block(h, patch_pos, channel_id, valid)
        h = self.norm(h).view(b, c + 1, n + 1, d)
        return h[:, 1:, 1:]
