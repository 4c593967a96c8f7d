"""Classification heads on the encoder's tokens, and the encoder + head classifier.

Both heads of SPEC §5 read the whole (C, N, d) token grid flattened, so the channel
layout of a task must be fixed: :meth:`diver.finetune.taskset.TaskSet.on_layout` places
every trial's channels by name, and tokens of absent channels (masked) are zeroed
before the head.

* ``flatten-linear`` (iEEG recipe): dropout, then Linear(C*N*d -> classes).
* ``mlp`` (EEG recipe, CBraMod): Linear(C*N*d -> N*d), ELU, dropout,
  Linear(N*d -> d), ELU, dropout, Linear(d -> classes).  CBraMod writes it with its
  width d = 200 (``C*T*200 -> T*200 -> 200``); here d is the encoder's width.
"""

from __future__ import annotations

import torch
from torch import nn

from diver.model.encoder import DiverEncoder


class FlattenLinearHead(nn.Sequential):
    def __init__(self, n_channels: int, n_patches: int, d: int, n_classes: int, dropout: float):
        super().__init__(
            nn.Flatten(1), nn.Dropout(dropout), nn.Linear(n_channels * n_patches * d, n_classes)
        )


class MLPHead(nn.Sequential):
    def __init__(self, n_channels: int, n_patches: int, d: int, n_classes: int, dropout: float):
        super().__init__(
            nn.Flatten(1),
            nn.Linear(n_channels * n_patches * d, n_patches * d),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Linear(n_patches * d, d),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Linear(d, n_classes),
        )


def make_head(
    kind: str, n_channels: int, n_patches: int, d: int, n_classes: int, dropout: float = 0.0
) -> nn.Module:
    heads = {"flatten-linear": FlattenLinearHead, "mlp": MLPHead}
    if kind not in heads:
        raise ValueError(f"head must be one of {sorted(heads)}, got {kind!r}")
    return heads[kind](n_channels, n_patches, d, n_classes, dropout)


def masked_tokens(
    tokens: torch.Tensor, channel_mask: torch.Tensor, patch_mask: torch.Tensor
) -> torch.Tensor:
    """(B, C, N, d) tokens with those of absent channels / patches set to zero."""
    valid = channel_mask[:, :, None] & patch_mask[:, None, :]
    return tokens * valid[..., None].to(tokens.dtype)


class DiverClassifier(nn.Module):
    """The pretrained (or freshly initialised) encoder followed by a head."""

    def __init__(self, encoder: DiverEncoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(
        self,
        patches: torch.Tensor,
        coords_mm: torch.Tensor,
        type_ids: torch.Tensor,
        subtype_ids: torch.Tensor,
        channel_mask: torch.Tensor,
        patch_mask: torch.Tensor,
    ) -> torch.Tensor:
        tokens = self.encoder(patches, coords_mm, type_ids, subtype_ids, channel_mask, patch_mask)
        return self.head(masked_tokens(tokens, channel_mask, patch_mask))
