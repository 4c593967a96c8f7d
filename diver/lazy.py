"""Package attributes imported on first use (PEP 562), so importing a package is cheap.

Every ``diver`` command builds one argument parser holding every subcommand, and the
parser reads constants from the packages; a package ``__init__`` that imports its
whole API would make ``diver --help`` (and each Snakemake job's start) pay for scipy,
pandas, matplotlib or scikit-learn it never uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: name -> the submodule that defines
    it (relative to ``package``), imported when the name is first read."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_
