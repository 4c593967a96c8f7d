"""The names a study's runs carry in MLflow: one place, so they stay stable.

Why one module: three readers depend on these exact strings and must not drift apart:
MLflow's own UI (a user picks ``params.size`` and ``metrics.val_loss`` as columns, or
types ``tags.diver.stage = 'pretrain'`` in the search box), ``diver compare``
(:mod:`diver.tracking.compare`) and the experiment's description
(:mod:`diver.tracking.note`), which tells users the names.  Renaming one here renames
it everywhere diver writes or reads it; runs logged before keep the old name, so
rename only with a reason.  Standard library only (no MLflow import).

**The experiment** is tagged as a model-training experiment
(:data:`EXPERIMENT_KIND_TAG` = :data:`EXPERIMENT_KIND_TRAINING`): MLflow 3's UI then
opens it on its training-runs table, not on the GenAI view (traces, "Detect issues")
that an experiment without a kind gets.  Its description is MLflow's experiment note
(:data:`EXPERIMENT_NOTE_TAG`, Markdown shown above the runs).

**A grid (pretraining) run** logs

- the cell's axes as params (:data:`GRID_PARAMS`): ``family``, ``patch``, ``size``,
  ``data_fraction``, ``subjects`` (:data:`SUBJECTS_ALL` outside the subject sweep),
  ``epochs``;
- its results as metrics (:data:`GRID_METRICS`): ``val_loss`` (the held-out loss; its
  history has one point per validation, at the optimizer step, so the table's latest
  value is the final loss), ``tokens`` (D = epochs x U_D), ``unique_tokens`` (U_D),
  ``flops`` (the model's own count), ``flops_6nd`` (6 N D) and ``n_params`` (N), the
  same numbers as the cell's ``metrics.json``;
- :data:`EPOCH_METRIC`: the validation loss at each epoch end with **step = epoch**, so
  MLflow's chart of it puts cells of different data fractions (different steps per
  epoch) on one axis, and SPEC §3's read epochs (2, 4, 8, ... of one long run) are its
  steps.

**A fine-tuning run** logs :data:`FINETUNE_PARAMS`: the task, the mode (frozen or full)
and the pretrained cell, beside its metrics ``<model>.<metric>`` (model ``diver`` and
the baselines ``linear``, ``scratch``).
"""

from __future__ import annotations

__all__ = [
    "EPOCH_METRIC",
    "EXPERIMENT_KIND_TAG",
    "EXPERIMENT_KIND_TRAINING",
    "EXPERIMENT_NOTE_SHA_TAG",
    "EXPERIMENT_NOTE_TAG",
    "FINETUNE_PARAMS",
    "GRID_METRICS",
    "GRID_PARAMS",
    "STAGES",
    "SUBJECTS_ALL",
]

#: MLflow 3's experiment-kind tag; the UI reads it to choose the experiment's layout
#: (values in the UI's bundle: ``custom_model_development``, ``genai_development``,
#: their ``*_inferred`` guesses, ``no_inferred_type``, ``finetuning``, ...).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: The kind of a model-training experiment: the UI opens it on "Training runs".
EXPERIMENT_KIND_TRAINING = "custom_model_development"
#: MLflow's description of an experiment (and of a run): Markdown, shown in the UI.
EXPERIMENT_NOTE_TAG = "mlflow.note.content"
#: SHA-256 of the description diver wrote last: a note whose hash differs was edited
#: by a user in the UI, and ``diver track init`` then leaves it alone.
EXPERIMENT_NOTE_SHA_TAG = "diver.note_sha256"

#: A grid cell's axes, logged as params under these names by every pretraining run.
GRID_PARAMS: tuple[str, ...] = ("family", "patch", "size", "data_fraction", "subjects", "epochs")
#: ``subjects`` of a cell that trains on all subjects of its data fraction.
SUBJECTS_ALL = "all"
#: A pretraining run's results, logged as metrics under these names (``metrics.json``'s keys).
GRID_METRICS: tuple[str, ...] = (
    "val_loss",
    "tokens",
    "unique_tokens",
    "flops",
    "flops_6nd",
    "n_params",
)
#: Validation loss at each epoch end, step = the epoch (1, 2, ...).
EPOCH_METRIC = "val_loss_at_epoch"

#: What a fine-tuning run is, as params: the task, the mode and the pretrained cell.
FINETUNE_PARAMS: tuple[str, ...] = ("task", "mode", "pretrained_cell")

#: The stages ``diver compare`` shows (values of the ``diver.stage`` tag).
STAGES: tuple[str, ...] = ("pretrain", "finetune", "scaling", "hpsearch")
