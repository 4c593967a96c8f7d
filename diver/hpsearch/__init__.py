"""The hyper-parameter sweep before the grid, and the check that muP transfers its result.

SPEC §3 tunes learning rate and weight decay at one width (Small, 2 epochs) per corpus
family and transfers them to every width by muP.  This package makes that a stage of the
DAG rather than numbers typed into a config:

- :mod:`~diver.hpsearch.plan`: which sweeps a study has (a family and patch whose ``lr``
  or ``weight_decay`` is ``from_sweep``), each sweep's identity and folders;
- :mod:`~diver.hpsearch.sweep`: one sweep - Optuna (TPE or an explicit log-spaced grid,
  median pruning) over trials that are each one ``diver pretrain`` job through
  ``diver launch``, the study state in an Optuna journal file that survives restarts,
  each trial an MLflow child run of stage ``hpsearch``, the result in ``best.yaml``;
- :mod:`~diver.hpsearch.transfer`: ``diver hpsearch transfer``, loss against learning
  rate at three widths under muP and under standard parametrisation;
- :mod:`~diver.hpsearch.cli`: the ``diver hpsearch`` commands.

Optuna is imported only by the modules that run a sweep, so reading a config never
pays for it.
"""
