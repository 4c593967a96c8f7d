"""`diver model params --format csv`: the published family, parameter-exact (SPEC §2)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

# SPEC §2's last two columns, the authors' code counted on the meta device; written out
# here rather than read from the registry under test.
AUTHORS_TOTALS = {
    ("tiny", "0.1s"): 12_724_846,
    ("tiny", "1s"): 13_026_606,
    ("small", "0.1s"): 50_748_528,
    ("small", "1s"): 51_359_664,
    ("base", "0.1s"): 114_072_178,
    ("base", "1s"): 115_001_906,
    ("large", "0.1s"): 202_695_796,
    ("large", "1s"): 203_953_332,
    ("xl", "0.1s"): 810_189_948,
    ("xl", "1s"): 812_850_876,
    ("xxl", "0.1s"): 1_822_483_588,
    ("xxl", "1s"): 1_826_695_364,
}


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


def test_published_variants_exact() -> None:
    counts = _params()
    assert set(AUTHORS_TOTALS) <= set(counts)
    assert {("debug", "1s"), ("debug", "0.1s")} <= set(counts)
    for key, total in AUTHORS_TOTALS.items():
        assert counts[key] == total, key
    # the 1 s heads predict ~1.2k more values per token than the 0.1 s heads, at every width
    for size in ("tiny", "small", "base", "large", "xl"):
        assert counts[(size, "1s")] > counts[(size, "0.1s")]


def test_encoder_only_tiny() -> None:
    counts = _params("--part", "encoder", "--size", "tiny")
    assert counts[("tiny", "1s")] == 12_666_306  # SPEC §2
    assert counts[("tiny", "0.1s")] == 12_660_546
