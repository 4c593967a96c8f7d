"""A task set as encoder inputs, and the pretrained encoder's tokens of its trials.

Fine-tuning holds every trial of a task set in memory on the task's channel layout
(:func:`task_inputs`), cut into the pretrained model's patches, because the task sets
are small and every epoch of every fold and seed reads them again.  :func:`encode_all`
runs the encoder over them once in eval mode: what a linear probe trains on, and where
the centre of the pretrained tokens comes from.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from diver.data.dataset import PAD_ID, channel_subtype_id, channel_type_id
from diver.finetune.heads import masked_tokens
from diver.finetune.tasks import TaskError
from diver.finetune.taskset import TaskSet
from diver.model.encoder import DiverEncoder
from diver.model.inputs import EncoderInputs

__all__ = ["encode_all", "task_inputs", "trial_batch"]

log = logging.getLogger(__name__)


def task_inputs(taskset: TaskSet, patch_samples: int) -> EncoderInputs:
    """Every trial of ``taskset`` as encoder inputs on the task's channel layout
    (T, C, N, P), cut into ``patch_samples``-sample patches (a remainder is dropped)."""
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
    return EncoderInputs(
        patches=torch.from_numpy(np.ascontiguousarray(patches)),
        coords_mm=torch.from_numpy(np.where(mask[..., None], coords, 0.0).astype(np.float32)),
        type_ids=torch.from_numpy(type_ids),
        subtype_ids=torch.from_numpy(subtype_ids),
        channel_mask=torch.from_numpy(mask),
        patch_mask=torch.ones(t, n_patches, dtype=torch.bool),
    )


def trial_batch(inputs: EncoderInputs, idx: np.ndarray, device: str) -> EncoderInputs:
    """The trials at ``idx`` on ``device``: one batch."""
    return inputs.select(torch.as_tensor(idx, dtype=torch.long)).to(device)


@torch.no_grad()
def encode_all(
    encoder: DiverEncoder,
    inputs: EncoderInputs,
    batch: int,
    device: str,
    trials: np.ndarray | None = None,
) -> torch.Tensor:
    """Masked encoder tokens of every trial, or of those at ``trials`` (eval mode): what
    a linear probe trains on."""
    encoder.eval()
    order = np.arange(len(inputs)) if trials is None else np.asarray(trials)
    out = []
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        b = trial_batch(inputs, idx, device)
        tokens = encoder(b)
        out.append(masked_tokens(tokens, b.channel_mask, b.patch_mask).cpu())
    return torch.cat(out)
