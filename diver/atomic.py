"""Atomic file writes: a temporary name in the same folder, then ``os.replace``.

A killed process leaves at worst a ``*.tmp-<pid>`` file, never a half-written file
under the real name, so reruns and readers can trust what they find.  Every writer
of a result file goes through :func:`replacing` (or the text/CSV helpers built on it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def temporary_name(path: Path, suffix: str = "") -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}{suffix}")


@contextmanager
def replacing(
    path: Path | str, *, suffix: str = "", directory: Path | str | None = None
) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` when the block
    ends without error and is removed when it does not (``path`` is then untouched).

    ``suffix`` ends the temporary name, for writers that infer a format from it
    (matplotlib's ``savefig``).  ``directory`` holds the temporary file instead of
    ``path``'s folder (it must be on the same file system), for trees where a
    leftover of a killed run must not sit where readers look for files (the synthetic
    corpus: its temporaries would match the corpus stage's recording globs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, suffix)
    if directory is not None:
        tmp = Path(directory) / tmp.name
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with replacing(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(path: Path, frame: pd.DataFrame) -> None:
    write_text_atomic(path, frame.to_csv(index=False, lineterminator="\n"))
