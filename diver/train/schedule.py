"""The learning-rate schedule of SPEC §3, applied to every muP parameter group.

SPEC §3: a single cosine cycle over all optimizer steps, floor at 0.01 x the peak.
Under muP the peak is not one number: ``MuAdamW`` gives each parameter group its own
learning rate (matrix-like weights get ``lr / width_mult``), so the schedule must be a
*factor* applied to each group's own initial rate, never an absolute rate written into
every group (that would undo the muP transfer).  For group g at optimizer step t:

    lr_g(t) = lr_g0 * f(t)
    f(t)    = (t + 1) / W                                  for t < W (warm-up, W steps)
    f(t)    = r + (1 - r) * 0.5 * (1 + cos(pi * s / S))    otherwise
              with s = t - W, S = T - W, r = min_ratio (0.01)

``t`` counts optimizer updates already taken: update number t (0-based) uses f(t), so
the first update runs at the peak (no warm-up by default, SPEC §3 names none) and the
rate after the last of T updates is exactly ``r x lr_g0``, as in the usual
``get_cosine_schedule_with_warmup`` convention.  ``torch.optim.lr_scheduler.LambdaLR``
does the per-group bookkeeping (``initial_lr`` per group, state dict for checkpoints);
the factor is a small picklable object so its settings are checkpointed with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

MIN_LR_RATIO = 0.01  # SPEC §3: min lr = 0.01 x lr


@dataclass
class CosineFactor:
    """``f(t)`` of the module docstring; a callable for ``LambdaLR``.

    Not frozen: ``LambdaLR.load_state_dict`` restores a callable object's ``__dict__``.
    """

    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = MIN_LR_RATIO

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={self.total_steps}), "
                f"got {self.warmup_steps}"
            )
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = self.total_steps - self.warmup_steps
        progress = min(step - self.warmup_steps, span) / span
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    min_ratio: float = MIN_LR_RATIO,
) -> LambdaLR:
    """A scheduler scaling each of ``optimizer``'s groups by :class:`CosineFactor`.

    Build it before the first ``optimizer.step()``: ``LambdaLR`` records every group's
    current ``lr`` as that group's ``initial_lr`` (the muP-scaled peak).
    """
    factor = CosineFactor(total_steps, warmup_steps, min_ratio)
    return LambdaLR(optimizer, lr_lambda=[factor] * len(optimizer.param_groups))
