"""A cell whose settings changed reruns afresh: its old folder is moved aside, never
deleted and never mixed with the new run (``diver pretrain --supersede``, which the
DAG's pretrain rule passes: a sweep that picks another learning rate reruns its cells)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diver.train.cli import settings_from_argv
from diver.train.errors import PretrainError
from diver.train.outputs import check_identity, supersede

ARGS = ["--corpus", "corpus", "--size", "debug", "--patch", "1s", "--epochs", "1"]


def _cell(tmp_path: Path, lr: str) -> list[str]:
    return [*ARGS, "--out", str(tmp_path / "cell"), "--lr", lr]


def _old_run(tmp_path: Path) -> Path:
    """A cell folder left by a run at lr 1e-3: its settings record, a log and checkpoints."""
    out = tmp_path / "cell"
    (out / "checkpoints" / "step_00000010").mkdir(parents=True)
    identity = settings_from_argv(_cell(tmp_path, "1e-3")).identity()
    (out / "run_config.json").write_text(json.dumps({"identity": identity}))
    (out / "train_log.csv").write_text("step,loss\n10,1.0\n")
    return out


def test_changed_settings_move_the_old_run_aside(tmp_path: Path) -> None:
    out = _old_run(tmp_path)
    new = settings_from_argv(_cell(tmp_path, "2e-3")).identity()
    with pytest.raises(PretrainError, match=r"lr: 0\.001 there, 0\.002 now.*--supersede"):
        check_identity(out, new)
    moved = supersede(out, new)
    assert moved is not None and not out.exists()
    assert moved.parent == tmp_path and moved.name.startswith("cell.superseded-")
    assert (moved / "train_log.csv").read_text() == "step,loss\n10,1.0\n"
    assert (moved / "checkpoints" / "step_00000010").is_dir()


def test_same_settings_are_left_in_place(tmp_path: Path) -> None:
    out = _old_run(tmp_path)
    same = settings_from_argv(_cell(tmp_path, "1e-3")).identity()
    assert supersede(out, same) is None and (out / "train_log.csv").exists()
    assert supersede(tmp_path / "absent", same) is None


def test_a_folder_with_a_slurm_job_record_is_not_moved(tmp_path: Path) -> None:
    out = _old_run(tmp_path)
    (out / ".slurm_job.json").write_text("{}")
    new = settings_from_argv(_cell(tmp_path, "2e-3")).identity()
    with pytest.raises(PretrainError, match="SLURM job record"):
        supersede(out, new)
    assert (out / "train_log.csv").exists()


def test_launch_supersedes_once_before_the_ranks_start(tmp_path: Path) -> None:
    """``diver launch -- pretrain ... --supersede`` moves the folder in the launching
    process; the run it starts then finds no folder of other settings (here it fails
    at once on the missing corpus, after the move)."""
    out = _old_run(tmp_path)
    bin_dir = Path(sys.executable).parent
    proc = subprocess.run(
        [str(bin_dir / "diver"), "launch", "--backend", "local", "--out", str(out), "--",
         "pretrain", *_cell(tmp_path, "2e-3"), "--supersede"],
        cwd=tmp_path, capture_output=True, text=True, check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )  # fmt: skip
    assert proc.returncode != 0  # no corpus here
    assert "settings changed; the old run moved to" in proc.stdout
    moved = list(tmp_path.glob("cell.superseded-*"))
    assert len(moved) == 1 and (moved[0] / "train_log.csv").exists()
    assert not (out / "train_log.csv").exists()
