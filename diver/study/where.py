"""Where a study's results are: the folder, the report, the corpus and the MLflow store.

Printed at the end of a successful Snakemake run (the Snakefile's ``onsuccess``) and by
``diver where``, so a user who has just waited for ``make run`` sees what to open
next, including the ``mlflow ui`` command that browses the runs (bound to loopback).
"""

from __future__ import annotations

import shlex

from diver.config import StudyConfig
from diver.study.layout import StudyLayout


def study_locations(study: StudyConfig) -> dict[str, str]:
    """Absolute locations of the study's outputs, and the command that browses its runs."""
    layout = StudyLayout(study.results_dir)
    uri = study.tracking_uri()
    browse = ""
    if uri.startswith("sqlite:"):
        # a file store: the UI has to be started on it; a server's URI is opened as is
        browse = f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1"
    return {
        "study": study.study,
        "results": str(layout.root.resolve()),
        "report": str(layout.report.resolve()),
        "corpus": str(layout.corpus_dir.resolve()),
        "mlflow": uri,
        "experiment": study.experiment_name(),
        "browse": browse or uri,
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
    return "\n".join(lines)
