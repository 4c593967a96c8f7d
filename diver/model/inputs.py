"""What the DIVER-1 encoder reads: one batch of windows as six aligned tensors.

Every model entry point (the token embedding, the encoder, the pretraining model, a
fine-tuning classifier) takes one :class:`EncoderInputs` rather than repeating the six
tensors in its signature, and every producer (the pretraining loader, fine-tuning task
sets, the authors'-format converter) builds one, so a seventh input would be one edit.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class EncoderInputs:
    """A batch of B windows of C channels and N patches of P samples.

    ``patches`` (B, C, N, P) scaled signal (masked patches zeroed by the caller where it
    masks); ``coords_mm`` (B, C, 3) electrode positions in mm, NaN unknown; ``type_ids``
    / ``subtype_ids`` (B, C) channel type and subtype ids (``diver.data.dataset``'s
    tables, padding ``PAD_ID``); ``channel_mask`` (B, C) and ``patch_mask`` (B, N) bool,
    True for real channels and patches (False for batch padding).
    """

    patches: torch.Tensor
    coords_mm: torch.Tensor
    type_ids: torch.Tensor
    subtype_ids: torch.Tensor
    channel_mask: torch.Tensor
    patch_mask: torch.Tensor

    def valid_tokens(self) -> torch.Tensor:
        """(B, C, N) bool: the real tokens (a real channel at a real patch)."""
        return self.channel_mask[:, :, None] & self.patch_mask[:, None, :]

    def with_patches(self, patches: torch.Tensor) -> EncoderInputs:
        """The same windows with other signal (masked, cast, or perturbed)."""
        return replace(self, patches=patches)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> EncoderInputs:
        """On ``device``; ``dtype`` casts the signal only (coordinates stay fp32 for the
        position encoding, ids and masks keep their integer and bool types)."""
        patches = self.patches.to(device) if dtype is None else self.patches.to(device, dtype)
        return EncoderInputs(
            patches=patches,
            coords_mm=self.coords_mm.to(device),
            type_ids=self.type_ids.to(device),
            subtype_ids=self.subtype_ids.to(device),
            channel_mask=self.channel_mask.to(device),
            patch_mask=self.patch_mask.to(device),
        )

    def select(self, index: torch.Tensor) -> EncoderInputs:
        """The windows at ``index`` (a long tensor of batch positions)."""
        return EncoderInputs(
            patches=self.patches[index],
            coords_mm=self.coords_mm[index],
            type_ids=self.type_ids[index],
            subtype_ids=self.subtype_ids[index],
            channel_mask=self.channel_mask[index],
            patch_mask=self.patch_mask[index],
        )

    def __len__(self) -> int:
        return int(self.patches.shape[0])
