"""The launcher without a cluster: site file, wall-time estimate, sbatch parameters, the
local backend (the real SLURM path is tests/test_slurm.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from diver.launch.site import Resources, SiteError, load_site
from diver.launch.slurm import JobRecord, LaunchError, sbatch_parameters
from tests.conftest import REPO_ROOT

SITE = REPO_ROOT / "cluster_profiles" / "slurm" / "site.yaml"


def test_shipped_site_file_loads_with_per_size_resources() -> None:
    site = load_site(SITE)
    assert site.partition == "debug"  # the local test cluster's partition
    assert site.resources("debug").world_size == 1
    assert site.resources("debug").gpus_per_node == 0
    xxl = site.resources("xxl")
    assert (xxl.nodes, xxl.gpus_per_node, xxl.world_size) == (4, 8, 32)
    assert site.flops_per_gpu == 1.0e14  # YAML's `1.0e14` is read as a number


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partiton: gpu\n", "(top level): unknown keys ['partiton']; known: ["),
        ("sizes:\n  tiny: {gpus: 2}\n", "sizes.tiny: unknown keys ['gpus']"),
        ("sizes:\n  tiny: {nodes: 0}\n", "sizes.tiny.nodes: 0 is less than the minimum of 1"),
        ("sizes:\n  smal: {nodes: 1}\n", "sizes: 'smal' is not one of ['debug'"),
        ("default: {mem_gb: 0}\n", "default.mem_gb: 0 is less than or equal to the minimum"),
        ("flops_per_gpu: fast\n", "flops_per_gpu: 'fast' is not of type 'number'"),
        ("time_margin: -1.0e3\n", "time_margin: -1000.0 is less than or equal to the minimum"),
        ("- a\n", "top level must be a mapping"),
    ],
)
def test_bad_site_file_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    with pytest.raises(SiteError) as info:
        load_site(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_wall_time_from_flops_with_margin_and_bounds(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(
        "flops_per_gpu: 1.0e+14\ntime_margin: 1.5\nsetup_minutes: 10\n"
        "min_time_minutes: 15\nmax_time_minutes: 600\n"
    )
    site = load_site(path)
    four_gpus = Resources(nodes=1, gpus_per_node=4)
    # 4 GPUs x 1e14 FLOP/s = 4e14/s; 4.8e17 FLOPs -> 1,200 s = 20 min; x1.5 + 10 = 40 min
    assert site.wall_time_minutes(4.8e17, four_gpus) == 40
    assert site.wall_time_minutes(1.0, four_gpus) == 15  # the floor
    assert site.wall_time_minutes(1e22, four_gpus) == 600  # the partition's ceiling
    assert site.wall_time_minutes(1e22, Resources(time_minutes=77)) == 77  # explicit wins


def test_sbatch_parameters_carry_site_and_resources() -> None:
    site = load_site(SITE)
    params = sbatch_parameters(site, site.resources("small"), 90, "cell")
    assert params["partition"] == "debug" and params["time"] == 90
    assert params["ntasks_per_node"] == 2 and params["gpus_per_node"] == 2
    assert params["mem"] == f"{128 * 1024}M" and "account" not in params


def test_job_record_round_trip_and_corrupt_record(tmp_path: Path) -> None:
    JobRecord("42", ["pretrain", "--epochs", "2"], str(tmp_path / "slurm"), 1.0).save(tmp_path)
    assert JobRecord.load(tmp_path).job_id == "42"
    (tmp_path / ".slurm_job.json").write_text("{not json")
    with pytest.raises(LaunchError, match="not a job record"):
        JobRecord.load(tmp_path)


def test_local_backend_runs_the_command_itself(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "diver", "launch", "--backend", "local", "--out", str(tmp_path),
         "--", "model", "params", "--size", "debug", "--format", "csv"],
        capture_output=True, text=True, check=False,
        env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("size")
    assert "debug" in proc.stdout


def test_slurm_backend_without_site_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "diver", "launch", "--backend", "slurm", "--out", str(tmp_path),
         "--", "model", "params"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "needs a site file" in proc.stderr
