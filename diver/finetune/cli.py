"""``diver finetune``, ``diver embed`` and ``diver task``: argument parsing and dispatch.

Registered into the ``diver`` command by :func:`register` (one line in diver/cli.py).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diver.argtypes import non_negative_int, positive_int
from diver.finetune.metrics import SELECTABLE
from diver.finetune.recipes import HEADS, MODES, PRESETS
from diver.tracking import TrackingTarget

if TYPE_CHECKING:
    from diver.finetune.train import FinetuneSettings


def _set_threads(threads: int | None) -> None:
    """Torch's intra-op threads.  Pass the cores the job was given: with more threads than
    free cores, the small matrices of fine-tuning run up to 100x slower (threads spin
    waiting for each other)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _results_dir(args: argparse.Namespace) -> str:
    """``--results-dir``, else the study config's results_dir, else ``results``."""
    if args.results_dir:
        return args.results_dir
    if getattr(args, "config", None):
        from diver.config import load_config

        return load_config(args.config).results_dir
    return "results"


def cmd_task_build(args: argparse.Namespace) -> int:
    from diver.finetune.tasks import load_task
    from diver.finetune.taskset import build_taskset

    task = load_task(args.task)
    summary = build_taskset(task, Path(args.out), results_dir=_results_dir(args), force=args.force)
    state = "built" if summary.built else "up to date"
    print(f"task {task.name}: {summary.trials} trials {summary.per_class} ({state}) -> {args.out}")
    return 0


def cmd_task_synth(args: argparse.Namespace) -> int:
    from diver.corpus.synth.task import write_synthetic_task

    summary = write_synthetic_task(Path(args.out), seed=args.seed)
    print(f"{len(summary.paths)} recordings, trials {summary.trials} -> {summary.manifest}")
    return 0


def finetune_settings(args: argparse.Namespace) -> FinetuneSettings:
    """The job the flags describe; builds (or checks) its task set first."""
    from diver.finetune.recipes import recipe
    from diver.finetune.tasks import load_task
    from diver.finetune.taskset import build_taskset, check_taskset
    from diver.finetune.train import FinetuneSettings

    task = load_task(args.task)
    out = Path(args.out)
    if args.taskset:
        taskset = Path(args.taskset)
        check_taskset(task, taskset, results_dir=_results_dir(args))
    else:
        taskset = out / "taskset.parquet"
        build_taskset(task, taskset, results_dir=_results_dir(args))
    overrides = {
        key: getattr(args, key)
        for key in (
            "head", "lr", "weight_decay", "batch_size", "epochs", "patience",
            "label_smoothing", "grad_clip", "dropout", "seeds", "select", "centre",
        )
    }  # fmt: skip
    return FinetuneSettings(
        task=task,
        taskset=taskset,
        pretrained=Path(args.pretrained),
        mode=args.mode,
        recipe=recipe(args.recipe or task.recipe, **overrides),
        out=out,
        baselines=tuple(args.baselines),
        device=args.device,
        cell=args.cell,
    )


def _tracking(args: argparse.Namespace) -> TrackingTarget | None:
    if not args.parent_run:
        return None
    from diver.config import StudyConfig, load_config

    study = load_config(args.config) if args.config else StudyConfig()
    return TrackingTarget.from_run_file(study.tracking_uri(), args.parent_run)


def _print_summary(name: str, mode: str, metrics: dict[str, Any]) -> None:
    for model, entry in metrics["models"].items():
        parts = []
        for metric, stats in entry["summary"].items():
            if stats["mean"] is not None:
                sem = f" ± {stats['sem']:.3f}" if stats["sem"] is not None else ""
                parts.append(f"{metric} {stats['mean']:.3f}{sem}")
        print(f"{name} {mode} {model}: " + ", ".join(parts))


def cmd_finetune(args: argparse.Namespace) -> int:
    if int(os.environ.get("RANK", "0")) > 0:
        # Fine-tuning is one process; launched by torchrun (``launcher.local_ranks`` > 1),
        # only rank 0 works and writes, instead of every rank writing the same files.
        return 0
    from diver.finetune.train import finetune

    _set_threads(args.threads)
    settings = finetune_settings(args)
    logging.getLogger("diver.finetune").setLevel(logging.INFO)
    metrics = finetune(settings, tracking=_tracking(args))
    _print_summary(settings.task.name, args.mode, metrics)
    print(f"-> {settings.out / 'metrics.json'}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from diver.config import DatasetConfig
    from diver.finetune.embed import embed_recordings

    _set_threads(args.threads)

    dataset = DatasetConfig(
        name=args.dataset,
        inputs=(),
        modality=args.modality,
        line_freq=args.line_freq,
        highpass=args.highpass
        if args.highpass is not None
        else (
            0.5 if args.modality == "ieeg" else 0.3  # SPEC §1
        ),
    )
    summary = embed_recordings(
        args.pretrained,
        args.input,
        Path(args.out),
        dataset=dataset,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(
        f"{summary.windows} windows of {summary.recordings - len(summary.skipped)} "
        f"recording(s) ({len(summary.skipped)} skipped), d = {summary.d_model} -> {summary.out}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``finetune``, ``embed`` and ``task`` to the ``diver`` command."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune a pretrained model on a task, with baselines (SPEC §5)",
        description="Fine-tune MODEL.pt on the task of a task file for every fold and seed, "
        "beside the Linear (STFT + logistic regression) and from-scratch baselines. Writes "
        "DIR/metrics.json (per model: runs and mean ± SEM), DIR/predictions.csv (per test "
        "trial) and DIR/train_log.csv. Recipe settings not given come from the preset "
        "(--recipe, default: the task's) of SPEC §5.",
    )
    p.add_argument("--task", required=True, help="task YAML file (see config/tasks/)")
    p.add_argument("--pretrained", required=True, help="model.pt written by diver pretrain")
    p.add_argument("--mode", choices=MODES, default="full", help="frozen encoder or all trained")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--taskset",
        help="task set built by `diver task build` (checked against the task file); default: "
        "build one in DIR/taskset.parquet",
    )
    p.add_argument("--recipe", choices=sorted(PRESETS), help="preset (default: the task's)")
    p.add_argument("--head", choices=HEADS, help="classification head (default: the recipe's)")
    p.add_argument("--seeds", type=non_negative_int, nargs="+", help="training seeds")
    p.add_argument("--epochs", type=positive_int, help="maximum epochs")
    p.add_argument("--lr", type=float, help="AdamW peak learning rate")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    p.add_argument("--batch-size", type=positive_int, help="trials per step")
    p.add_argument(
        "--patience", type=non_negative_int, help="early-stopping patience in epochs (0: off)"
    )
    p.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing")
    p.add_argument("--grad-clip", type=float, help="gradient norm clip (0: off)")
    p.add_argument("--dropout", type=float, help="dropout in the head")
    p.add_argument(
        "--select", choices=SELECTABLE,
        help="validation metric the kept epoch maximises (default: the recipe's; AUROC and "
        "AUC-PR fall back to Cohen's kappa beyond two classes)",
    )  # fmt: skip
    p.add_argument(
        "--centre", action=argparse.BooleanOptionalAction, default=None,
        help="subtract the training trials' mean token before the head (default on; "
        "--no-centre: the authors' head on raw tokens)",
    )  # fmt: skip
    p.add_argument(
        "--baselines",
        nargs="*",
        choices=["linear", "scratch"],
        default=["linear", "scratch"],
        help="baselines to report beside the model (default: both; none with no value)",
    )
    p.add_argument("--cell", help="pretrained cell label (default: from the model's metrics.json)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (the job's cores)")
    p.add_argument("--config", help="study config (tracking URI, results_dir)")
    p.add_argument("--parent-run", help="file holding the MLflow parent run id; log a child run")
    p.add_argument("--results-dir", help="value of {results_dir} in the task file")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "embed",
        help="per-window embeddings of recordings with a pretrained encoder",
        description="Preprocess recordings as the corpus stage does (30 s windows, QA/QC), "
        "encode each window and write its mean token (d floats) to a Parquet file.",
    )
    p.add_argument("--pretrained", required=True, help="model.pt written by diver pretrain")
    p.add_argument("--input", required=True, action="append", help="recording or folder")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--modality", choices=["auto", "eeg", "ieeg"], default="auto")
    p.add_argument("--dataset", default="embed", help="dataset name written in the rows")
    p.add_argument("--line-freq", type=float, default=60.0, help="mains frequency (Hz)")
    p.add_argument("--highpass", type=float, help="high-pass (Hz; default 0.5 iEEG, else 0.3)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads (the job's cores)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("task", help="downstream task sets (SPEC §5)")
    task = p.add_subparsers(dest="task_command", required=True)
    t = task.add_parser(
        "build", help="task file -> Parquet task set (preprocessed, labelled trials)"
    )
    t.add_argument("--task", required=True, help="task YAML file")
    t.add_argument("--out", required=True, help="task set Parquet file")
    t.add_argument("--config", help="study config (its results_dir fills {results_dir})")
    t.add_argument("--results-dir", help="value of {results_dir} in the task file")
    t.add_argument(
        "--force", action=argparse.BooleanOptionalAction, default=False,
        help="rebuild even when the file is up to date",
    )  # fmt: skip
    t.set_defaults(func=cmd_task_build)
    t = task.add_parser("synth", help="write the synthetic labelled task's recordings")
    t.add_argument("--out", required=True, help="output folder (e.g. results/synth_task)")
    t.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    t.set_defaults(func=cmd_task_synth)
