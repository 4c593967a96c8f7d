"""Training on DeepSpeed: pretraining loop, schedule, checkpoints, process groups.

- ``pretrain``: one grid cell of SPEC §3 end to end (data split, muP model, MuAdamW,
  cosine per parameter group, validation, checkpoints, resume, outputs, MLflow);
- ``schedule``: the per-group cosine learning-rate factor;
- ``checkpoint``: ``step-N`` folders with a completion marker, keep-k, resume;
- ``distributed``: process-group set-up for a plain process, torchrun and SLURM.

Submodules are imported on use: DeepSpeed takes seconds to import and the CLI's other
commands do not need it.
"""
