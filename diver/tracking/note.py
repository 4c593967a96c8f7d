"""The study experiment's description: what a user reads first in MLflow's UI.

Why: a new user who runs ``mlflow ui`` on a study's store sees one experiment with one
collapsed parent run; the description (MLflow's experiment note, Markdown shown above
the runs) says what the study is, which config made it, how its runs are laid out and
how to put grid cells side by side, with the exact filter and column names
(:mod:`diver.tracking.names`).  ``diver track init`` writes it
(:func:`diver.tracking.parent.ensure_parent_run`).  Imports no MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from diver.tracking import TAG_STAGE
from diver.tracking.names import EPOCH_METRIC, FINETUNE_PARAMS, GRID_METRICS, GRID_PARAMS


class StudyConfig(Protocol):
    """What the note reads of a ``diver.config.StudyConfig`` (tracking imports no
    config code: it stays a leaf the stages build on)."""

    study: str
    grid: Sequence[Any]
    finetune: Any

    @property
    def results_path(self) -> Path: ...


__all__ = ["GRID_FILTER", "NOTE_MAX_BYTES", "runs_page", "study_note"]

#: The search filter that lists a study's grid runs (in the UI's search box, in URLs).
GRID_FILTER = f"tags.{TAG_STAGE} = 'pretrain'"


def runs_page(experiment_id: str, search_filter: str = "") -> str:
    """The UI's address (after the host) of the experiment's training-runs table.

    Why the ``workflowType`` parameter: MLflow 3.17's UI picks an experiment's view from
    its own *GenAI / Model training* switch (default GenAI, remembered per browser),
    not from the experiment's kind tag; this parameter opens the training runs whatever
    the browser last chose.
    """
    query = "workflowType=machine_learning"
    if search_filter:
        query += f"&searchFilter={quote(search_filter, safe='')}"
    return f"#/experiments/{experiment_id}/runs?{query}"


#: What every MLflow store is guaranteed to keep of a tag value; a longer grid listing
#: is cut, never the part explaining how to compare.
NOTE_MAX_BYTES = 5000


def _values(values: tuple[object, ...]) -> str:
    return ", ".join("all" if v is None else str(v) for v in values)


def _grid_lines(study: StudyConfig) -> list[str]:
    lines = []
    for block in study.grid:
        cells = (
            len(block.family)
            * len(block.patch)
            * len(block.size)
            * len(block.fraction)
            * len(block.subjects)
            * len(block.epochs)
        )
        parts = [
            f"family {_values(block.family)}",
            f"patch {_values(block.patch)}",
            f"size {_values(block.size)}",
            f"data_fraction {_values(block.fraction)}",
            f"epochs {_values(block.epochs)}",
        ]
        if block.subjects != (None,):
            parts.append(f"subjects {_values(block.subjects)}")
        if block.read_epochs:
            parts.append(f"read at epochs {_values(block.read_epochs)}")
        lines.append(f"- {' × '.join(parts)} ({cells} cells)")
    return lines


def study_note(
    study: StudyConfig, config: Path | str | None = None, experiment_id: str | None = None
) -> str:
    """The Markdown description of ``study``'s experiment (under :data:`NOTE_MAX_BYTES`).

    ``config``: the file the study was read from (its absolute path is shown, so the
    runs can be traced back to it).  ``experiment_id``: with it, the note starts with a
    link to the grid's runs in the training-runs view (:func:`runs_page`), which a
    user landing on MLflow's GenAI view needs.
    """
    stage = f"tags.{TAG_STAGE}"
    path = Path(config).resolve() if config else None
    head = [
        f"**DIVER-1 study `{study.study}`**: pretraining a grid of EEG/iEEG foundation "
        "models (DIVER-1 reproduction), then fine-tuning, the scaling-law fit and the report.",
        "",
        *(
            [
                f"**[Open the grid's training runs]({runs_page(experiment_id, GRID_FILTER)})** "
                "(MLflow's *GenAI / Model training* switch, top left, picks the view).",
                "",
            ]
            if experiment_id
            else []
        ),
        f"- config: `{path or '(defaults)'}`",
        f"- results: `{study.results_path.resolve()}`",
        "",
        "**Grid**:",
    ]
    finetune = study.finetune
    tail = [
        "",
        f"**Runs.** The parent run `{study.study}` holds every job of the study as a child "
        f"run tagged `diver.stage` (corpus, pretrain, finetune, scaling, report). Expand the "
        "parent row, or put the grid's runs side by side with the search filter",
        "",
        f"    {GRID_FILTER}",
        "",
        f"**Compare grid cells.** Params (the cell's axes): `{', '.join(GRID_PARAMS)}`. "
        f"Metrics: `{', '.join(GRID_METRICS)}` (as in the cell's metrics.json; `val_loss` "
        f"is the final held-out loss, its chart the curve over optimizer steps) and "
        f"`{EPOCH_METRIC}` (step = epoch). Select the runs, then *Compare*: its "
        "parallel-coordinates plot starts with d_model (the size's width), data_fraction and "
        "epochs against val_loss (more axes, e.g. size, from its *Parameters* picker).",
    ]
    if finetune.tasks or finetune.synth_task:
        tail += [
            "",
            f"**Fine-tuning runs** ({stage} = 'finetune'): params "
            f"`{', '.join(FINETUNE_PARAMS)}`; metrics `<model>.<metric>` for the pretrained "
            "model (`diver`) and the baselines (`linear`, `scratch`).",
        ]
    where = f" --config {path}" if path else ""
    tail += [
        "",
        f"**In a terminal**: `diver compare{where} --stage pretrain` prints the same table "
        "(`--where size=debug`, `--sort val_loss`, `--format csv|json`).",
    ]
    grid = _grid_lines(study)
    budget = NOTE_MAX_BYTES - len("\n".join(head + tail).encode()) - 64
    kept: list[str] = []
    for line in grid:
        if len("\n".join([*kept, line]).encode()) > budget:
            kept.append(f"- ... and {len(grid) - len(kept)} more blocks (see the config)")
            break
        kept.append(line)
    return "\n".join(head + kept + tail)
