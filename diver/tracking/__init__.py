"""MLflow tracking for a study: one experiment, one parent run, one child run per job.

Layout (the issue's words, made concrete):

* **One experiment per study** (its name comes from the config; by default the study
  name).
* **One parent run per study**, created once by a Snakemake rule *before* the grid by
  :func:`diver.tracking.parent.ensure_parent_run`.  It is found again by its tags
  (``diver.study=<study>``, ``diver.role=parent``), so rerunning the rule, or editing
  one cell's config, returns the same run id instead of creating a second parent.  The
  id goes to a small text file (:mod:`diver.tracking.runid`) that every later rule
  takes as an input, so the grid depends on that file and not on MLflow state.
* **One child run per job** (:func:`diver.tracking.runs.child_run`; a stage command
  uses :func:`stage_run` with a :class:`TrackingTarget`), tagged
  with its stage, grid cell, git commit, SLURM job id and the corpus manifest's SHA-256,
  so any number in the UI can be traced to the exact code and data that produced it.

The submodules, one job each:

* :mod:`~diver.tracking.retry`: which store errors are transient, and retrying them;
* :mod:`~diver.tracking.provenance`: git commit, SLURM job id, file hashes;
* :mod:`~diver.tracking.runid`: the parent run-id file (written atomically);
* :mod:`~diver.tracking.parent`: the store lock and the study's parent run;
* :mod:`~diver.tracking.runs`: the batching run logger, child runs, ``stage_run``;
* :mod:`~diver.tracking.server`: ``diver track server``.

This ``__init__`` is light on purpose: it holds what stage code needs to *describe*
a tracking target (:class:`TrackingTarget`, the tag keys) and to log a stage's run
(:func:`stage_run`), and imports neither MLflow nor any stage code, so building a
target costs nothing and commands that are not asked to track never load MLflow.
Only :mod:`retry`, :mod:`parent` and :mod:`runs` import ``mlflow``.

Every function takes the tracking URI explicitly and uses its own
``mlflow.MlflowClient``; nothing touches MLflow's global state (``mlflow.set_tracking_uri``,
active runs), so several stores can be used from one process and tests stay isolated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diver.tracking.runs import RunLogger

__all__ = [
    "TAG_CELL",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "TAG_MANIFEST",
    "TAG_MANIFEST_SHA256",
    "TAG_PARENT_RUN_ID",
    "TAG_ROLE",
    "TAG_SLURM_JOB_ID",
    "TAG_STAGE",
    "TAG_STUDY",
    "TrackingTarget",
    "stage_run",
]

# Tag keys.  Namespaced so they never collide with MLflow's own ``mlflow.*`` tags.
TAG_STUDY = "diver.study"
TAG_ROLE = "diver.role"
TAG_STAGE = "diver.stage"
TAG_CELL = "diver.cell"
TAG_GIT_COMMIT = "diver.git_commit"
TAG_GIT_DIRTY = "diver.git_dirty"
TAG_SLURM_JOB_ID = "diver.slurm_job_id"
TAG_MANIFEST = "diver.corpus_manifest"
TAG_MANIFEST_SHA256 = "diver.corpus_manifest_sha256"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: what the UI nests children by


@dataclass(frozen=True)
class TrackingTarget:
    """Where a stage logs its MLflow child run: the store and the study's parent run.

    ``manifest``: the corpus manifest the stage read, hashed into the child run's tags
    (``diver.corpus_manifest_sha256``) so its numbers trace back to the exact data.
    Build one with :meth:`from_run_file` from a command's ``--parent-run`` file and
    hand it to :func:`stage_run`.
    """

    uri: str
    parent_run_id: str
    manifest: Path | None = None

    @classmethod
    def from_run_file(
        cls, uri: str, run_file: Path | str, manifest: Path | None = None
    ) -> TrackingTarget:
        """The target whose parent run id is stored in ``run_file`` (``--parent-run``).

        Raises :class:`diver.tracking.runid.RunIdFileError` naming the file when it is
        missing or does not hold a run id, so a command fails before doing any work.
        """
        from diver.tracking.runid import read_run_id  # stdlib only: stays light

        return cls(uri=uri, parent_run_id=read_run_id(Path(run_file)), manifest=manifest)


@contextmanager
def stage_run(
    target: TrackingTarget | None,
    *,
    stage: str,
    cell: str | None = None,
    name: str | None = None,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[RunLogger | None]:
    """This stage's MLflow child run under ``target``, or no run (None) without a target.

    The one way a stage command logs its run::

        target = TrackingTarget.from_run_file(uri, args.parent_run) if args.parent_run else None
        with stage_run(target, stage="corpus", params=...) as run:
            result = work()
            if run is not None:
                run.log_metrics(...)

    ``params`` are logged when the run starts; ``target.manifest`` (when set) is hashed
    into the run's tags; ``cell``, ``name`` and ``tags`` are those of
    :func:`diver.tracking.runs.child_run` (which ends the run FINISHED, FAILED or
    KILLED with the body).  Without a target MLflow is not even imported.
    """
    if target is None:
        yield None
        return
    from diver.tracking.runs import child_run

    with child_run(
        target.uri,
        target.parent_run_id,
        stage=stage,
        cell=cell,
        name=name,
        tags=tags,
        manifest=target.manifest,
    ) as run:
        if params:
            run.log_params(params)
        yield run
