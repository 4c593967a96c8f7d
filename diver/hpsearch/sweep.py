"""One sweep: Optuna over (lr, weight decay), each trial one ``diver pretrain`` job.

Why each piece is the way it is:

- **Trials are real grid-style runs.**  A trial is ``diver launch ... -- pretrain`` on a
  config that is the study's with the family's lr and weight decay set to the trial's
  pair (``trial.yaml`` in the trial's folder), so it runs here or as a submitit SLURM job
  exactly like a grid cell, with the same data split, validation and checkpoints.
- **The study state is Optuna's journal file** (``journal.log`` beside the trials, with
  Optuna's open-lock for NFS), never MLflow's database: both would keep a schema version
  in an ``alembic_version`` table.  This process is the only writer of a sweep's journal
  (an exclusive lock on the sweep's folder); the trials' jobs never touch it.
- **A restarted sweep continues.**  Finished trials (complete or pruned) are never run
  again; a trial the killed sweep left RUNNING is marked FAIL and its pair enqueued
  again, and since a trial's folder is named by its pair, the re-run resumes from that
  trial's own checkpoints.  TPE's seed is offset by the trials the study already has, so
  a restart draws new pairs rather than the first ones again.
- **Median pruning reads the run's own validation log.**  The trial's ``val_log.csv``
  gains a row at every evaluation (``hpsearch.val_every``); each is reported to Optuna,
  and a trial to prune gets SIGTERM, which ``diver pretrain`` (or, for a SLURM job,
  ``diver launch``, which cancels it) handles by checkpointing and exiting.
- **Each trial is an MLflow child run of stage ``hpsearch``** (never ``pretrain``: the
  trials' ``diver pretrain`` gets no ``--parent-run``, so they are not mixed into the
  grid's runs), tagged with its trial number, family, patch and state, its validation
  losses logged as they come.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from diver.atomic import write_text_atomic
from diver.config import FROM_SWEEP, read_config_mapping
from diver.errors import DiverError
from diver.hpsearch.plan import KEYS, Sweep, trial_key
from diver.tracking import TAG_SLURM_JOB_ID, TrackingTarget, stage_run

if TYPE_CHECKING:
    import optuna

STAGE = "hpsearch"
TAG_TRIAL = "diver.hpsearch.trial"
TAG_SWEEP = "diver.hpsearch.study"
TAG_STATE = "diver.hpsearch.state"
TAG_FAMILY = "diver.family"
TAG_PATCH = "diver.patch"
TRIAL_CONFIG = "trial.yaml"
TRIAL_LOG = "trial.log"
MAX_DUPLICATES = 100


class HpsearchError(DiverError, RuntimeError):
    """A sweep cannot run or a trial failed; the message names the files to look at."""


@dataclass(frozen=True)
class TrialResult:
    """What one trial ended as: COMPLETE (with its final validation loss) or PRUNED."""

    number: int
    lr: float
    weight_decay: float
    state: str
    value: float | None
    folder: Path


# --------------------------------------------------------------------------- storage


def open_study(sweep: Sweep, corpus: str | Path) -> optuna.Study:
    """The sweep's Optuna study in its journal file (created, or loaded by name)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep.folder.mkdir(parents=True, exist_ok=True)
    path = str(sweep.journal)
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    hp = sweep.study.hpsearch
    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(
            n_startup_trials=hp.pruning.startup_trials, n_warmup_steps=hp.pruning.warmup_steps
        )
        if hp.pruning.enabled
        else optuna.pruners.NopPruner()
    )
    name = sweep.study_name(corpus)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="minimize",
        pruner=pruner,
        load_if_exists=True,
    )
    # A restart draws a new TPE sequence: the seed moves on with the trials already there.
    seed = hp.seed + len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=hp.startup_trials)
    return study


def grid_points(sweep: Sweep) -> list[tuple[float, float]]:
    """The grid method's pairs: log-spaced over each tuned range (a fixed key keeps its
    one value), lr-major."""
    hp = sweep.study.hpsearch

    def axis(key: str, points: int) -> list[float]:
        if key not in sweep.tuned:
            return [sweep.fixed[key]]
        low, high = getattr(hp, key)
        return [float(v) for v in np.geomspace(low, high, points)] if points > 1 else [low]

    lrs, wds = axis("lr", hp.grid.lr), axis("weight_decay", hp.grid.weight_decay)
    return [(lr, wd) for lr in lrs for wd in wds]


def _tuned_params(sweep: Sweep, pair: tuple[float, float]) -> dict[str, float]:
    """The Optuna parameters of a pair: only the tuned keys."""
    values = dict(zip(KEYS, pair, strict=True))
    return {k: values[k] for k in sweep.tuned}


def _params(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's pair: its parameters, or, for one enqueued and not yet asked, the
    parameters it was enqueued with (Optuna keeps those in ``fixed_params``)."""
    return dict(trial.params or trial.system_attrs.get("fixed_params") or {})


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def prepare(study: optuna.Study, sweep: Sweep) -> int:
    """Requeue what a killed sweep left running; for a grid, enqueue the pairs not yet
    run.  Returns how many finished trials the sweep still needs."""
    from optuna.trial import TrialState

    hp = sweep.study.hpsearch
    done = {sweep.pair(t.params) for t in _finished(study)}
    waiting = {
        sweep.pair(_params(t))
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if _params(t)
    }
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # This process holds the sweep's lock, so a RUNNING trial belongs to a dead sweep.
        study.tell(stale.number, state=TrialState.FAIL)
        params = _params(stale)
        if params and sweep.pair(params) not in done | waiting:
            study.enqueue_trial(params, user_attrs={"requeued_from": stale.number})
            waiting.add(sweep.pair(params))
    if hp.method == "grid":
        points = grid_points(sweep)
        for pair in points:
            if pair not in done | waiting:
                study.enqueue_trial(_tuned_params(sweep, pair))
        return len([p for p in points if p not in done])
    return max(0, hp.trials - len(done))


@contextlib.contextmanager
def sweep_lock(sweep: Sweep) -> Iterator[None]:
    """One process per sweep: a second one (a user's beside Snakemake's) is refused."""
    sweep.folder.mkdir(parents=True, exist_ok=True)
    with (sweep.folder / ".sweep.lock").open("w") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise HpsearchError(
                f"another `diver hpsearch run` holds {sweep.folder}; wait for it or stop it"
            ) from exc
        yield


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (Snakemake, SLURM) ends the sweep through ``finally`` blocks, so the
    running trial's job is stopped (and checkpoints) rather than orphaned."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- trials


def trial_config(config_path: str | Path, sweep: Sweep, lr: float, wd: float) -> dict[str, Any]:
    """The study's config with the family's optimiser at ``patch`` set to the pair."""
    raw = read_config_mapping(config_path)
    family = dict(raw["families"][sweep.family])
    family["lr"], family["weight_decay"] = lr, wd
    by_patch = {k: dict(v) for k, v in (family.get("by_patch") or {}).items()}
    by_patch.pop(sweep.patch, None)  # the pair is this patch's, whatever the file said
    family["by_patch"] = by_patch
    raw["families"] = {**raw["families"], sweep.family: family}
    return raw


def trial_command(
    sweep: Sweep, config: Path, corpus: str | Path, folder: Path, name: str
) -> list[str]:
    """``diver launch ... -- pretrain ...`` for one trial (no ``--parent-run``: the trial's
    MLflow run is this sweep's, of stage hpsearch)."""
    hp = sweep.study.hpsearch
    return [
        sys.executable, "-m", "diver", "launch", "--config", str(config), "--out", str(folder),
        "--size", hp.size, "--name", name, "--",
        "pretrain", "--config", str(config), "--corpus", str(corpus),
        "--family", sweep.family, "--size", hp.size, "--patch", sweep.patch,
        "--data-fraction", repr(hp.fraction), "--epochs", str(hp.epochs),
        "--val-every", str(hp.val_every), "--out", str(folder),
    ]  # fmt: skip


def read_val_log(folder: Path) -> list[tuple[int, float]]:
    """(step, val_loss) of every evaluation after the start, as the run has written them."""
    path = folder / "val_log.csv"
    if not path.exists():
        return []
    rows = []
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            try:
                step, loss = int(row["step"]), float(row["val_loss"])
            except (KeyError, TypeError, ValueError):
                continue  # a row being written
            if step > 0:
                rows.append((step, loss))
    return rows


def _objective(value: float) -> float:
    """A diverged run (nan/inf loss) is the worst possible result, not an error."""
    return value if math.isfinite(value) else float("inf")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 300.0) -> int:
    """SIGTERM (the run checkpoints and exits 75), then SIGKILL after ``grace_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class TrialRunner:
    """Runs one asked trial to its end, reporting evaluations to the pruner."""

    def __init__(
        self,
        sweep: Sweep,
        *,
        config_path: str | Path,
        corpus: str | Path,
        tracking: TrackingTarget | None,
        poll_s: float = 1.0,
        say: Callable[[str], None] = print,
    ):
        self.sweep, self.config_path, self.corpus = sweep, Path(config_path), Path(corpus)
        self.tracking, self.poll_s, self.say = tracking, poll_s, say

    def run(self, study: optuna.Study, trial: optuna.Trial) -> TrialResult:
        from optuna.trial import TrialState

        lr, wd = self.sweep.pair(trial.params)
        folder = self.sweep.trials_dir(self.corpus) / trial_key(lr, wd)
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / TRIAL_CONFIG
        text = yaml.safe_dump(trial_config(self.config_path, self.sweep, lr, wd), sort_keys=True)
        write_text_atomic(config, text)
        trial.set_user_attr("folder", str(folder.resolve()))
        s = self.sweep
        name = f"hp-{s.family}-{s.patch}-t{trial.number}"
        label = f"{s.family}/{s.patch} trial {trial.number} (lr {lr:.3g}, wd {wd:.3g})"
        tags = {
            TAG_TRIAL: str(trial.number),
            TAG_SWEEP: study.study_name,
            TAG_FAMILY: s.family,
            TAG_PATCH: s.patch,
        }
        hp = s.study.hpsearch
        params = {
            "lr": lr, "weight_decay": wd, "size": hp.size, "epochs": hp.epochs,
            "data_fraction": hp.fraction, "family": s.family, "patch": s.patch,
            "method": hp.method, "trial": trial.number, "run_dir": str(folder.resolve()),
        }  # fmt: skip
        self.say(f"{label}: {folder}")
        with stage_run(
            self.tracking, stage=STAGE, cell=f"{s.family}/{s.patch}", name=name,
            params=params, tags=tags,
        ) as run:  # fmt: skip
            if run is not None:
                trial.set_user_attr("mlflow_run_id", run.run_id)
            state, value = self._train(trial, folder, config, name, run, label)
            if run is not None:
                job = _slurm_job(folder)
                run.set_tags({TAG_STATE: state, **({TAG_SLURM_JOB_ID: job} if job else {})})
                if value is not None:
                    run.log_metrics({"final_val_loss": value})
        if state == "PRUNED":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, _objective(value if value is not None else math.nan))
        self.say(f"{label}: {state}" + (f", val_loss {value:.5g}" if value is not None else ""))
        return TrialResult(trial.number, lr, wd, state, value, folder)

    def _train(
        self,
        trial: optuna.Trial,
        folder: Path,
        config: Path,
        name: str,
        run: Any,
        label: str,
    ) -> tuple[str, float | None]:
        """Run the job, report each evaluation; (state, final val loss or None)."""
        cmd = trial_command(self.sweep, config, self.corpus, folder, name)
        reported: set[int] = set()
        pruned = False
        log = folder / TRIAL_LOG
        with log.open("ab") as out:
            out.write(f"\n$ {' '.join(cmd)}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
            try:
                while True:
                    finished = proc.poll() is not None
                    for step, loss in read_val_log(folder):
                        if step in reported:
                            continue
                        reported.add(step)
                        if run is not None:
                            run.log_metrics({"val_loss": loss}, step=step)
                        if math.isfinite(loss):
                            trial.report(loss, step)
                        if not finished and not pruned and trial.should_prune():
                            self.say(f"{label}: pruned at step {step} (val_loss {loss:.5g})")
                            pruned = True
                            _stop(proc)
                    if finished or pruned:
                        break
                    time.sleep(self.poll_s)
            finally:
                code = _stop(proc) if proc.poll() is None else proc.returncode
        if pruned:
            # Whatever the job's exit: 75 from a local run that checkpointed, 143 from
            # `diver launch` cancelling a SLURM job, 0 if it finished in the meantime.
            return "PRUNED", None
        if code != 0:
            raise HpsearchError(f"{label} failed (exit {code}); its log {log}:\n{_tail(log)}")
        metrics = json.loads((folder / "metrics.json").read_text())
        return "COMPLETE", float(metrics["val_loss"])


def _slurm_job(folder: Path) -> str | None:
    """The SLURM job id ``diver launch`` recorded for the trial, if it ran as one."""
    from diver.launch.slurm import JOB_FILE

    path = folder / JOB_FILE
    try:
        return str(json.loads(path.read_text())["job_id"])
    except (OSError, ValueError, KeyError):
        return None


# ----------------------------------------------------------------------------- sweep


def run_sweep(
    sweep: Sweep,
    *,
    config_path: str | Path,
    corpus: str | Path,
    tracking: TrackingTarget | None = None,
    poll_s: float = 1.0,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or continue) the sweep to its number of finished trials; write best.yaml.

    Returns best.yaml's mapping.
    """
    import optuna

    family = sweep.study.families.get(sweep.family)
    if family is None:
        raise HpsearchError(f"family {sweep.family!r} is not in the config's families")
    hp = sweep.study.hpsearch
    ranges = {"lr": hp.lr, "weight_decay": hp.weight_decay}
    space = {k: optuna.distributions.FloatDistribution(*ranges[k], log=True) for k in sweep.tuned}
    runner = TrialRunner(
        sweep, config_path=config_path, corpus=corpus, tracking=tracking, poll_s=poll_s, say=say
    )
    with sweep_lock(sweep), _sigterm_as_exit():
        study = open_study(sweep, corpus)
        needed = prepare(study, sweep)
        say(
            f"sweep {study.study_name}: {len(_finished(study))} trial(s) finished, "
            f"{needed} to run ({hp.method}; journal {sweep.journal})"
        )
        done_pairs = {sweep.pair(t.params) for t in _finished(study)}
        duplicates = 0
        while needed > 0:
            trial = study.ask(space)
            pair = sweep.pair(trial.params)
            if pair in done_pairs:  # TPE proposed a pair already run: never run it twice
                trial.set_user_attr("duplicate_of_a_finished_trial", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                duplicates += 1
                if duplicates > MAX_DUPLICATES:
                    raise HpsearchError(
                        f"sweep {study.study_name}: the sampler keeps proposing pairs already "
                        f"run ({duplicates} times); widen hpsearch.lr / weight_decay or lower "
                        "hpsearch.trials"
                    )
                continue
            runner.run(study, trial)
            done_pairs.add(pair)
            needed -= 1
        best = best_of(study, sweep)
    write_text_atomic(sweep.best, _best_text(best))
    say(f"best: lr {best['lr']:.4g}, weight_decay {best['weight_decay']:.4g} -> {sweep.best}")
    return best


def best_of(study: optuna.Study, sweep: Sweep) -> dict[str, Any]:
    """best.yaml's content: the best complete trial, the budget, and every finished trial."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise HpsearchError(
            f"sweep {study.study_name}: no trial completed (all pruned or failed); see "
            f"{sweep.folder}"
        )
    best = min(complete, key=lambda t: (t.value, t.number))
    hp = sweep.study.hpsearch
    return {
        "family": sweep.family,
        "patch": sweep.patch,
        "lr": sweep.pair(best.params)[0],
        "weight_decay": sweep.pair(best.params)[1],
        "tuned": list(sweep.tuned),
        "val_loss": float(best.value),
        "trial": best.number,
        "study": study.study_name,
        "journal": str(sweep.journal),
        "method": hp.method,
        "size": hp.size,
        "epochs": hp.epochs,
        "fraction": hp.fraction,
        "trials": [
            {
                "number": t.number,
                "lr": sweep.pair(t.params)[0],
                "weight_decay": sweep.pair(t.params)[1],
                "state": t.state.name,
                "val_loss": None if t.value is None else float(t.value),
                "last_step": max(t.intermediate_values) if t.intermediate_values else None,
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            }
            for t in _finished(study)
        ],
    }


def _best_text(best: dict[str, Any]) -> str:
    header = (
        f"# The hyper-parameter sweep's choice for family {best['family']} at "
        f"{best['patch']} (diver hpsearch run).\n# Cells whose family says "
        f"`lr: {FROM_SWEEP}` / `weight_decay: {FROM_SWEEP}` read lr and weight_decay "
        "from here.\n"
    )
    return header + yaml.safe_dump(best, sort_keys=False)
