"""The integer ids of the model's embeddings for channel types, iEEG subtypes and window
modalities (SPEC §2).  Id 0 is the padding id of the per-channel vocabularies."""

from __future__ import annotations

from collections.abc import Mapping

PAD_ID = 0
# Neural channel types kept for pretraining (SPEC §1); anything else maps to OTHER.
CHANNEL_TYPE_IDS: Mapping[str, int] = {"eeg": 1, "seeg": 2, "ecog": 3}
OTHER_CHANNEL_TYPE_ID = 4
# iEEG subtypes of the modality embedding (SPEC §2); scalp EEG and unknown -> NONE.
CHANNEL_SUBTYPE_IDS: Mapping[str, int] = {"grid": 2, "strip": 3, "depth": 4}
NO_SUBTYPE_ID = 1
# Window modality; recordings mixing scalp and intracranial channels, or anything
# else the corpus writes, get OTHER.
MODALITY_IDS: Mapping[str, int] = {"eeg": 0, "ieeg": 1}
OTHER_MODALITY_ID = 2


def channel_type_id(name: str) -> int:
    return CHANNEL_TYPE_IDS.get(name.lower(), OTHER_CHANNEL_TYPE_ID)


def channel_subtype_id(name: str) -> int:
    return CHANNEL_SUBTYPE_IDS.get(name.lower(), NO_SUBTYPE_ID)


def modality_id(name: str) -> int:
    return MODALITY_IDS.get(name.lower(), OTHER_MODALITY_ID)
