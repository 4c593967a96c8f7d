"""The runs as a scaling-law fit sees them: validated ``(N, D, U_D, L)`` arrays.

A separate module because every part of the fit (the point fit, the bootstrap, the
leave-one-out refits, ``diver scaling fit``) takes the same :class:`Runs`, and the
refusals of :func:`make_runs` - a missing column, a NaN loss, fewer runs than the law
has parameters (SPEC §4) - must be the same wherever a fit starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from diver.errors import DiverError
from diver.scaling.laws import check_form, n_params


class ScalingFitError(DiverError, ValueError):
    """Input a scaling-law fit cannot use; the message names the problem."""


@dataclass(frozen=True)
class Runs:
    """Training runs as the fit sees them: logs of N, D, U_D and the loss."""

    params: NDArray[np.float64]
    tokens: NDArray[np.float64]
    unique_tokens: NDArray[np.float64]
    loss: NDArray[np.float64]
    source: str = "runs"

    @property
    def n(self) -> int:
        return int(self.loss.size)

    def logs(self) -> tuple[NDArray[np.float64], ...]:
        """``(log N, log D, log U_D, log L)``."""
        return (
            np.log(self.params),
            np.log(self.tokens),
            np.log(self.unique_tokens),
            np.log(self.loss),
        )


def bad_rows(values: NDArray[np.float64]) -> str | None:
    """Which rows of ``values`` (a column, or rows of columns) hold a value that is not a
    finite positive number, said for an error message; None when there are none."""
    table = values.reshape(values.shape[0], -1)
    bad = np.flatnonzero(~np.all(np.isfinite(table) & (table > 0), axis=1))
    if not bad.size:
        return None
    what = "NaN" if np.isnan(table[bad]).any() else "non-finite or non-positive"
    more = " ..." if bad.size > 10 else ""
    return f"{what} values in {bad.size} row(s) (0-based rows {bad[:10].tolist()}{more})"


REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "data-constrained": ("params", "tokens", "unique_tokens", "loss"),
    "chinchilla": ("params", "tokens", "loss"),
}


def make_runs(columns: Mapping[str, Any], form: str, *, source: str = "runs") -> Runs:
    """Validated :class:`Runs` from columns ``params, tokens, [unique_tokens,] loss``.

    Refuses (:class:`ScalingFitError`, naming ``source``) a missing column, a value
    that is not a finite positive number (NaN losses included: a diverged or missing
    run must be dealt with, not silently dropped), fewer runs than the form has
    parameters, and losses that are all equal (nothing to fit).
    """
    check_form(form)
    missing = [c for c in REQUIRED_COLUMNS[form] if c not in columns]
    if missing:
        raise ScalingFitError(
            f"{source}: missing column(s) {missing}; a {form} fit needs "
            f"{list(REQUIRED_COLUMNS[form])}"
        )
    arrays: dict[str, NDArray[np.float64]] = {}
    for name in REQUIRED_COLUMNS[form]:
        try:
            values = np.asarray(columns[name], dtype=float).ravel()
        except (TypeError, ValueError) as exc:
            raise ScalingFitError(f"{source}: column {name!r} is not numeric ({exc})") from exc
        problem = bad_rows(values)
        if problem:
            raise ScalingFitError(
                f"{source}: column {name!r} has {problem}; every run needs a finite positive value"
            )
        arrays[name] = values
    sizes = {v.size for v in arrays.values()}
    if len(sizes) != 1:
        raise ScalingFitError(f"{source}: columns have different lengths {sorted(sizes)}")
    n = sizes.pop()
    k = n_params(form)
    if n < k:
        raise ScalingFitError(
            f"{source}: {n} usable run(s), fewer than the {k} parameters of the {form} law; "
            f"need at least {k}"
        )
    loss = arrays["loss"]
    if np.ptp(np.log(loss)) <= 1e-12:
        raise ScalingFitError(
            f"{source}: all {n} losses are equal ({loss[0]:.6g}); a constant loss "
            "determines no scaling law"
        )
    unique = arrays.get("unique_tokens", arrays["tokens"])
    return Runs(arrays["params"], arrays["tokens"], unique, loss, source)
