"""``diver compare``: a study's runs side by side in the terminal, as MLflow has them.

Why: comparing grid cells is one of the three ways the project is used, and not
everyone has a browser (a cluster's login node).  This prints the table MLflow's UI
shows for a stage (its runs, the params that say what each run is, the metrics that
say how it did), sorted by a metric, read from the study's tracking store with
``MlflowClient.search_runs``: params are MLflow's strings and metrics MLflow's latest
values, unrounded in CSV and JSON, so the numbers are the UI's.

Which runs: the active runs of the study's experiment tagged ``diver.study=<study>``
and ``diver.stage=<stage>`` (every attempt, whatever its status: the table says it),
narrowed by ``--where`` terms turned into an MLflow search filter (:func:`where_filter`).
Which columns: a :class:`StageView` per stage; its names are those of
:mod:`diver.tracking.names`.  Columns carry MLflow's own names (``params.size``,
``metrics.val_loss``, ``tags.mlflow.runName``), as ``mlflow.search_runs`` names its
DataFrame's columns; the terminal table shows them without the prefix.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run

from diver.errors import DiverError
from diver.tracking import TAG_STAGE, TAG_STUDY
from diver.tracking.names import FINETUNE_PARAMS, GRID_METRICS, GRID_PARAMS, STAGES
from diver.tracking.note import runs_page
from diver.tracking.retry import search_all_runs, with_retry

__all__ = [
    "FORMATS",
    "VIEWS",
    "CompareError",
    "Comparison",
    "StageView",
    "compare_runs",
    "render",
    "where_filter",
]

FORMATS = ("table", "csv", "json")
RUN_NAME = "tags.mlflow.runName"
STATUS = "status"
RUN_ID = "run_id"
_PREFIXES = ("params.", "metrics.", "tags.", "attributes.")
#: Metric keys never shown by default (spreads and intervals: wide, and in the UI too).
_AUXILIARY = re.compile(r"(_sem|_ci_lo|_ci_hi|_profile_lo|_profile_hi)$")


class CompareError(DiverError, ValueError):
    """The runs cannot be compared as asked (no experiment, a bad --where, an unknown
    sort metric); the message says what to change."""


@dataclass(frozen=True)
class StageView:
    """What ``diver compare`` shows of one stage's runs.

    ``params`` / ``metrics``: the columns (bare names); empty means every param whose
    value differs between the runs / every metric the runs have (minus SEMs and
    interval bounds) that matches ``metric_pattern``, for stages whose runs have no
    fixed shape.  ``sort``: the default sort metric, tried in order (the first the runs
    have wins); ``descending``: its default direction (scores high-first, losses
    low-first).
    """

    params: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    sort: tuple[str, ...] = ()
    descending: bool = False
    metric_pattern: str = ""


VIEWS: Mapping[str, StageView] = {
    "pretrain": StageView(GRID_PARAMS, GRID_METRICS, ("val_loss",)),
    # the pretrained model's scores, and the baselines' on the headline metric (every
    # score of every model is 15 columns: --metric NAME picks others)
    "finetune": StageView(
        FINETUNE_PARAMS,
        (),
        ("diver.balanced_accuracy", "diver.auroc"),
        descending=True,
        metric_pattern=r"^diver\.|^(linear|scratch)\.balanced_accuracy$",
    ),
    "scaling": StageView(("form",), (), ()),
    "hpsearch": StageView((), (), ("val_loss",)),
}
assert set(VIEWS) == set(STAGES)


@dataclass(frozen=True)
class Comparison:
    """The table: ``columns`` (MLflow names) and one mapping per run, sorted."""

    experiment: str
    stage: str
    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    sort: str | None = None
    descending: bool = False
    filter: str = ""
    metrics: tuple[str, ...] = ()
    experiment_id: str = ""
    tracking_uri: str = ""

    def browser_url(self) -> str:
        """Where MLflow's UI shows these runs: the store's server, or for a database file
        the default address of ``mlflow ui`` on it (see ``diver where``)."""
        base = (
            self.tracking_uri if self.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
        )
        return f"{base.rstrip('/')}/{runs_page(self.experiment_id, self.filter)}"


def _quote(value: str) -> str:
    """A string literal for MLflow's search grammar (no escapes: pick the other quote)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise CompareError(f"a --where value cannot hold both quote kinds: {value!r}")


def _key(name: str) -> str:
    """``params.size`` -> ``params.`size``` (backticks: names may hold dots or dashes)."""
    kind, _, rest = name.partition(".")
    if kind == "attributes":
        return name
    return f"{kind}.`{rest}`"


def where_filter(terms: Iterable[str]) -> list[str]:
    """``KEY=VALUE`` terms -> MLflow search clauses (ANDed by the caller).

    ``KEY`` is a param name (``size=debug``: the cell's axes are params) or a prefixed
    MLflow name: ``params.NAME``, ``tags.NAME``, ``metrics.NAME`` (VALUE a number,
    compared numerically) or ``attributes.status``.
    """
    clauses = []
    for term in terms:
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise CompareError(f"--where {term!r}: expected KEY=VALUE (e.g. size=debug)")
        if not key.startswith(_PREFIXES):
            key = f"params.{key}"
        if key.startswith("metrics."):
            try:
                number = float(value)
            except ValueError as exc:
                raise CompareError(f"--where {term!r}: a metric compares to a number") from exc
            clauses.append(f"{_key(key)} = {number!r}")
        else:
            clauses.append(f"{_key(key)} = {_quote(value)}")
    return clauses


def _varying(runs: Sequence[Run]) -> tuple[str, ...]:
    """Params whose value is not the same in every run (what tells the runs apart)."""
    names = sorted({k for r in runs for k in r.data.params})
    return tuple(n for n in names if len({r.data.params.get(n) for r in runs}) > 1)


def _all_metrics(runs: Sequence[Run], pattern: str = "") -> tuple[str, ...]:
    keys = {k for r in runs for k in r.data.metrics if not _AUXILIARY.search(k)}
    return tuple(sorted(k for k in keys if re.search(pattern, k)))


def _sort_key(row: Mapping[str, Any], column: str, descending: bool) -> tuple:
    """Missing or NaN values last in either direction; ties by run name."""
    value = row.get(column)
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    number = 0.0 if missing else (-value if descending else value)
    return (missing, number, row.get(RUN_NAME) or "")


def compare_runs(
    tracking_uri: str,
    experiment: str,
    study: str,
    *,
    stage: str = "pretrain",
    where: Sequence[str] = (),
    sort: str | None = None,
    descending: bool | None = None,
    metrics: Sequence[str] = (),
) -> Comparison:
    """The ``stage`` runs of ``study`` in ``experiment`` on ``tracking_uri``, as a table.

    ``sort``: a metric name (bare or ``metrics.NAME``); default the stage's
    (:data:`VIEWS`).  ``descending``: default the stage's direction when sorting by its
    default metric, else ascending.  ``metrics``: the metric columns instead of the
    stage's (the sort metric is always shown).
    """
    if stage not in VIEWS:
        raise CompareError(f"unknown stage {stage!r}; stages: {', '.join(VIEWS)}")
    view = VIEWS[stage]
    client = MlflowClient(tracking_uri)
    found = with_retry(client.get_experiment_by_name, experiment)
    if found is None or found.lifecycle_stage != "active":
        raise CompareError(
            f"no experiment {experiment!r} in {tracking_uri}: run the study (make run) or "
            "`diver track init --config ...` first, or pass the study's --config"
        )
    clauses = [f"tags.`{TAG_STUDY}` = {_quote(study)}", f"tags.`{TAG_STAGE}` = {_quote(stage)}"]
    clauses += where_filter(where)
    filter_string = " AND ".join(clauses)
    runs = search_all_runs(client, found.experiment_id, filter_string)

    params = view.params or _varying(runs)
    names = (
        tuple(m.removeprefix("metrics.") for m in metrics)
        or view.metrics
        or _all_metrics(runs, view.metric_pattern)
    )
    if sort is None:
        present = {k for r in runs for k in r.data.metrics}
        sort = next((m for m in view.sort if m in present), None)
        if descending is None:
            descending = view.descending
    else:
        sort = sort.removeprefix("metrics.")
        if runs and not any(sort in r.data.metrics for r in runs):
            have = ", ".join(_all_metrics(runs)) or "none"
            raise CompareError(f"--sort {sort!r}: no {stage} run has that metric; metrics: {have}")
    if sort is not None and sort not in names:
        names = (*names, sort)

    columns = (
        RUN_NAME,
        *(f"params.{p}" for p in params),
        *(f"metrics.{m}" for m in names),
        STATUS,
        RUN_ID,
    )
    rows = [
        {
            RUN_NAME: r.info.run_name,
            **{f"params.{p}": r.data.params.get(p) for p in params},
            **{f"metrics.{m}": r.data.metrics.get(m) for m in names},
            STATUS: r.info.status,
            RUN_ID: r.info.run_id,
        }
        for r in runs
    ]
    if sort is not None:
        rows.sort(key=lambda row: _sort_key(row, f"metrics.{sort}", bool(descending)))
    else:
        rows.sort(key=lambda row: row[RUN_NAME] or "")
    return Comparison(
        experiment=experiment,
        stage=stage,
        columns=columns,
        rows=tuple(rows),
        sort=sort,
        descending=bool(descending),
        filter=filter_string,
        metrics=names,
        experiment_id=found.experiment_id,
        tracking_uri=tracking_uri,
    )


# ------------------------------------------------------------------ output


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)  # JSON has no NaN/inf
    return value


def _cell(value: Any) -> str:
    """A value for the terminal: 6 significant digits (MLflow's table rounds too)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _headers(columns: Sequence[str]) -> list[str]:
    """Column titles for the terminal: names without ``params.``/``metrics.``, unless
    that makes two titles alike (a param and a metric of one name, or ``status``)."""
    short = []
    for column in columns:
        name = "run" if column == RUN_NAME else column
        for prefix in ("params.", "metrics."):
            name = name.removeprefix(prefix)
        short.append(name)
    return [
        s if short.count(s) == 1 else ("status" if c == STATUS else c)
        for s, c in zip(short, columns, strict=True)
    ]


def render(comparison: Comparison, fmt: str = "table") -> str:
    """The comparison as ``table`` (aligned text), ``csv`` or ``json`` (full precision,
    MLflow's column names; the table shortens names and ids)."""
    columns, rows = comparison.columns, comparison.rows
    if fmt == "json":
        return json.dumps([{c: _json_value(row.get(c)) for c in columns} for row in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else _csv_value(row.get(c)) for c in columns])
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise CompareError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if not rows:
        where = f"experiment {comparison.experiment!r}, filter {comparison.filter}"
        return f"no {comparison.stage} runs ({where})"
    shown = [c for c in columns if c != RUN_ID] + [RUN_ID]
    cells = [_headers(shown)]
    for row in rows:
        cells.append([(row[c] or "")[:8] if c == RUN_ID else _cell(row.get(c)) for c in shown])
    numeric = {c for c in shown if c.startswith("metrics.")}
    widths = [max(len(line[i]) for line in cells) for i in range(len(shown))]
    lines = []
    for line in cells:
        parts = [
            text.rjust(w) if shown[i] in numeric else text.ljust(w)
            for i, (text, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    order = "descending" if comparison.descending else "ascending"
    by = f", sorted by {comparison.sort} ({order})" if comparison.sort else ""
    lines.append(
        f"{len(rows)} {comparison.stage} run(s) of experiment {comparison.experiment!r}{by}"
    )
    lines.append(f"in MLflow's UI: {comparison.browser_url()}")
    return "\n".join(lines)


def _csv_value(value: Any) -> str:
    """CSV text of a value: floats as the shortest string that reads back the same."""
    if isinstance(value, float):
        return repr(value)
    return str(value)
