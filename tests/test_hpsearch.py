"""The hyper-parameter sweep before the grid (issue 18): config, best.yaml -> cells, a
killed and restarted sweep, MLflow trial runs, the DAG's planning.

The multi-minute checks (the DAG through the local and the SLURM profile, the muP
transfer check) are in ``tests/test_hpsearch_slow.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from diver.config import (
    ConfigError,
    SweepValue,
    config_from_dict,
    load_config,
    sweep_best_path,
)
from diver.hpsearch.plan import Sweep, sweeps, trial_key
from diver.hpsearch.sweep import grid_points, open_study, read_val_log
from diver.study.settings import cell_settings
from tests.conftest import REPO_ROOT, run_snakemake
from tests.test_pretrain import _env as pretrain_env
from tests.test_pretrain import corpus  # noqa: F401  (fixture: the shared small corpus)

BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    """test_pretrain's clean single-process environment, with this interpreter's
    commands (`diver`, `snakemake`) first on PATH."""
    env = pretrain_env()
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


def _study(results: Path, **hpsearch: object) -> dict:
    return {
        "study": "hp-test",
        "results_dir": str(results),
        "families": {
            "a": {"modalities": ["eeg", "ieeg"], "lr": "from_sweep", "weight_decay": "from_sweep"},
            "b": {"modalities": ["eeg", "ieeg"], "lr": 1e-3, "weight_decay": 1e-5},
        },
        "grid": [{"family": ["a", "b"], "patch": "1s", "size": "debug", "epochs": 1}],
        "hpsearch": {"trials": 3, "startup_trials": 2, **hpsearch},
        "pretrain": {"checkpoint_every": 2},
    }


# ----------------------------------------------------------------------------- config


def test_from_sweep_in_the_schema_and_the_dataclasses(tmp_path: Path) -> None:
    raw = _study(tmp_path)
    raw["families"]["c"] = {"lr": 2e-3, "by_patch": {"0.1s": {"weight_decay": "from_sweep"}}}
    study = config_from_dict(raw)
    a, b, c = (study.families[k] for k in "abc")
    assert a.uses_sweep("1s") and a.uses_sweep("0.1s")
    assert not b.uses_sweep("1s") and not c.uses_sweep("1s") and c.uses_sweep("0.1s")
    assert a.lr["1s"] == SweepValue(str(sweep_best_path(tmp_path, "a", "1s")))
    # only the grid's (family, patch) pairs that read the sweep get one
    assert sweeps(study) == [("a", "1s")]
    for bad, where in (
        ({"lr": "sweep"}, "families.x.lr"),
        ({"weight_decay": -1}, "families.x.weight_decay"),
        ({"by_patch": {"1s": {"lr": "best"}}}, "families.x.by_patch"),
    ):
        wrong = {**raw, "families": {**raw["families"], "x": bad}}
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            config_from_dict(wrong)
    with pytest.raises(ConfigError, match=r"hpsearch\.lr: \[0\.1, 0\.01\] is not a range"):
        config_from_dict({**raw, "hpsearch": {"lr": [0.1, 0.01]}})
    with pytest.raises(ConfigError, match=r"hpsearch\.transfer\.lrs.*at most 2x"):
        lrs = [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2, 3.2e-2, 1e-1]
        config_from_dict({**raw, "hpsearch": {"transfer": {"lrs": lrs}}})
    with pytest.raises(ConfigError, match=r"transfer\.lrs"):  # fewer than 7
        config_from_dict({**raw, "hpsearch": {"transfer": {"lrs": [1e-3, 2e-3]}}})


def test_shipped_configs_sweep_before_their_grids() -> None:
    default = load_config(REPO_ROOT / "config" / "config.yaml")
    assert sweeps(default) == [("mixed", "1s")]
    hp = default.hpsearch
    assert (hp.method, hp.size, hp.trials, hp.epochs) == ("tpe", "debug", 4, 1)
    paper = load_config(REPO_ROOT / "config" / "diver1.yaml")
    assert sweeps(paper) == [("eeg", "1s"), ("ieeg", "0.1s"), ("ieeg", "1s")]
    hp = paper.hpsearch
    assert (hp.method, hp.size, hp.epochs, hp.grid.lr * hp.grid.weight_decay) == (
        "grid",
        "small",
        2,
        30,
    )
    points = grid_points(Sweep(paper, "ieeg", "1s"))
    assert len(points) == 30
    # the grid brackets every value the paper found (SPEC §3)
    for lr, wd in ((2.30e-3, 2.17e-7), (4.91e-3, 3.75e-6), (7.70e-3, 2.14e-7), (2.61e-3, 1.36e-3)):
        assert min(p[0] for p in points) <= lr <= max(p[0] for p in points)
        assert min(p[1] for p in points) <= wd <= max(p[1] for p in points)
    text = (REPO_ROOT / "config" / "diver1.yaml").read_text()
    for paper_value in ("2.30e-3", "2.17e-7", "4.91e-3", "3.75e-6", "7.70e-3", "2.61e-3"):
        assert paper_value in text  # noted beside from_sweep


# --------------------------------------------------------------------- best.yaml -> cell


def test_cells_take_lr_and_weight_decay_from_best_yaml(tmp_path: Path) -> None:
    raw = _study(tmp_path)
    raw["families"]["c"] = {"lr": "from_sweep", "weight_decay": 3e-4}
    raw["grid"][0]["family"] = ["a", "b", "c"]
    study = config_from_dict(raw)

    def settings(family: str):
        return cell_settings(
            study, corpus="corpus", out="out", size="debug", patch="1s", data_fraction=1.0,
            epochs=1, family=family,
        )  # fmt: skip

    with pytest.raises(ConfigError, match=r"hpsearch/a/1s/best\.yaml does not exist"):
        settings("a")
    typed = settings("b").config.optimiser
    assert (typed.lr, typed.weight_decay) == (1e-3, 1e-5)  # typed values as before
    for family, lr, wd in (("a", 4.2e-3, 1.5e-6), ("c", 7.5e-3, 2.5e-2)):
        best = sweep_best_path(tmp_path, family, "1s")
        best.parent.mkdir(parents=True)
        best.write_text(yaml.safe_dump({"lr": lr, "weight_decay": wd, "val_loss": 0.1}))
    a = settings("a").config.optimiser
    assert (a.lr, a.weight_decay) == (4.2e-3, 1.5e-6)
    c = settings("c").config.optimiser
    assert (c.lr, c.weight_decay) == (7.5e-3, 3e-4)  # the typed weight decay wins
    # the value flows into the command line's identity (a changed sweep is a new run)
    assert settings("a").identity()["lr"] == 4.2e-3
    sweep_best_path(tmp_path, "a", "1s").write_text("lr: fast\n")
    with pytest.raises(ConfigError, match="lr must be a non-negative number"):
        settings("a")


def test_a_sweep_is_named_by_what_its_trials_measure(tmp_path: Path) -> None:
    study = config_from_dict(_study(tmp_path))
    base = Sweep(study, "a", "1s").study_name("corpus")
    assert base == Sweep(config_from_dict(_study(tmp_path)), "a", "1s").study_name("corpus")
    changed = [
        config_from_dict(_study(tmp_path, epochs=2)),
        config_from_dict({**_study(tmp_path), "model": {"spectral_norm": "ortho"}}),
        config_from_dict({**_study(tmp_path), "pretrain": {"global_batch": 16}}),
    ]
    for other in changed:
        assert Sweep(other, "a", "1s").study_name("corpus") != base
    # but not the pretrain section's lr / weight decay, which the trials replace
    same = config_from_dict({**_study(tmp_path), "pretrain": {"lr": 5e-3, "checkpoint_every": 2}})
    assert Sweep(same, "a", "1s").study_name("corpus") == base
    assert trial_key(1e-3, 2e-5) == "lr1.000000e-03_wd2.000000e-05"


def test_a_typed_value_beside_from_sweep_is_held_fixed(tmp_path: Path) -> None:
    """lr from_sweep, weight decay typed: the sweep tunes lr at the weight decay the
    cells will use (and a changed typed value is another sweep)."""
    raw = _study(tmp_path, method="grid", grid={"lr": 4, "weight_decay": 5})
    raw["families"]["a"]["weight_decay"] = 3e-6
    sweep = Sweep(config_from_dict(raw), "a", "1s")
    assert sweep.tuned == ("lr",) and sweep.fixed == {"weight_decay": 3e-6}
    points = grid_points(sweep)
    assert len(points) == 4 and {wd for _, wd in points} == {3e-6}
    assert sweep.pair({"lr": 2e-3}) == (2e-3, 3e-6)
    raw["families"]["a"]["weight_decay"] = 4e-6
    other = Sweep(config_from_dict(raw), "a", "1s")
    assert other.study_name("corpus") != sweep.study_name("corpus")
    # a family without from_sweep, swept by hand, tunes both
    assert Sweep(config_from_dict(raw), "b", "1s").tuned == ("lr", "weight_decay")


def test_grid_method_enqueues_the_log_spaced_pairs_once(tmp_path: Path) -> None:
    """The grid's pairs go into the journal as waiting trials, and a second prepare (a
    restart) adds none: the study in the journal file is the same study."""
    from optuna.trial import TrialState

    from diver.hpsearch.sweep import prepare

    raw = _study(tmp_path, method="grid", grid={"lr": 3, "weight_decay": 2})
    raw["hpsearch"]["lr"], raw["hpsearch"]["weight_decay"] = [1e-3, 1e-2], [1e-6, 1e-4]
    sweep = Sweep(config_from_dict(raw), "a", "1s")
    points = grid_points(sweep)
    assert points[0] == (1e-3, 1e-6) and points[-1] == pytest.approx((1e-2, 1e-4))
    assert [p[0] for p in points[::2]] == pytest.approx([1e-3, 10**-2.5, 1e-2])
    study = open_study(sweep, "corpus")
    assert prepare(study, sweep) == 6
    again = open_study(sweep, "corpus")
    assert prepare(again, sweep) == 6
    waiting = again.get_trials(states=(TrialState.WAITING,))
    enqueued = [t.system_attrs["fixed_params"] for t in waiting]
    assert sorted((p["lr"], p["weight_decay"]) for p in enqueued) == sorted(points)
    assert sweep.journal.is_file()


# ------------------------------------------------------------- a real, killed sweep


def _trials(study_yaml: Path, corpus_dir: Path) -> list:
    study = load_config(study_yaml)
    return open_study(Sweep(study, "a", "1s"), corpus_dir).get_trials()


def _sweep_cmd(study_yaml: Path, corpus_dir: Path, parent: Path) -> list[str]:
    return [
        str(BIN / "diver"), "hpsearch", "run", "--config", str(study_yaml), "--corpus",
        str(corpus_dir), "--family", "a", "--patch", "1s", "--parent-run", str(parent),
        "--poll-seconds", "0.5",
    ]  # fmt: skip


def _wait_for(predicate, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_killed_sweep_resumes_without_repeating_finished_trials(
    corpus: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A real 2-trial TPE sweep of `diver pretrain` jobs is SIGKILLed (sweep and trial,
    as a lost node would) while its second trial trains; rerun, it keeps the finished
    trial and resumes the killed one from its checkpoint, nothing else.  Every
    trial is an MLflow child run of stage hpsearch, none of stage pretrain."""
    results = tmp_path / "results"
    study_yaml = tmp_path / "study.yaml"
    config = _study(results, trials=2, pruning={"enabled": False})
    study_yaml.write_text(yaml.safe_dump(config))
    parent = results / "tracking" / "parent_run_id.txt"
    env = _env()
    init = subprocess.run(
        [str(BIN / "diver"), "track", "init", "--config", str(study_yaml), "--out", str(parent)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    log = (tmp_path / "sweep1.log").open("w")
    first = subprocess.Popen(
        _sweep_cmd(study_yaml, corpus, parent), stdout=log, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:

        def second_checkpointed() -> Path | None:
            trials = _trials(study_yaml, corpus)
            if len(trials) < 2 or trials[0].state.name != "COMPLETE":
                return None
            folder = Path(trials[1].user_attrs.get("folder", "/nonexistent"))
            return folder if list((folder / "checkpoints").glob("step-*")) else None

        killed_folder = _wait_for(second_checkpointed, 240, "trial 1 to checkpoint")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = {t.number: t for t in _trials(study_yaml, corpus)}
    assert before[0].state.name == "COMPLETE" and before[1].state.name == "RUNNING"
    done_folder = Path(before[0].user_attrs["folder"])
    done_mtime = (done_folder / "metrics.json").stat().st_mtime_ns

    second = subprocess.run(
        _sweep_cmd(study_yaml, corpus, parent), capture_output=True, text=True, env=env,
        timeout=600, check=False,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 trial(s) finished, 1 to run" in second.stdout
    trials = _trials(study_yaml, corpus)
    states = {t.number: t.state.name for t in trials}
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 2 and states[1] == "FAIL"  # the killed attempt
    pairs = [(t.params["lr"], t.params["weight_decay"]) for t in finished]
    assert len(set(pairs)) == 2  # no pair ran twice
    assert (done_folder / "metrics.json").stat().st_mtime_ns == done_mtime  # not rerun
    requeued = next(t for t in trials if t.user_attrs.get("requeued_from") == 1)
    assert requeued.params == before[1].params
    assert Path(requeued.user_attrs["folder"]) == killed_folder
    assert "resumed from checkpoint" in (killed_folder / "trial.log").read_text()

    best = yaml.safe_load((results / "hpsearch" / "a" / "1s" / "best.yaml").read_text())
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    winner = min(complete, key=lambda t: t.value)
    assert (best["lr"], best["weight_decay"], best["trial"]) == (
        winner.params["lr"], winner.params["weight_decay"], winner.number,
    )  # fmt: skip
    metrics = json.loads((Path(winner.user_attrs["folder"]) / "metrics.json").read_text())
    assert metrics["lr"] == best["lr"] and metrics["val_loss"] == best["val_loss"]
    assert len(best["trials"]) == 2

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    parent_id = parent.read_text().strip()
    experiment = client.get_experiment_by_name("hp-test")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert {r.data.tags["diver.stage"] for r in runs} == {"hpsearch"}  # never "pretrain"
    ended = {r.data.tags["diver.hpsearch.trial"]: r for r in runs if r.info.status == "FINISHED"}
    assert set(ended) == {str(t.number) for t in finished}
    for t in finished:
        run = ended[str(t.number)]
        assert run.data.tags["diver.family"] == "a" and run.data.tags["diver.patch"] == "1s"
        assert run.data.tags["diver.hpsearch.state"] == t.state.name
        assert run.data.tags["diver.hpsearch.study"] == best["study"]
        assert float(run.data.params["lr"]) == t.params["lr"]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        history = client.get_metric_history(run.info.run_id, "val_loss")
        logged = [(m.step, m.value) for m in history]
        assert logged and logged == read_val_log(Path(t.user_attrs["folder"]))[-len(logged) :]


# ------------------------------------------------------------------ the DAG (dry runs)


def _dag_jobs(workdir: Path, config: dict, *targets: str) -> dict[str, int]:
    (workdir / "study.yaml").write_text(yaml.safe_dump(config))
    proc = run_snakemake(
        workdir, "--configfile", str(workdir / "study.yaml"), "--profile",
        "cluster_profiles/local", "-n", *targets,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    out = proc.stdout + proc.stderr
    table = out.split("Job stats:")[1].split("\n\n")[0]
    import re

    return {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


def test_dag_plans_one_sweep_per_family_and_patch_before_its_cells(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["families"]["typed"] = {"modalities": ["eeg"], "lr": 1e-3, "weight_decay": 0.0}
    config["families"]["mixed"]["by_patch"] = {"0.1s": {"lr": "from_sweep"}}
    config["grid"].append({"family": "typed", "size": "debug", "epochs": 1})
    config["grid"].append({"family": "mixed", "patch": "0.1s", "size": "debug", "epochs": 1})
    jobs = _dag_jobs(tmp_path, config)
    assert jobs["hpsearch"] == 2 and jobs["pretrain"] == 14  # mixed at 1 s and at 0.1 s
    assert "hpsearch_transfer" not in jobs
    # a cell of a typed family needs no sweep; a from_sweep cell needs exactly its own
    typed = _dag_jobs(tmp_path, config, "results/pretrain/typed/1s/debug/f1.0_e1/model.pt")
    assert "hpsearch" not in typed and typed["pretrain"] == 1
    swept = _dag_jobs(tmp_path, config, "results/pretrain/mixed/0.1s/debug/f1.0_e1/model.pt")
    assert swept["hpsearch"] == 1 and swept["pretrain"] == 1
    config["hpsearch"]["transfer"] = {"enabled": True}
    assert _dag_jobs(tmp_path, config)["hpsearch_transfer"] == 1
    assert not (tmp_path / "results").exists()
