"""``diver hpsearch``: the sweep before the grid, and the muP transfer check.

    diver hpsearch list     --config STUDY.yaml
    diver hpsearch run      --config STUDY.yaml --corpus DIR --family F --patch P
                            [--parent-run FILE]
    diver hpsearch transfer --config STUDY.yaml --corpus DIR --out DIR [--family F]
                            [--parent-run FILE]

``run`` runs (or continues) one sweep and writes ``hpsearch/<family>/<patch>/best.yaml``
under the config's ``results_dir``; the DAG's ``hpsearch`` rule calls it once per sweep.
``transfer`` writes ``transfer.json`` and ``transfer.png`` (the report shows them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diver.config import load_config
from diver.errors import DiverError
from diver.tracking import TrackingTarget, stage_run


def _tracking(study: Any, args: argparse.Namespace) -> TrackingTarget | None:
    if not args.parent_run:
        return None
    manifest = Path(args.corpus) / "manifest.csv"
    return TrackingTarget.from_run_file(
        study.tracking_uri(), args.parent_run, manifest if manifest.exists() else None
    )


def cmd_list(args: argparse.Namespace) -> int:
    from diver.hpsearch.plan import Sweep, sweeps

    study = load_config(args.config)
    for family, patch in sweeps(study):
        print(f"{family}\t{patch}\t{Sweep(study, family, patch).best}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from diver.hpsearch.plan import Sweep
    from diver.hpsearch.sweep import run_sweep

    study = load_config(args.config)
    if args.family not in study.families:
        raise DiverError(f"--family {args.family!r} is not in the config's families")
    sweep = Sweep(study, args.family, args.patch)
    run_sweep(
        sweep,
        config_path=args.config,
        corpus=args.corpus,
        tracking=_tracking(study, args),
        poll_s=args.poll_seconds,
    )
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from diver.hpsearch.transfer import run_transfer, summarise, write_transfer

    study = load_config(args.config)
    config = study.hpsearch.transfer
    family = args.family or next(iter(study.families))
    with stage_run(
        _tracking(study, args), stage="hpsearch", name="hpsearch:transfer",
        tags={"diver.hpsearch.role": "transfer", "diver.family": family},
    ) as run:  # fmt: skip
        points = run_transfer(study, args.corpus, family=family, patch=args.patch)
        summary = summarise(points, config)
        result, figure = write_transfer(summary, Path(args.out))
        for key, verdict in summary["verdicts"].items():
            best = ", ".join(f"{k} {v:.3g}" for k, v in verdict["best_lr"].items())
            state = "transfers" if verdict["transfers"] else "drifts"
            print(f"{key}: best lr {best}; spread {verdict['spread_grid_steps']} step(s): {state}")
        if run is not None:
            run.log_metrics(
                {
                    f"spread_steps_{key.replace('/', '_')}": v["spread_grid_steps"]
                    for key, v in summary["verdicts"].items()
                }
            )
            run.log_artifact(result)
            run.log_artifact(figure)
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``hpsearch`` to the ``diver`` parser."""
    p = subparsers.add_parser(
        "hpsearch",
        help="the lr / weight-decay sweep before the grid, and the muP transfer check",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    sub = p.add_subparsers(dest="hpsearch_command", required=True)

    s = sub.add_parser("list", help="the sweeps a config has: family, patch, best.yaml")
    s.add_argument("--config", required=True, help="study config")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser(
        "run",
        help="run or continue one sweep (trials through `diver launch`); write best.yaml",
    )
    s.add_argument("--config", required=True, help="study config (its hpsearch section)")
    s.add_argument("--corpus", required=True, help="corpus folder")
    s.add_argument("--family", required=True, help="the family to tune")
    s.add_argument("--patch", choices=["1s", "0.1s"], default="1s", help="patch length")
    s.add_argument("--parent-run", help="file holding the MLflow parent run id")
    s.add_argument(
        "--poll-seconds", type=float, default=1.0, help="how often a trial's log is read"
    )
    s.set_defaults(func=cmd_run)

    s = sub.add_parser(
        "transfer",
        help="loss vs lr at three widths, muP and standard parametrisation (minutes of CPU)",
    )
    s.add_argument("--config", required=True, help="study config (hpsearch.transfer)")
    s.add_argument("--corpus", required=True, help="corpus folder")
    s.add_argument("--out", required=True, help="folder for transfer.json and transfer.png")
    s.add_argument("--family", help="corpus family whose data to use (default: the first)")
    s.add_argument("--patch", choices=["1s", "0.1s"], default="1s", help="patch length")
    s.add_argument("--parent-run", help="file holding the MLflow parent run id")
    s.set_defaults(func=cmd_transfer)
    return p
