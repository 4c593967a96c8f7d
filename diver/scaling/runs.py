"""The runs table of a study's grid, and which scaling law it can support.

**Collecting.**  Every pretraining cell writes ``metrics.json`` (``diver pretrain``) and
logs the same file as an artifact of its MLflow child run; :func:`collect_files` and
:func:`collect_mlflow` turn either into the table ``diver scaling fit`` reads
(``RUNS.csv``), one row per scaling-law point with the columns of :data:`RUNS_COLUMNS`:

- identity: ``family, patch, size, fraction, subjects, epochs`` (``epochs`` is the
  point's epoch count; ``run_epochs`` the cell's, larger when the loss is read inside a
  longer run) and ``run_dir`` / ``source`` (where the numbers came from);
- the law's variables: ``params`` (N, reconstruction heads included as in SPEC §2's
  table), ``tokens`` (D = epochs x U_D), ``unique_tokens`` (U_D of the cell's data,
  SPEC §1) and ``loss`` (the held-out validation loss);
- cost: ``flops`` (the model's own account), ``flops_6nd`` and ``steps``.

A cell usually gives one point, its final validation loss.  SPEC §3's EEG family reads
one 32-epoch run at epochs 2, 4, 8, 16 and 32: for a cell with ``read_epochs`` (given by
the caller, who knows the grid) each of those epochs is a point, from the cell's
``val_by_epoch`` (loss at each epoch end, ``D = e x U_D``, FLOPs scaled by ``e / epochs``).

A cell whose ``metrics.json`` lacks a number, or whose loss is not finite and positive
(a diverged run), is an error naming the file: silently dropping it would bias the fit.

**Judging** (:func:`choose_form` and :func:`choose_by_evidence`, ``diver scaling fit
--form auto``).  The data-constrained law (SPEC §4) has 7 parameters and needs a design
that moves each of them (see :data:`diver.scaling.laws.IDENTIFIABLE_DESIGN`); with
fewer or less varied points, L-BFGS still returns numbers, but ``R_N*`` or ``R_D*``
sit on the search bounds and the bootstrap intervals span decades.  Counting points
cannot tell (Muennighoff et al.'s 182 runs pass any count while ``R_N*`` sits on its
bound), so the counts are only the *necessary* conditions for trying a law:

- data-constrained: at least ``2 x 7 = 14`` points (a bootstrap resample holds about
  63 % distinct points, so 2k keeps more distinct points than parameters), at least 3
  model sizes and at least one epoch count above one (``R_D*`` enters the law only
  through runs with ``R_D > 0``);
- Chinchilla: at least ``2 x 5 = 10`` points, 2 model sizes and 2 token counts;
- else no law (``form`` null): the report says why instead of showing a fit the data
  cannot carry.

When the data-constrained law passes, both laws are fitted and the evidence decides
(:func:`choose_by_evidence`: identification and held-out error by run).
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from diver.errors import DiverError
from diver.scaling.laws import n_params
from diver.study.artifacts import PRETRAIN_METRICS, PretrainMetrics

log = logging.getLogger(__name__)

RUNS_COLUMNS: tuple[str, ...] = (
    "family",
    "patch",
    "size",
    "fraction",
    "subjects",
    "epochs",
    "run_epochs",
    "params",
    "tokens",
    "unique_tokens",
    "loss",
    "flops",
    "flops_6nd",
    "steps",
    "run_dir",
    "source",
)

_POSITIVE_KEYS = ("val_loss", "n_params", "tokens", "unique_tokens")

#: What a run with the MLflow stage tag of a pretraining cell is called (diver.tracking).
PRETRAIN_STAGE = "pretrain"
METRICS_ARTIFACT = PRETRAIN_METRICS

#: Points per parameter the auto rule asks for (module doc).
POINTS_PER_PARAMETER = 2


class CollectError(DiverError, ValueError):
    """A cell's results cannot be used; the message names the file or run."""


ReadEpochs = Callable[[PretrainMetrics], Sequence[int]]


def cell_rows(
    metrics: PretrainMetrics,
    *,
    run_dir: str = "",
    read_epochs: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """The runs-table rows of one cell (one per read epoch, else its final point).

    Errors name ``metrics.source`` (the file or MLflow run it was read from).
    """
    where = metrics.source
    for key in _POSITIVE_KEYS:
        value = float(getattr(metrics, key))
        if not (math.isfinite(value) and value > 0):
            hint = " (the run diverged?)" if key == "val_loss" else ""
            raise CollectError(
                f"{where}: {key} is {value}, not a finite positive number{hint}; "
                "rerun the cell or remove it from the grid"
            )
    run_epochs = metrics.epochs
    unique = metrics.unique_tokens
    flops, flops_6nd = metrics.flops, metrics.flops_6nd
    base = {
        "family": metrics.family or "",
        "patch": metrics.patch,
        "size": metrics.size,
        "fraction": metrics.data_fraction,
        "subjects": metrics.subjects,
        "run_epochs": run_epochs,
        "params": float(metrics.n_params),
        "unique_tokens": unique,
        "run_dir": run_dir,
        "source": where,
    }

    def row(epoch: int, tokens: float, loss: float, steps: Any) -> dict[str, Any]:
        scale = epoch / run_epochs
        return {
            **base,
            "epochs": epoch,
            "tokens": tokens,
            "loss": loss,
            "flops": flops * scale if flops is not None else math.nan,
            "flops_6nd": flops_6nd * scale if flops_6nd is not None else math.nan,
            "steps": steps,
        }

    if not read_epochs:
        return [row(run_epochs, metrics.tokens, metrics.val_loss, metrics.steps)]

    by_epoch = metrics.loss_at_epochs()
    rows = []
    for epoch in sorted(set(int(e) for e in read_epochs)):
        loss = by_epoch.get(epoch)
        if loss is None:
            raise CollectError(
                f"{where}: the grid reads the loss at epoch {epoch}, but val_by_epoch has "
                f"epochs {sorted(by_epoch)}"
            )
        if not (math.isfinite(loss) and loss > 0):
            raise CollectError(f"{where}: val_loss at epoch {epoch} is {loss} (diverged?)")
        steps: Any = metrics.steps
        if steps is not None and epoch != run_epochs:
            steps = math.nan  # the step of an epoch end is in val_log.csv, not here
        rows.append(row(epoch, epoch * unique, loss, steps))
    return rows


def runs_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> the runs table, columns in :data:`RUNS_COLUMNS` order, stably sorted."""
    frame = pd.DataFrame(list(rows), columns=list(RUNS_COLUMNS))
    if frame.empty:
        raise CollectError("no runs to collect")
    frame["subjects"] = frame["subjects"].astype("Int64")
    keys = ["family", "patch", "size", "params", "subjects", "fraction", "run_epochs", "epochs"]
    return frame.sort_values(keys, kind="stable", na_position="first").reset_index(drop=True)


def collect_files(
    paths: Sequence[str | Path], *, read_epochs: ReadEpochs | None = None
) -> pd.DataFrame:
    """The runs table from cells' ``metrics.json`` files (``run_dir`` = their folders)."""
    if not paths:
        raise CollectError("no metrics.json files given")
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, Path] = {}
    for raw in paths:
        path = Path(raw)
        metrics = PretrainMetrics.from_json(path)
        reads = tuple(read_epochs(metrics)) if read_epochs is not None else ()
        new = cell_rows(metrics, run_dir=str(path.parent), read_epochs=reads)
        ident = _identity(new[0])
        if ident in seen:
            raise CollectError(f"{path} and {seen[ident]} are the same grid cell {ident}")
        seen[ident] = path
        rows.extend(new)
    return runs_frame(rows)


def _identity(row: Mapping[str, Any]) -> tuple:
    return (
        row["family"],
        row["patch"],
        row["size"],
        row["fraction"],
        row["subjects"],
        row["run_epochs"],
    )


def collect_mlflow(
    tracking_uri: str,
    parent_run_id: str,
    *,
    read_epochs: ReadEpochs | None = None,
) -> pd.DataFrame:
    """The runs table from the pretraining children of ``parent_run_id``.

    Each FINISHED child tagged ``diver.stage=pretrain`` contributes its ``metrics.json``
    artifact (the same file the cell wrote).  A cell run more than once (e.g. its
    folder deleted and trained again) has several FINISHED children; the latest one
    counts.  ``source`` is ``mlflow:<run id>``; ``run_dir`` is empty (the loss curves
    of those runs are in MLflow's metric history).
    """
    from mlflow import MlflowClient

    from diver.tracking import TAG_CELL, TAG_STAGE
    from diver.tracking.retry import with_retry

    client = MlflowClient(tracking_uri)
    parent = with_retry(client.get_run, parent_run_id)
    query = (
        f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`{TAG_STAGE}` = '{PRETRAIN_STAGE}'"
    )
    children = []
    token = None
    while True:
        page = with_retry(
            client.search_runs,
            [parent.info.experiment_id],
            filter_string=query,
            max_results=1000,
            page_token=token,
        )
        children.extend(page)
        token = page.token
        if not token:
            break
    finished = [r for r in children if r.info.status == "FINISHED"]
    if not finished:
        raise CollectError(
            f"MLflow {tracking_uri}: parent run {parent_run_id} has no FINISHED pretraining "
            f"child runs ({len(children)} in other states)"
        )
    latest: dict[str, Any] = {}
    for run in sorted(finished, key=lambda r: r.info.end_time or 0):
        cell = run.data.tags.get(TAG_CELL, run.info.run_id)
        if cell in latest:
            log.warning(
                "cell %s has several finished runs; using the latest (%s)", cell, run.info.run_id
            )
        latest[cell] = run
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="diver-collect-") as tmp:
        for run in latest.values():
            where = f"mlflow:{run.info.run_id}"
            names = {a.path for a in with_retry(client.list_artifacts, run.info.run_id)}
            if METRICS_ARTIFACT not in names:
                raise CollectError(
                    f"{where} (cell {run.data.tags.get(TAG_CELL)}): no {METRICS_ARTIFACT} "
                    f"artifact; its artifacts: {sorted(names)}"
                )
            dest = Path(tmp) / run.info.run_id
            dest.mkdir()
            local = with_retry(
                client.download_artifacts, run.info.run_id, METRICS_ARTIFACT, str(dest)
            )
            metrics = PretrainMetrics.from_json(Path(local), source=where)
            reads = tuple(read_epochs(metrics)) if read_epochs is not None else ()
            rows.extend(cell_rows(metrics, read_epochs=reads))
    return runs_frame(rows)


# ------------------------------------------------------------------ selecting


def _matches(column: pd.Series, value: str) -> pd.Series:
    """Rows whose value equals ``value`` (numerically when both are numbers)."""
    try:
        number = float(value)
    except ValueError:
        return column.astype(str) == value
    numeric = pd.to_numeric(column, errors="coerce")
    return np.isclose(numeric.astype(float), number, rtol=1e-12, atol=0.0) & numeric.notna()


def where_mask(frame: pd.DataFrame, where: Sequence[str], *, source: str) -> np.ndarray:
    """Rows of ``frame`` matching every ``COLUMN=VALUE`` of ``where`` (boolean array)."""
    keep = np.ones(len(frame), dtype=bool)
    for item in where:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise CollectError(f"{item!r}: expected COLUMN=VALUE")
        if column not in frame.columns:
            raise CollectError(
                f"{source}: {item!r} names column {column!r}; columns: {list(frame.columns)}"
            )
        keep &= np.asarray(_matches(frame[column], value), dtype=bool)
    return keep


def select_rows(
    frame: pd.DataFrame, where: Sequence[str], *, source: str
) -> tuple[pd.DataFrame, dict[str, str], dict[str, int]]:
    """Rows matching every ``COLUMN=VALUE`` of ``where``, minus subject-sweep rows.

    Returns ``(rows, selection, excluded)``.  Rows with a ``subjects`` value belong to
    SPEC §3's subject sweep (fixed N, D and U_D, varying only the number of subjects):
    the law has no variable for them, so they are never fitted; ``excluded`` counts them.
    """
    selection: dict[str, str] = {}
    for item in where:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise CollectError(f"--where {item!r}: expected COLUMN=VALUE")
        if column not in frame.columns:
            raise CollectError(
                f"{source}: --where names column {column!r}; columns: {list(frame.columns)}"
            )
        selection[column] = value
    keep = pd.Series(True, index=frame.index)
    for column, value in selection.items():
        keep &= _matches(frame[column], value)
    chosen = frame[keep]
    excluded: dict[str, int] = {}
    if "subjects" in chosen.columns:
        sweep = chosen["subjects"].notna()
        if sweep.any():
            excluded["subject_sweep"] = int(sweep.sum())
            chosen = chosen[~sweep]
    if chosen.empty:
        what = " and ".join(f"{k}={v}" for k, v in selection.items()) or "any rows"
        raise CollectError(f"{source}: no runs match {what}")
    return chosen.reset_index(drop=True), selection, excluded


# ------------------------------------------------------------------- judging


@dataclass(frozen=True)
class FormChoice:
    """The law ``--form auto`` fits (None: none) and why, with the counts it looked at."""

    form: str | None
    reason: str
    counts: dict[str, int]


def _distinct(values: np.ndarray) -> int:
    """Distinct positive values up to float noise (relative 1e-9)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return int(np.unique(np.round(np.log(v), 9)).size) if v.size else 0


def design_counts(frame: pd.DataFrame) -> dict[str, int]:
    """Points, sizes, token counts, U_D counts and repeated-data epoch levels."""
    tokens = frame["tokens"].to_numpy(dtype=float)
    counts = {
        "points": len(frame),
        "sizes": _distinct(frame["params"].to_numpy(dtype=float)),
        "token_counts": _distinct(tokens),
    }
    if "unique_tokens" in frame.columns:
        unique = frame["unique_tokens"].to_numpy(dtype=float)
        epochs = np.round(tokens / unique, 6)
        counts["unique_token_counts"] = _distinct(unique)
        counts["repeat_levels"] = _distinct(epochs[epochs > 1.0 + 1e-6])
    else:
        counts["unique_token_counts"] = 0
        counts["repeat_levels"] = 0
    return counts


def choose_form(frame: pd.DataFrame) -> FormChoice:
    """The richest law the design could carry (module doc's necessary conditions),
    with a one-line reason; the data-constrained law still has to pass
    :func:`choose_by_evidence`."""
    c = design_counts(frame)
    dc_points = POINTS_PER_PARAMETER * n_params("data-constrained")
    ch_points = POINTS_PER_PARAMETER * n_params("chinchilla")
    short = []
    if c["points"] < dc_points:
        short.append(f"{c['points']} points < {dc_points}")
    if c["sizes"] < 3:
        short.append(f"{c['sizes']} model size(s) < 3")
    if c["repeat_levels"] < 1:
        short.append("no run repeats its data (R_D* would not enter the law)")
    if not short:
        return FormChoice(
            "data-constrained",
            f"data-constrained law tried: {c['points']} points, {c['sizes']} sizes, "
            f"{c['unique_token_counts']} U_D values, {c['repeat_levels']} repeated-data "
            "levels",
            c,
        )
    why_not = "the data-constrained law needs more: " + "; ".join(short)
    ch_short = []
    if c["points"] < ch_points:
        ch_short.append(f"{c['points']} points < {ch_points}")
    if c["sizes"] < 2:
        ch_short.append(f"{c['sizes']} model size(s) < 2")
    if c["token_counts"] < 2:
        ch_short.append(f"{c['token_counts']} token count(s) < 2")
    if not ch_short:
        caveat = (
            "; its D counts repeated tokens as fresh ones"
            if c["repeat_levels"] > 0
            else " (no run repeats its data, so nothing is lost)"
        )
        return FormChoice("chinchilla", f"Chinchilla law fitted instead ({why_not}){caveat}", c)
    return FormChoice(
        None,
        f"no law fitted: {why_not}; the Chinchilla law needs more too: " + "; ".join(ch_short),
        c,
    )


def choose_by_evidence(dc: Any, chinchilla: Any, counts: Mapping[str, int]) -> FormChoice:
    """Between two fitted laws (:class:`diver.scaling.fit.FitResult`), the one the
    evidence supports, with the reason (``diver scaling fit --form auto``).

    The counts of :func:`choose_form` are necessary, not sufficient: Muennighoff et al.'s
    182 runs pass them while ``R_N*`` sits on its bound.  So when both laws are
    candidates, both are fitted and the data-constrained law is chosen only when

    - it is *identified*: no parameter is "not identified by this design" (estimate on
      the search bound, or a profile likelihood that reaches a bound within its 95 %
      cutoff: :mod:`diver.scaling.identify`) and its Gauss-Newton information is not
      numerically singular (condition number below
      :data:`diver.scaling.identify.MAX_CONDITION`); and
    - it predicts held-out runs better: its held-out RMSE of log loss (leave-one-run-out
      or k-fold by run) is lower than the Chinchilla law's.  Two parameters more must
      buy out-of-sample accuracy, not only in-sample fit.

    Otherwise the Chinchilla law, saying which condition failed.
    """
    problems = []
    if dc.not_identified:
        problems.append("not identified by this design: " + ", ".join(dc.not_identified))
    cond = dc.conditioning.get("condition_number")
    if dc.conditioning.get("ill_conditioned"):
        problems.append(f"its information matrix is near-singular (condition number {cond:.3g})")
    dc_err, ch_err = dc.loo_rmse_log, chinchilla.loo_rmse_log
    errors = (
        f"held-out RMSE of log loss ({dc.holdout}) {dc_err:.4g} data-constrained vs "
        f"{ch_err:.4g} Chinchilla"
    )
    if not problems and dc_err < ch_err:
        return FormChoice(
            "data-constrained",
            f"by evidence, the data-constrained law: all its parameters identified "
            f"(condition number {cond:.3g}) and {errors}",
            dict(counts),
        )
    if not problems:
        problems.append("it does not predict held-out runs better")
    repeated = (
        "; the Chinchilla law counts repeated tokens as fresh ones"
        if counts.get("repeat_levels", 0) > 0
        else ""
    )
    return FormChoice(
        "chinchilla",
        "by evidence, the Chinchilla law: the data-constrained law was fitted too, but "
        + "; ".join(problems)
        + f" ({errors}){repeated}",
        dict(counts),
    )
