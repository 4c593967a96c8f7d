"""The report's sections, each a function from its inputs to an HTML fragment.

A section whose input is absent says so in the page instead of failing: a report of a
partly finished study is still useful.  Inputs that exist but cannot be read are
errors naming the file (:class:`ReportError`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from diver.errors import DiverError
from diver.report import figures
from diver.report.finetune import metric_names, read_finetune
from diver.report.html import esc, figure, fmt_number, note, table
from diver.report.paper import DOWNSTREAM, TABLE_8
from diver.scaling.bootstrap import audit_sentence
from diver.scaling.laws import PARAM_NAMES
from diver.study.artifacts import FitSummary

#: Rendered names of the law's parameters.
PARAM_LABELS = {
    "A": "A",
    "B": "B",
    "E": "E",
    "alpha": "α",
    "beta": "β",
    "R_D_star": "R_D*",
    "R_N_star": "R_N*",
}
ALL_PARAMS = PARAM_NAMES["data-constrained"]


class ReportError(DiverError, ValueError):
    """An input of the report exists but cannot be used; the message names it."""


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not a readable CSV ({exc})") from exc


def _need(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: missing column(s) {missing}")


# --------------------------------------------------------------------- corpus


def corpus_section(corpus_dir: Path | None) -> str:
    """Manifest (SPEC §1's per-dataset statistics) and the QA/QC summary."""
    if corpus_dir is None or not (Path(corpus_dir) / "manifest.csv").is_file():
        where = "no corpus folder given" if corpus_dir is None else f"no {corpus_dir}/manifest.csv"
        return note(f"Corpus not available ({where}).")
    corpus_dir = Path(corpus_dir)
    manifest_path = corpus_dir / "manifest.csv"
    manifest = read_csv(manifest_path)
    _need(manifest, ["dataset", "subjects", "hours", "windows", "tokens"], manifest_path)
    rows = manifest.to_dict("records")
    if len(rows) > 1:
        total: dict[str, Any] = {"dataset": "total"}
        for key in manifest.columns:
            if key not in ("dataset", "retention_vs_cbramod") and pd.api.types.is_numeric_dtype(
                manifest[key]
            ):
                total[key] = float(manifest[key].sum())
        cbramod = total.get("cbramod_channel_hours")
        if cbramod:
            total["retention_vs_cbramod"] = total.get("channel_hours", math.nan) / cbramod
        rows.append(total)
    columns = [
        ("dataset", "dataset"),
        ("subjects", "subjects"),
        ("recordings", "recordings"),
        ("recordings_kept", "kept"),
        ("recordings_too_short", "too short"),
        ("recordings_qc_rejected", "no window passed QC"),
        ("recordings_quarantined", "quarantined"),
        ("hours", "hours"),
        ("hours_kept", "hours kept"),
        ("channel_hours", "channel-hours"),
        ("windows", "30 s windows"),
        ("tokens", "tokens U_D"),
        ("retention_vs_cbramod", "channel-hours vs CBraMod rule"),
    ]
    columns = [(k, label) for k, label in columns if k in manifest.columns]
    parts = [
        "<h3>Manifest</h3>",
        '<p class="muted">Per dataset (SPEC §1): tokens U_D = Σ over kept windows of '
        "min(C, 32) × 30 × 0.75 × 0.75; the last column is the channel-hours kept by the "
        "QA/QC rule over those CBraMod's rule (drop a window when any sample exceeds "
        "100 µV) keeps (the paper reports 2.4× on TUEG).</p>",
        table(rows, columns, text_columns=["dataset"]),
    ]
    qc_path = corpus_dir / "qc.csv"
    if qc_path.is_file():
        parts.append(_qc_part(read_csv(qc_path), qc_path))
    else:
        parts.append(note(f"No QC table ({qc_path} missing)."))
    channels_path = corpus_dir / "channels.csv"
    if channels_path.is_file():
        parts.append(_channels_part(read_csv(channels_path), channels_path))
    return "\n".join(parts)


def _qc_part(qc: pd.DataFrame, path: Path) -> str:
    _need(qc, ["dataset", "recording", "status", "windows_kept", "windows_dropped"], path)
    rows = []
    for dataset, part in qc.groupby("dataset", sort=False):
        windows = float(part["windows_kept"].sum() + part["windows_dropped"].sum())
        rows.append(
            {
                "dataset": dataset,
                "recordings": len(part),
                **{
                    status: int((part["status"] == status).sum())
                    for status in ("kept", "too_short", "qc_rejected", "quarantined")
                },
                "channels_kept": part.get("channels_kept", pd.Series(dtype=float)).sum(),
                "channels_dropped": part.get("channels_dropped", pd.Series(dtype=float)).sum(),
                "windows_kept": int(part["windows_kept"].sum()),
                "windows_dropped": int(part["windows_dropped"].sum()),
                "kept_pct": 100.0 * part["windows_kept"].sum() / windows if windows else math.nan,
            }
        )
    summary = table(
        rows,
        [
            ("dataset", "dataset"),
            ("recordings", "recordings"),
            ("kept", "kept"),
            ("too_short", "too short"),
            ("qc_rejected", "no window passed QC"),
            ("quarantined", "quarantined"),
            ("channels_kept", "channels kept"),
            ("channels_dropped", "channels dropped"),
            ("windows_kept", "windows kept"),
            ("windows_dropped", "windows dropped"),
            ("kept_pct", "windows kept %"),
        ],
        formats={"kept_pct": lambda v: fmt_number(v, 3)},
        text_columns=["dataset"],
    )
    out = [
        "<h3>QA/QC</h3>",
        '<p class="muted">SPEC §1 / Appendix F.3: an electrode leaves a window when more '
        "than 3.33 % of its samples clip at ±1 after scaling (EEG 1/100 µV, iEEG 1/200 µV); "
        "a window is dropped when more than half its channels are compromised; flat and NaN "
        "channels are dropped.</p>",
        summary,
    ]
    other = qc[qc["status"] != "kept"]
    if len(other):
        shown = other.head(100)
        out.append(f"<p>Recordings not kept ({len(other)}):</p>")
        out.append(
            table(
                shown.to_dict("records"),
                [
                    ("dataset", "dataset"),
                    ("recording", "recording"),
                    ("status", "status"),
                    ("reason", "reason"),
                ],
                text_columns=["dataset", "recording", "status", "reason"],
            )
        )
        if len(other) > len(shown):
            out.append(f'<p class="muted">… {len(other) - len(shown)} more in {esc(path)}.</p>')
    else:
        out.append(note("Every recording was kept.", kind="ok"))
    return "\n".join(out)


def _channels_part(channels: pd.DataFrame, path: Path) -> str:
    _need(channels, ["dataset", "type", "status"], path)
    rows = []
    for (dataset, kind), part in channels.groupby(["dataset", "type"], sort=True):
        kept = part["status"] == "kept"
        reasons = part.loc[~kept, "status"].value_counts()
        rows.append(
            {
                "dataset": dataset,
                "type": kind,
                "kept": int(kept.sum()),
                "dropped": int((~kept).sum()),
                "why": ", ".join(f"{r} {n}" for r, n in reasons.items()),
            }
        )
    return "<h3>Channels by type</h3>" + table(
        rows,
        [
            ("dataset", "dataset"),
            ("type", "type"),
            ("kept", "kept"),
            ("dropped", "dropped"),
            ("why", "dropped because"),
        ],
        text_columns=["dataset", "type", "why"],
    )


# ----------------------------------------------------------------------- grid


def read_runs(path: Path | None) -> pd.DataFrame | None:
    if path is None or not Path(path).is_file():
        return None
    frame = read_csv(Path(path))
    _need(frame, ["params", "tokens", "loss"], Path(path))
    return frame


def grid_section(runs: pd.DataFrame | None, runs_path: Path | None) -> str:
    """The grid's points: size, parameters, data, epochs, tokens, compute, loss."""
    if runs is None:
        return note(f"No runs table ({runs_path or 'not given'}): the grid has not been collected.")
    rows = runs.to_dict("records")
    for row in rows:
        if "flops" not in row or not _finite(row.get("flops")):
            row["flops"] = row.get("flops_6nd")
        row["flops_6nd_check"] = 6.0 * float(row["params"]) * float(row["tokens"])
    columns = [
        ("family", "family"),
        ("patch", "patch"),
        ("size", "size"),
        ("params", "params N"),
        ("fraction", "data fraction"),
        ("subjects", "subjects"),
        ("epochs", "epochs"),
        ("unique_tokens", "unique tokens U_D"),
        ("tokens", "tokens D"),
        ("flops", "FLOPs (model)"),
        ("flops_6nd_check", "6ND"),
        ("loss", "val loss"),
    ]
    columns = [(k, h) for k, h in columns if k in runs.columns or k == "flops_6nd_check"]
    if "subjects" in runs.columns and runs["subjects"].isna().all():
        columns = [(k, h) for k, h in columns if k != "subjects"]
    n_cells = len(runs.drop_duplicates("run_dir")) if "run_dir" in runs.columns else len(runs)
    return (
        f'<p class="muted">{len(runs)} scaling-law points from {n_cells} pretraining runs '
        "(a run read at several epochs gives several points, SPEC §3). Loss is the "
        "validation loss on held-out subjects; FLOPs are the model's own count "
        "(forward and backward) beside 6ND.</p>"
        + table(
            rows,
            columns,
            formats={"loss": lambda v: f"{float(v):.5f}", "fraction": lambda v: f"{v:g}"},
            text_columns=["family", "patch", "size"],
        )
    )


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _groups(runs: pd.DataFrame) -> list[tuple[dict[str, str], pd.DataFrame]]:
    keys = [k for k in ("family", "patch") if k in runs.columns]
    if not keys:
        return [({}, runs)]
    out = []
    for values, part in runs.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        out.append(({k: str(v) for k, v in zip(keys, values, strict=True)}, part))
    return out


def _curve(row: Mapping[str, Any]) -> figures.Curve | None:
    run_dir = row.get("run_dir")
    if not isinstance(run_dir, str) or not run_dir:
        return None
    train_path, val_path = Path(run_dir) / "train_log.csv", Path(run_dir) / "val_log.csv"
    if not train_path.is_file() and not val_path.is_file():
        return None
    train = read_csv(train_path) if train_path.is_file() else pd.DataFrame()
    val = read_csv(val_path) if val_path.is_file() else pd.DataFrame()
    if len(train):
        _need(train, ["tokens", "loss"], train_path)
    if len(val):
        _need(val, ["tokens", "val_loss"], val_path)
    label = f"{row.get('size')} f{float(row.get('fraction', math.nan)):g} e{row.get('run_epochs')}"
    if _finite(row.get("subjects")):
        label += f" s{int(row['subjects'])}"
    return figures.Curve(
        label=label,
        params=float(row["params"]),
        fraction=float(row.get("fraction", math.nan)),
        train=train if len(train) else pd.DataFrame({"tokens": [], "loss": []}),
        val=val if len(val) else pd.DataFrame({"tokens": [], "val_loss": []}),
    )


def curves_section(runs: pd.DataFrame | None) -> str:
    """Training and validation loss of every cell, one figure per family and patch."""
    if runs is None:
        return note("No runs table: no loss curves.")
    if "run_dir" not in runs.columns:
        return note("The runs table names no run folders (collected from MLflow): no curves.")
    parts = []
    for selection, part in _groups(runs):
        cells = part.drop_duplicates("run_dir").to_dict("records")
        curves = [c for c in (_curve(r) for r in cells) if c is not None]
        title = " ".join(selection.values()) or "all runs"
        if not curves:
            parts.append(note(f"{title}: no train_log.csv / val_log.csv in the run folders."))
            continue
        parts.append(
            figure(
                figures.loss_curves(curves, title),
                f"{title}: {len(curves)} runs. Colour: model size; line style: data fraction.",
                alt=f"loss curves {title}",
            )
        )
    return "\n".join(parts)


# -------------------------------------------------------------------- scaling


def _ci_text(ci: tuple[float, float] | None) -> str:
    return "–" if ci is None else f"[{fmt_number(ci[0])}, {fmt_number(ci[1])}]"


def _verdicts(fit: FitSummary) -> dict[str, str]:
    """Each parameter's identification verdict as the table shows it."""
    out = {}
    for name, entry in (fit.extra.get("identification") or {}).items():
        status = str((entry or {}).get("status", ""))
        reasons = "; ".join((entry or {}).get("reasons") or [])
        out[name] = f"{status} ({reasons})" if status.startswith("not") and reasons else status
    return out


def _interval_text(fit: FitSummary, name: str) -> str:
    """The bootstrap interval, or for a parameter not identified its profile interval
    (an end at the search bound marked as such)."""
    profile = (fit.extra.get("profile_ci") or {}).get(name)
    if profile is not None:
        curve = (fit.extra.get("profiles") or {}).get(name) or {}
        open_lo, open_hi = curve.get("open") or (False, False)
        lo = "bound" if open_lo else fmt_number(profile[0])
        hi = "bound" if open_hi else fmt_number(profile[1])
        return f"profile [{lo}, {hi}]"
    verdict = ((fit.extra.get("identification") or {}).get(name) or {}).get("status")
    if verdict == "fixed":
        return "fixed"
    return _ci_text(fit.interval(name))


def _procedure_part(fit: FitSummary) -> str:
    """How the intervals were made: resampling unit, starts, convergence, audit, scale."""
    extra = fit.extra
    items = []
    if fit.bootstrap:
        unit = extra.get("resample_unit") or "row"
        column = extra.get("resample_column")
        by = f"run ({column})" if unit == "run" and column else unit
        if unit == "run" and not column:
            by = "run (each point its own run: the table names no runs)"
        items.append(
            f"{fit.bootstrap} bootstrap resamples by {by}, each refitted from "
            f"{extra.get('bootstrap_starts', 1)} start(s); {fit.bootstrap_failed} refit(s) "
            "did not converge and are excluded from the intervals"
        )
    audit = extra.get("audit")
    if audit:
        items.append(f"audit: {audit_sentence(audit)}")
    scale = extra.get("residual_scale") or {}
    if scale:
        items.append(
            f"residuals of log loss: RMS {fmt_number(scale.get('rms'))}, 1.4826 MAD "
            f"{fmt_number(scale.get('mad'))}, Huber scale {fmt_number(scale.get('huber_scale'))}"
        )
    cond = (extra.get("conditioning") or {}).get("condition_number")
    if cond is not None:
        items.append(f"Gauss-Newton condition number {fmt_number(cond)}")
    if extra.get("fixed"):
        items.append(
            "held fixed: "
            + ", ".join(
                f"{PARAM_LABELS.get(k, k)} = {fmt_number(v)}" for k, v in extra["fixed"].items()
            )
        )
    stage = extra.get("two_stage")
    if stage:
        items.append(
            f"two-stage procedure (Muennighoff et al. 2023): A, B, E, α, β from "
            f"{stage.get('stage_one_points')} one-epoch points, then R_D*, R_N* with those "
            "fixed (both stages refitted per resample)"
        )
    if not items:
        return ""
    return '<p class="muted">' + esc("; ".join(items)) + ".</p>"


def _forms_part(fit: FitSummary) -> str:
    """With ``--form auto``: both laws' fits side by side, and the choice."""
    forms = fit.extra.get("forms") or {}
    if not forms:
        return ""
    columns = [("what", "")] + [(f, f + (" (chosen)" if f == fit.form else "")) for f in forms]
    rows = []
    for name in ALL_PARAMS:
        row = {"what": PARAM_LABELS[name]}
        for law, entry in forms.items():
            row[law] = fmt_number((entry.get("params") or {}).get(name))
        rows.append(row)
    for key, label in (
        ("objective", "objective"),
        ("r2_log", "R² log"),
        ("loo_rmse_log", "held-out RMSE (log loss)"),
        ("condition_number", "condition number"),
    ):
        rows.append({"what": label, **{law: fmt_number(e.get(key)) for law, e in forms.items()}})
    rows.append(
        {
            "what": "not identified",
            **{
                law: ", ".join(PARAM_LABELS.get(n, n) for n in e.get("not_identified") or [])
                or "none"
                for law, e in forms.items()
            },
        }
    )
    return (
        "<h4>Both laws (--form auto)</h4>"
        + table(rows, columns, text_columns=["what", *forms])
        + f'<p class="muted">{esc(fit.form_reason)}</p>'
    )


def fit_title(fit: FitSummary) -> str:
    """A fit's selection as the report names it (``mixed 1s``; ``all runs``)."""
    return " ".join(str(v) for v in fit.selection.values()) or "all runs"


def fit_block(fit: FitSummary, path: Path) -> str:
    """One fit: the form and why, parameters with intervals beside Table 8, figures."""
    title = fit_title(fit)
    form = fit.form
    requested = fit.form_requested or form
    reason = fit.form_reason
    parts = [f"<h3>{esc(title)}</h3>"]
    excluded = fit.excluded
    if excluded.get("subject_sweep"):
        parts.append(
            f'<p class="muted">{excluded["subject_sweep"]} subject-sweep point(s) left out '
            "(the law has no variable for the number of subjects).</p>"
        )
    if form is None:
        parts.append(note(f"No scaling law fitted: {reason}"))
        return "\n".join(parts)
    if requested == "auto" and form != "data-constrained":
        parts.append(note(f"Form: {form}. {reason}"))
    else:
        parts.append(note(f"Form: {form}. {reason}", kind="ok"))
    names = PARAM_NAMES.get(form, ())
    verdicts = _verdicts(fit)
    rows = []
    for name in ALL_PARAMS:
        row: dict[str, Any] = {"param": PARAM_LABELS[name]}
        row["value"] = fmt_number(fit.params.get(name)) if name in names else "not in this form"
        row["ci"] = _interval_text(fit, name) if name in names else "–"
        row["verdict"] = verdicts.get(name, "–") if name in names else "–"
        for published in TABLE_8:
            row[published.family] = fmt_number(getattr(published.params, name))
        rows.append(row)
    for key, label in (("r2_linear", "R² linear"), ("r2_log", "R² log")):
        row = {"param": label, "value": fmt_number(getattr(fit, key)), "ci": "–", "verdict": "–"}
        for published in TABLE_8:
            row[published.family] = fmt_number(getattr(published, key))
        rows.append(row)
    rows.append(
        {
            "param": "points",
            "value": fmt_number(fit.n_points),
            "ci": "–",
            "verdict": "–",
            **{p.family: "–" for p in TABLE_8},
        }
    )
    level = 0.95 if fit.ci_level is None else fit.ci_level
    boot = fit.bootstrap
    columns = [
        ("param", "parameter"),
        ("value", "this study"),
        (
            "ci",
            f"{100 * float(level):g} % CI ({boot} bootstrap fits; profile interval where "
            "not identified)"
            if boot
            else "CI (none; profile interval where not identified)",
        ),
        ("verdict", "identification"),
        *[(p.family, f"DIVER-1 {p.family}") for p in TABLE_8],
    ]
    delta = fit.huber_delta if fit.huber_delta is not None else 1e-3
    parts.append(
        '<p class="muted">Beside DIVER-1\'s Table 8 (SPEC §4; the paper fits the '
        "data-constrained form and does not describe its procedure). Fit: Chinchilla "
        f"approach 3, summed Huber loss (δ = {esc(fmt_number(delta))}) of log loss, L-BFGS "
        "from a grid of starts, percentile bootstrap intervals (Besiroglu et al. 2024) "
        "from multistart refits; a parameter on the search bound (estimate, or more than "
        "2.5 % of the refits) or whose profile likelihood stays within its 95 % cutoff up "
        "to a bound is <em>not identified by this design</em> and shown with its profile "
        "interval instead.</p>"
    )
    parts.append(table(rows, columns, text_columns=["param", "verdict"]))
    not_identified = list(fit.extra.get("not_identified") or [])
    if not_identified:
        labels = ", ".join(PARAM_LABELS.get(n, n) for n in not_identified)
        parts.append(
            note(
                f"Not identified by this design: {labels}. The runs do not pin these down; "
                "their values are not estimates to quote (see the profile curves)."
            )
        )
    elif fit.at_bound:
        labels = ", ".join(PARAM_LABELS.get(n, n) for n in fit.at_bound)
        parts.append(
            note(
                f"The optimiser stopped on its search bounds for: {labels}. The runs do not "
                "pin these down: their values are limits of the search box, not estimates."
            )
        )
    parts.append(_procedure_part(fit))
    parts.append(_forms_part(fit))
    extra = []
    holdout = str(fit.extra.get("holdout") or "leave-one-out")
    if _finite(fit.loo_rmse_log):
        extra.append(f"{holdout} RMSE of log loss {fmt_number(fit.loo_rmse_log)}")
    if fit.loo_mape is not None and _finite(fit.loo_mape):
        extra.append(f"{holdout} mean absolute error {100 * fit.loo_mape:.2f} %")
    if extra:
        parts.append(f'<p class="muted">{esc("; ".join(extra))}.</p>')
    captions = {
        "loss_vs_compute.png": "Loss against compute C = 6ND, runs coloured by parameters, with "
        "the fitted compute-optimal frontier and its 95 % bootstrap band.",
        "fitted_vs_observed.png": "Fitted against observed loss (log axes, y = x dashed).",
        "iso_flop.png": "The fitted law along iso-FLOP curves; dots mark each curve's optimum.",
        "profiles.png": "Profile likelihood of each free parameter (objective minimised over "
        "the others, in units of the fitted Huber scale; dashed: the 95 % cutoff 1.92). A "
        "curve still under the cutoff at the edge of the search box means the design does "
        "not identify that parameter (red title).",
    }
    shown = []
    for name in fit.files.figures:
        png = Path(path).parent / name
        if not png.is_file():
            raise ReportError(f"{path}: its figure {png} is missing")
        shown.append(
            figure(
                png.read_bytes(), captions.get(name, name), alt=f"{title} {name}", source=str(png)
            )
        )
    if shown:
        parts.append('<div class="row">' + "".join(shown) + "</div>")
    return "\n".join(parts)


def scaling_section(fit_paths: Sequence[Path]) -> str:
    if not fit_paths:
        return note("No scaling-law fit given.")
    return "\n".join(fit_block(FitSummary.from_json(p), Path(p)) for p in fit_paths)


# ------------------------------------------------------------------- finetune


def finetune_section(paths: Sequence[Path]) -> str:
    """Per task: every model and baseline, metrics as mean ± SEM over seeds/folds."""
    reference = "<h3>The paper's numbers (SPEC §5)</h3>" + table(
        [{"task": t, "model": m, "score": s} for t, m, s in DOWNSTREAM],
        [("task", "benchmark"), ("model", "model"), ("score", "score")],
        text_columns=["task", "model"],
    )
    if not paths:
        return note("No fine-tuning configured.") + reference
    rows = [row for path in paths for row in read_finetune(Path(path))]
    # every pretrained cell's metrics file brings its task's published numbers: once each
    published = {(r["task"], r["mode"], r["model"]): r for r in rows if r["paper"]}
    rows = [r for r in rows if not r["paper"]] + list(published.values())
    metrics = metric_names(rows)
    out = []
    by_task: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault((row["task"], row["mode"]), []).append(row)
    for (task, mode), task_rows in by_task.items():
        task_rows.sort(key=lambda r: (r["baseline"], r["pretrained"], r["model"]))
        shown = []
        for r in task_rows:
            entry = {
                "model": r["model"],
                "kind": "baseline" if r["baseline"] else "model",
                "pretrained": r["pretrained"],
            }
            for m in metrics:
                est = r["metrics"].get(m)
                entry[m] = est.text() if est is not None else "–"
            shown.append(entry)
        heading = f"{task}" + (f" ({mode})" if mode else "")
        columns = [("model", "model"), ("kind", "kind"), ("pretrained", "pretrained")]
        if not any(r["pretrained"] for r in task_rows):
            columns = columns[:2]
        out.append(f"<h3>{esc(heading)}</h3>")
        out.append(
            table(
                shown,
                [*columns, *[(m, m) for m in metrics]],
                text_columns=["model", "kind", "pretrained", *metrics],
            )
        )
    return (
        '<p class="muted">Mean ± SEM over seeds/folds (SPEC §5); baselines: the Linear model '
        "on (Laplacian-referenced) STFT features and the same architecture from scratch.</p>"
        + "\n".join(out)
        + reference
    )
