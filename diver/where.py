"""Where a study's results are: the folder, the report, the corpus and the MLflow store.

Printed at the end of a successful Snakemake run (the Snakefile's ``onsuccess``) and by
``diver where``, so a user who has just waited for ``make run`` sees what to open
next, including the ``mlflow ui`` command that browses the runs (bound to loopback).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from diver.config import StudyConfig
from diver.study.layout import StudyLayout
from diver.tracking.note import GRID_FILTER, runs_page
from diver.tracking.ui_app import APP_NAME

UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def _grid_page(study: StudyConfig, uri: str, base: str) -> str:
    """The address of the grid's training runs in the UI ('' when the store does not
    exist yet): MLflow 3.17 opens an experiment on its GenAI view unless told otherwise.

    Only a study's own SQLite file is looked into (and never created); a tracking
    server is not contacted here, its experiment's description carries the same link.
    """
    db = Path(uri.removeprefix("sqlite:///"))
    if not uri.startswith("sqlite:///") or not db.is_file():
        return ""
    from mlflow.tracking import MlflowClient  # lazily: `diver where` stays fast otherwise

    experiment = MlflowClient(uri).get_experiment_by_name(study.experiment_name())
    if experiment is None:
        return ""
    return f"{base}/{runs_page(experiment.experiment_id, GRID_FILTER)}"


def study_locations(study: StudyConfig) -> dict[str, str]:
    """Absolute locations of the study's outputs, the command that browses its runs and
    the address of the grid's runs in that browser."""
    layout = StudyLayout(study.results_dir)
    uri = study.tracking_uri()
    browse = ""
    if uri.startswith("sqlite:"):
        # a file store: the UI has to be started on it; a server's URI is opened as is
        # diver's app: MLflow's UI opening experiments on their training runs
        browse = (
            f"mlflow ui --app-name {APP_NAME} --backend-store-uri {shlex.quote(uri)} "
            "--host 127.0.0.1"
        )
    return {
        "study": study.study,
        "results": str(layout.root.resolve()),
        "report": str(layout.report.resolve()),
        "corpus": str(layout.corpus_dir.resolve()),
        "mlflow": uri,
        "experiment": study.experiment_name(),
        "browse": browse or uri,
        "grid_runs": _grid_page(study, uri, UI_ADDRESS),
    }


def where_text(study: StudyConfig) -> str:
    """The locations as lines for the terminal."""
    where = study_locations(study)
    lines = [
        f"diver study {where['study']!r}:",
        f"  results     {where['results']}",
        f"  report      {where['report']}",
        f"  corpus      {where['corpus']}",
        f"  MLflow      {where['mlflow']}  (experiment {where['experiment']!r})",
        f"  browse runs {where['browse']}",
    ]
    if where["grid_runs"]:
        lines.append(f"  grid runs   {where['grid_runs']}")
    return "\n".join(lines)
