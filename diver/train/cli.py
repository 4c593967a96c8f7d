"""``diver pretrain``: one grid cell, from flags (and a study config) to a finished run.

The flags select the cell and override ``pretrain`` settings of the config; the study
layer (:func:`diver.study.settings.cell_settings`) resolves them, so ``diver launch``
prices the same command (:func:`settings_from_argv`) with the same answer.  Only
running the cell imports DeepSpeed.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diver.argtypes import non_negative_int, positive_int
from diver.config import StudyConfig, load_config
from diver.study.settings import PretrainSettings, cell_settings
from diver.tracking import TrackingTarget


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``diver pretrain`` flags."""
    p.add_argument("--corpus", required=True, help="corpus folder (output of `diver corpus`)")
    p.add_argument("--size", required=True, help="model size (debug, tiny, small, ... xxl)")
    p.add_argument(
        "--patch", choices=["1s", "0.1s"], default="1s", help="patch length (default 1s)"
    )
    p.add_argument(
        "--family",
        help="corpus family from the config's families: its datasets, lr and weight decay "
        "(default: the first family)",
    )
    p.add_argument(
        "--subjects",
        type=positive_int,
        help="train on this many training subjects (a nested subset; SPEC §3 subject sweep)",
    )
    p.add_argument(
        "--init-from",
        metavar="MODEL",
        help="warm start from these weights (a model.pt, or the authors' checkpoint); the "
        "architecture must be the cell's size and patch",
    )
    p.add_argument(
        "--data-fraction",
        type=float,
        default=1.0,
        help="fraction of the training subjects' windows (nested across fractions)",
    )
    p.add_argument("--epochs", type=positive_int, required=True, help="passes over the fraction")
    p.add_argument("--out", required=True, help="run folder (logs, checkpoints, model.pt)")
    p.add_argument("--config", help="study config (its pretrain and tracking sections)")
    p.add_argument("--parent-run", help="file holding the MLflow parent run id; log a child run")
    p.add_argument("--zero-stage", type=int, choices=[0, 1, 2, 3], help="DeepSpeed ZeRO stage")
    p.add_argument("--global-batch", type=positive_int, help="windows per optimizer step")
    p.add_argument("--micro-batch", type=positive_int, help="windows per forward pass and rank")
    p.add_argument("--lr", type=float, help="peak learning rate at the muP base width")
    p.add_argument("--weight-decay", type=float, help="MuAdamW weight decay")
    p.add_argument("--seed", type=non_negative_int, help="training seed")
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        help="checkpoint every K steps (0: only on preemption signals)",
    )
    p.add_argument(
        "--val-every", type=non_negative_int, help="validate every K steps (0: epoch ends only)"
    )
    p.add_argument("--keep-checkpoints", type=positive_int, help="complete checkpoints kept")
    p.add_argument(
        "--supersede",
        action="store_true",
        help="when --out holds a run of other settings, move it aside "
        "(<out>.superseded-<time>) and start afresh, instead of refusing (the DAG passes it: "
        "a cell whose settings changed reruns)",
    )


def _study(args: argparse.Namespace) -> StudyConfig:
    return load_config(args.config) if args.config else StudyConfig()


def _settings(study: StudyConfig, args: argparse.Namespace) -> PretrainSettings:
    return cell_settings(
        study,
        corpus=args.corpus,
        out=args.out,
        size=args.size,
        patch=args.patch,
        data_fraction=args.data_fraction,
        epochs=args.epochs,
        family=args.family,
        subjects=args.subjects,
        init_from=args.init_from,
        zero_stage=args.zero_stage,
        global_batch=args.global_batch,
        micro_batch=args.micro_batch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        val_every=args.val_every,
        keep_checkpoints=args.keep_checkpoints,
    )


def pretrain_settings(args: argparse.Namespace) -> tuple[PretrainSettings, TrackingTarget | None]:
    """The settings and the tracking target (``--parent-run``) the flags describe."""
    study = _study(args)
    settings = _settings(study, args)
    tracking = None
    if args.parent_run:
        manifest = Path(args.corpus) / "manifest.csv"
        tracking = TrackingTarget.from_run_file(
            study.tracking_uri(), args.parent_run, manifest if manifest.exists() else None
        )
    return settings, tracking


def settings_from_argv(argv: Sequence[str]) -> PretrainSettings:
    """The cell a ``diver pretrain`` command line (the flags after ``pretrain``) runs."""
    parser = argparse.ArgumentParser(prog="diver pretrain")
    add_arguments(parser)
    args = parser.parse_args(list(argv))
    return _settings(_study(args), args)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from diver.train.pretrain import pretrain

    settings, tracking = pretrain_settings(args)
    logging.getLogger("diver.train").setLevel(logging.INFO)
    # one process moves the folder: `diver launch` has done it before starting ranks
    if args.supersede and os.environ.get("WORLD_SIZE", "1") == "1":
        supersede_cell(settings)
    return pretrain(settings, tracking=tracking)


def supersede_cell(settings: PretrainSettings) -> None:
    """Move the cell's folder aside when it holds a run of other settings (see
    :func:`diver.train.outputs.supersede`), saying so."""
    from diver.train.outputs import supersede

    moved = supersede(Path(settings.out), settings.identity())
    if moved is not None:
        print(f"pretrain {settings.cell}: settings changed; the old run moved to {moved}")


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "pretrain",
        help="pretrain one grid cell on DeepSpeed (SPEC §3); resumes from its checkpoints",
        description="Pretrain one cell (size x patch x data fraction x epochs). Settings not "
        "given as flags come from the config's pretrain section. Rerunning with the same --out "
        "resumes from the newest complete checkpoint, or does nothing when the run is complete. "
        "Exit status 75 means a preemption signal was handled: rerun to continue.",
    )
    add_arguments(p)
    p.set_defaults(func=cmd_pretrain)
    return p
