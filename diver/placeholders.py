"""``{name}`` placeholders in paths the user writes (dataset inputs, task recordings).

One reading for both: only the named placeholders are allowed, and a mistake is a
ValueError whose message completes "entry '...' ..." (the caller adds where it was),
never a KeyError or a format-string traceback.
"""

from __future__ import annotations

import string
from collections.abc import Mapping


def fill_placeholders(entry: str, values: Mapping[str, str], known: tuple[str, ...]) -> str:
    """``entry`` with its placeholders filled from ``values``; ``known`` lists the names
    allowed (in the order the error message shows them)."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(entry) if f is not None}
    except ValueError as exc:  # a lone brace
        raise ValueError(
            f"is not a path template ({exc}; write {{{{ and }}}} for literal braces)"
        ) from exc
    unknown = sorted(fields - set(known))
    if unknown:
        raise ValueError(f"uses unknown placeholder(s) {unknown}; known: {list(known)}")
    return entry.format(**values)
