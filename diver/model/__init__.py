"""The DIVER-1 model family (SPEC §2): encoder, pretraining heads and loss, sizes, muP."""

from diver.model.config import (
    PUBLISHED_PARAMS,
    PUBLISHED_SIZES,
    SIZES,
    ModelConfig,
    model_config,
)
from diver.model.encoder import DiverEncoder
from diver.model.inputs import EncoderInputs
from diver.model.load import CheckpointError, load_encoder, load_pretrained, pool_tokens
from diver.model.pretrain import DiverPretrainModel, PretrainOutput

__all__ = [
    "PUBLISHED_PARAMS",
    "PUBLISHED_SIZES",
    "SIZES",
    "CheckpointError",
    "DiverEncoder",
    "DiverPretrainModel",
    "EncoderInputs",
    "ModelConfig",
    "PretrainOutput",
    "load_encoder",
    "load_pretrained",
    "model_config",
    "pool_tokens",
]
