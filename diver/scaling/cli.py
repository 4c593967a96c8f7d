"""``diver scaling collect``, ``fit`` and ``plan``: argument parsing and file I/O.

Wiring: ``register(subparsers)`` adds the ``scaling`` command (with ``collect``,
``fit`` and ``plan``) to the ``diver`` parser's subparsers; each subcommand sets ``func``, which
returns the exit status and raises :class:`~diver.errors.DiverError` for input a
user can fix (``diver``'s ``main`` prints those without a traceback).  :func:`main`
runs the same commands standalone.

``collect`` writes ``RUNS.csv`` (:mod:`diver.scaling.runs`) from the cells'
``metrics.json`` files or from the study's MLflow children; with ``--config`` the
grid's ``read_epochs`` make several points of one long run.

``fit`` fits the rows selected by ``--where COLUMN=VALUE`` (subject-sweep rows never:
the law has no variable for subjects).  ``--form auto`` fits the data-constrained law
when the runs can determine it, else the Chinchilla law, else nothing
(:func:`diver.scaling.runs.choose_form`); ``fit.json`` records the request, the form
used and why.  With ``--parent-run`` the fit, its files and figures go to an MLflow
child run (stage ``scaling``) of the study's parent.  ``fit`` writes into ``--out``:

- ``bootstrap.csv``: one row per bootstrap refit, the law's natural parameters
  (what ``plan`` needs for its intervals);
- ``frontier.csv``: compute budgets from two decades below the runs' least compute to
  two above their most, with SPEC §4's ``N_opt, D_opt`` and the predicted loss (fresh
  data), and ``*_lo``/``*_hi`` 95 % bootstrap bands;
- ``loss_vs_compute.png``, ``fitted_vs_observed.png``, ``iso_flop.png``;
- ``fit.json`` last (so its presence means the rest is complete): point estimates
  ``A, B, E, alpha, beta[, R_D_star, R_N_star]``, ``ci`` ``{name: [lo, hi]}``,
  ``r2_linear``, ``r2_log``, ``loo_rmse_log``, ``loo_mape``, ``n_points``, ``form``,
  ``bootstrap``, the file names, ``status`` (``fitted``), ``form_requested``,
  ``form_reason``, ``design`` (the counts the auto rule looked at), ``selection``,
  ``excluded`` and ``at_bound`` (parameters on the search box: not determined by the
  runs).  When ``--form auto`` finds no law the runs can determine, ``fit.json`` alone
  is written, with ``status`` ``skipped``, ``form`` null and the reason.

Every file is written atomically (temporary name, then ``os.replace``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diver.argtypes import non_negative_int
from diver.atomic import write_csv_atomic, write_text_atomic
from diver.errors import DiverError
from diver.exitcodes import EXIT_ERROR
from diver.scaling import plots
from diver.scaling.bootstrap import DEFAULT_BOOTSTRAP
from diver.scaling.fit import fit_law
from diver.scaling.frontier import flop_range, frontier_table, plan
from diver.scaling.laws import FORMS, PARAM_NAMES, LawParams, predict
from diver.scaling.observations import REQUIRED_COLUMNS, ScalingFitError, make_runs
from diver.scaling.optimise import bounds
from diver.scaling.runs import (
    ReadEpochs,
    choose_form,
    collect_files,
    collect_mlflow,
    design_counts,
    select_rows,
)

log = logging.getLogger("diver.scaling")

FIT_JSON = "fit.json"
BOOTSTRAP_CSV = "bootstrap.csv"
FRONTIER_CSV = "frontier.csv"
FIGURES = ("loss_vs_compute.png", "fitted_vs_observed.png", "iso_flop.png")
AUTO = "auto"
SCALING_STAGE = "scaling"
U_N_DEFINITION = (
    "U_N = min(N_opt(U_D), N), N_opt(U_D) = (alpha A / (beta B))^(1/alpha) U_D^(beta/alpha): "
    "the compute-optimal N (C = 6 N D, SPEC §4) whose compute-optimal D is U_D"
)


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
        default="data-constrained",
        help="law to fit; auto: data-constrained when the runs determine it, else Chinchilla",
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


def _finite_or_none(value: Any) -> Any:
    """JSON without NaN/Infinity (not valid JSON): non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    return value


def read_runs_csv(path: Path) -> pd.DataFrame:
    """The runs table, or a :class:`ScalingFitError` naming ``path`` and the problem."""
    if not path.is_file():
        raise ScalingFitError(f"{path}: no such runs file")
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ScalingFitError(f"{path}: not a readable CSV ({exc})") from exc


def _tracking_uri(args: argparse.Namespace) -> str:
    if args.tracking_uri:
        return str(args.tracking_uri)
    if args.config:
        from diver.config import load_config

        return load_config(args.config).tracking_uri()
    raise DiverError("MLflow needs --tracking-uri or --config (whose tracking URI is used)")


def _tracking(args: argparse.Namespace) -> tuple[str, str] | None:
    """``(tracking URI, parent run id)`` when ``--parent-run`` is given, checked up front."""
    if not args.parent_run:
        return None
    from diver.tracking.runid import read_run_id

    return _tracking_uri(args), read_run_id(Path(args.parent_run))


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

    def lookup(metrics: dict[str, Any]) -> tuple[int, ...]:
        try:
            key = (
                str(metrics.get("family") or ""),
                str(metrics["patch"]),
                str(metrics["size"]),
                float(metrics["data_fraction"]),
                metrics.get("subjects"),
                int(metrics["epochs"]),
            )
        except (KeyError, TypeError, ValueError):
            return ()  # cell_rows reports what is missing, naming the file
        return tuple(table.get(key, ()))

    return lookup


def cmd_collect(args: argparse.Namespace) -> int:
    read_epochs = _read_epochs_of_grid(args.config)
    if args.from_mlflow:
        if not args.parent_run:
            raise DiverError("--from-mlflow needs --parent-run (the study's parent run id file)")
        uri, parent = _tracking(args) or ("", "")
        frame = collect_mlflow(uri, parent, read_epochs=read_epochs)
        where = f"MLflow parent run {parent}"
    else:
        frame = collect_files(args.metrics, read_epochs=read_epochs)
        where = f"{len(args.metrics)} metrics.json files"
    out = Path(args.out)
    write_csv_atomic(out, frame)
    print(f"{len(frame)} scaling-law points from {where} -> {out}")
    return 0


def _check_values(frame: pd.DataFrame, source: str) -> None:
    """Missing columns and bad values fail before ``--form auto`` counts anything."""
    missing = [c for c in REQUIRED_COLUMNS["chinchilla"] if c not in frame.columns]
    if missing:
        raise ScalingFitError(
            f"{source}: missing column(s) {missing}; a fit needs "
            f"{list(REQUIRED_COLUMNS['chinchilla'])} (and unique_tokens for the "
            "data-constrained form)"
        )
    columns = [c for c in REQUIRED_COLUMNS["data-constrained"] if c in frame.columns]
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.all(np.isfinite(values) & (values > 0), axis=1))
    if bad.size:
        what = "NaN" if np.isnan(values[bad]).any() else "non-finite or non-positive"
        raise ScalingFitError(
            f"{source}: {what} values in {bad.size} row(s) of {columns} (0-based rows "
            f"{bad[:10].tolist()}{' ...' if bad.size > 10 else ''}); every run needs finite "
            "positive values"
        )


def _at_bound(x: np.ndarray, form: str) -> list[str]:
    """Parameters the optimiser left on its search box: the runs do not determine them."""
    names = PARAM_NAMES[form]
    out = []
    for i, (lo, hi) in enumerate(bounds(form)):
        if min(abs(x[i] - lo), abs(x[i] - hi)) <= 1e-6 * (hi - lo):
            out.append(names[i])
    return out


def _label(selection: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in selection.items()) or "all"


def _publish(
    out: Path,
    summary: dict[str, Any],
    files: list[str],
    runs_path: Path,
    tracking: tuple[str, str] | None,
) -> None:
    """Write fit.json last; with tracking, inside a child run holding the files and figures."""
    text = json.dumps(_finite_or_none(summary), indent=2) + "\n"
    if tracking is None:
        write_text_atomic(out / FIT_JSON, text)
        return
    from diver.tracking.runs import child_run

    uri, parent = tracking
    label = _label(summary.get("selection") or {})
    with child_run(uri, parent, stage=SCALING_STAGE, cell=label, name=f"scaling:{label}") as run:
        params = {
            "form": summary.get("form"),
            "form_requested": summary.get("form_requested"),
            "form_reason": summary.get("form_reason"),
            "status": summary.get("status"),
            "n_points": summary.get("n_points"),
            "bootstrap": summary.get("bootstrap"),
            "seed": summary.get("seed"),
            "runs": str(runs_path),
            **{f"where.{k}": v for k, v in (summary.get("selection") or {}).items()},
        }
        run.log_params({k: v for k, v in params.items() if v is not None})
        metrics: dict[str, float] = {}
        form = summary.get("form")
        if form in FORMS:
            for name in PARAM_NAMES[form]:
                metrics[name] = summary[name]
                lo_hi = (summary.get("ci") or {}).get(name)
                if lo_hi:
                    metrics[f"{name}_ci_lo"], metrics[f"{name}_ci_hi"] = lo_hi
            for key in ("r2_linear", "r2_log", "loo_rmse_log", "loo_mape", "objective"):
                metrics[key] = summary[key]
        metrics["n_points"] = summary.get("n_points") or 0
        run.log_metrics(
            {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        )
        for name in files:
            run.log_artifact(out / name, artifact_path=SCALING_STAGE)
        if runs_path.is_file():
            run.log_artifact(runs_path, artifact_path=SCALING_STAGE)
        write_text_atomic(out / FIT_JSON, text)
        run.log_artifact(out / FIT_JSON, artifact_path=SCALING_STAGE)


def cmd_fit(args: argparse.Namespace) -> int:
    runs_path = Path(args.runs)
    out = Path(args.out)
    if args.jobs < 1:
        raise DiverError(f"--jobs must be at least 1, got {args.jobs}")
    frame = read_runs_csv(runs_path)
    tracking = _tracking(args)
    source = str(runs_path)
    selection: dict[str, str] = {}
    excluded: dict[str, int] = {}
    if args.where or "subjects" in frame.columns:
        frame, selection, excluded = select_rows(frame, args.where, source=source)
        if selection:
            source = f"{runs_path} [{_label(selection)}]"
    form = args.form
    reason = f"{form} law requested"
    if form == AUTO:
        _check_values(frame, source)
        choice = choose_form(frame)
        reason = choice.reason
        if choice.form is None:
            summary = {
                "status": "skipped",
                "form": None,
                "form_requested": AUTO,
                "form_reason": reason,
                "design": choice.counts,
                "n_points": len(frame),
                "selection": selection,
                "excluded": excluded,
                "runs": str(runs_path),
                "files": {"bootstrap": None, "frontier": None, "figures": []},
            }
            out.mkdir(parents=True, exist_ok=True)
            _publish(out, summary, [], runs_path, tracking)
            print(f"{source}: {reason}")
            print(f"-> {out / FIT_JSON}")
            return 0
        form = choice.form
    runs = make_runs(frame, form, source=source)
    log.info("fitting %s law to %d runs from %s", form, runs.n, source)
    result = fit_law(runs, form, bootstrap=args.bootstrap, seed=args.seed, jobs=args.jobs)
    names = PARAM_NAMES[form]

    out.mkdir(parents=True, exist_ok=True)
    samples = result.bootstrap_samples if result.bootstrap else None
    if samples is not None:
        write_csv_atomic(out / BOOTSTRAP_CSV, pd.DataFrame(samples, columns=list(names)))
    budgets = flop_range(6.0 * runs.params * runs.tokens)
    frontier = frontier_table(result.params, budgets, samples)
    write_csv_atomic(out / FRONTIER_CSV, frontier)

    unique = runs.unique_tokens if form == "data-constrained" else None
    fitted = predict(result.params, runs.params, runs.tokens, unique)
    plots.loss_vs_compute(
        out / FIGURES[0],
        runs.params,
        runs.tokens,
        runs.loss,
        frontier,
        title=f"{form} law, {runs.n} runs",
    )
    plots.fitted_vs_observed(
        out / FIGURES[1], runs.loss, fitted, r2_linear=result.r2_linear, r2_log=result.r2_log
    )
    run_flops = 6.0 * runs.params * runs.tokens
    plots.iso_flop_curves(
        out / FIGURES[2],
        result.params,
        np.logspace(np.log10(run_flops.min()), np.log10(run_flops.max()), 5),
        (runs.params.min() / 10.0, runs.params.max() * 10.0),
        unique_tokens=float(np.median(runs.unique_tokens)) if unique is not None else None,
    )

    summary = result.summary()
    summary.update(
        {
            "status": "fitted",
            "form_requested": args.form,
            "form_reason": reason,
            "design": design_counts(frame),
            "selection": selection,
            "excluded": excluded,
            "at_bound": _at_bound(result.x, form),
            "runs": str(runs_path),
            "files": {
                "bootstrap": BOOTSTRAP_CSV if samples is not None else None,
                "frontier": FRONTIER_CSV,
                "figures": list(FIGURES),
            },
            "compute": "C = 6 N D",
        }
    )
    if form == "data-constrained":
        summary["U_N_definition"] = U_N_DEFINITION
    files = [*([BOOTSTRAP_CSV] if samples is not None else []), FRONTIER_CSV, *FIGURES]
    _publish(out, summary, files, runs_path, tracking)

    print(f"{form} law fitted to {runs.n} runs ({source})")
    if args.form == AUTO:
        print(f"  auto: {reason}")
    for name in names:
        value = summary[name]
        ci = result.ci.get(name)
        band = f"  [{ci[0]:.5g}, {ci[1]:.5g}]" if ci else ""
        print(f"  {name:9s} {value:.5g}{band}")
    print(
        f"  R^2 linear {result.r2_linear:.4f}, log {result.r2_log:.4f}; "
        f"leave-one-out RMSE(log loss) {result.loo_rmse_log:.4g}"
    )
    if summary["at_bound"]:
        log.warning("on the search bounds (not determined by the runs): %s", summary["at_bound"])
    if result.bootstrap_failed:
        log.warning("%d of %d bootstrap refits failed", result.bootstrap_failed, args.bootstrap)
    print(f"-> {out / FIT_JSON}")
    return 0


def load_fit(path: Path) -> tuple[LawParams, dict[str, Any], np.ndarray | None]:
    """``(params, fit.json content, bootstrap samples or None)`` from a fit.json."""
    if not path.is_file():
        raise DiverError(f"{path}: no such fit file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DiverError(f"{path}: not valid JSON ({exc})") from exc
    form = data.get("form") if isinstance(data, dict) else None
    if isinstance(data, dict) and data.get("status") == "skipped":
        raise DiverError(f"{path}: no law was fitted ({data.get('form_reason')})")
    if form not in FORMS:
        raise DiverError(f"{path}: 'form' must be one of {FORMS}, got {form!r}")
    try:
        params = LawParams.from_mapping(data, form)
    except (KeyError, TypeError, ValueError) as exc:
        raise DiverError(f"{path}: {exc}") from exc
    samples = None
    name = (data.get("files") or {}).get("bootstrap")
    if name:
        sample_path = path.parent / name
        if not sample_path.is_file():
            raise DiverError(f"{path}: its bootstrap samples {sample_path} are missing")
        table = pd.read_csv(sample_path)
        missing = [c for c in PARAM_NAMES[form] if c not in table.columns]
        if missing:
            raise DiverError(f"{sample_path}: missing column(s) {missing}")
        samples = table[list(PARAM_NAMES[form])].to_numpy(dtype=float)
    return params, data, samples


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
    path = Path(args.fit)
    params, _, samples = load_fit(path)
    result = plan(params, args.flops, args.unique_tokens, samples)
    if args.format == "json":
        print(json.dumps(_finite_or_none(result), indent=2))
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
