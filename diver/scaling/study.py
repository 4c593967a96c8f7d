"""A study's scaling-law fit as one call: :func:`fit_study` (what ``diver scaling fit`` runs).

Why a library function: the fit pipeline - select the rows, choose the form, fit, write
the bootstrap samples, the frontier, the figures and ``fit.json`` - is what the DAG's
scaling rule, the tests and a notebook all want; the command only parses arguments
and prints the :class:`~diver.study.artifacts.FitSummary` this returns.

``fit_study`` fits the rows selected by ``where`` (``COLUMN=VALUE``; subject-sweep rows
never: the law has no variable for subjects).  ``form="auto"`` (the default) first
asks whether the design could carry each law at all (counts:
:func:`diver.scaling.runs.choose_form`), then, when both could, fits both and chooses
by evidence (:func:`diver.scaling.runs.choose_by_evidence`: identification and
held-out error by run); ``fit.json`` records the request, the form used, why, and
both fits (``forms``).  ``two_stage`` runs Muennighoff et al.'s procedure
(:mod:`diver.scaling.fit`), ``fix`` holds parameters at given values, ``resample``
chooses the bootstrap's unit (run, row or residual; runs are named by the table's
``run_dir``), ``huber_delta`` the Huber threshold.  With ``tracking`` the fit, its
files and figures go to an MLflow child run (stage ``scaling``) of the study's parent,
with the parameters not identified as a tag and a param (``not_identified``).  It
writes into ``out``:

- ``bootstrap.csv``: one row per bootstrap refit, the law's natural parameters
  (what ``plan`` needs for its intervals; empty where the refit did not converge),
  ``converged`` and ``start`` (which start won: 0 is the full-sample optimum);
- ``frontier.csv``: compute budgets from two decades below the runs' least compute to
  two above their most, with SPEC §4's ``N_opt, D_opt`` and the predicted loss (fresh
  data), and ``*_lo``/``*_hi`` 95 % bootstrap bands;
- ``loss_vs_compute.png``, ``fitted_vs_observed.png``, ``iso_flop.png``,
  ``profiles.png`` (each free parameter's profile likelihood, its 95 % cutoff, and
  which parameters are not identified);
- ``fit.json`` last (so its presence means the rest is complete): point estimates
  ``A, B, E, alpha, beta[, R_D_star, R_N_star]``, ``ci`` ``{name: [lo, hi]}``,
  ``r2_linear``, ``r2_log``, ``loo_rmse_log``, ``loo_mape``, ``n_points``, ``form``,
  ``bootstrap``, the file names, ``status`` (``fitted``), ``form_requested``,
  ``form_reason``, ``design`` (the counts the auto rule looked at), ``selection``,
  ``excluded`` and ``at_bound`` (estimates on the search box); and, from
  :meth:`diver.scaling.fit.FitResult.summary`: ``identification`` (per parameter:
  ``identified``, ``not identified by this design`` or ``fixed``, with the reasons),
  ``not_identified``, ``profiles`` (the curves' points), ``profile_ci`` (instead of
  ``ci`` for a parameter that is not identified), ``conditioning``,
  ``residual_scale``, ``huber_delta``, ``resample_unit`` and ``resample_column``,
  ``n_runs``, ``holdout``, ``bootstrap_failed`` (refits that did not converge,
  excluded from the intervals), ``bootstrap_starts``, ``fixed``, ``two_stage``,
  ``forms`` (with ``auto``: both laws' fits side by side).  When ``form="auto"``
  finds no law the runs can determine, ``fit.json`` alone is written, with ``status``
  ``skipped``, ``form`` null and the reason.

Every file is written atomically (temporary name, then ``os.replace``).
:func:`load_fit` reads a fit back with its bootstrap samples (``diver scaling plan``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diver.atomic import write_csv_atomic
from diver.errors import DiverError
from diver.scaling import plots
from diver.scaling.bootstrap import audit_left, audit_sentence, resample_groups
from diver.scaling.fit import FitResult, fit_law
from diver.scaling.frontier import flop_range, frontier_table
from diver.scaling.laws import FORMS, PARAM_NAMES, LawParams, predict
from diver.scaling.observations import (
    REQUIRED_COLUMNS,
    Runs,
    ScalingFitError,
    bad_rows,
    make_runs,
)
from diver.scaling.optimise import bounds
from diver.scaling.options import (
    AUTO,
    DEFAULT_AUDIT,
    DEFAULT_BOOTSTRAP,
    HUBER_DELTA,
    RESAMPLE_UNITS,
)
from diver.scaling.runs import (
    choose_by_evidence,
    choose_form,
    design_counts,
    select_rows,
    where_mask,
)
from diver.study.artifacts import FIT_SUMMARY, ArtifactError, FitSummary
from diver.tracking import TrackingTarget, stage_run

log = logging.getLogger("diver.scaling")

FIT_JSON = FIT_SUMMARY
BOOTSTRAP_CSV = "bootstrap.csv"
FRONTIER_CSV = "frontier.csv"
FIGURES = ("loss_vs_compute.png", "fitted_vs_observed.png", "iso_flop.png", "profiles.png")
SCALING_STAGE = "scaling"
U_N_DEFINITION = (
    "U_N = min(N_opt(U_D), N), N_opt(U_D) = (alpha A / (beta B))^(1/alpha) U_D^(beta/alpha): "
    "the compute-optimal N (C = 6 N D, SPEC §4) whose compute-optimal D is U_D"
)


def read_runs_csv(path: Path) -> pd.DataFrame:
    """The runs table, or a :class:`ScalingFitError` naming ``path`` and the problem."""
    if not path.is_file():
        raise ScalingFitError(f"{path}: no such runs file")
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ScalingFitError(f"{path}: not a readable CSV ({exc})") from exc


def _check_values(frame: pd.DataFrame, source: str) -> None:
    """Missing columns and bad values fail before ``form="auto"`` counts anything."""
    missing = [c for c in REQUIRED_COLUMNS["chinchilla"] if c not in frame.columns]
    if missing:
        raise ScalingFitError(
            f"{source}: missing column(s) {missing}; a fit needs "
            f"{list(REQUIRED_COLUMNS['chinchilla'])} (and unique_tokens for the "
            "data-constrained form)"
        )
    columns = [c for c in REQUIRED_COLUMNS["data-constrained"] if c in frame.columns]
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    problem = bad_rows(values)
    if problem:
        raise ScalingFitError(
            f"{source}: columns {columns} have {problem}; every run needs finite positive values"
        )


def _at_bound(x: np.ndarray, form: str) -> list[str]:
    """Parameters the optimiser left on its search box: the runs do not determine them."""
    names = PARAM_NAMES[form]
    out = []
    for i, (lo, hi) in enumerate(bounds(form)):
        if min(abs(x[i] - lo), abs(x[i] - hi)) <= 1e-6 * (hi - lo):
            out.append(names[i])
    return out


def source_label(summary: FitSummary) -> str:
    """The runs file and the selection, as messages name a fit's input."""
    if not summary.selection:
        return str(summary.runs)
    return f"{summary.runs} [{summary.selection_label}]"


def _publish(
    out: Path,
    summary: FitSummary,
    files: list[str],
    runs_path: Path,
    tracking: TrackingTarget | None,
) -> None:
    """Write fit.json last; with tracking, inside a child run holding the files and figures."""
    if tracking is None:
        summary.write(out / FIT_JSON)
        return
    label = summary.selection_label
    with stage_run(tracking, stage=SCALING_STAGE, cell=label, name=f"scaling:{label}") as run:
        assert run is not None  # a target gives a run
        params = {
            "form": summary.form,
            "form_requested": summary.form_requested,
            "form_reason": summary.form_reason,
            "status": summary.status,
            "n_points": summary.n_points,
            "bootstrap": summary.bootstrap if summary.fitted else None,
            "seed": summary.seed,
            "runs": str(runs_path),
            **{f"where.{k}": v for k, v in summary.selection.items()},
        }
        extra = summary.extra
        if summary.fitted:
            not_identified = list(extra.get("not_identified") or [])
            params.update(
                {
                    "resample_unit": extra.get("resample_unit"),
                    "huber_delta": summary.huber_delta,
                    "two_stage": bool(extra.get("two_stage")),
                    "not_identified": ",".join(not_identified) or "none",
                    **{f"fixed.{k}": v for k, v in (extra.get("fixed") or {}).items()},
                }
            )
            run.set_tags({"diver.scaling.not_identified": ",".join(not_identified) or "none"})
        run.log_params({k: v for k, v in params.items() if v is not None})
        metrics: dict[str, float | None] = {}
        if summary.fitted:
            for name, value in summary.params.items():
                metrics[name] = value
                lo_hi = summary.ci.get(name)
                if lo_hi:
                    metrics[f"{name}_ci_lo"], metrics[f"{name}_ci_hi"] = lo_hi
            for key in ("r2_linear", "r2_log", "loo_rmse_log", "loo_mape", "objective"):
                metrics[key] = getattr(summary, key)
            metrics["bootstrap_failed"] = summary.bootstrap_failed
            audit = extra.get("audit") or {}
            if audit:
                metrics["audit_missed"] = audit["missed"]
                metrics["audit_added_starts"] = audit.get("added_starts", 0)
                if audit.get("after"):
                    metrics["audit_after_missed"] = audit["after"]["missed"]
            for name in extra.get("not_identified") or []:
                band = (extra.get("profile_ci") or {}).get(name)
                if band:
                    metrics[f"{name}_profile_lo"], metrics[f"{name}_profile_hi"] = band
        metrics["n_points"] = summary.n_points or 0
        run.log_metrics(
            {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
        )
        for name in files:
            run.log_artifact(out / name, artifact_path=SCALING_STAGE)
        if runs_path.is_file():
            run.log_artifact(runs_path, artifact_path=SCALING_STAGE)
        summary.write(out / FIT_JSON)
        run.log_artifact(out / FIT_JSON, artifact_path=SCALING_STAGE)


def _figures(out: Path, form: str, runs: Runs, result: FitResult, frontier: pd.DataFrame) -> None:
    """The fit's three figures (:data:`FIGURES`)."""
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
    plots.profile_curves(out / FIGURES[3], result.profiles, result.identification)


def _parse_fix(fix: Mapping[str, float] | Sequence[str]) -> dict[str, float]:
    """``NAME=VALUE`` items (or a mapping) -> ``{name: value}``."""
    if isinstance(fix, Mapping):
        return {str(k): float(v) for k, v in fix.items()}
    out: dict[str, float] = {}
    for item in fix:
        name, sep, value = str(item).partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise DiverError(f"--fix {item!r}: expected NAME=VALUE with a number")
    return out


def _form_entry(result: FitResult) -> dict[str, Any]:
    """One law's fit as ``fit.json``'s ``forms`` shows it beside the other."""
    return {
        "params": result.params.to_dict(),
        "objective": result.objective,
        "r2_log": result.r2_log,
        "loo_rmse_log": result.loo_rmse_log,
        "holdout": result.holdout,
        "not_identified": result.not_identified,
        "condition_number": result.conditioning.get("condition_number"),
        "ill_conditioned": result.conditioning.get("ill_conditioned"),
        "n_points": result.n_points,
    }


def fit_study(
    runs_csv: str | Path,
    out: str | Path,
    *,
    form: str = AUTO,
    where: Sequence[str] = (),
    bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    jobs: int = 1,
    tracking: TrackingTarget | None = None,
    huber_delta: float = HUBER_DELTA,
    fix: Mapping[str, float] | Sequence[str] = (),
    two_stage: bool = False,
    stage_one: Sequence[str] = (),
    resample: str = "run",
    audit: int = DEFAULT_AUDIT,
) -> FitSummary:
    """Fit a law to the runs table ``runs_csv`` (``diver scaling collect``'s RUNS.csv)
    and write the fit's files into ``out`` (module doc); returns what ``fit.json`` holds.

    ``form``: one of :data:`~diver.scaling.laws.FORMS` or ``"auto"``.  ``where``:
    ``COLUMN=VALUE`` filters.  ``bootstrap`` resamples (0: no intervals) with ``seed``;
    ``jobs`` processes for them (results do not depend on it).  ``tracking``: where to log
    the fit as a child run.  ``huber_delta``: the Huber threshold on log loss.  ``fix``:
    ``NAME=VALUE`` parameters held fixed.  ``two_stage``: Muennighoff et al.'s
    procedure, stage one on the one-epoch runs or on the rows matching every
    ``COLUMN=VALUE`` of ``stage_one``.  ``resample``: ``run``, ``row`` or ``residual``.
    ``audit``: bootstrap resamples also refitted by the whole multistart procedure.
    Input the fit cannot use raises a :class:`~diver.errors.DiverError` naming the file
    and the problem.
    """
    runs_path, out = Path(runs_csv), Path(out)
    if jobs < 1:
        raise DiverError(f"--jobs must be at least 1, got {jobs}")
    if form not in (*FORMS, AUTO):
        raise DiverError(f"form must be one of {(*FORMS, AUTO)}, got {form!r}")
    if resample not in RESAMPLE_UNITS:
        raise DiverError(f"resample must be one of {RESAMPLE_UNITS}, got {resample!r}")
    fixed = _parse_fix(fix)
    allowed = PARAM_NAMES["chinchilla" if form == "chinchilla" else "data-constrained"]
    unknown = sorted(set(fixed) - set(allowed))
    if unknown:
        raise DiverError(f"--fix names {unknown}; the parameters are {list(allowed)}")
    if stage_one and not two_stage:
        raise DiverError("--stage-one names the rows of --two-stage's first stage; add --two-stage")
    if two_stage and form == "chinchilla":
        raise DiverError("--two-stage fits the data-constrained law; not with --form chinchilla")
    frame = read_runs_csv(runs_path)
    selection: dict[str, str] = {}
    excluded: dict[str, int] = {}
    if where or "subjects" in frame.columns:
        frame, selection, excluded = select_rows(frame, where, source=str(runs_path))
    base = FitSummary(
        status="skipped",
        form=None,
        form_requested=form,
        form_reason=f"{form} law requested",
        n_points=len(frame),
        selection=selection,
        excluded=excluded,
        runs=str(runs_path),
    )
    source = source_label(base)
    groups, group_column = resample_groups(frame)
    stage_rows = where_mask(frame, stage_one, source=source) if stage_one else None

    def run_fit(law: str, boot: int) -> tuple[Runs, FitResult]:
        runs = make_runs(frame, law, source=source)
        fixed_here = {k: v for k, v in fixed.items() if k in PARAM_NAMES[law]}
        log.info("fitting %s law to %d runs from %s", law, runs.n, source)
        return runs, fit_law(
            runs,
            law,
            bootstrap=boot,
            seed=seed,
            jobs=jobs,
            delta=huber_delta,
            fixed=fixed_here,
            groups=groups,
            resample=resample,
            two_stage=two_stage and law == "data-constrained",
            stage_one_rows=stage_rows,
            audit=audit if boot else 0,
        )

    used = form
    forms: dict[str, Any] = {}
    candidates: dict[str, FitResult] = {}
    if form == AUTO:
        _check_values(frame, source)
        choice = choose_form(frame)
        base = replace(base, form_reason=choice.reason, design=choice.counts)
        if choice.form is None:
            out.mkdir(parents=True, exist_ok=True)
            _publish(out, base, [], runs_path, tracking)
            return base
        used = choice.form
        if choice.form == "data-constrained":
            # Both laws are candidates: fit both, choose by evidence.
            candidates = {law: run_fit(law, 0)[1] for law in FORMS}
            forms = {law: _form_entry(r) for law, r in candidates.items()}
            evidence = choose_by_evidence(
                candidates["data-constrained"], candidates["chinchilla"], choice.counts
            )
            used = evidence.form or "chinchilla"
            base = replace(base, form_reason=f"{choice.reason}; {evidence.reason}")
    if forms and bootstrap == 0:
        # The candidate fit is this fit (no bootstrap to add): do not fit it twice.
        runs, result = make_runs(frame, used, source=source), candidates[used]
    else:
        runs, result = run_fit(used, bootstrap)
    if forms:
        forms[used] = _form_entry(result)

    out.mkdir(parents=True, exist_ok=True)
    samples = result.bootstrap_samples if result.bootstrap else None
    if samples is not None:
        table = pd.DataFrame(samples, columns=list(PARAM_NAMES[used]))
        table["converged"] = result.bootstrap_converged
        table["start"] = result.bootstrap_start
        write_csv_atomic(out / BOOTSTRAP_CSV, table)
    frontier = frontier_table(result.params, flop_range(6.0 * runs.params * runs.tokens), samples)
    write_csv_atomic(out / FRONTIER_CSV, frontier)
    _figures(out, used, runs, result, frontier)

    fitted = {
        **result.summary(),
        "status": "fitted",
        "form_requested": form,
        "form_reason": base.form_reason,
        "design": design_counts(frame),
        "selection": selection,
        "excluded": excluded,
        "at_bound": _at_bound(result.x, used),
        "resample_column": group_column or None,
        "forms": forms,
        "runs": str(runs_path),
        "files": {
            "bootstrap": BOOTSTRAP_CSV if samples is not None else None,
            "frontier": FRONTIER_CSV,
            "figures": list(FIGURES),
        },
        "compute": "C = 6 N D",
    }
    if used == "data-constrained":
        fitted["U_N_definition"] = U_N_DEFINITION
    summary = FitSummary.from_dict(fitted, source=str(out / FIT_JSON))
    files = [*([BOOTSTRAP_CSV] if samples is not None else []), FRONTIER_CSV, *FIGURES]
    _publish(out, summary, files, runs_path, tracking)
    if result.not_identified:
        log.warning("not identified by this design: %s", result.not_identified)
    if result.audit and audit_left(result.audit):
        log.warning("bootstrap audit: %s", audit_sentence(result.audit))
    if result.bootstrap_failed:
        log.warning(
            "%d of %d bootstrap refits did not converge (excluded from the intervals)",
            result.bootstrap_failed,
            bootstrap,
        )
    return summary


def load_fit(path: Path) -> tuple[LawParams, FitSummary, np.ndarray | None]:
    """``(params, fit.json's summary, bootstrap samples or None)`` from a fit.json."""
    summary = FitSummary.from_json(path)
    if not summary.fitted:
        raise ArtifactError(f"{path}: no law was fitted ({summary.form_reason})")
    assert summary.form is not None
    params = LawParams.from_mapping(dict(summary.params), summary.form)
    samples = None
    if summary.files.bootstrap:
        sample_path = path.parent / summary.files.bootstrap
        if not sample_path.is_file():
            raise ArtifactError(f"{path}: its bootstrap samples {sample_path} are missing")
        table = pd.read_csv(sample_path)
        names = list(PARAM_NAMES[summary.form])
        missing = [c for c in names if c not in table.columns]
        if missing:
            raise ArtifactError(f"{sample_path}: missing column(s) {missing}")
        samples = table[names].to_numpy(dtype=float)
    return params, summary, samples
