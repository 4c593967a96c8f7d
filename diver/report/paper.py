"""The paper's published numbers the report sets the study's results beside.

Scaling-law parameters come from :mod:`diver.scaling.laws` (one copy of SPEC §4's
Tables 8-9 in the code base); the R^2 columns and the downstream results are SPEC §4
and §5 verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass

from diver.scaling.laws import DIVER1_EEG_1S, DIVER1_IEEG_01S, DIVER1_IEEG_1S, LawParams


@dataclass(frozen=True)
class PublishedLaw:
    """One row of DIVER-1's Table 8 (SPEC §4)."""

    family: str
    params: LawParams
    r2_linear: float
    r2_log: float


#: SPEC §4, DIVER-1 Tables 8-9 (the paper does not describe its fitting procedure).
TABLE_8: tuple[PublishedLaw, ...] = (
    PublishedLaw("iEEG 1 s", DIVER1_IEEG_1S, 0.786, 0.815),
    PublishedLaw("iEEG 0.1 s", DIVER1_IEEG_01S, 0.758, 0.772),
    PublishedLaw("EEG 1 s", DIVER1_EEG_1S, 0.502, 0.601),
)

#: SPEC §5: the paper's downstream results and the baselines it reports beside them.
DOWNSTREAM: tuple[tuple[str, str, str], ...] = (
    ("Neuroprobe (overall AUROC)", "DIVER-1 Tiny/iEEG/0.1 s, frozen", "0.676"),
    ("Neuroprobe (overall AUROC)", "Linear (Laplacian STFT)", "0.660"),
    ("Neuroprobe (overall AUROC)", "BrainBERT", "0.586"),
    ("Neuroprobe (overall AUROC)", "PopT", "0.545"),
    ("MAYO (AUROC)", "DIVER-1, full fine-tune", "0.961"),
    ("FACED (balanced accuracy)", "DIVER-1", "0.601"),
    ("PhysioNet-MI (balanced accuracy)", "DIVER-1", "0.676"),
    ("PhysioNet-MI (balanced accuracy)", "CBraMod", "0.642"),
    ("PhysioNet-MI (balanced accuracy)", "LaBraM", "0.617"),
    ("TUEV (balanced accuracy)", "DIVER-1", "0.630"),
    ("TUEV (balanced accuracy)", "CBraMod", "0.667"),
)
