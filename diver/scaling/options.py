"""What ``diver scaling fit`` offers and its defaults, importable without scipy or pandas.

The command's parser is built on every ``diver`` call (one parser holds every
subcommand), so the choices and defaults it shows live here, apart from the fitting
code that uses them; that code imports them from here.
"""

from __future__ import annotations

#: Huber threshold on the log loss (SPEC §4, Hoffmann et al. 2022).
HUBER_DELTA = 1e-3
#: Bootstrap resamples (Besiroglu et al. 2024).
DEFAULT_BOOTSTRAP = 4000
#: Resampling units of ``diver scaling fit --resample``.
RESAMPLE_UNITS = ("run", "row", "residual")
#: ``--form auto``: choose between the laws by evidence.
AUTO = "auto"
#: Bootstrap resamples refitted by the whole multistart procedure to check the refits
#: (:func:`diver.scaling.fit.audit_refits`): ~1.5 s each on a 36-run grid.
DEFAULT_AUDIT = 10
