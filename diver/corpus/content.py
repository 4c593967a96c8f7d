"""What a recording *is*: a hash of its bytes, cached so a large corpus is not re-read.

Two jobs depend on it (issue 13).  A receipt keyed on size and modification time
misses what does not touch either: a permission fix (a recording quarantined as
unreadable stayed quarantined), a file replaced by one of the same size and time.  And
byte-identical recordings under two names would otherwise enter the corpus twice, as
two subjects, one of which may land in validation while the other trains.

:func:`content_id` hashes a file (or every file of a folder recording, with their
relative names) with SHA-256.  The hash is cached in the recording's receipt under a
key of size, modification time, inode and change time (``st_ctime`` moves on chmod and
on any rewrite), so a rerun re-reads only what changed.  A recording that cannot be read
gets an ``unreadable: ...`` identity instead, which changes once it can be.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
UNREADABLE = "unreadable"


def stat_key(path: Path) -> list[int] | None:
    """Size, modification time, inode and change time of ``path`` (None if gone)."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns]


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def recording_bytes(path: Path) -> int:
    """Size of the recording's bytes (a folder recording: of all its files); 0 if gone."""
    try:
        return sum(file.stat().st_size for file in _files(path))
    except OSError:
        return 0


def content_hash(path: Path) -> str:
    """SHA-256 of the recording's bytes (a folder: of each file's relative name and
    bytes, in name order)."""
    digest = hashlib.sha256()
    for file in _files(path):
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def content_id(path: Path, cached: dict[str, Any] | None) -> dict[str, Any]:
    """``{"key": stat key, "sha256": hash}`` of the recording, reusing ``cached`` (the
    same dict from its last receipt) when the stat key has not changed.  When the
    recording cannot be read, ``sha256`` is ``"unreadable: <why>"``."""
    key = stat_key(path)
    if cached and key is not None and cached.get("key") == key and cached.get("sha256"):
        return {"key": key, "sha256": cached["sha256"]}
    try:
        sha = content_hash(path)
    except OSError as exc:
        sha = f"{UNREADABLE}: {exc.strerror or exc}"
    return {"key": key, "sha256": sha}


def is_readable(identity: dict[str, Any]) -> bool:
    return not str(identity.get("sha256", "")).startswith(UNREADABLE)
