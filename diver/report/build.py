"""Assemble the study report (``results/report/index.html``) from the DAG's outputs.

Inputs, all optional except the output path: the corpus folder (``manifest.csv``,
``qc.csv``, ``channels.csv`` of ``diver corpus``), the runs table of
``diver scaling collect`` (whose ``run_dir`` column leads to each cell's
``train_log.csv`` / ``val_log.csv``), the ``fit.json`` of each ``diver scaling fit``
(with its figures beside it) and the ``metrics.json`` of each ``diver finetune``.
The page is one self-contained HTML file (:mod:`diver.report.html`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from diver.atomic import write_text_atomic
from diver.report import sections
from diver.report.hpsearch import hpsearch_section
from diver.report.html import esc, page, section
from diver.study.artifacts import FitSummary


@dataclass(frozen=True)
class ReportInputs:
    """Where the report reads from (None / empty: that part is not available)."""

    study: str
    config: Path | None = None
    corpus_dir: Path | None = None
    runs: Path | None = None
    fits: tuple[Path, ...] = ()
    finetune: tuple[Path, ...] = field(default_factory=tuple)
    hpsearch_dir: Path | None = None  # <results>/hpsearch: sweeps and the transfer check


def _summary(inputs: ReportInputs, runs) -> str:  # type: ignore[no-untyped-def]
    items = []
    manifest = inputs.corpus_dir / "manifest.csv" if inputs.corpus_dir else None
    if manifest is not None and manifest.is_file():
        table = sections.read_csv(manifest)
        items.append(
            f"Corpus: {len(table)} dataset(s), {int(table['windows'].sum()):,} windows of 30 s, "
            f"{float(table['hours'].sum()):.2f} h, U_D = {float(table['tokens'].sum()):.4g} tokens."
        )
    if runs is not None:
        items.append(f"Grid: {len(runs)} scaling-law points.")
    for path in inputs.fits:
        fit = FitSummary.from_json(path)
        form = fit.form or "no law"
        text = f"Scaling law ({sections.fit_title(fit)}): {form} - {fit.form_reason}"
        missing = list(fit.extra.get("not_identified") or [])
        if missing:
            text += f". Not identified by this design: {', '.join(missing)}"
        items.append(text)
    items.append(
        f"Fine-tuning: {len(inputs.finetune)} result file(s)."
        if inputs.finetune
        else "Fine-tuning: none configured."
    )
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def build_report(inputs: ReportInputs, *, generated: dt.datetime | None = None) -> str:
    """The report's HTML text."""
    from diver.tracking.provenance import git_commit

    runs = sections.read_runs(inputs.runs)
    when = (generated or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        ("summary", "Summary", _summary(inputs, runs)),
        ("corpus", "Corpus: manifest and QA/QC", sections.corpus_section(inputs.corpus_dir)),
        ("hpsearch", "Sweep and muP transfer", hpsearch_section(inputs.hpsearch_dir)),
        ("grid", "Pretraining grid", sections.grid_section(runs, inputs.runs)),
        ("curves", "Loss curves", sections.curves_section(runs)),
        ("scaling", "Scaling law", sections.scaling_section(inputs.fits)),
        ("finetune", "Fine-tuning", sections.finetune_section(inputs.finetune)),
    ]
    subtitle = [
        f"study {inputs.study} · generated {when} · code {git_commit()}",
        f"config {inputs.config}" if inputs.config else "no config file",
    ]
    body = "".join(section(anchor, heading, html) for anchor, heading, html in parts)
    return page(
        f"DIVER study report: {inputs.study}",
        subtitle,
        [(anchor, heading) for anchor, heading, _ in parts],
        body,
    )


def write_report(inputs: ReportInputs, out: Path) -> Path:
    """Build the report and write it atomically to ``out``."""
    write_text_atomic(Path(out), build_report(inputs))
    return Path(out)


def existing(paths: Sequence[str | Path]) -> tuple[Path, ...]:
    """``paths`` as Paths, refusing any that does not exist (a typo must not vanish)."""
    out = tuple(Path(p) for p in paths)
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise sections.ReportError(f"no such file(s): {missing}")
    return out
