"""Training-side reader of the windowed Parquet corpus (``diver.corpus.shards``).

- ``index``: ``CorpusIndex`` of every window from Parquet metadata, the subject-level
  train/validation split and the nested data fraction (the scaling grid's D axis);
- ``resample``: spatio-temporal resampling of SPEC §2 (channel and patch crops);
- ``dataset``: ``WindowDataset`` sharded by rank and loader worker, and
  ``collate_windows`` padding variable channel counts into a ``WindowBatch``;
- ``splits``: a pretraining cell's training fraction and fixed validation set
  (``make_splits``), its unique tokens U_D and micro-batches per epoch.
"""

from diver.data.dataset import (
    CHANNEL_SUBTYPE_IDS,
    CHANNEL_TYPE_IDS,
    MODALITY_IDS,
    PAD_ID,
    WindowBatch,
    WindowDataset,
    WindowSample,
    collate_windows,
)
from diver.data.index import (
    CorpusIndex,
    CorpusIndexError,
    split_subjects,
    stable_hash64,
    take_fraction,
    take_subjects,
    window_hashes,
)
from diver.data.resample import (
    Crop,
    ResampleConfig,
    apply_crop,
    choose_crop,
    draw_crop,
    eval_crop,
)
from diver.data.splits import (
    SplitError,
    Splits,
    make_splits,
    micro_batches_per_epoch,
    unique_tokens,
)

__all__ = [
    "CHANNEL_SUBTYPE_IDS",
    "CHANNEL_TYPE_IDS",
    "MODALITY_IDS",
    "PAD_ID",
    "CorpusIndex",
    "CorpusIndexError",
    "Crop",
    "ResampleConfig",
    "SplitError",
    "Splits",
    "WindowBatch",
    "WindowDataset",
    "WindowSample",
    "apply_crop",
    "choose_crop",
    "collate_windows",
    "draw_crop",
    "eval_crop",
    "make_splits",
    "micro_batches_per_epoch",
    "split_subjects",
    "stable_hash64",
    "take_fraction",
    "take_subjects",
    "unique_tokens",
    "window_hashes",
]
