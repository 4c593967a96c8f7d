"""What a study *is*, independent of how it runs.

- :mod:`diver.study.budget`: the token budget (SPEC §1);
- :mod:`diver.study.cells`: the pretraining grid's cells, their keys and wildcards;
- :mod:`diver.study.layout`: every path under the results folder (rules, report, scaling);
- :mod:`diver.study.settings`: one cell's resolved pretraining settings, their identity
  and planned FLOPs (what ``diver pretrain`` and ``diver launch`` both build);
- :mod:`diver.study.artifacts`: typed records of the result files one stage writes
  and another reads (a cell's ``metrics.json``, a fit's ``fit.json``).

Modules here are pure (functions of a config, or of a result file); nothing imports
training, launching or tracking from them.
"""
