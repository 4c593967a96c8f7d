"""DIVER-1 pretraining on DeepSpeed (SPEC §3): one grid cell = one call of :func:`pretrain`.

A cell is (size, patch, data fraction, epochs) on one corpus.  This module puts a run
together and is the one place that knows the order of its parts; each part has its
own module, whose docstring says what it guarantees:

- ``diver.study.settings``: what the run is (:class:`PretrainSettings`) and its identity;
- ``diver.data.splits``: the held-out validation subjects and the nested training data;
- ``diver.train.plan``: the token budget, this rank's stream, the epoch length in steps;
- ``diver.train.engine``: batch geometry, precision, the muP model and MuAdamW under
  DeepSpeed, warm start;
- ``diver.train.loop``: deterministic steps, validation, checkpoints, exact resume;
- ``diver.train.validation``: the fixed validation loss;
- ``diver.train.preemption``: SIGTERM / SIGUSR1 / SIGUSR2 -> checkpoint and exit
  ``EXIT_PREEMPTED``;
- ``diver.train.outputs``: the logs, ``run_config.json``, ``metrics.json`` (last: its
  presence with matching settings makes a rerun a no-op), the plot.

Also written here: ``ds_config.json`` and ``checkpoints/step-N/`` (via the loop), and
``model.pt`` (consolidated fp32 state dict + ModelConfig + step; loads with plain
``torch.load``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from diver.exitcodes import EXIT_PREEMPTED
from diver.model import ModelConfig
from diver.study.artifacts import PRETRAIN_METRICS
from diver.study.settings import PretrainSettings
from diver.tracking import TrackingTarget, stage_run
from diver.tracking.names import EPOCH_METRIC, GRID_METRICS, SUBJECTS_ALL
from diver.train import checkpoint as ckpt
from diver.train.distributed import DistEnv, barrier, setup_distributed, teardown_distributed
from diver.train.engine import TrainEngine, batch_geometry, build_engine, resolve_precision
from diver.train.loop import TrainingLoop, TrainState, resume_state
from diver.train.outputs import (
    TRAIN_COLUMNS,
    VAL_COLUMNS,
    RunLogs,
    check_identity,
    completed,
    write_json,
)
from diver.train.plan import RunPlan, plan_run
from diver.train.preemption import Preempted, PreemptionFlag

log = logging.getLogger(__name__)


def pretrain(settings: PretrainSettings, *, tracking: TrackingTarget | None = None) -> int:
    """Run (or resume, or confirm) one pretraining cell; returns the exit status.

    0 when the outputs are complete (now or already), :data:`EXIT_PREEMPTED` after a
    preemption signal was handled.  Must run on every rank of the job.
    """
    out = Path(settings.out)
    identity = settings.identity()
    if completed(out, identity):
        if os.environ.get("RANK", "0") == "0":
            print(f"pretrain {settings.cell}: already complete ({out / 'metrics.json'})")
        return 0
    check_identity(out, identity)
    # Before any process group or model exists: a broken checkpoints/ folder fails fast.
    resume = ckpt.find_resume_checkpoint(out / ckpt.CHECKPOINTS_DIR)
    env = setup_distributed(settings.config.runtime.dist_timeout_s)
    try:
        return _run(settings, env, tracking, resume)
    finally:
        teardown_distributed()


def _run(
    settings: PretrainSettings,
    env: DistEnv,
    tracking: TrackingTarget | None,
    resume: ckpt.CheckpointInfo | None,
) -> int:
    """Set up the engine and train with it; the exit status."""
    s = settings
    bf16 = resolve_precision(s.config.runtime)
    micro, accumulation = batch_geometry(s.config.batch, env.world_size)
    model_config = s.model_config()
    plan = plan_run(s, env, model_config.patch_samples, micro, accumulation)
    engine = build_engine(
        s,
        model_config,
        micro=micro,
        accumulation=accumulation,
        total_steps=plan.total_steps,
        world_size=env.world_size,
        bf16=bf16,
    )
    try:
        return _train(s, env, tracking, resume, plan, model_config, engine)
    finally:
        engine.release()


def _train(
    s: PretrainSettings,
    env: DistEnv,
    tracking: TrackingTarget | None,
    resume: ckpt.CheckpointInfo | None,
    plan: RunPlan,
    model_config: ModelConfig,
    engine: TrainEngine,
) -> int:
    """Resume if asked, train, write the outputs; the exit status."""
    out = Path(s.out)
    state, resumed_from = TrainState(), None
    if resume is not None:
        state = resume_state(
            engine.engine, resume, env, plan.loader_state(s, env.world_size)
        )
        resumed_from = state.step
        if env.is_main:
            message = (
                f"resumed from checkpoint {resume.path} at step {state.step} "
                f"(epoch {state.epoch}, batch {state.batches_in_epoch})"
            )
            log.info(message)
            print(f"pretrain {s.cell}: {message}", flush=True)

    if env.is_main:
        # Written once the settings proved usable, so a typo does not claim the folder.
        out.mkdir(parents=True, exist_ok=True)
        write_json(
            out / "run_config.json",
            {
                "identity": s.identity(),
                "settings": {**asdict(s), "config": s.config.flat()},  # the keys users know
                "cell": s.cell,
            },
        )
    logs = RunLogs.open(
        out, keep_until=state.step if resumed_from is not None else -1, truncate=env.is_main
    )
    if env.is_main:
        write_json(out / "ds_config.json", engine.ds_config)
    barrier()

    try:
        with contextlib.ExitStack() as stack:
            mlflow = None
            if env.is_main and tracking is not None:
                resumed = {"diver.resumed_from_step": str(resumed_from)} if resumed_from else None
                mlflow = stack.enter_context(
                    stage_run(tracking, stage="pretrain", cell=s.cell, tags=resumed)
                )
                _log_run_start(mlflow, s, env, plan, engine.n_params, model_config, logs)
            flag = stack.enter_context(PreemptionFlag())
            stack.callback(logs.close)
            loop = TrainingLoop(
                s, env, plan, engine, model_config, state,
                resumed_from=resumed_from, logs=logs, mlflow=mlflow,
            )
            if loop.train(flag) == EXIT_PREEMPTED:
                if mlflow is not None:
                    mlflow.set_tags({"diver.preempted_at_step": str(state.step)})
                raise Preempted  # through stage_run, which marks the run KILLED
            loop.finish()
            if mlflow is not None:
                _log_run_results(mlflow, out / PRETRAIN_METRICS)
    except Preempted:
        return EXIT_PREEMPTED
    return 0


def _log_run_start(
    mlflow: Any,
    s: PretrainSettings,
    env: DistEnv,
    plan: RunPlan,
    n_params: int,
    model_config: ModelConfig,
    logs: RunLogs,
) -> None:
    """The run's parameters, and (a resumed run is a new MLflow run) the curve so far."""
    params = {
        # the cell's axes first, under diver.tracking.names.GRID_PARAMS
        "family": s.family,
        "patch": s.patch,
        "size": s.size,
        "data_fraction": s.data_fraction,
        "subjects": s.subjects if s.subjects is not None else SUBJECTS_ALL,
        "epochs": s.epochs,
        "corpus": str(Path(s.corpus).resolve()),
        "world_size": env.world_size,
        "micro_batch": plan.micro,
        "gradient_accumulation": plan.accumulation,
        "n_params": n_params,
        "d_model": model_config.d_model,
        "depth": model_config.depth,
        "train_windows": len(plan.splits.train),
        "val_windows": len(plan.splits.val),
        "unique_tokens": plan.unique_tokens,
        "token_budget": plan.token_budget,
        "total_steps": plan.total_steps,
        **{k: v for k, v in s.config.flat().items() if k != "betas"},
        "betas": ",".join(str(b) for b in s.config.optimiser.betas),
    }
    mlflow.log_params(params)
    for row in logs.train_rows:
        mlflow.log_metrics(
            {f"train_{k}": float(row[k]) for k in TRAIN_COLUMNS if k not in ("step",)},
            step=int(row["step"]),
        )
    for row in logs.val_rows:
        mlflow.log_metrics(
            {k: float(row[k]) for k in VAL_COLUMNS if k.startswith("val_")},
            step=int(row["step"]),
        )


def _log_run_results(mlflow: Any, metrics_file: Path) -> None:
    """The cell's results under the stable names of :mod:`diver.tracking.names`.

    Read back from the ``metrics.json`` just written, so MLflow's table, compare view and
    ``diver compare`` show exactly the numbers the scaling fit reads: ``GRID_METRICS``
    (``val_loss`` itself is already the last point of its validation history) and
    ``EPOCH_METRIC``, the loss at each epoch end with step = epoch.
    """
    metrics = json.loads(metrics_file.read_text())
    steps = int(metrics.get("steps") or 0)
    mlflow.log_metrics(
        {
            k: float(metrics[k])
            for k in GRID_METRICS
            if k != "val_loss" and isinstance(metrics.get(k), int | float)
        },
        step=steps,
    )
    for row in metrics.get("val_by_epoch") or ():
        mlflow.log_metrics({EPOCH_METRIC: float(row["val_loss"])}, step=int(row["epoch"]))
