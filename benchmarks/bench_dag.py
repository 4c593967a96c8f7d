"""How long Snakemake takes to plan the paper's whole study (issue target: < 5 s).

    python benchmarks/bench_dag.py [--repeats 3]

Runs ``snakemake --profile cluster_profiles/slurm -n`` (config/diver1.yaml: the whole
sparse grid of SPEC §3 and every stage after it) in a fresh working directory, so
nothing is up to date and every job is planned, and prints the wall time of each run,
the median, the number of jobs, and PASS/MISS against the 5 s target.  No SLURM cluster
is needed for a dry run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 5.0


def dry_run(workdir: Path) -> tuple[float, int]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.run(
        [str(bin_dir / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--profile", "cluster_profiles/slurm", "-n"],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake -n failed:\n{proc.stderr[-3000:]}")
    match = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.MULTILINE)
    return elapsed, int(match.group(1)) if match else -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = []
    jobs = -1
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
            elapsed, jobs = dry_run(Path(tmp))
        times.append(elapsed)
        print(f"run {i + 1}: snakemake -n planned {jobs} jobs in {elapsed:.2f} s", flush=True)
    median = statistics.median(times)
    verdict = "PASS" if median < TARGET_S else "MISS"
    print(f"\nsnakemake -n on config/diver1.yaml: median {median:.2f} s over {args.repeats} runs, "
          f"{jobs} jobs (target < {TARGET_S:.0f} s: {verdict})")


if __name__ == "__main__":
    main()
