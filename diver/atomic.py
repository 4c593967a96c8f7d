"""Atomic file writes: a temporary name in the same folder, then ``os.replace``.

A killed process leaves at worst a ``*.tmp-<pid>`` file, never a half-written file
under the real name, so reruns and readers can trust what they find.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def temporary_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n"))
