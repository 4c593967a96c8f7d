"""A plain (non-editable) ``pip install .`` - what a cluster image does - loads configs.

The package is installed with ``--no-deps`` into a target folder on top of this
environment (its dependencies are the same), then used from outside the repository:
``diver config`` must find the schema among the installed package's data, and
``snakemake -n`` on the repository's Snakefile must plan the default DAG with it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed from a copy of the project's sources (pip builds in the
    source tree: ``build/`` and ``*.egg-info`` must not land in the checkout)."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(
        REPO_ROOT / "diver", source / "diver", ignore=shutil.ignore_patterns("__pycache__")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True, check=False, cwd=source,
        env={**os.environ, "PIP_NO_CACHE_DIR": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return target


def _env(target: Path) -> dict[str, str]:
    bin_dir = Path(sys.executable).parent
    return {
        **os.environ,
        "PYTHONPATH": str(target),
        "PATH": f"{target / 'bin'}:{bin_dir}:{os.environ.get('PATH', '')}",
    }


def test_installed_package_ships_its_schema_and_loads_configs(
    installed: Path, tmp_path: Path
) -> None:
    schema = installed / "diver" / "schemas" / "config.schema.yaml"
    assert schema.is_file() and not schema.is_symlink()
    shipped = {p.name for p in (REPO_ROOT / "diver" / "schemas").glob("*.schema.yaml")}
    assert shipped >= {"config.schema.yaml", "task.schema.yaml", "site.schema.yaml"}
    assert {p.name for p in schema.parent.glob("*.schema.yaml")} == shipped
    code = "from diver import schemas as s; print(s.__file__, s.schema_path('config'))"
    where = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=True, cwd=tmp_path, env=_env(installed),
    )  # fmt: skip
    module, schema_path = where.stdout.split()
    assert module.startswith(str(installed)) and schema_path == str(schema)
    proc = subprocess.run(
        [sys.executable, "-m", "diver", "config", str(REPO_ROOT / "config" / "config.yaml")],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=_env(installed),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "results_dir" in proc.stdout
    # The task and site schemas $ref the installed config schema: a task file and the
    # site file load with its dataset keys and size names.
    check = (
        "from diver.finetune.tasks import load_task; from diver.launch.site import load_site;"
        f"t = load_task({str(REPO_ROOT / 'config' / 'tasks' / 'synth_ieeg_oscillation.yaml')!r});"
        f"s = load_site({str(REPO_ROOT / 'cluster_profiles' / 'slurm' / 'site.yaml')!r});"
        "import diver.schemas as d; print(d.__file__, t.preprocessing.line_freq, sorted(s.sizes))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True, text=True, check=False, cwd=tmp_path, env=_env(installed),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, line_freq, *_ = proc.stdout.split()
    assert module.startswith(str(installed)) and float(line_freq) in (50.0, 60.0)


def test_snakemake_plans_the_default_dag_with_the_installed_package(
    installed: Path, tmp_path: Path
) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--snakefile",
         str(REPO_ROOT / "Snakefile"), "--directory", str(tmp_path), "--profile",
         str(REPO_ROOT / "cluster_profiles" / "local"), "-n"],
        capture_output=True, text=True, check=False, cwd=REPO_ROOT, env=_env(installed),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretrain" in proc.stdout + proc.stderr
