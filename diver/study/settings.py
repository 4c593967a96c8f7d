"""What one pretraining run is: a grid cell with its resolved ``pretrain`` settings.

:class:`PretrainSettings` is the study's description of a run; :meth:`~PretrainSettings.identity`
is what a finished or checkpointed run is recognised by (a rerun with the same identity
is a no-op or a resume, one with another identity is refused).  :func:`cell_settings`
resolves a cell of a study config (its family's optimiser, command-line overrides) and
:func:`planned_flops` prices it, so the command line, the launcher and the workflow
build the same settings without importing torch or DeepSpeed: this module imports
neither (``diver.model.config``, whose package imports torch, is imported on use).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diver.config import ConfigError, PretrainConfig, StudyConfig
from diver.study.cells import cell_key

if TYPE_CHECKING:
    from diver.model.config import ModelConfig

@dataclass(frozen=True)
class PretrainSettings:
    """One grid cell and the resolved ``pretrain`` settings it runs with."""

    corpus: str
    out: str
    size: str
    patch: str
    data_fraction: float
    epochs: int
    config: PretrainConfig = field(default_factory=PretrainConfig)
    family: str = "mixed"
    modalities: tuple[str, ...] = ("eeg", "ieeg")
    datasets: tuple[str, ...] | None = None
    subjects: int | None = None
    init_from: str | None = None  # a model.pt (or the authors' checkpoint) to warm-start from
    model_options: Mapping[str, str] = field(default_factory=dict)  # the study's `model`

    def __post_init__(self) -> None:
        from diver.model.config import MODEL_OPTIONS, PATCH_SAMPLES, SIZES

        if self.size not in SIZES:
            raise ConfigError(
                f"--size {self.size!r} is not a model size; sizes: {', '.join(SIZES)}"
            )
        if self.patch not in PATCH_SAMPLES:
            raise ConfigError(f"--patch must be one of {sorted(PATCH_SAMPLES)}, got {self.patch!r}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ConfigError(f"--data-fraction must be in (0, 1], got {self.data_fraction}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        unknown = set(self.model_options) - set(MODEL_OPTIONS)
        if unknown:
            raise ConfigError(
                f"unknown model options {sorted(unknown)}; known: {sorted(MODEL_OPTIONS)}"
            )
        if self.subjects is not None and self.subjects < 1:
            raise ConfigError(f"--subjects must be at least 1, got {self.subjects}")

    @property
    def cell(self) -> str:
        """The grid cell's key (``diver.study.cells.cell_key``): ``mixed/1s/debug/f0.5_e2``."""
        return cell_key(
            self.family, self.patch, self.size, self.data_fraction, self.epochs, self.subjects
        )

    def identity(self) -> dict[str, Any]:
        """What must match for a rerun to be a no-op or a resume."""
        from diver.model.config import MODEL_OPTIONS

        return {
            "corpus": str(Path(self.corpus).resolve()),
            "size": self.size,
            "patch": self.patch,
            "data_fraction": self.data_fraction,
            "epochs": self.epochs,
            "family": self.family,
            "modalities": sorted(self.modalities),
            "datasets": None if self.datasets is None else sorted(self.datasets),
            "subjects": self.subjects,
            "init_from": None if self.init_from is None else str(Path(self.init_from).resolve()),
            "model": {k: getattr(self.model_config(), k) for k in MODEL_OPTIONS},
            **self.config.identity(),
        }

    def model_config(self) -> ModelConfig:
        """The cell's architecture: its size and patch, with the study's model options."""
        from diver.model.config import model_config

        return model_config(self.size, self.patch, **self.model_options)


def cell_settings(
    study: StudyConfig,
    *,
    corpus: str,
    out: str,
    size: str,
    patch: str,
    data_fraction: float,
    epochs: int,
    family: str | None = None,
    subjects: int | None = None,
    init_from: str | None = None,
    **overrides: Any,
) -> PretrainSettings:
    """The settings of one cell of ``study``: its ``pretrain`` section with the family's
    optimiser (``family``: default the first) and ``overrides`` (flat ``pretrain`` keys;
    None keeps the config's value) applied; what ``diver pretrain``'s flags describe."""
    family_name = family or next(iter(study.families))
    chosen = study.families.get(family_name)
    if chosen is None:
        raise ConfigError(
            f"--family {family_name!r} is not in the config's families: {sorted(study.families)}"
        )
    family_lr, family_wd = chosen.optimiser(patch, study.pretrain)
    given = {k: v for k, v in overrides.items() if v is not None}  # flags win
    config = study.pretrain.with_overrides(
        **{"lr": family_lr, "weight_decay": family_wd, **given}
    )
    return PretrainSettings(
        corpus=corpus,
        out=out,
        size=size,
        patch=patch,
        data_fraction=data_fraction,
        epochs=epochs,
        config=config,
        family=family_name,
        modalities=chosen.modalities,
        datasets=chosen.datasets,
        subjects=subjects,
        init_from=init_from,
        model_options=dict(study.model),
    )


def planned_flops(settings: PretrainSettings) -> float:
    """Training FLOPs the cell will spend (SPEC §2 account x epochs x U_D).

    Reads only the corpus index (Parquet metadata), so a launcher can size a job's wall
    time before any GPU is allocated.
    """
    from diver.data.splits import make_splits, unique_tokens
    from diver.model.flops import training_flops

    splits = make_splits(
        settings.corpus, settings.data_fraction, settings.config.validation,
        modalities=settings.modalities, datasets=settings.datasets, subjects=settings.subjects,
    )
    cfg = settings.model_config()
    tokens = settings.epochs * unique_tokens(splits.train, cfg.patch_samples)
    return float(training_flops(cfg, tokens))
