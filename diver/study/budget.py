"""The token budget of SPEC §1: how many tokens a window counts for in U_D.

The one home of the formula the corpus manifest, pretraining's token budget, the
FLOPs account and the scaling law share.  Spatio-temporal resampling (SPEC §2) keeps
C' <= min(C, 32) channels and N' <= min(N, 30) patches of a window, each count a
Beta(3, 1) fraction of its limit (mean 3/4), so a window counts

    min(C, 32) x min(N, 30) x 0.75 x 0.75

tokens: 540 for a full 32-channel window.  N is 30 for a 30 s window of 1 s patches;
0.1 s patches (300 per window) are cropped to 30 as well, so both patch variants count
the same.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

MAX_CHANNELS = 32
"""At most this many channels of a window per sample (SPEC §2)."""
MAX_PATCHES = 30
"""At most this many patches of a window per sample (SPEC §2)."""
STR_MEAN_FRACTION = 0.75
"""Mean of Beta(3, 1): the expected fraction of each limit a sample keeps (SPEC §1)."""
TOKENS_PER_FULL_WINDOW = MAX_CHANNELS * MAX_PATCHES * STR_MEAN_FRACTION**2
"""540: a window of at least 32 channels and 30 patches (SPEC §1)."""


def window_tokens(n_channels: ArrayLike, n_patches: ArrayLike = MAX_PATCHES) -> np.ndarray:
    """Tokens each window counts for in U_D: min(C, 32) x min(N, 30) x 0.75^2."""
    channels = np.minimum(np.asarray(n_channels), MAX_CHANNELS)
    patches = np.minimum(np.asarray(n_patches), MAX_PATCHES)
    return channels * patches * STR_MEAN_FRACTION**2
