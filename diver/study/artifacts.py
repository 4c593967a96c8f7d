"""Typed records of the JSON files one stage writes and another reads back.

Why: ``metrics.json`` of a pretraining cell is written by ``diver pretrain`` and read by
the scaling collection, the fine-tuning reader and the report; ``fit.json`` is written
by ``diver scaling fit`` and read by ``diver scaling plan`` and the report.  Read as
bare dicts, each reader re-checked (or forgot to check) the keys it needed, with its
own error wording.  Here each file is one frozen dataclass:

- :class:`PretrainMetrics`: a pretraining cell's ``metrics.json`` (SPEC §3's grid
  point: ``N``, ``D``, ``U_D`` and the held-out loss, with its loss at each epoch end);
- :class:`FitSummary`: ``fit.json`` of a scaling-law fit (SPEC §4: the law's parameters,
  their bootstrap intervals, goodness of fit, and which form was fitted and why).

Each has ``from_json(path)`` / ``from_dict(data, source=...)``, ``to_dict()`` (the JSON
object, key for key what is read) and ``write(path)`` (atomically, through
:mod:`diver.atomic`).  Reading checks the keys a reader relies on and their types and
raises :class:`ArtifactError` naming the file and the problem; keys this module does
not know are kept in ``extra`` and written back, so files of older or newer code load.
Values are not judged here (a diverged run's NaN loss is a valid record of it): the
reader that needs a finite positive loss says so.

Pure: nothing here imports training, launching or tracking code.  Slightly over 500
lines on purpose: the two records share one reader (``_Reader``) and one set of error
wordings, which is the point of the module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from diver.atomic import write_text_atomic
from diver.errors import DiverError
from diver.study.cells import cell_key

#: A scaling law's parameters (SPEC §4) per form, as fit.json holds them at its top level
#: (natural units, in the order of the fit's log-space vector); the scaling code's
#: :data:`diver.scaling.laws.PARAM_NAMES` is this table.
FIT_PARAMETERS: dict[str, tuple[str, ...]] = {
    "chinchilla": ("A", "B", "E", "alpha", "beta"),
    "data-constrained": ("A", "B", "E", "alpha", "beta", "R_D_star", "R_N_star"),
}
#: The file a pretraining cell writes into its folder (and logs as an MLflow artifact).
PRETRAIN_METRICS = "metrics.json"
#: The file ``diver scaling fit`` writes last into its output folder.
FIT_SUMMARY = "fit.json"


class ArtifactError(DiverError, ValueError):
    """A result file is missing, unreadable or lacks what its readers need; the message
    names the file (or MLflow run) and the problem."""


def finite_or_none(value: Any) -> Any:
    """JSON without NaN/Infinity (not valid JSON): non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def read_json_object(path: Path, *, source: str | None = None, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; an :class:`ArtifactError` naming ``source`` (default
    the path) when it is missing, unreadable or not an object (``what`` names the kind)."""
    where = source or str(path)
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"{where}: no such {what}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{where}: not a readable {what} ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{where}: expected a JSON object, got {type(data).__name__}")
    return data


class _Reader:
    """Typed look-ups in one JSON object, each error naming the source and the key."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data, self.source = data, source

    def fail(self, message: str) -> ArtifactError:
        return ArtifactError(f"{self.source}: {message}")

    def require(self, keys: tuple[str, ...], hint: str) -> None:
        missing = [k for k in keys if k not in self.data]
        if missing:
            raise self.fail(f"missing key(s) {missing} ({hint})")

    def number(self, key: str, *, optional: bool = False) -> float | None:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{key!r} is {value!r}, not a number")
        return float(value)

    def whole(self, key: str, *, optional: bool = False) -> int | None:
        value = self.number(key, optional=optional)
        if value is None:
            return None
        if not value.is_integer():
            raise self.fail(f"{key!r} is {value!r}, not a whole number")
        return int(value)

    def text(self, key: str, *, optional: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{key!r} is {value!r}, not a string")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(f"{key!r} is {value!r}, not an object")
        return dict(value)

    def extra(self, known: set[str]) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if k not in known}


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)} - {"extra", "source"}


# ------------------------------------------------------------------ pretraining


@dataclass(frozen=True)
class EpochLoss:
    """The validation loss at the end of one epoch (``val_by_epoch``; SPEC §3 reads one
    long run at several epochs, each a point ``D = epoch x U_D``)."""

    epoch: int
    tokens: float | None
    val_loss: float

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "tokens": self.tokens, "val_loss": self.val_loss}


@dataclass(frozen=True)
class PretrainMetrics:
    """A pretraining cell's ``metrics.json`` (``diver pretrain`` writes it when the run
    finishes; its presence means the cell is done).

    Required (a file without them is not a finished cell): the law's variables
    ``val_loss`` (held-out loss), ``n_params`` (N, reconstruction heads included as in
    SPEC §2's table), ``tokens`` (D = epochs x U_D), ``unique_tokens`` (U_D, SPEC §1) and
    the cell's identity ``epochs``, ``size``, ``patch``, ``data_fraction``.  ``family``
    and ``subjects`` complete the identity (:attr:`cell`).  The per-part validation
    losses (``val_loss_<part>``) and any key not named here stay in ``extra``.
    """

    val_loss: float
    n_params: int
    tokens: float
    unique_tokens: float
    epochs: int
    size: str
    patch: str
    data_fraction: float
    family: str | None = None
    subjects: int | None = None
    train_loss: float | None = None
    tokens_seen: float | None = None
    steps: int | None = None
    flops: float | None = None
    flops_6nd: float | None = None
    val_by_epoch: tuple[EpochLoss, ...] = ()
    d_model: int | None = None
    train_windows: int | None = None
    val_windows: int | None = None
    global_batch: int | None = None
    micro_batch: int | None = None
    world_size: int | None = None
    zero_stage: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    seed: int | None = None
    elapsed_s: float | None = None
    resumed_from_step: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Where the record was read from (error messages); not part of the file.
    source: str = field(default=PRETRAIN_METRICS, compare=False)

    #: Keys without which a file is not a finished cell's (checked on reading).
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "val_loss",
        "n_params",
        "tokens",
        "unique_tokens",
        "epochs",
        "size",
        "patch",
        "data_fraction",
    )
    _WHOLE: ClassVar[tuple[str, ...]] = (
        "subjects",
        "steps",
        "d_model",
        "train_windows",
        "val_windows",
        "global_batch",
        "micro_batch",
        "world_size",
        "zero_stage",
        "seed",
        "resumed_from_step",
    )
    _NUMBERS: ClassVar[tuple[str, ...]] = (
        "train_loss",
        "tokens_seen",
        "flops",
        "flops_6nd",
        "lr",
        "weight_decay",
    )

    @classmethod
    def from_json(cls, path: str | Path, *, source: str | None = None) -> PretrainMetrics:
        """Read ``path``; errors name ``source`` (e.g. an MLflow run), default the path."""
        where = source or str(path)
        data = read_json_object(
            Path(path), source=where, what="metrics file (has the cell finished?)"
        )
        return cls.from_dict(data, source=where)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = PRETRAIN_METRICS
    ) -> PretrainMetrics:
        r = _Reader(data, source)
        r.require(cls.REQUIRED, "not a diver pretrain metrics.json?")
        values: dict[str, Any] = {
            "val_loss": r.number("val_loss"),
            "n_params": r.whole("n_params"),
            "tokens": r.number("tokens"),
            "unique_tokens": r.number("unique_tokens"),
            "epochs": r.whole("epochs"),
            "size": str(data["size"]),
            "patch": str(data["patch"]),
            "data_fraction": r.number("data_fraction"),
            "family": None if data.get("family") is None else str(data["family"]),
            "elapsed_s": r.number("elapsed_s", optional=True),
        }
        values.update({k: r.whole(k, optional=True) for k in cls._WHOLE})
        values.update({k: r.number(k, optional=True) for k in cls._NUMBERS})
        values["val_by_epoch"] = _epoch_losses(data.get("val_by_epoch"), r)
        return cls(**values, extra=r.extra(_names(cls)), source=source)

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` object (keys sorted on writing, as ``diver pretrain``)."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name in _names(type(self))
        }
        out["val_by_epoch"] = [e.to_dict() for e in self.val_by_epoch]
        out.update(self.extra)
        return out

    def write(self, path: str | Path) -> None:
        """Atomically, as ``diver pretrain`` has always written it: keys sorted, and a
        diverged run's NaN kept as ``NaN`` (so a reader can still say it diverged)."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"
        write_text_atomic(Path(path), text)

    @property
    def cell(self) -> str:
        """The grid cell (:func:`diver.study.cells.cell_key`, e.g. ``mixed/1s/debug/f1.0_e2``)."""
        if self.family is None:
            raise ArtifactError(f"{self.source}: no 'family', so no grid cell")
        return cell_key(
            self.family, self.patch, self.size, self.data_fraction, self.epochs, self.subjects
        )

    def loss_at_epochs(self) -> dict[int, float]:
        """``{epoch: validation loss at its end}`` from ``val_by_epoch``."""
        return {e.epoch: e.val_loss for e in self.val_by_epoch}


def _epoch_losses(value: Any, r: _Reader) -> tuple[EpochLoss, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise r.fail(f"'val_by_epoch' is {value!r}, not a list")
    out = []
    for entry in value:
        try:
            tokens = entry.get("tokens")
            out.append(
                EpochLoss(
                    epoch=int(entry["epoch"]),
                    tokens=None if tokens is None else float(tokens),
                    val_loss=float(entry["val_loss"]),
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise r.fail(f"malformed val_by_epoch entry {entry!r}") from exc
    return tuple(out)


# ---------------------------------------------------------------------- scaling


@dataclass(frozen=True)
class FitFiles:
    """The files a fit wrote beside ``fit.json`` (names relative to its folder)."""

    bootstrap: str | None = None
    frontier: str | None = None
    figures: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "bootstrap": self.bootstrap,
            "frontier": self.frontier,
            "figures": list(self.figures),
        }


#: fit.json's keys of a fitted law after the parameters, in the order written.
# fmt: off
_FIT_KEYS = (
    "ci", "ci_level", "r2_linear", "r2_log", "loo_rmse_log", "loo_mape", "n_points",
    "bootstrap", "bootstrap_failed", "seed", "objective", "converged", "n_starts",
    "huber_delta", "log_params", "status", "form_requested", "form_reason", "design",
    "selection", "excluded", "at_bound", "runs", "files", "compute", "U_N_definition",
)
# fmt: on
#: fit.json's keys when no law was fitted (``--form auto`` found none the runs determine).
# fmt: off
_SKIPPED_KEYS = (
    "status", "form", "form_requested", "form_reason", "design", "n_points", "selection",
    "excluded", "runs", "files",
)
# fmt: on


@dataclass(frozen=True)
class FitSummary:
    """``fit.json`` of ``diver scaling fit``: a fitted law (``status`` ``fitted``) or the
    reason none was fitted (``skipped``, ``form`` None).

    For a fitted law, ``params`` holds the natural parameters of its form (SPEC §4:
    ``A, B, E, alpha, beta[, R_D_star, R_N_star]``; top-level keys in the file, which is
    how :meth:`diver.scaling.laws.LawParams.from_mapping` reads them) and ``ci`` their
    bootstrap percentile intervals ``{name: (lo, hi)}``.  Non-finite numbers are written
    as null and read back as None.
    """

    status: str
    form: str | None
    form_requested: str | None = None
    form_reason: str = ""
    n_points: int | None = None
    params: Mapping[str, float] = field(default_factory=dict)
    ci: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    ci_level: float | None = None
    r2_linear: float | None = None
    r2_log: float | None = None
    loo_rmse_log: float | None = None
    loo_mape: float | None = None
    bootstrap: int = 0
    bootstrap_failed: int = 0
    seed: int | None = None
    objective: float | None = None
    converged: bool | None = None
    n_starts: int | None = None
    huber_delta: float | None = None
    log_params: Mapping[str, float | None] = field(default_factory=dict)
    design: Mapping[str, int] = field(default_factory=dict)
    selection: Mapping[str, str] = field(default_factory=dict)
    excluded: Mapping[str, int] = field(default_factory=dict)
    at_bound: tuple[str, ...] = ()
    runs: str | None = None
    files: FitFiles = field(default_factory=FitFiles)
    compute: str | None = None
    U_N_definition: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: Where the record was read from (error messages); not part of the file.
    source: str = field(default=FIT_SUMMARY, compare=False)

    @property
    def fitted(self) -> bool:
        return self.form is not None

    @property
    def selection_label(self) -> str:
        """``family=ieeg,patch=1s`` (``all`` without a selection): names the fit."""
        return ",".join(f"{k}={v}" for k, v in self.selection.items()) or "all"

    @classmethod
    def from_json(cls, path: str | Path) -> FitSummary:
        data = read_json_object(Path(path), what="fit file")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = FIT_SUMMARY) -> FitSummary:
        """Checks ``form`` (and, for a fitted law, that every parameter of its form is
        a number); the rest is optional, so fit.json files of older code still load."""
        r = _Reader(data, source)
        if "form" not in data:
            raise r.fail("not a fit.json of `diver scaling fit` (no 'form')")
        form = data["form"]
        if form is not None and form not in FIT_PARAMETERS:
            raise r.fail(f"'form' must be one of {tuple(FIT_PARAMETERS)} or null, got {form!r}")
        status = r.text("status", optional=True) or ("fitted" if form else "skipped")
        params: dict[str, float] = {}
        if form is not None:
            missing = [n for n in FIT_PARAMETERS[form] if n not in data]
            if missing:
                raise r.fail(f"{form} parameters missing: {missing}")
            params = {n: float(r.number(n)) for n in FIT_PARAMETERS[form]}  # type: ignore[arg-type]
        ci: dict[str, tuple[float | None, float | None]] = {}
        for name, band in r.mapping("ci").items():
            if not (isinstance(band, list | tuple) and len(band) == 2):
                raise r.fail(f"'ci' of {name!r} is {band!r}, not [lo, hi]")
            try:
                ci[name] = (_optional_float(band[0]), _optional_float(band[1]))
            except TypeError as exc:
                raise r.fail(f"'ci' of {name!r}: {exc}") from exc
        files = r.mapping("files")
        converged = data.get("converged")
        summary = cls(
            status=status,
            form=form,
            form_requested=r.text("form_requested", optional=True),
            form_reason=str(data.get("form_reason") or ""),
            n_points=r.whole("n_points", optional=True),
            params=params,
            ci=ci,
            ci_level=r.number("ci_level", optional=True),
            r2_linear=r.number("r2_linear", optional=True),
            r2_log=r.number("r2_log", optional=True),
            loo_rmse_log=r.number("loo_rmse_log", optional=True),
            loo_mape=r.number("loo_mape", optional=True),
            bootstrap=r.whole("bootstrap", optional=True) or 0,
            bootstrap_failed=r.whole("bootstrap_failed", optional=True) or 0,
            seed=r.whole("seed", optional=True),
            objective=r.number("objective", optional=True),
            converged=None if converged is None else bool(converged),
            n_starts=r.whole("n_starts", optional=True),
            huber_delta=r.number("huber_delta", optional=True),
            log_params=r.mapping("log_params"),
            design=r.mapping("design"),
            selection={str(k): str(v) for k, v in r.mapping("selection").items()},
            excluded=r.mapping("excluded"),
            at_bound=tuple(str(n) for n in data.get("at_bound") or ()),
            runs=None if data.get("runs") is None else str(data["runs"]),
            files=FitFiles(
                bootstrap=files.get("bootstrap"),
                frontier=files.get("frontier"),
                figures=tuple(files.get("figures") or ()),
            ),
            compute=r.text("compute", optional=True),
            U_N_definition=r.text("U_N_definition", optional=True),
            extra=r.extra(_names(cls) - {"params"} | set(params)),
            source=source,
        )
        return summary

    def to_dict(self) -> dict[str, Any]:
        """The fit.json object, keys in the order ``diver scaling fit`` writes them."""
        value = {
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "ci": {k: list(v) for k, v in self.ci.items()},
            "files": self.files.to_dict(),
            "at_bound": list(self.at_bound),
        }
        for key in ("log_params", "design", "selection", "excluded"):
            value[key] = dict(value[key])
        if not self.fitted:
            out = {k: value[k] for k in _SKIPPED_KEYS}
        else:
            out = {"form": self.form, **self.params}
            out.update({k: value[k] for k in _FIT_KEYS})
            if self.U_N_definition is None:
                del out["U_N_definition"]
        out.update(self.extra)
        return out

    def write(self, path: str | Path) -> None:
        """Atomically, non-finite numbers as null (NaN is not JSON)."""
        text = json.dumps(finite_or_none(self.to_dict()), indent=2) + "\n"
        write_text_atomic(Path(path), text)

    def interval(self, name: str) -> tuple[float, float] | None:
        """The finite ``(lo, hi)`` bootstrap interval of ``name``, else None."""
        band = self.ci.get(name)
        if band is None or band[0] is None or band[1] is None:
            return None
        lo, hi = band
        return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _optional_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def cell_of_model(model_path: str | Path) -> str:
    """The grid cell a ``model.pt`` was pretrained as (e.g. ``mixed/1s/debug/f1.0_e2``),
    read back from the run's ``metrics.json``; the run folder's name when there is none
    (an imported or hand-made model) or it names no cell."""
    try:
        return PretrainMetrics.from_json(Path(model_path).with_name(PRETRAIN_METRICS)).cell
    except ArtifactError:
        return Path(model_path).resolve().parent.name
