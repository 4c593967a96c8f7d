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

from diver.lazy import lazy_exports

_EXPORTS = {
    "FitResult": "fit",
    "fit_law": "fit",
    "constrained_optimum": "frontier",
    "frontier_table": "frontier",
    "iso_flop": "frontier",
    "iso_loss": "frontier",
    "plan": "frontier",
    "CHINCHILLA": "laws",
    "DIVER1_IEEG_1S": "laws",
    "FORMS": "laws",
    "LawParams": "laws",
    "compute_optimal": "laws",
    "n_opt_for_unique_tokens": "laws",
    "predict": "laws",
    "Runs": "observations",
    "ScalingFitError": "observations",
    "make_runs": "observations",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
