"""Per-dataset corpus statistics (SPEC §1): the numbers the scaling study needs.

``tokens`` is U_D of SPEC §1 - the sum over kept windows of min(C, 32) x 30 x 0.75
x 0.75 - and ``cbramod_channel_hours`` is what CBraMod's rule (drop a window when any
sample exceeds 100 µV) would have kept from the same channels, so
``channel_hours / cbramod_channel_hours`` checks the paper's 2.4x claim on any corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from diver.atomic import write_csv_atomic

MANIFEST_COLUMNS = [
    "dataset",
    "subjects",
    "recordings",
    "recordings_kept",
    "recordings_too_short",
    "recordings_qc_rejected",
    "recordings_quarantined",
    "hours",
    "hours_kept",
    "channel_hours",
    "windows",
    "tokens",
    "cbramod_channel_hours",
    "retention_vs_cbramod",
]


def manifest_table(qc: pd.DataFrame, datasets: Sequence[str]) -> pd.DataFrame:
    """One row per dataset (in ``datasets`` order) from the per-recording qc table."""
    rows = []
    for name in datasets:
        part = qc[qc["dataset"] == name]
        with_windows = part[part["windows_kept"] > 0]
        channel_hours = float(part["channel_hours"].sum())
        cbramod = float(part["cbramod_channel_hours"].sum())
        rows.append(
            {
                "dataset": name,
                "subjects": int(with_windows["subject"].astype(str).nunique()),
                "recordings": len(part),
                "recordings_kept": int((part["status"] == "kept").sum()),
                "recordings_too_short": int((part["status"] == "too_short").sum()),
                "recordings_qc_rejected": int((part["status"] == "qc_rejected").sum()),
                "recordings_quarantined": int((part["status"] == "quarantined").sum()),
                "hours": float(part["hours"].sum()),
                "hours_kept": float(part["hours_kept"].sum()),
                "channel_hours": channel_hours,
                "windows": int(part["windows_kept"].sum()),
                "tokens": float(part["tokens"].sum()),
                "cbramod_channel_hours": cbramod,
                "retention_vs_cbramod": channel_hours / cbramod if cbramod > 0 else np.nan,
            }
        )
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def write_manifest(path: Path, qc: pd.DataFrame, datasets: Sequence[str]) -> pd.DataFrame:
    """Write the manifest atomically and return it."""
    table = manifest_table(qc, datasets)
    write_csv_atomic(Path(path), table)
    return table
