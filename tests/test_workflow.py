"""The Snakemake DAG: dry runs of both configs, schema errors, and a real run of the default."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.dataset as pads
import pytest
import yaml
from mlflow import MlflowClient

from diver.tracking.provenance import file_sha256
from tests.conftest import REPO_ROOT, run_snakemake

_snakemake = run_snakemake


@pytest.mark.parametrize(
    ("profile", "jobs"),
    [
        ("local", {"synth", "track_init", "corpus_plan", "corpus", "pretrain", "synth_task",
                   "task_build", "finetune", "scaling_fit", "report", "all"}),
        ("slurm", {"track_init", "corpus_plan", "corpus", "pretrain", "task_build", "finetune",
                   "scaling_fit", "report", "all"}),
    ],
)
def test_dry_run(profile: str, jobs: set[str], tmp_path: Path) -> None:
    proc = _snakemake(tmp_path, "--profile", f"cluster_profiles/{profile}", "-n")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    out = proc.stdout + proc.stderr
    table = out[out.index("Job stats:") :]
    for job in jobs:
        assert f"\n{job} " in table, (job, table)
    assert ("\nsynth " in table) == ("synth" in jobs)
    assert not (tmp_path / "results").exists()  # a dry run writes nothing, not even the config


def test_yaml12_floats_in_the_snakemake_config(tmp_path: Path) -> None:
    """Snakemake loads the config with YAML 1.1 (``1e-3`` a string); the workflow's
    validation reads it as the number it is."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    text = yaml.safe_dump(config) + "pretrain:\n  lr: 1e-3\n"
    (tmp_path / "study.yaml").write_text(text)
    proc = _snakemake(tmp_path, "--configfile", str(tmp_path / "study.yaml"), "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_invalid_config_fails_before_any_job(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["corpus"]["qc"] = {"max_clipped_fraction": 3}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc = _snakemake(tmp_path, "--configfile", str(bad), "--cores", "1")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "max_clipped_fraction" in out
    assert not (tmp_path / "results" / "tracking").exists()
    assert not (tmp_path / "results" / "synth").exists()


CORPUS_TARGETS = ("results/tracking/parent_run_id.txt", "results/corpus/manifest.csv")


def test_default_dag_corpus_part_runs_for_real_and_is_idempotent(tmp_path: Path) -> None:
    proc = _snakemake(tmp_path, *CORPUS_TARGETS, "--profile", "cluster_profiles/local")
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = tmp_path / "results"
    manifest = pd.read_csv(results / "corpus" / "manifest.csv").set_index("dataset")
    assert list(manifest.index) == ["synth_eeg", "synth_ieeg"]
    assert (manifest["windows"] > 0).all()
    windows = pads.dataset(results / "corpus" / "windows").to_table(columns=["modality"])
    assert set(windows.column("modality").to_pylist()) == {"eeg", "ieeg"}
    qc = pd.read_csv(results / "corpus" / "qc.csv")
    assert "quarantined" in set(qc["status"])  # the synthetic 64 Hz recording

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("diver-default")
    parent_id = (results / "tracking" / "parent_run_id.txt").read_text().strip()
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("diver.role") == "parent"]
    assert [r.info.run_id for r in parents] == [parent_id]
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(children) == 1
    child = children[0]
    assert child.data.tags["diver.stage"] == "corpus"
    assert child.data.tags["diver.corpus_manifest_sha256"] == file_sha256(
        results / "corpus" / "manifest.csv"
    )
    assert child.data.metrics["synth_eeg.windows"] == manifest.loc["synth_eeg", "windows"]
    assert child.info.status == "FINISHED"
    # the run ends saying where its results are and how to browse them
    assert f"report      {results.resolve() / 'report' / 'index.html'}" in proc.stdout
    assert (
        f"mlflow ui --app-name diver --backend-store-uri sqlite:///{results.resolve()}/mlflow.db"
        in proc.stdout
    )

    again = _snakemake(tmp_path, *CORPUS_TARGETS, "--profile", "cluster_profiles/local")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # Editing the grid (a later stage's section) reruns neither the parent nor the corpus.
    edited = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    edited["grid"][0]["epochs"] = [1, 2, 4]
    config = tmp_path / "edited.yaml"
    config.write_text(yaml.safe_dump(edited))
    # --configfile takes every following word as a file: a one-value option ends it
    third = _snakemake(
        tmp_path,
        "--profile",
        "cluster_profiles/local",
        "--configfile",
        str(config),
        "--cores",
        "2",
        *CORPUS_TARGETS,
    )
    assert third.returncode == 0, third.stderr[-4000:]
    assert "Nothing to be done" in third.stdout + third.stderr
    runs = client.search_runs([experiment.experiment_id])
    assert sum(r.data.tags.get("diver.role") == "parent" for r in runs) == 1


def test_track_init_command_is_idempotent(tmp_path: Path) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"study": "idem", "results_dir": str(tmp_path / "r")}))
    ids = []
    for name in ("a.txt", "b.txt"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "diver",
                "track",
                "init",
                "--config",
                str(config),
                "--out",
                str(tmp_path / name),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        ids.append((tmp_path / name).read_text().strip())
    assert ids[0] == ids[1]


@pytest.mark.slow
def test_whole_default_dag_trains_every_grid_cell(default_run: Path) -> None:
    """The embedded default end to end: synth, corpus, the 12-cell debug grid, fine-tuning,
    the fit and the report (the session's one run of the default DAG)."""
    tmp_path = default_run
    (block,) = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())["grid"]
    results = tmp_path / "results"
    cells = [
        results / "pretrain" / block["family"] / block["patch"] / size / f"f{fraction}_e{epochs}"
        for size in block["size"]
        for fraction in block["fraction"]
        for epochs in block["epochs"]
    ]
    assert len(cells) == 12
    for cell in cells:
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["val_loss"] > 0 and metrics["epochs"] in block["epochs"]
        assert [row["epoch"] for row in metrics["val_by_epoch"]] == list(
            range(1, metrics["epochs"] + 1)
        )
        assert (cell / "model.pt").exists()
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("diver-default")
    parent_id = (results / "tracking" / "parent_run_id.txt").read_text().strip()
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    stages = [c.data.tags["diver.stage"] for c in children]
    assert stages.count("pretrain") == 12 and stages.count("corpus") == 1
    assert {c.info.status for c in children} == {"FINISHED"}
    # The DAG ends in a real fit (12 points: the auto form falls back to Chinchilla and
    # says why) and the report, each logged to its own child run.
    assert stages.count("scaling") == 1 and stages.count("report") == 1
    fit_json = results / "scaling" / block["family"] / block["patch"] / "fit.json"
    fit = json.loads(fit_json.read_text())
    assert fit["status"] == "fitted" and fit["form_requested"] == "auto"
    assert fit["form"] == "chinchilla" and "12 points < 14" in fit["form_reason"]
    assert fit["n_points"] == 12
    report = (results / "report" / "index.html").read_text()
    assert f"Form: {fit['form']}" in report and 'src="data:image/png;base64,' in report
    # Fine-tuning: the configured cell on the synthetic task, frozen and fully, each job
    # with both baselines beside the model, tagged with the pretrained cell.
    finetuned = [c for c in children if c.data.tags["diver.stage"] == "finetune"]
    assert len(finetuned) == 2
    assert {c.data.tags["diver.pretrained_cell"] for c in finetuned} == {
        "mixed/1s/debug-4x/f1.0_e2"
    }
    for mode in ("linear-probe", "full"):
        folder = results / "finetune/synth_eeg_oscillation" / mode / "mixed/1s/debug-4x/f1.0_e2"
        ft = json.loads((folder / "metrics.json").read_text())
        assert {"diver", "linear", "scratch"} <= set(ft["models"])
        assert ft["models"]["linear"]["summary"]["auroc"]["mean"] > 0.9
        # the pretrained model learns the task in both modes (issue 11: it once sat at
        # 0.500, every trial one class, from saturated first steps of the head)
        balanced = ft["models"]["diver"]["summary"]["balanced_accuracy"]["mean"]
        assert balanced >= 0.8, (mode, balanced)
        assert (folder / "predictions.csv").exists()
    assert "No fine-tuning configured" not in report
    again = _snakemake(tmp_path, "--profile", "cluster_profiles/local", "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_one_cell_target_plans_only_that_cell(tmp_path: Path) -> None:
    target = "results/pretrain/mixed/1s/debug/f0.5_e1/model.pt"
    proc = _snakemake(tmp_path, "--profile", "cluster_profiles/local", "-n", target)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (proc.stdout + proc.stderr).split("Job stats:")[1].split("\n\n")[0]
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE))
    # the cell and what it needs (its synthetic input, the parent run, the corpus plan and
    # merge; the chunks' jobs join once the plan exists; the sweep its family's lr and
    # weight decay come from), no more
    assert jobs == {
        "synth": "1",
        "track_init": "1",
        "corpus_plan": "1",
        "corpus": "1",
        "hpsearch": "1",
        "pretrain": "1",
        "total": "6",
    }
