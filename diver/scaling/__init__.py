"""Scaling laws of SPEC §4: the data-constrained and Chinchilla forms, their
approach-3 fit with bootstrap intervals, the compute-optimal frontier and plans.

numpy/scipy only (pandas and matplotlib for files and figures); never imports the
model or training code - the fit sees runs as ``(N, D, U_D, loss)`` numbers.

- :mod:`diver.scaling.laws`: the laws, ``N_opt(U_D)``, compute-optimal allocation;
- :mod:`diver.scaling.fit`: Huber/L-BFGS fit, bootstrap, R^2, leave-one-out;
- :mod:`diver.scaling.frontier`: frontier table, iso-FLOP / iso-loss curves, plans;
- :mod:`diver.scaling.plots`: figures;
- :mod:`diver.scaling.cli`: ``diver scaling fit`` / ``plan`` (``register(subparsers)``).
"""

from diver.scaling.fit import FitResult, Runs, ScalingFitError, fit_law, make_runs
from diver.scaling.frontier import constrained_optimum, frontier_table, iso_flop, iso_loss, plan
from diver.scaling.laws import (
    CHINCHILLA,
    DIVER1_IEEG_1S,
    FORMS,
    LawParams,
    compute_optimal,
    n_opt_for_unique_tokens,
    predict,
)

__all__ = [
    "CHINCHILLA",
    "DIVER1_IEEG_1S",
    "FORMS",
    "FitResult",
    "LawParams",
    "Runs",
    "ScalingFitError",
    "compute_optimal",
    "constrained_optimum",
    "fit_law",
    "frontier_table",
    "iso_flop",
    "iso_loss",
    "make_runs",
    "n_opt_for_unique_tokens",
    "plan",
    "predict",
]
