"""DIVER-1 pretraining model: masking, encoder, reconstruction heads, loss (SPEC §2).

Each valid (channel, patch) token is masked independently with p = 0.5 and its
patch replaced by the mask token: zeros, fixed, stored as a frozen parameter of patch
length as in the authors' checkpoints (so parameter totals match theirs).  Linear heads
(muP readouts) predict the time, FFT and (1 s only) STFT targets of the *unmasked* patch
from the encoder output of masked tokens.  Per target the MSE is the mean over masked
tokens and their elements; the loss is the lambda-weighted sum of those (1, 0.1, 1) for
1 s patches and (1, 1, 0) for 0.1 s, so values are comparable with the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mup import MuReadout
from torch import nn

from diver.model.config import ModelConfig
from diver.model.encoder import DiverEncoder
from diver.model.inputs import EncoderInputs
from diver.model.targets import TargetSpec, compute_targets

TARGETS = ("time", "fft", "stft")


@dataclass
class PretrainOutput:
    """Loss and its parts; ``mask`` is the (B, C, N) bool of tokens that were masked."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    mask: torch.Tensor


class DiverPretrainModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = DiverEncoder(config)
        self.target_spec = TargetSpec(
            patch_samples=config.patch_samples,
            stft_set=config.stft_set,
            spectrum=config.target_spectrum,
        )
        self.mask_token = nn.Parameter(torch.zeros(config.patch_samples), requires_grad=False)
        weights = dict(zip(TARGETS, config.loss_weights, strict=True))
        sizes = self.target_spec.sizes
        # A target with weight 0 gets no head (the 0.1 s family has no STFT head).
        self.weights = {k: weights[k] for k in TARGETS if k in sizes and weights[k] > 0}
        self.heads = nn.ModuleDict(
            {k: MuReadout(config.d_model, sizes[k], readout_zero_init=False) for k in self.weights}
        )

    def draw_mask(
        self, valid: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Bernoulli(mask_prob) over valid tokens (B, C, N); at least one per sample."""
        u = torch.rand(valid.shape, generator=generator, device=valid.device)
        mask = (u < self.config.mask_prob) & valid
        empty = ~mask.flatten(1).any(dim=1)
        if empty.any():  # a tiny window drew no mask: mask its first valid token
            first = valid.flatten(1).float().argmax(dim=1)
            flat = mask.flatten(1).clone()
            flat[empty, first[empty]] = True
            mask = flat.view_as(mask)
        return mask

    def forward(
        self,
        inputs: EncoderInputs,
        mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> PretrainOutput:
        """``inputs`` a batch of scaled windows; ``mask`` (B, C, N) the tokens to hide
        (None: drawn with ``generator``)."""
        patches = inputs.patches
        valid = inputs.valid_tokens()
        if mask is None:
            mask = self.draw_mask(valid, generator)
        mask = mask & valid
        visible = torch.where(mask[..., None], self.mask_token.to(patches.dtype), patches)
        h = self.encoder(inputs.with_patches(visible))
        h_masked = h[mask]  # (M, d)
        with torch.no_grad():
            targets = compute_targets(patches[mask].float(), self.target_spec)
        losses = {
            k: torch.mean((head(h_masked).float() - targets[k]) ** 2)
            for k, head in self.heads.items()
        }
        loss = sum(self.weights[k] * v for k, v in losses.items())
        return PretrainOutput(loss=loss, losses=losses, mask=mask)  # type: ignore[arg-type]
