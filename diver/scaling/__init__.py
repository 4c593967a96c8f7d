"""Scaling laws of SPEC §4: the data-constrained and Chinchilla forms, their
approach-3 fit with bootstrap intervals, the compute-optimal frontier and plans.

numpy/scipy only (pandas and matplotlib for files and figures); never imports the
model or training code - the fit sees runs as ``(N, D, U_D, loss)`` numbers.

- :mod:`diver.scaling.laws`: the laws, ``N_opt(U_D)``, compute-optimal allocation;
- :mod:`diver.scaling.observations`: the runs as the fit sees them (:class:`Runs`);
- :mod:`diver.scaling.optimise`: the summed Huber objective, scipy and batched L-BFGS;
- :mod:`diver.scaling.fit`: the approach-3 point fit over a grid of starts (``--fix``,
  the two-stage procedure), R^2, and :func:`fit_law`, which assembles all of it;
- :mod:`diver.scaling.bootstrap`: multistart bootstrap refits (by run, row or residual)
  and held-out-run refits;
- :mod:`diver.scaling.identify`: which parameters the design identifies (search bounds,
  profile likelihoods, Gauss-Newton conditioning), the residual scale;
- :mod:`diver.scaling.frontier`: frontier table, iso-FLOP / iso-loss curves, plans;
- :mod:`diver.scaling.plots`: figures;
- :mod:`diver.scaling.runs`: the runs table of a grid, and which law it supports;
- :mod:`diver.scaling.study`: :func:`fit_study`, a study's whole fit (files, figures,
  ``fit.json``), and :func:`load_fit`;
- :mod:`diver.scaling.cli`: ``diver scaling collect`` / ``fit`` / ``plan`` (argument parsing).
"""

from diver.scaling.fit import FitResult, fit_law
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
from diver.scaling.observations import Runs, ScalingFitError, make_runs

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
