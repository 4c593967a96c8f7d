"""The two scaling laws of SPEC §4 and the compute-optimal allocation they imply.

Both laws are written in log-parameter space, the space the approach-3 fit works in
(Hoffmann et al. 2022, Appendix D.2): ``a = log A``, ``b = log B``, ``e = log E``,
``alpha``, ``beta`` and, for the data-constrained form, ``log R_D*`` and ``log R_N*``.
The log of the predicted loss is then a log-sum-exp::

    log L = LSE(a - alpha log N', b - beta log D', e)

and :func:`log_loss` gives it (and, on request, its exact gradient in those
parameters) for many parameter vectors at once, so the fit's grid screen, its
L-BFGS refinements, the bootstrap and every prediction share one implementation.

Plain Chinchilla law (Hoffmann et al. 2022)::

    L(N, D) = E + A / N^alpha + B / D^beta

Data-constrained law (Muennighoff et al. 2023, SPEC §4)::

    L(N, D; U_D) = E + A / N'^alpha + B / D'^beta
    D' = U_D (1 + R_D* (1 - exp(-R_D / R_D*))),  R_D = max(D / U_D - 1, 0)
    N' = U_N (1 + R_N* (1 - exp(-R_N / R_N*))),  R_N = max(N / U_N - 1, 0)
    U_N = min(N_opt(U_D), N)

``N_opt(U_D)``, written down once here and used by the generator, the fit and every
prediction: the parameter count that is compute-optimal (SPEC §4, ``C = 6 N D``) when
the compute-optimal token count is exactly the unique data, i.e. training *once* on
``U_D``.  Setting ``D_opt(C) = U_D`` in ``D_opt = G^-1 (C/6)^(alpha/(alpha+beta))``
gives ``C/6 = (G U_D)^((alpha+beta)/alpha)``, and then
``N_opt = G (C/6)^(beta/(alpha+beta))`` becomes::

    N_opt(U_D) = G^((alpha+beta)/alpha) U_D^(beta/alpha)
               = (alpha A / (beta B))^(1/alpha) U_D^(beta/alpha)

(the same point where ``alpha A / N^alpha = beta B / D^beta``, the first-order
condition of the compute-optimal allocation).  ``N_opt(U_D)`` uses the law's own
``A, B, alpha, beta``, so during the fit ``U_N`` moves with the parameters.  A run that
stopped before one epoch (``D < U_D``) has seen only ``D`` unique tokens, so the law
uses ``min(U_D, D)`` as its unique data.

Compute-optimal allocation for a budget ``C`` (SPEC §4, Hoffmann et al. 2022 eq. 4)::

    N_opt(C) = G (C/6)^(beta/(alpha+beta)),  D_opt(C) = G^-1 (C/6)^(alpha/(alpha+beta))
    G = (alpha A / (beta B))^(1/(alpha+beta))

With fresh data (``U_D = D``) the data-constrained law has ``R_D = 0`` and, at the
compute-optimal point, ``U_N = N`` exactly, so it reduces to the Chinchilla law there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from diver.study.artifacts import FIT_PARAMETERS
from diver.study.budget import TOKENS_PER_FULL_WINDOW

Form = Literal["data-constrained", "chinchilla"]
FORMS: tuple[Form, ...] = ("data-constrained", "chinchilla")

#: Parameter names per form, in the order of the log-space vector.  They are fit.json's
#: keys, so the file's schema (:mod:`diver.study.artifacts`, below this package) owns them.
PARAM_NAMES: dict[str, tuple[str, ...]] = dict(FIT_PARAMETERS)
assert set(PARAM_NAMES) == set(FORMS)

#: Names of the log-space coordinates the optimiser sees, same order as PARAM_NAMES.
LOG_NAMES: dict[str, tuple[str, ...]] = {
    "chinchilla": ("a", "b", "e", "alpha", "beta"),
    "data-constrained": ("a", "b", "e", "alpha", "beta", "log_R_D_star", "log_R_N_star"),
}

# exp() overflows float64 just above 709; exponents are clipped below that so that
# absurd parameter vectors (the fit's grid screen tries many) give huge, finite values.
_MAX_EXP = 700.0


@dataclass(frozen=True)
class LawParams:
    """One law's parameters in natural units (``R_*`` are ``None`` for Chinchilla)."""

    A: float
    B: float
    E: float
    alpha: float
    beta: float
    R_D_star: float | None = None
    R_N_star: float | None = None

    @property
    def form(self) -> Form:
        """``data-constrained`` when both ``R*`` are set, else ``chinchilla``."""
        if (self.R_D_star is None) != (self.R_N_star is None):
            raise ValueError("R_D_star and R_N_star must be both set or both None")
        return "chinchilla" if self.R_D_star is None else "data-constrained"

    def to_dict(self) -> dict[str, float]:
        """The form's parameters by name (``R_*`` only for the data-constrained form)."""
        values = asdict(self)
        return {name: float(values[name]) for name in PARAM_NAMES[self.form]}

    def to_vector(self) -> NDArray[np.float64]:
        """The log-space vector the fit optimises (see :data:`LOG_NAMES`)."""
        vector = [np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta]
        if self.form == "data-constrained":
            assert self.R_D_star is not None and self.R_N_star is not None
            vector += [np.log(self.R_D_star), np.log(self.R_N_star)]
        return np.asarray(vector, dtype=float)

    @classmethod
    def from_vector(cls, x: ArrayLike) -> LawParams:
        """Inverse of :meth:`to_vector`; the form follows from the length (5 or 7)."""
        v = np.asarray(x, dtype=float)
        if v.shape not in ((5,), (7,)):
            raise ValueError(f"a parameter vector has 5 or 7 entries, got shape {v.shape}")
        extra = {}
        if v.size == 7:
            extra = {"R_D_star": float(np.exp(v[5])), "R_N_star": float(np.exp(v[6]))}
        return cls(
            A=float(np.exp(v[0])),
            B=float(np.exp(v[1])),
            E=float(np.exp(v[2])),
            alpha=float(v[3]),
            beta=float(v[4]),
            **extra,
        )

    @classmethod
    def from_mapping(cls, values: dict[str, float], form: str) -> LawParams:
        """Parameters of ``form`` read by name from ``values`` (e.g. a fit.json)."""
        check_form(form)
        missing = [name for name in PARAM_NAMES[form] if name not in values]
        if missing:
            raise KeyError(f"{form} parameters missing: {missing}")
        return cls(**{name: float(values[name]) for name in PARAM_NAMES[form]})


#: DIVER-1's fitted iEEG 1 s law (SPEC §4, paper Tables 8-9).
DIVER1_IEEG_1S = LawParams(
    A=19.217, B=57.065, E=0.0092, alpha=0.3773, beta=0.3504, R_D_star=9.5372, R_N_star=3.3850
)
#: DIVER-1's fitted iEEG 0.1 s law (SPEC §4).
DIVER1_IEEG_01S = LawParams(
    A=101.52, B=1.1550, E=0.0030, alpha=0.5248, beta=0.1246, R_D_star=19.705, R_N_star=0.7191
)
#: DIVER-1's fitted EEG 1 s law (SPEC §4).
DIVER1_EEG_1S = LawParams(
    A=0.5983, B=2.0633, E=0.0004, alpha=3.4480, beta=0.2059, R_D_star=23.860, R_N_star=3.2903
)
#: Chinchilla's published law (Hoffmann et al. 2022; SPEC §4).
CHINCHILLA = LawParams(A=406.4, B=410.7, E=1.69, alpha=0.34, beta=0.28)
#: Besiroglu et al. (2024)'s refit of Chinchilla's data (SPEC §4).
CHINCHILLA_BESIROGLU = LawParams(A=482.01, B=2085.43, E=1.8172, alpha=0.3478, beta=0.3658)

#: Parameter counts of the 1 s family (SPEC §2's table, heads included): Tiny..XXL.
IEEG_1S_PARAMS: tuple[float, ...] = (13.03e6, 51.36e6, 115.00e6, 203.95e6, 812.85e6, 1.83e9)
#: Tokens per 30 s window counted by the law (SPEC §1: 32 x 30 x 0.75 x 0.75).
TOKENS_PER_WINDOW = round(TOKENS_PER_FULL_WINDOW)
#: The iEEG corpus as unique tokens: 5,310 h = 637,200 windows of 30 s (SPEC §1).
IEEG_UNIQUE_TOKENS = 637_200 * TOKENS_PER_WINDOW

#: A 36-run design (6 sizes x these 6 columns) under which all seven data-constrained
#: parameters are identifiable: ``(U_D as a multiple of the iEEG corpus, epochs)``.
#: SPEC §3's iEEG 1 s grid (one U_D, 1-64 epochs) is not: with DIVER-1's law
#: ``N_opt(U_D) = 5.8M`` is below the smallest model, so every run has ``U_N < N``
#: and ``N'`` saturates at ``U_N (1 + R_N*)`` from Base on; ``A``, ``alpha`` and
#: ``R_N*`` then trade off almost freely (Fisher standard error of ``log A`` ~ 360
#: at 2 % noise).  Several data fractions fix that: at 100x the corpus
#: ``N_opt = 414M``, so Tiny..Large run with ``U_N = N`` (pure power law in N:
#: ``A, alpha``), at 0.1x-10x ``U_N`` moves with ``U_D`` (``R_N*`` and the
#: ``N_opt(U_D)`` link), and the 4-32 epoch columns give ``R_D > 0`` (``R_D*``).
#: Standard errors at 2 % noise: ``log A`` 0.29, ``log B`` 0.09, ``log E`` 0.09,
#: ``alpha`` 0.018, ``beta`` 0.005, ``log R_D*`` 0.13, ``log R_N*`` 0.27.
IDENTIFIABLE_DESIGN: tuple[tuple[float, int], ...] = (
    (0.1, 1),
    (1.0, 4),
    (1.0, 32),
    (10.0, 1),
    (100.0, 1),
    (100.0, 16),
)


def check_form(form: str) -> Form:
    """``form`` itself when it names a law, else a ``ValueError`` listing the forms."""
    if form not in FORMS:
        raise ValueError(f"unknown scaling-law form {form!r}; expected one of {FORMS}")
    return form  # type: ignore[return-value]


def n_params(form: str) -> int:
    """How many parameters ``form`` has (5 or 7)."""
    return len(PARAM_NAMES[check_form(form)])


def _saturation(
    r: NDArray[np.float64], log_r_star: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``g = 1 + R* (1 - exp(-R/R*))`` with ``x = R/R*``, and ``dg/dR* * R*``.

    ``g`` is the factor by which repeated data (or excess parameters) stretch the
    effective count: ``g = 1 + R`` for ``R << R*`` and ``1 + R*`` for ``R >> R*``.
    """
    r_star = np.exp(np.clip(log_r_star, -_MAX_EXP, _MAX_EXP))
    x = r / r_star
    one_minus = -np.expm1(-x)
    g = 1.0 + r_star * one_minus
    # d g / d log R* = R* (dg/dR*) = R* (1 - exp(-x) - x exp(-x)).
    dg_dlog_star = r_star * (one_minus - x * np.exp(-x))
    return g, x, dg_dlog_star


def log_loss(
    x: ArrayLike,
    log_n: ArrayLike,
    log_d: ArrayLike,
    log_ud: ArrayLike | None = None,
    *,
    grad: bool = False,
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """log of the predicted loss for parameter vectors ``x`` at runs ``(N, D, U_D)``.

    ``x`` has shape ``(k,)`` or ``(m, k)`` (k = 5: Chinchilla, k = 7: data-constrained,
    coordinates of :data:`LOG_NAMES`); ``log_n``, ``log_d``, ``log_ud`` have shape
    ``(n,)``.  Returns ``log L`` of shape ``(n,)`` or ``(m, n)`` and, with ``grad``, its
    Jacobian ``d log L / d x`` of shape ``(..., n, k)`` (exact, for L-BFGS).

    ``log_ud`` is required for the data-constrained form.
    """
    xv = np.asarray(x, dtype=float)
    ln = np.asarray(log_n, dtype=float)
    ld = np.asarray(log_d, dtype=float)
    k = xv.shape[-1]
    cols = [xv[..., i, None] for i in range(k)]  # each (..., 1), broadcasts over runs
    a, b, e, alpha, beta = cols[:5]

    if k == 5:
        log_np, log_dp = ln, ld
    elif k == 7:
        if log_ud is None:
            raise ValueError("the data-constrained law needs the unique tokens U_D")
        lr_d, lr_n = cols[5], cols[6]
        # Unique data actually seen: min(U_D, D).
        lu = np.minimum(np.asarray(log_ud, dtype=float), ld)
        r_d = np.expm1(np.minimum(ld - lu, _MAX_EXP))
        g_d, _, dgd = _saturation(r_d, lr_d)
        log_dp = lu + np.log(g_d)

        # log N_opt(U_D) = (log(alpha A / (beta B)) + beta log U_D) / alpha   (module doc)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_nopt = (np.log(alpha) + a - np.log(beta) - b + beta * lu) / alpha
        constrained = log_nopt < ln  # U_N = N_opt(U_D) < N
        log_un = np.where(constrained, log_nopt, ln)
        delta = np.minimum(ln - log_un, _MAX_EXP)  # log(N / U_N) >= 0
        r_n = np.expm1(delta)
        g_n, x_n, dgn = _saturation(r_n, lr_n)
        log_np = log_un + np.log(g_n)
    else:
        raise ValueError(f"a parameter vector has 5 or 7 entries, got {k}")

    t1 = a - alpha * log_np
    t2 = b - beta * log_dp
    t3 = np.broadcast_to(e, t1.shape)
    top = np.maximum(np.maximum(t1, t2), t3)
    w1, w2, w3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(t3 - top)
    total = w1 + w2 + w3
    out = top + np.log(total)
    if not grad:
        return out, None

    p1, p2, p3 = w1 / total, w2 / total, w3 / total
    jac = np.empty((*out.shape, k))
    if k == 5:
        jac[..., 0] = p1
        jac[..., 1] = p2
        jac[..., 2] = p3
        jac[..., 3] = -p1 * log_np
        jac[..., 4] = -p2 * log_dp
        return out, jac

    # s = d log N' / d log U_N where U_N = N_opt(U_D) (zero where U_N = N):
    # d log g / d log U_N = (1/g) exp(-x) dR/dlogU_N, dR/dlogU_N = -N/U_N = -exp(delta).
    s = np.where(constrained, 1.0 - np.exp(np.minimum(delta - x_n, _MAX_EXP)) / g_n, 0.0)
    # d log U_N / d(a, b, alpha, beta) where constrained:
    #   1/alpha, -1/alpha, (1 - alpha log N_opt)/alpha^2, (log U_D - 1/beta)/alpha.
    with np.errstate(invalid="ignore"):
        du_dalpha = np.where(constrained, (1.0 - alpha * log_nopt) / alpha**2, 0.0)
    du_dbeta = (lu - 1.0 / beta) / alpha
    jac[..., 0] = p1 * (1.0 - s)
    jac[..., 1] = p2 + p1 * s
    jac[..., 2] = p3
    jac[..., 3] = -p1 * (log_np + alpha * s * du_dalpha)
    jac[..., 4] = -p2 * log_dp - p1 * alpha * s * du_dbeta
    jac[..., 5] = -p2 * beta * dgd / g_d
    jac[..., 6] = -p1 * alpha * dgn / g_n
    return out, jac


def _logs(
    params: LawParams, n: ArrayLike, d: ArrayLike, unique_tokens: ArrayLike | None
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64] | None, tuple[int, ...]]:
    n_arr, d_arr = np.broadcast_arrays(np.asarray(n, dtype=float), np.asarray(d, dtype=float))
    shape = n_arr.shape
    log_ud = None
    if params.form == "data-constrained":
        # Fresh data (every token seen once) when the unique tokens are not given.
        u = d_arr if unique_tokens is None else np.broadcast_to(unique_tokens, shape)
        log_ud = np.log(np.asarray(u, dtype=float)).ravel()
    return np.log(n_arr).ravel(), np.log(d_arr).ravel(), log_ud, shape


def predict(
    params: LawParams, n: ArrayLike, d: ArrayLike, unique_tokens: ArrayLike | None = None
) -> NDArray[np.float64]:
    """Predicted loss at ``N`` parameters and ``D`` training tokens (broadcast).

    For the data-constrained form ``unique_tokens`` is ``U_D``; ``None`` means fresh
    data (``U_D = D``: one epoch, ``R_D = 0``).  The Chinchilla form ignores it.
    """
    log_n, log_d, log_ud, shape = _logs(params, n, d, unique_tokens)
    out, _ = log_loss(params.to_vector(), log_n, log_d, log_ud)
    return np.exp(out).reshape(shape)


def n_opt_for_unique_tokens(params: LawParams, unique_tokens: ArrayLike) -> NDArray[np.float64]:
    """``N_opt(U_D) = (alpha A / (beta B))^(1/alpha) U_D^(beta/alpha)`` (module doc)."""
    u = np.asarray(unique_tokens, dtype=float)
    ratio = params.alpha * params.A / (params.beta * params.B)
    return np.exp((np.log(ratio) + params.beta * np.log(u)) / params.alpha)


def effective_counts(
    params: LawParams, n: ArrayLike, d: ArrayLike, unique_tokens: ArrayLike
) -> dict[str, NDArray[np.float64]]:
    """``U_N, R_N, N', R_D, D'`` of the data-constrained law at the given runs.

    For reading a design: all seven parameters are identifiable only when the runs
    cover ``U_N < N`` (so ``R_N*`` matters) and ``R_D > 0`` (so ``R_D*`` does).
    """
    if params.form != "data-constrained":
        raise ValueError("effective counts exist only for the data-constrained law")
    assert params.R_D_star is not None and params.R_N_star is not None
    n_arr, d_arr, u_arr = np.broadcast_arrays(
        np.asarray(n, dtype=float), np.asarray(d, dtype=float), np.asarray(unique_tokens, float)
    )
    u_seen = np.minimum(u_arr, d_arr)
    r_d = np.maximum(d_arr / u_seen - 1.0, 0.0)
    d_eff = u_seen * (1.0 + params.R_D_star * -np.expm1(-r_d / params.R_D_star))
    u_n = np.minimum(n_opt_for_unique_tokens(params, u_seen), n_arr)
    r_n = np.maximum(n_arr / u_n - 1.0, 0.0)
    n_eff = u_n * (1.0 + params.R_N_star * -np.expm1(-r_n / params.R_N_star))
    return {"U_N": u_n, "R_N": r_n, "N_eff": n_eff, "R_D": r_d, "D_eff": d_eff}


def g_factor(params: LawParams) -> float:
    """``G = (alpha A / (beta B))^(1/(alpha+beta))`` (SPEC §4)."""
    return float(
        (params.alpha * params.A / (params.beta * params.B)) ** (1.0 / (params.alpha + params.beta))
    )


def compute_optimal(
    params: LawParams, flops: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(N_opt, D_opt)`` for compute budgets ``C = 6 N D`` (SPEC §4's formulas).

    Uses only ``A, B, alpha, beta``, so it is the same for both forms; for the
    data-constrained form it is the allocation with enough fresh data (see
    :func:`diver.scaling.frontier.constrained_optimum` for a fixed ``U_D``).
    """
    c6 = np.asarray(flops, dtype=float) / 6.0
    g = g_factor(params)
    s = params.alpha + params.beta
    return g * c6 ** (params.beta / s), c6 ** (params.alpha / s) / g


def design_grid(
    sizes: Sequence[float] = IEEG_1S_PARAMS,
    design: Sequence[tuple[float, float]] = IDENTIFIABLE_DESIGN,
    corpus_tokens: float = IEEG_UNIQUE_TOKENS,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(N, D, U_D)`` of every size crossed with every ``(fraction, epochs)`` column:
    ``U_D = fraction x corpus_tokens``, ``D = epochs x U_D``."""
    n = np.repeat(np.asarray(sizes, dtype=float), len(design))
    fraction = np.tile([f for f, _ in design], len(sizes))
    epochs = np.tile([e for _, e in design], len(sizes))
    unique = fraction * corpus_tokens
    return n, epochs * unique, unique


def simulate_runs(
    params: LawParams,
    n: Sequence[float] | NDArray[np.float64],
    d: Sequence[float] | NDArray[np.float64],
    unique_tokens: Sequence[float] | NDArray[np.float64] | None = None,
    *,
    noise: float = 0.0,
    rng: np.random.Generator | None = None,
) -> dict[str, NDArray[np.float64]]:
    """Synthetic runs from the law: columns ``params, tokens, unique_tokens, loss``.

    ``noise`` is multiplicative: ``loss = L (1 + noise * z)``, ``z`` standard normal
    (so 0.02 is "2 % noise").  The generator is :func:`predict`, i.e. the same code
    (and the same ``N_opt(U_D)``) the fit uses.
    """
    n_arr = np.asarray(n, dtype=float)
    d_arr = np.asarray(d, dtype=float)
    u_arr = d_arr.copy() if unique_tokens is None else np.asarray(unique_tokens, dtype=float)
    loss = predict(params, n_arr, d_arr, u_arr)
    if noise:
        generator = rng if rng is not None else np.random.default_rng()
        loss = loss * (1.0 + noise * generator.standard_normal(loss.shape))
    return {"params": n_arr, "tokens": d_arr, "unique_tokens": u_arr, "loss": loss}
