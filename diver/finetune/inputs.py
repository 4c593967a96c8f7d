"""A task set as encoder inputs, and the pretrained encoder's tokens of its trials.

Fine-tuning holds every trial of a task set in memory on the task's channel layout
(:class:`ModelInputs`), cut into the pretrained model's patches, because the task sets
are small and every epoch of every fold and seed reads them again.  :func:`encode_all`
runs the encoder over them once in eval mode: what a linear probe trains on, and where
the centre of the pretrained tokens comes from.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from diver.data.dataset import PAD_ID, channel_subtype_id, channel_type_id
from diver.finetune.heads import masked_tokens, valid_tokens
from diver.finetune.tasks import TaskError
from diver.finetune.taskset import TaskSet
from diver.model.encoder import DiverEncoder
from diver.model.inputs import EncoderInputs

__all__ = ["ModelInputs", "encode_all"]

log = logging.getLogger(__name__)


@dataclass
class ModelInputs:
    """Every trial as encoder inputs on the task's channel layout (held in memory)."""

    patches: torch.Tensor  # (T, C, N, P)
    coords: torch.Tensor
    type_ids: torch.Tensor
    subtype_ids: torch.Tensor
    channel_mask: torch.Tensor
    patch_mask: torch.Tensor

    @classmethod
    def build(cls, taskset: TaskSet, patch_samples: int) -> ModelInputs:
        signal, mask, coords, types, subtypes = taskset.on_layout()
        n_patches = signal.shape[-1] // patch_samples
        if n_patches < 1:
            raise TaskError(
                f"task set {taskset.path}: trials of {signal.shape[-1]} samples are shorter "
                f"than one {patch_samples}-sample patch"
            )
        if signal.shape[-1] % patch_samples:
            log.warning(
                "trials of %d samples: the last %d are not a whole patch and are dropped",
                signal.shape[-1],
                signal.shape[-1] % patch_samples,
            )
        t, c = mask.shape
        patches = signal[..., : n_patches * patch_samples].reshape(t, c, n_patches, patch_samples)
        type_ids = np.vectorize(channel_type_id, otypes=[np.int64])(types)
        subtype_ids = np.vectorize(channel_subtype_id, otypes=[np.int64])(subtypes)
        type_ids[~mask] = PAD_ID
        subtype_ids[~mask] = PAD_ID
        return cls(
            patches=torch.from_numpy(np.ascontiguousarray(patches)),
            coords=torch.from_numpy(np.where(mask[..., None], coords, 0.0).astype(np.float32)),
            type_ids=torch.from_numpy(type_ids),
            subtype_ids=torch.from_numpy(subtype_ids),
            channel_mask=torch.from_numpy(mask),
            patch_mask=torch.ones(t, n_patches, dtype=torch.bool),
        )

    def batch(self, idx: np.ndarray, device: str) -> EncoderInputs:
        index = torch.as_tensor(idx, dtype=torch.long)
        return EncoderInputs(
            patches=self.patches[index],
            coords_mm=self.coords[index],
            type_ids=self.type_ids[index],
            subtype_ids=self.subtype_ids[index],
            channel_mask=self.channel_mask[index],
            patch_mask=self.patch_mask[index],
        ).to(device)

    @property
    def shape(self) -> tuple[int, int]:
        """(channels, patches) of the layout."""
        return int(self.patches.shape[1]), int(self.patches.shape[2])

    def valid(self, idx: np.ndarray | None = None) -> torch.Tensor:
        """(T, C, N) bool: present tokens of the trials at ``idx`` (default all)."""
        if idx is None:
            return valid_tokens(self.channel_mask, self.patch_mask)
        index = torch.as_tensor(idx, dtype=torch.long)
        return valid_tokens(self.channel_mask[index], self.patch_mask[index])


@torch.no_grad()
def encode_all(
    encoder: DiverEncoder,
    inputs: ModelInputs,
    batch: int,
    device: str,
    trials: np.ndarray | None = None,
) -> torch.Tensor:
    """Masked encoder tokens of every trial, or of those at ``trials`` (eval mode): what
    a linear probe trains on."""
    encoder.eval()
    order = np.arange(len(inputs.patches)) if trials is None else np.asarray(trials)
    out = []
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        b = inputs.batch(idx, device)
        tokens = encoder(b)
        out.append(masked_tokens(tokens, b.channel_mask, b.patch_mask).cpu())
    return torch.cat(out)
