"""The sweep through the DAG's local and SLURM profiles, and the muP transfer check
(issue 18): the multi-minute checks, in the slow tier.

The SLURM test uses the shared local cluster (``slurm_cluster``); it skips where that
cannot run and fails under CI.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from diver.launch.slurm import JOB_FILE, job_state
from tests.conftest import REPO_ROOT, run_snakemake
from tests.test_hpsearch import _env, corpus  # noqa: F401  (the shared corpus fixture)

pytestmark = [pytest.mark.slow]

BIN = Path(sys.executable).parent


def _children(results: Path, experiment: str, stage: str) -> list:
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    parent = (results / "tracking" / "parent_run_id.txt").read_text().strip()
    return client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and tags.`diver.stage` = '{stage}'",
    )


def _jobs(proc: subprocess.CompletedProcess) -> dict[str, str]:
    table = (proc.stdout + proc.stderr).split("Job stats:")[1].split("\n\n")[0]
    return dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE))


# --------------------------------------------------------------- the local profile


LOCAL_STUDY = {
    "study": "hp-dag",
    "results_dir": "results",
    "synth": {"enabled": True, "hours": 0.3, "seed": 0},
    "corpus": {
        "datasets": [
            {
                "name": "synth_eeg",
                "inputs": ["{results_dir}/synth/eeg"],
                "modality": "eeg",
                "subject_pattern": r"sub-(\d+)_",
            },
            {"name": "synth_ieeg", "inputs": ["{results_dir}/synth/ieeg"], "modality": "ieeg"},
        ]
    },
    "families": {
        "swept": {"lr": "from_sweep", "weight_decay": "from_sweep"},
        "typed": {"lr": 1.0e-3, "weight_decay": 1.0e-5},
    },
    "grid": [{"family": ["swept", "typed"], "size": "debug", "epochs": 1}],
    "hpsearch": {"trials": 2, "startup_trials": 2, "pruning": {"enabled": False}},
}
CELLS = ("results/pretrain/swept/1s/debug/f1.0_e1", "results/pretrain/typed/1s/debug/f1.0_e1")


def test_sweep_then_grid_through_the_local_profile(tmp_path: Path) -> None:
    """Sweep -> best.yaml -> the cell that reads it, beside a typed family's cell; the
    trials are their own MLflow stage; editing the sweep replans only its cell."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(LOCAL_STUDY))
    args = ("--configfile", str(tmp_path / "study.yaml"), "--profile", "cluster_profiles/local")
    targets = [f"{cell}/model.pt" for cell in CELLS]
    proc = run_snakemake(tmp_path, *args, *targets)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = tmp_path / "results"
    best = yaml.safe_load((results / "hpsearch/swept/1s/best.yaml").read_text())
    swept = json.loads((tmp_path / CELLS[0] / "metrics.json").read_text())
    typed = json.loads((tmp_path / CELLS[1] / "metrics.json").read_text())
    assert (swept["lr"], swept["weight_decay"]) == (best["lr"], best["weight_decay"])
    assert (typed["lr"], typed["weight_decay"]) == (1.0e-3, 1.0e-5)
    assert not (results / "hpsearch" / "typed").exists()
    trials = _children(results, "hp-dag", "hpsearch")
    grid = _children(results, "hp-dag", "pretrain")
    assert len(trials) == 2 and len(grid) == 2
    assert {r.data.tags["diver.hpsearch.trial"] for r in trials} == {"0", "1"}
    assert {r.data.tags["diver.cell"] for r in grid} == {c.split("pretrain/")[1] for c in CELLS}
    again = run_snakemake(tmp_path, *args, "-n", *targets)
    assert "Nothing to be done" in again.stdout + again.stderr

    # One more trial: the sweep reruns (continuing its journal), then only the cell
    # reading its best.yaml; the typed family's cell is untouched.
    edited = json.loads(json.dumps(LOCAL_STUDY))
    edited["hpsearch"]["trials"] = 3
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(edited))
    dry = run_snakemake(tmp_path, *args, "-n", *targets)
    assert _jobs(dry) == {"hpsearch": "1", "pretrain": "1", "total": "2"}, dry.stdout[-3000:]
    assert "output: results/pretrain/swept/1s/debug/f1.0_e1/metrics.json" in dry.stdout
    assert "output: results/pretrain/typed/" not in dry.stdout

    # The report (run by hand: a 2-cell grid is too small for the DAG's fit) shows it.
    report = tmp_path / "report.html"
    made = subprocess.run(
        [str(BIN / "diver"), "report", "--config", str(results / "config/study.yaml"),
         "--out", str(report)],
        capture_output=True, text=True, cwd=tmp_path, env=_env(), check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    html = report.read_text()
    assert "Sweep and muP transfer" in html and "swept / 1s" in html
    assert f"{best['study']}" in html and "The muP transfer check has not run" in html


def test_default_run_sweeps_before_its_grid(default_run: Path) -> None:
    """The embedded default (the session's shared run of `snakemake --profile
    cluster_profiles/local`): its 4-trial sweep chose the pair every grid cell trained
    with, the trials are MLflow runs of their own stage, the report shows the sweep."""
    results = default_run / "results"
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    best = yaml.safe_load((results / "hpsearch/mixed/1s/best.yaml").read_text())
    assert len(best["trials"]) == config["hpsearch"]["trials"]
    assert best["size"] == "debug" and best["tuned"] == ["lr", "weight_decay"]
    cells = sorted((results / "pretrain/mixed/1s").glob("*/*/metrics.json"))
    assert len(cells) == 12
    for cell in cells:
        metrics = json.loads(cell.read_text())
        assert (metrics["lr"], metrics["weight_decay"]) == (best["lr"], best["weight_decay"])
    trials = _children(results, "diver-default", "hpsearch")
    assert sorted(int(r.data.tags["diver.hpsearch.trial"]) for r in trials) == [0, 1, 2, 3]
    assert {r.data.tags["diver.hpsearch.state"] for r in trials} <= {"COMPLETE", "PRUNED"}
    html = (results / "report" / "index.html").read_text()
    assert "Sweep and muP transfer" in html and best["study"] in html


# ---------------------------------------------------------------- the SLURM profile


SLURM_STUDY = {
    "study": "hp-slurm",
    "results_dir": "results",
    "synth": {"enabled": True, "hours": 0.1, "seed": 0},
    "corpus": {
        "jobs": 1,
        "datasets": [
            {
                "name": "synth_eeg",
                "inputs": ["{results_dir}/synth/eeg"],
                "modality": "eeg",
                "subject_pattern": r"sub-(\d+)_",
            }
        ],
    },
    "families": {"eeg": {"modalities": ["eeg"], "lr": "from_sweep", "weight_decay": 1e-6}},
    "grid": [{"family": "eeg", "size": "debug", "epochs": 1}],
    "hpsearch": {"trials": 2, "startup_trials": 2, "pruning": {"enabled": False}},
}


def test_two_trial_sweep_through_the_slurm_profile(slurm_cluster: None, tmp_path: Path) -> None:
    """Each trial a submitit job on the local cluster; best.yaml written; the trial runs
    tagged with their SLURM job ids."""
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(SLURM_STUDY))
    cmd = [
        str(BIN / "snakemake"), "--snakefile", str(REPO_ROOT / "Snakefile"),
        "--directory", str(tmp_path), "--profile", "cluster_profiles/slurm",
        "--configfile", str(tmp_path / "study.yaml"), "--cores", "2",
        "results/hpsearch/eeg/1s/best.yaml",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, check=False, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = tmp_path / "results"
    best = yaml.safe_load((results / "hpsearch/eeg/1s/best.yaml").read_text())
    assert [t["state"] for t in best["trials"]] == ["COMPLETE", "COMPLETE"]
    assert best["weight_decay"] == 1e-6  # typed beside from_sweep: only lr is tuned ...
    runs = _children(results, "hp-slurm", "hpsearch")
    assert len(runs) == 2
    job_ids = []
    for trial in best["trials"]:
        run = next(r for r in runs if r.info.run_id == trial["mlflow_run_id"])
        folder = Path(run.data.params["run_dir"])
        record = json.loads((folder / JOB_FILE).read_text())
        assert job_state(record["job_id"]) == "COMPLETED"
        assert run.data.tags["diver.slurm_job_id"] == str(record["job_id"])
        assert json.loads((folder / "metrics.json").read_text())["lr"] == trial["lr"]
        job_ids.append(record["job_id"])
    assert len(set(job_ids)) == 2


# ------------------------------------------------------------- the transfer check


def test_mup_transfers_the_best_lr_across_widths(corpus: Path, tmp_path: Path) -> None:  # noqa: F811
    """The check as configured by default: 7 lrs 2x apart at debug, debug-2x, debug-4x,
    20 steps, seeds 0 and 1, spectral_norm forward and ortho.  Under muP every width's
    best lr is within one grid step; the standard-parametrisation curves are computed
    and plotted beside them (measured here: SP's best lr halves per doubling of width,
    a spread of 2 steps)."""
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"study": "hp-transfer", "results_dir": str(tmp_path)}))
    out = tmp_path / "hpsearch" / "transfer"
    proc = subprocess.run(
        [str(BIN / "diver"), "hpsearch", "transfer", "--config", str(study), "--corpus",
         str(corpus), "--out", str(out)],
        capture_output=True, text=True, env=_env(), check=False, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "transfer.json").read_text())
    config = summary["config"]
    assert len(config["lrs"]) >= 7 and config["sizes"] == ["debug", "debug-2x", "debug-4x"]
    lrs = config["lrs"]
    assert all(1 < b / a <= 2 for a, b in itertools.pairwise(lrs))
    verdicts = summary["verdicts"]
    assert set(verdicts) == {"forward/mup", "forward/sp", "ortho/mup", "ortho/sp"}
    for norm in ("forward", "ortho"):
        mup = verdicts[f"{norm}/mup"]
        assert mup["spread_grid_steps"] <= 1, (norm, mup["best_lr"], proc.stdout)
        # SP beside it: every width and lr run, each a finite loss at its best lr
        sp = [p for p in summary["points"] if (p["spectral_norm"], p["parametrisation"]) ==
              (norm, "sp")]  # fmt: skip
        assert len(sp) == len(lrs) * 3
        assert len(sp[0]["losses"]) == len(config["seeds"]) == 2
    print(proc.stdout)  # the verdicts, SP's spread among them
    assert (out / "transfer.png").read_bytes().startswith(b"\x89PNG")
    # the report's section shows the plot and the verdicts
    from diver.report.hpsearch import hpsearch_section

    html = hpsearch_section(tmp_path / "hpsearch")
    assert "muP transfer check" in html and "data:image/png;base64," in html
    assert "the best learning rate agrees across widths" in html
