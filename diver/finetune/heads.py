"""Classification heads on the encoder's tokens, and the encoder + head classifier.

Both heads of SPEC §5 read the whole (C, N, d) token grid flattened, so the channel
layout of a task must be fixed: :meth:`diver.finetune.taskset.TaskSet.on_layout` places
every trial's channels by name, and tokens of absent channels (masked) are zeroed
before the head.  The heads are the authors' (``models/finetune_builders.py``, run with
``--ft_mup False``): plain ``nn.Linear`` layers with PyTorch's default initialisation,
no muP readout and no muP learning-rate scaling (muP belongs to the backbone only).

* ``flatten-linear`` (iEEG recipe, their ``flatten_linear``): dropout (0 in the
  recipe), then Linear(C*N*d -> classes).
* ``mlp`` (EEG recipe, their ``flatten_mlp`` with 3 layers): Linear(C*N*d -> S*200),
  ELU, dropout, Linear(S*200 -> 200), ELU, dropout, Linear(200 -> classes), with S the
  trial length in seconds (:func:`mlp_hidden`): CBraMod's ``C*T*200 -> T*200 -> 200``
  hidden sizes whatever the encoder's width d.

Token centring.  The classifier subtracts a fixed per-token offset (``centre``, a
buffer: the mean token of the fold's training trials under the starting encoder) before
the head, and re-zeroes absent tokens.  For the head this is only a different
parametrisation of its first layer's bias (``W (x - m) + b = W x + (b - W m)``), so
the function class is the authors'; what it changes is AdamW's first steps.  Encoder
tokens are RMS-normalised and share a large trial-independent part (position, type and
register content: on the synthetic task 98 % of their energy is the same in every
trial).  AdamW's first update moves every weight by about ``lr`` along the sign of its
gradient, so on uncentred flattened tokens every first-layer unit moves by about
``lr * sum |x|`` (~3 for 20,480 features at lr 2e-4), in the same direction for every
trial: one step sends all logits to one class (training loss 4.3 on two classes), and
the few steps of a small task never undo it.  Centred, the same step moves units by
``lr * sum |x - m|``, along what differs between trials.
"""

from __future__ import annotations

import torch
from torch import nn

from diver.model.encoder import DiverEncoder
from diver.model.inputs import EncoderInputs

MLP_UNITS_PER_SECOND = 200  # the authors' hidden sizes: [num_seconds * 200, 200]
MLP_LAST_HIDDEN = 200


def mlp_hidden(seconds: float) -> tuple[int, int]:
    """Hidden sizes of the ``mlp`` head for trials of ``seconds`` seconds."""
    return max(1, round(seconds * MLP_UNITS_PER_SECOND)), MLP_LAST_HIDDEN


class FlattenLinearHead(nn.Sequential):
    def __init__(
        self, n_channels: int, n_patches: int, d: int, n_classes: int, dropout: float,
        seconds: float,
    ):  # fmt: skip
        super().__init__(
            nn.Flatten(1), nn.Dropout(dropout), nn.Linear(n_channels * n_patches * d, n_classes)
        )


class MLPHead(nn.Sequential):
    def __init__(
        self, n_channels: int, n_patches: int, d: int, n_classes: int, dropout: float,
        seconds: float,
    ):  # fmt: skip
        first, second = mlp_hidden(seconds)
        super().__init__(
            nn.Flatten(1),
            nn.Linear(n_channels * n_patches * d, first),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Linear(first, second),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Linear(second, n_classes),
        )


def make_head(
    kind: str,
    n_channels: int,
    n_patches: int,
    d: int,
    n_classes: int,
    dropout: float = 0.0,
    *,
    seconds: float | None = None,
) -> nn.Module:
    """A fresh head; ``seconds`` (trial length, default ``n_patches``: 1 s patches) sizes
    the ``mlp`` head's hidden layers."""
    heads = {"flatten-linear": FlattenLinearHead, "mlp": MLPHead}
    if kind not in heads:
        raise ValueError(f"head must be one of {sorted(heads)}, got {kind!r}")
    length = float(n_patches if seconds is None else seconds)
    return heads[kind](n_channels, n_patches, d, n_classes, dropout, length)


def valid_tokens(channel_mask: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
    """(B, C, N) bool: the tokens of present channels and patches."""
    return channel_mask[:, :, None] & patch_mask[:, None, :]


def masked_tokens(
    tokens: torch.Tensor, channel_mask: torch.Tensor, patch_mask: torch.Tensor
) -> torch.Tensor:
    """(B, C, N, d) tokens with those of absent channels / patches set to zero."""
    return tokens * valid_tokens(channel_mask, patch_mask)[..., None].to(tokens.dtype)


def token_mean(tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(C, N, d) mean over trials of each token position's present tokens (zero where
    no trial has the token): the offset :func:`centred_tokens` removes."""
    weight = valid[..., None].to(tokens.dtype)
    return (tokens * weight).sum(0) / weight.sum(0).clamp_min(1.0)


def centred_tokens(
    tokens: torch.Tensor,
    centre: torch.Tensor,
    channel_mask: torch.Tensor,
    patch_mask: torch.Tensor,
) -> torch.Tensor:
    """``tokens - centre``, absent tokens zero (what the head reads)."""
    return masked_tokens(tokens - centre, channel_mask, patch_mask)


class DiverClassifier(nn.Module):
    """The pretrained (or freshly initialised) encoder, token centring, then a head.

    ``centre`` (C, N, d) is a fixed buffer (see the module docstring); None (zeros) feeds
    the head the masked tokens unchanged.
    """

    centre: torch.Tensor

    def __init__(self, encoder: DiverEncoder, head: nn.Module, centre: torch.Tensor | None = None):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.register_buffer(
            "centre", torch.zeros(()) if centre is None else centre.detach().clone()
        )

    def forward(self, inputs: EncoderInputs) -> torch.Tensor:
        tokens = self.encoder(inputs)
        return self.head(
            centred_tokens(tokens, self.centre, inputs.channel_mask, inputs.patch_mask)
        )
