"""``diver scaling collect``, ``fit`` and ``plan``: argument parsing and printing.

Wiring: ``register(subparsers)`` adds the ``scaling`` command (with ``collect``,
``fit`` and ``plan``) to the ``diver`` parser's subparsers; each subcommand sets ``func``, which
returns the exit status and raises :class:`~diver.errors.DiverError` for input a
user can fix (``diver``'s ``main`` prints those without a traceback).  :func:`main`
runs the same commands standalone.

``collect`` writes ``RUNS.csv`` (:mod:`diver.scaling.runs`) from the cells'
``metrics.json`` files or from the study's MLflow children; with ``--config`` the
grid's ``read_epochs`` make several points of one long run.

``fit`` parses its arguments into one call of :func:`diver.scaling.study.fit_study`
(which module documents the files it writes) and prints the summary it returns
(parameters not identified by the design are printed as such, with their profile
interval instead of a bootstrap interval);
``plan`` reads a fit back (:func:`diver.scaling.study.load_fit`) and prints
:func:`diver.scaling.frontier.plan`'s allocation.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diver.argtypes import non_negative_int
from diver.atomic import write_csv_atomic
from diver.errors import DiverError
from diver.exitcodes import EXIT_ERROR
from diver.scaling.laws import FORMS
from diver.scaling.options import (
    AUTO,
    DEFAULT_AUDIT,
    DEFAULT_BOOTSTRAP,
    HUBER_DELTA,
    RESAMPLE_UNITS,
)
from diver.study.artifacts import FIT_SUMMARY, FitSummary, PretrainMetrics, finite_or_none
from diver.tracking import TrackingTarget

if TYPE_CHECKING:
    from diver.scaling.runs import ReadEpochs

# The fitting code (scipy, pandas, matplotlib) is imported in the commands that use it:
# this module's parser is built on every `diver` call.

log = logging.getLogger("diver.scaling")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``scaling {fit, plan}`` to an ``argparse`` subparsers object; returns it."""
    p = subparsers.add_parser("scaling", help="fit scaling laws and plan compute (SPEC §4)")
    sub = p.add_subparsers(dest="scaling_command", required=True)

    c = sub.add_parser(
        "collect",
        help="gather the grid's results into a runs table",
        description="Write RUNS.csv (one row per scaling-law point: identity, params, "
        "tokens, unique_tokens, loss, FLOPs) from the cells' metrics.json files or from "
        "the pretraining child runs of the study's MLflow parent run.",
    )
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--metrics", nargs="+", help="the cells' metrics.json files")
    source.add_argument(
        "--from-mlflow",
        action="store_true",
        help="read the FINISHED pretraining children of --parent-run (their metrics.json)",
    )
    c.add_argument("--parent-run", help="file holding the study's MLflow parent run id")
    c.add_argument("--tracking-uri", help="MLflow tracking URI (default: --config's)")
    c.add_argument(
        "--config",
        help="study config: the grid's read_epochs (a point per read epoch) and tracking URI",
    )
    c.add_argument("--out", required=True, help="runs table to write (CSV)")
    c.set_defaults(func=cmd_collect)

    f = sub.add_parser(
        "fit",
        help="Chinchilla approach-3 fit with bootstrap intervals",
        description="Fit a scaling law to RUNS.csv (columns params, tokens, unique_tokens, "
        "loss) and write fit.json, bootstrap.csv, frontier.csv and figures to --out.",
    )
    f.add_argument("--runs", required=True, help="CSV of runs: params, tokens, unique_tokens, loss")
    f.add_argument("--out", required=True, help="output folder")
    f.add_argument(
        "--form",
        choices=(*FORMS, AUTO),
        default=AUTO,
        help="law to fit (default auto: both laws fitted when the design could carry the "
        "data-constrained one, which is chosen only when all its parameters are identified "
        "and it predicts held-out runs better)",
    )
    f.add_argument(
        "--resample",
        choices=RESAMPLE_UNITS,
        default="run",
        help="bootstrap unit: run (the run_dir column's runs; default), row, or residual "
        "(fixed design, resampled residuals)",
    )
    f.add_argument(
        "--fix",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="hold parameters at values (natural units), e.g. R_N_star=5.3 alpha=0.34",
    )
    f.add_argument(
        "--two-stage",
        action="store_true",
        help="Muennighoff et al.'s procedure: A, B, E, alpha, beta on the one-epoch runs "
        "(or --stage-one), then R_D*, R_N* on all runs with those fixed",
    )
    f.add_argument(
        "--stage-one",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="with --two-stage: the rows of stage one (repeatable; default: one-epoch runs)",
    )
    f.add_argument(
        "--audit",
        type=non_negative_int,
        default=DEFAULT_AUDIT,
        help="bootstrap resamples also refitted by the whole multistart fit, to count the "
        f"refits that missed a better optimum (default {DEFAULT_AUDIT}; 0: none)",
    )
    f.add_argument(
        "--huber-delta",
        type=_positive_float,
        default=HUBER_DELTA,
        help=f"Huber threshold on log loss (default {HUBER_DELTA:g}, as published)",
    )
    f.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="fit only the rows where COLUMN equals VALUE (repeatable), e.g. family=ieeg",
    )
    f.add_argument(
        "--bootstrap",
        type=non_negative_int,
        default=DEFAULT_BOOTSTRAP,
        help=f"bootstrap resamples for the intervals (0: none; default {DEFAULT_BOOTSTRAP})",
    )
    f.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    f.add_argument(
        "--jobs", type=int, default=1, help="processes for the bootstrap (results do not change)"
    )
    f.add_argument(
        "--parent-run",
        help="file holding the MLflow parent run id: log the fit as a child run (stage scaling)",
    )
    f.add_argument("--tracking-uri", help="MLflow tracking URI (default: --config's)")
    f.add_argument("--config", help="study config (its tracking URI)")
    f.set_defaults(func=cmd_fit)

    q = sub.add_parser(
        "plan",
        help="compute-optimal N and D for a FLOP budget, with intervals",
        description="Compute-optimal parameters and tokens for a budget (C = 6 N D) from a "
        "fit.json, the loss the law predicts, and bootstrap intervals.",
    )
    q.add_argument("--fit", required=True, help="fit.json written by `diver scaling fit`")
    q.add_argument("--flops", required=True, type=_positive_float, help="compute budget C")
    q.add_argument(
        "--unique-tokens",
        type=_positive_float,
        default=None,
        help="unique tokens U_D available: adds epochs = D/U_D and the U_D-aware optimum",
    )
    q.add_argument("--format", choices=["text", "json"], default="text")
    q.set_defaults(func=cmd_plan)
    return p


def _tracking_uri(args: argparse.Namespace) -> str:
    if args.tracking_uri:
        return str(args.tracking_uri)
    if args.config:
        from diver.config import load_config

        return load_config(args.config).tracking_uri()
    raise DiverError("MLflow needs --tracking-uri or --config (whose tracking URI is used)")


def _tracking(args: argparse.Namespace) -> TrackingTarget | None:
    """Where to log when ``--parent-run`` is given (its file checked up front)."""
    if not args.parent_run:
        return None
    return TrackingTarget.from_run_file(_tracking_uri(args), args.parent_run)


def _read_epochs_of_grid(config: str | None) -> ReadEpochs | None:
    """Per cell, the epochs at which the config's grid reads the loss (SPEC §3's EEG runs)."""
    if not config:
        return None
    from diver.config import load_config
    from diver.study.cells import grid_cells

    table = {
        (c.family, c.patch, c.size, float(c.fraction), c.subjects, int(c.epochs)): c.read_epochs
        for c in grid_cells(load_config(config))
        if c.read_epochs
    }

    def lookup(metrics: PretrainMetrics) -> tuple[int, ...]:
        key = (
            metrics.family or "",
            metrics.patch,
            metrics.size,
            metrics.data_fraction,
            metrics.subjects,
            metrics.epochs,
        )
        return tuple(table.get(key, ()))

    return lookup


def cmd_collect(args: argparse.Namespace) -> int:
    from diver.scaling.runs import collect_files, collect_mlflow

    read_epochs = _read_epochs_of_grid(args.config)
    if args.from_mlflow:
        if not args.parent_run:
            raise DiverError("--from-mlflow needs --parent-run (the study's parent run id file)")
        target = _tracking(args)
        assert target is not None  # --parent-run is given
        frame = collect_mlflow(target.uri, target.parent_run_id, read_epochs=read_epochs)
        where = f"MLflow parent run {target.parent_run_id}"
    else:
        frame = collect_files(args.metrics, read_epochs=read_epochs)
        where = f"{len(args.metrics)} metrics.json files"
    out = Path(args.out)
    write_csv_atomic(out, frame)
    print(f"{len(frame)} scaling-law points from {where} -> {out}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from diver.scaling.study import fit_study

    out = Path(args.out)
    summary = fit_study(
        args.runs,
        out,
        form=args.form,
        where=args.where,
        bootstrap=args.bootstrap,
        seed=args.seed,
        jobs=args.jobs,
        tracking=_tracking(args),
        huber_delta=args.huber_delta,
        fix=args.fix,
        two_stage=args.two_stage,
        stage_one=args.stage_one,
        resample=args.resample,
        audit=args.audit,
    )
    print_fit(summary)
    print(f"-> {out / FIT_SUMMARY}")
    return 0


def print_fit(summary: FitSummary) -> None:
    """What ``diver scaling fit`` prints: the form and why, estimates with intervals,
    which parameters the design does not identify, and the bootstrap's bookkeeping."""
    from diver.scaling.bootstrap import audit_sentence
    from diver.scaling.study import source_label

    source = source_label(summary)
    if not summary.fitted:
        print(f"{source}: {summary.form_reason}")
        return
    extra = summary.extra
    print(f"{summary.form} law fitted to {summary.n_points} runs ({source})")
    if summary.form_requested == AUTO:
        print(f"  auto: {summary.form_reason}")
    if extra.get("two_stage"):
        stage = extra["two_stage"]
        print(f"  two-stage: stage one on {stage['stage_one_points']} points")
    verdicts = extra.get("identification") or {}
    profile_ci = extra.get("profile_ci") or {}
    for name, value in summary.params.items():
        ci = summary.ci.get(name)
        band = f"  [{ci[0]:.5g}, {ci[1]:.5g}]" if ci and None not in ci else ""
        status = (verdicts.get(name) or {}).get("status", "")
        if status == "fixed":
            band = "  (fixed)"
        elif status.startswith("not"):
            reasons = "; ".join(verdicts[name].get("reasons") or [])
            prof = profile_ci.get(name)
            where = f"; profile interval [{prof[0]:.5g}, {prof[1]:.5g}]" if prof else ""
            band = f"  NOT IDENTIFIED BY THIS DESIGN ({reasons}{where})"
        print(f"  {name:9s} {value:.5g}{band}")
    print(
        f"  R^2 linear {summary.r2_linear:.4f}, log {summary.r2_log:.4f}; "
        f"{extra.get('holdout', 'held-out')} RMSE(log loss) {summary.loo_rmse_log:.4g}"
    )
    if summary.bootstrap:
        unit = extra.get("resample_unit", "run")
        print(
            f"  bootstrap: {summary.bootstrap} resamples by {unit}, "
            f"{extra.get('bootstrap_starts', 1)} starts each; "
            f"{summary.bootstrap_failed} did not converge (excluded)"
        )
    audit = extra.get("audit")
    if audit:
        print(f"  audit: {audit_sentence(audit)}")
    scale = extra.get("residual_scale") or {}
    if scale:
        print(
            f"  Huber delta {summary.huber_delta:g}; residual RMS {scale['rms']:.4g}, "
            f"MAD {scale['mad']:.4g}"
        )


def _line(label: str, entry: dict[str, Any], fmt: str = ".4g") -> str:
    text = f"  {label:8s} {entry['value']:{fmt}}"
    if "ci" in entry:
        lo, hi = entry["ci"]
        text += f"  [{lo:{fmt}}, {hi:{fmt}}]"
    return text


def format_plan(result: dict[str, Any]) -> str:
    """Human-readable plan (the ``text`` output of ``diver scaling plan``)."""
    u = result["unique_tokens"]
    n_samples = result.get("bootstrap_samples")
    bands = f", 95 % intervals from {n_samples} bootstrap fits" if n_samples else ""
    lines = [f"budget C = {result['flops']:.4g} FLOP ({result['form']} law{bands})"]
    lines.append("compute-optimal allocation (SPEC §4, C = 6 N D):")
    lines.append(_line("N", result["N_opt"]))
    lines.append(_line("D", result["D_opt"]))
    if u is not None:
        lines.append(_line("epochs", result["epochs"]))
    where = "fresh data" if u is None else f"U_D = {u:.4g} unique tokens"
    lines.append(_line("loss", result["loss"]) + f"   ({where})")
    if "constrained" in result:
        c = result["constrained"]
        lines.append(f"best allocation with U_D = {u:.4g} unique tokens (repetition counted):")
        lines += [_line(k, c[k]) for k in ("N", "D", "epochs", "loss")]
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    from diver.scaling.frontier import plan
    from diver.scaling.study import load_fit

    path = Path(args.fit)
    params, _, samples = load_fit(path)
    result = plan(params, args.flops, args.unique_tokens, samples)
    if args.format == "json":
        print(json.dumps(finite_or_none(result), indent=2))
    else:
        print(format_plan(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser with just the ``scaling`` command (as ``diver`` wires it)."""
    parser = argparse.ArgumentParser(prog="diver")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``diver scaling ...`` without the rest of ``diver`` (errors as ``diver`` reports them)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except DiverError as exc:
        print(f"diver {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
