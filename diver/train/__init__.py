"""Training on DeepSpeed: pretraining of one grid cell, its parts, process groups.

- ``pretrain``: :func:`~diver.train.pretrain.pretrain`, one grid cell of SPEC §3 end to
  end: puts the parts below together in their order;
- ``cli``: the ``diver pretrain`` command (flags -> ``diver.study.settings``);
- ``settings``: the training side's error and MLflow target (the cell's settings are
  ``diver.study.settings.PretrainSettings``);
- ``plan``: the token budget, this rank's training stream and the run's length;
- ``engine``: batch geometry, precision, the muP model and MuAdamW under DeepSpeed;
- ``loop``: deterministic steps, validation, checkpoints, exact resume, final outputs;
- ``validation``: the fixed validation loss; ``preemption``: signals -> checkpoint;
- ``outputs``: logs, run_config/metrics JSON, the loss plot, rerun identity;
- ``schedule``: the per-group cosine learning-rate factor;
- ``checkpoint``: ``step-N`` folders with a completion marker, keep-k, resume;
- ``distributed``: process-group set-up for a plain process, torchrun and SLURM.

Submodules are imported on use: DeepSpeed takes seconds to import and the CLI's other
commands do not need it.
"""
