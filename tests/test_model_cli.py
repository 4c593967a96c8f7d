"""`diver model params --format csv`: the published family, parameter-exact (SPEC §2)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest

from diver.model.config import PUBLISHED_PARAMS, TINY_1S_ENCODER_PARAMS


def _params(*args: str) -> dict[tuple[str, str], int]:
    proc = subprocess.run(
        [sys.executable, "-m", "diver", "model", "params", "--format", "csv", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = proc.stdout.splitlines()
    assert lines[0] == "size,patch,params"
    return {
        (r["size"], r["patch"]): int(r["params"]) for r in csv.DictReader(io.StringIO(proc.stdout))
    }


def test_published_variants_within_one_percent() -> None:
    counts = _params()
    assert set(PUBLISHED_PARAMS) <= set(counts)
    assert {("debug", "1s"), ("debug", "0.1s")} <= set(counts)
    for key, published in PUBLISHED_PARAMS.items():
        assert counts[key] == pytest.approx(published, rel=0.01), key
    # the 1 s heads predict ~1.2k more values per token than the 0.1 s heads, at every width
    for size in ("tiny", "small", "base", "large", "xl"):
        assert counts[(size, "1s")] > counts[(size, "0.1s")]


def test_encoder_only_tiny() -> None:
    counts = _params("--part", "encoder", "--size", "tiny")
    assert counts[("tiny", "1s")] == pytest.approx(TINY_1S_ENCODER_PARAMS, rel=0.01)
