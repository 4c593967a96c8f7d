"""``diver launch``: run one training command on the configured backend and wait.

    diver launch --config STUDY.yaml --out DIR --size SIZE [--name NAME] -- pretrain ...

The command after ``--`` is any ``diver`` subcommand (``pretrain``, ``finetune``).  With
the config's ``launcher.backend: local`` it runs here (``pretrain`` under ``torchrun``
when ``launcher.local_ranks`` > 1); with ``slurm`` it is submitted through submitit with
the resources of ``--size`` from the site file (one node and at most one GPU for
anything but ``pretrain``, which is the only distributed command), its wall time
estimated from the cell's FLOPs (``pretrain``), and this process waits for it (see
:mod:`diver.launch.slurm`).
Snakemake's training rules call this command, and so can a user.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from diver.config import ConfigError, StudyConfig, load_config


def _launch_flops(argv: list[str]) -> float | None:
    """FLOPs of a ``pretrain`` command (None for commands without an estimate)."""
    if not argv or argv[0] != "pretrain":
        return None
    from diver.study.settings import planned_flops
    from diver.train.cli import settings_from_argv

    return planned_flops(settings_from_argv(argv[1:]))


def run_local(argv: list[str], ranks: int) -> int:
    """Replace this process by the command (so signals reach it directly)."""
    if ranks > 1:
        cmd = ["torchrun", "--standalone", "--nproc_per_node", str(ranks), "-m", "diver", *argv]
    else:
        cmd = ["diver", *argv]
    exe = shutil.which(cmd[0]) or str(Path(sys.executable).with_name(cmd[0]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(exe, cmd)
    return 0  # not reached


def cmd_launch(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("diver launch: give the command to run after `--`")
    study = load_config(args.config) if args.config else StudyConfig()
    backend = args.backend or study.launcher.backend
    # Only pretraining is distributed; other commands (finetune) run as one process.
    distributed = argv[0] == "pretrain"
    if distributed and "--supersede" in argv:
        # here, once, before any rank starts or a job is submitted (the ranks then find
        # a folder of their own settings)
        from diver.train.cli import settings_from_argv, supersede_cell

        supersede_cell(settings_from_argv(argv[1:]))
    if backend == "local":
        ranks = (args.local_ranks or study.launcher.local_ranks) if distributed else 1
        return run_local(argv, ranks)

    from diver.launch.site import load_site
    from diver.launch.slurm import SlurmLauncher

    site_path = args.site or study.launcher.site
    if not site_path:
        raise ConfigError(
            "the slurm backend needs a site file: set launcher.site in the config "
            "(the SLURM profile sets cluster_profiles/slurm/site.yaml) or pass --site"
        )
    site = load_site(site_path)
    resources = site.resources(args.size)
    if not distributed:
        resources = replace(
            resources, nodes=1, tasks_per_node=1, gpus_per_node=min(1, resources.gpus_per_node)
        )
    flops = _launch_flops(argv)
    minutes = site.wall_time_minutes(flops, resources) if flops is not None else (
        resources.time_minutes or site.max_time_minutes
    )
    if flops is not None:
        print(f"{args.name}: {flops:.3g} training FLOPs -> --time {minutes} min", flush=True)
    launcher = SlurmLauncher(site, poll_seconds=args.poll_seconds or study.launcher.poll_seconds)
    return launcher.run(argv, Path(args.out), resources, minutes, args.name)


def register(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "launch",
        help="run a training command locally or as a SLURM job (submitit) and wait for it",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--config", help="study config (its launcher section)")
    p.add_argument("--out", required=True, help="the command's output folder (job record, logs)")
    p.add_argument("--size", default="debug", help="model size: picks the site's resources")
    p.add_argument("--name", default="diver", help="SLURM job name")
    p.add_argument("--backend", choices=["local", "slurm"], help="override launcher.backend")
    p.add_argument("--site", help="override launcher.site")
    p.add_argument("--local-ranks", type=int, help="override launcher.local_ranks")
    p.add_argument("--poll-seconds", type=float, help="override launcher.poll_seconds")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- then the diver command to run")
    p.set_defaults(func=cmd_launch)
    return p
