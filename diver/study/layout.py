"""Where a study's results live: every path under ``results_dir``, in one place.

The rule files, the report and the scaling commands all ask this module for paths, so
renaming a folder is one edit here rather than a hunt through ``workflow/`` and three
packages.  Paths that depend on a grid cell take its key (``diver.study.cells``); given
:data:`~diver.study.cells.CELL_PATTERN` (or other ``{wildcard}`` strings) instead, the
same methods return the rule files' wildcard patterns::

    <results>/
      config/study.yaml                  the resolved study config every command reads
      tracking/parent_run_id.txt         the study's MLflow parent run
      synth/, synth_task/                synthetic corpus and task recordings
      corpus/{manifest,qc,channels}.csv  the Parquet corpus and its QA/QC
      corpus_plan/plan.json              the corpus stage's recordings in chunks
      corpus_plan/chunks/<chunk>.json    written once a chunk's job has built it
      pretrain/<cell>/                   one pretraining run (metrics.json, model.pt, ...)
      tasks/<task>.parquet               a fine-tuning task set
      finetune/<task>/<mode>/<cell>/     one fine-tuning job (metrics.json, ...)
      scaling/runs.csv                   every cell's losses, the fits' input
      scaling/<family>/<patch>/fit.json  one fitted law and its figures
      report/index.html                  the study report
      logs/                              one log per job
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StudyLayout:
    """The results folder of one study."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))  # accept a str from a config

    # ------------------------------------------------------------------ study-wide
    @property
    def study_config(self) -> Path:
        return self.root / "config" / "study.yaml"

    @property
    def parent_run_id(self) -> Path:
        return self.root / "tracking" / "parent_run_id.txt"

    @property
    def synth_dir(self) -> Path:
        return self.root / "synth"

    @property
    def synth_task_dir(self) -> Path:
        return self.root / "synth_task"

    # ---------------------------------------------------------------------- corpus
    @property
    def corpus_dir(self) -> Path:
        return self.root / "corpus"

    @property
    def corpus_manifest(self) -> Path:
        return self.corpus_dir / "manifest.csv"

    @property
    def corpus_qc(self) -> Path:
        return self.corpus_dir / "qc.csv"

    @property
    def corpus_channels(self) -> Path:
        return self.corpus_dir / "channels.csv"

    @property
    def corpus_plan(self) -> Path:
        """The corpus stage's plan: every recording, in chunks of one job each.  Beside
        the corpus folder, not in it, so that folder is what a one-job run writes."""
        return self.root / "corpus_plan" / "plan.json"

    def corpus_chunk(self, chunk: str) -> Path:
        """The file a chunk's job writes once its recordings are built (its target)."""
        return self.corpus_plan.parent / "chunks" / f"{chunk}.json"

    # ----------------------------------------------------------------- pretraining
    def cell_dir(self, cell: str) -> Path:
        """A pretraining run's folder (checkpoints, logs, job record and outputs)."""
        return self.root / "pretrain" / cell

    def cell_metrics(self, cell: str) -> Path:
        return self.cell_dir(cell) / "metrics.json"

    def cell_model(self, cell: str) -> Path:
        return self.cell_dir(cell) / "model.pt"

    # ----------------------------------------------------------------- fine-tuning
    def taskset(self, task: str) -> Path:
        return self.root / "tasks" / f"{task}.parquet"

    def finetune_dir(self, task: str, mode: str, cell: str) -> Path:
        return self.root / "finetune" / task / mode / cell

    def finetune_metrics(self, task: str, mode: str, cell: str) -> Path:
        return self.finetune_dir(task, mode, cell) / "metrics.json"

    # --------------------------------------------------------------------- scaling
    @property
    def scaling_dir(self) -> Path:
        return self.root / "scaling"

    @property
    def scaling_runs(self) -> Path:
        return self.scaling_dir / "runs.csv"

    def fit_dir(self, family: str, patch: str) -> Path:
        return self.scaling_dir / family / patch

    def fit_summary(self, family: str, patch: str) -> Path:
        return self.fit_dir(family, patch) / "fit.json"

    def fit_summaries(self) -> list[Path]:
        """Every fit written so far (the report's default input)."""
        return sorted(self.scaling_dir.glob("**/fit.json"))

    # ---------------------------------------------------------------------- report
    @property
    def report(self) -> Path:
        return self.root / "report" / "index.html"

    # ------------------------------------------------------------------------ logs
    def log(self, *parts: str) -> Path:
        """A job's log: ``log("pretrain", cell)`` is ``logs/pretrain/<cell with _>.log``.

        The last part may be a cell key; its slashes become underscores so every job
        of a stage logs into one flat folder.
        """
        *folders, name = parts
        return self.root.joinpath("logs", *folders, name.replace("/", "_") + ".log")
