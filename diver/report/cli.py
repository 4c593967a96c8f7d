"""``diver report``: the study's HTML report (argument parsing and MLflow logging only).

Wiring: ``register(subparsers)`` adds ``report`` to the ``diver`` parser.  Paths not
given default to the config's ``results_dir`` layout (``corpus/``,
``scaling/runs.csv``, ``scaling/**/fit.json``); a path given explicitly must exist.
With ``--parent-run`` the page is also stored in an MLflow child run (stage
``report``) of the study's parent.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from diver.errors import DiverError
from diver.study.layout import StudyLayout
from diver.tracking import TrackingTarget, stage_run

REPORT_STAGE = "report"


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report`` to an ``argparse`` subparsers object; returns its parser."""
    p = subparsers.add_parser(
        "report",
        help="the study's self-contained HTML report",
        description="Corpus manifest and QA/QC, the grid, loss curves, the fitted scaling "
        "law beside the paper's Table 8, loss vs compute with the frontier, fitted vs "
        "observed, and fine-tuning results with baselines, in one HTML file.",
    )
    p.add_argument("--config", help="study config (study name, results_dir, tracking URI)")
    p.add_argument(
        "--out", required=True, help="HTML file to write (e.g. results/report/index.html)"
    )
    p.add_argument("--corpus", help="corpus folder (default: <results_dir>/corpus)")
    p.add_argument(
        "--runs", help="runs table of `diver scaling collect` (default: scaling/runs.csv)"
    )
    p.add_argument(
        "--fits", nargs="*", help="fit.json files of `diver scaling fit` (default: scaling/**/)"
    )
    p.add_argument(
        "--finetune",
        nargs="*",
        default=[],
        help="metrics.json files of `diver finetune` (none: 'no fine-tuning configured')",
    )
    p.add_argument("--parent-run", help="file holding the MLflow parent run id; log a child run")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: --config's)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from diver.config import StudyConfig, load_config
    from diver.report.build import ReportInputs, existing, write_report  # matplotlib: here

    study = load_config(args.config) if args.config else StudyConfig()
    layout = StudyLayout(study.results_path)
    corpus = Path(args.corpus) if args.corpus else layout.corpus_dir
    if args.corpus and not corpus.is_dir():
        raise DiverError(f"--corpus {corpus}: no such folder")
    runs = existing([args.runs])[0] if args.runs else layout.scaling_runs
    fits = tuple(layout.fit_summaries()) if args.fits is None else existing(args.fits)
    inputs = ReportInputs(
        study=study.study,
        config=Path(args.config) if args.config else None,
        corpus_dir=corpus,
        runs=runs,
        fits=fits,
        finetune=existing(args.finetune),
        hpsearch_dir=layout.root / "hpsearch",
    )
    out = Path(args.out)
    target = None
    if args.parent_run:
        uri = args.tracking_uri or study.tracking_uri()
        target = TrackingTarget.from_run_file(uri, args.parent_run)
    with stage_run(target, stage=REPORT_STAGE, name=REPORT_STAGE) as run:
        write_report(inputs, out)
        if run is not None:
            run.log_params({"fits": len(fits), "finetune_files": len(inputs.finetune)})
            run.log_artifact(out, artifact_path=REPORT_STAGE)
    print(f"report -> {out}")
    return 0
