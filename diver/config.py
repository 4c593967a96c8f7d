"""Study configuration: frozen dataclasses, loaded from YAML validated at the edge.

The JSON schema in ``diver/schemas/config.schema.yaml`` (package data, so a plain
``pip install .`` can load configs; ``workflow/schemas/`` links to it) is the single
source of keys, descriptions and defaults; Snakemake validates the same file with the
same schema, so a config that passes here passes there and vice versa.  Once loaded, a
config is a tree of frozen dataclasses: code downstream never sees a raw dict.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from diver import schemas
from diver.errors import ConfigError
from diver.placeholders import fill_placeholders


@dataclass(frozen=True)
class QCConfig:
    """QA/QC thresholds of SPEC §1 (Appendix F.3)."""

    eeg_scale_uv: float = 100.0
    ieeg_scale_uv: float = 200.0
    clip: float = 1.0
    max_clipped_fraction: float = 0.0333
    max_bad_channel_fraction: float = 0.5
    flat_std_uv: float = 0.1
    cbramod_threshold_uv: float = 100.0


SAFE_NAME = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._-]+$")
"""A dataset name: it becomes a folder under the corpus's ``windows/`` (the schema's
``$defs/dataset`` has the same pattern), so no separators and not ``.`` or ``..``."""


@dataclass(frozen=True)
class DatasetConfig:
    """One named corpus and how its recordings are typed and filtered."""

    name: str
    inputs: tuple[str, ...]
    modality: str = "auto"
    ieeg_type: str = "seeg"
    line_freq: float = 60.0
    highpass: float = 0.3
    notch_harmonics: str = "auto"
    subject_pattern: str | None = None
    channel_types: Mapping[str, str] = field(default_factory=dict)
    ieeg_subtypes: Mapping[str, str] = field(default_factory=dict)
    coord_frame: str = "unknown"
    units: str = "auto"
    montage: str | None = None
    preset: str | None = None  # provenance only: its keys are merged in by diver.presets

    def __post_init__(self) -> None:
        # Names also come from the command line (``diver corpus --input NAME=DIR``),
        # past the schema: checked here too, so a name cannot lead out of the corpus.
        if not SAFE_NAME.match(self.name):
            raise ConfigError(
                f"dataset name {self.name!r} is not allowed: use letters, digits, '.', '_' "
                "and '-' (not '.' or '..'); it names a folder of the corpus"
            )
        if self.subject_pattern is not None:
            try:
                re.compile(self.subject_pattern)
            except re.error as exc:
                raise ConfigError(
                    f"dataset {self.name!r}: subject_pattern {self.subject_pattern!r} is not a "
                    f"regular expression ({exc})"
                ) from exc

        if self.montage is not None:
            import mne  # lazily: loading a config should not pay for MNE otherwise

            known = mne.channels.get_builtin_montages()
            if self.montage not in known:
                raise ConfigError(
                    f"dataset {self.name!r}: montage {self.montage!r} is not one of MNE's "
                    f"built-in montages ({', '.join(sorted(known))})"
                )

    def harmonics_for(self, is_ieeg: bool) -> bool:
        """Whether to notch harmonics of the line frequency (SPEC §1: for iEEG)."""
        if self.notch_harmonics == "auto":
            return is_ieeg
        return self.notch_harmonics == "yes"


@dataclass(frozen=True)
class CorpusConfig:
    """Corpus stage settings (SPEC §1)."""

    sfreq: float = 500.0
    window_seconds: float = 30.0
    min_sfreq: float = 100.0
    signal_dtype: str = "float16"
    signal_compression: str = "none"
    row_group_windows: int = 1
    block_windows: int = 20
    jobs: int = 1
    chunk_hours: float = 100.0
    strict: bool = False
    qc: QCConfig = field(default_factory=QCConfig)
    datasets: tuple[DatasetConfig, ...] = ()

    @property
    def window_samples(self) -> int:
        """Samples per window at the target rate (15,000 for 30 s at 500 Hz)."""
        return round(self.sfreq * self.window_seconds)

    def fingerprint(self) -> str:
        """Hash of every setting that changes a recording's output (not how the work is
        spread: jobs, chunk_hours; nor strict)."""
        settings = asdict(self)
        for key in ("jobs", "chunk_hours", "strict", "datasets"):
            settings.pop(key)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SynthConfig:
    """Synthetic corpus for the embedded default."""

    enabled: bool = False
    hours: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow runs go."""

    uri: str | None = None
    experiment: str | None = None


FROM_SWEEP = "from_sweep"
"""A family's ``lr`` / ``weight_decay`` (or a ``by_patch`` entry's) that the hpsearch
stage's ``best.yaml`` supplies (:func:`sweep_best_path`)."""


PATCHES = ("1s", "0.1s")
"""The patch lengths (SPEC §2; the schema's patch enum)."""


def sweep_dir(results_dir: str | Path, family: str, patch: str) -> Path:
    """Where the sweep of ``family`` at ``patch`` keeps its journal, trials and best.yaml.

    Here rather than in ``diver.study.layout`` because :class:`FamilyConfig` reads the
    best values when a cell asks for them, and this module imports nothing of diver's
    packages.
    """
    return Path(results_dir) / "hpsearch" / family / patch


def sweep_best_path(results_dir: str | Path, family: str, patch: str) -> Path:
    """``<results>/hpsearch/<family>/<patch>/best.yaml``: the sweep's chosen pair."""
    return sweep_dir(results_dir, family, patch) / "best.yaml"


@dataclass(frozen=True)
class SweepValue:
    """A family's ``lr`` or ``weight_decay`` written ``from_sweep``: read from ``best``
    (the sweep's best.yaml) when a cell asks for it, not when the config is loaded, so a
    config whose sweep has not run yet still loads (the DAG plans the sweep first)."""

    best: str

    def read(self, key: str) -> float:
        return read_sweep_best(Path(self.best))[key]


@dataclass(frozen=True)
class FamilyConfig:
    """A corpus family (SPEC §3: iEEG, EEG, iEEG+EEG) and the optimiser it was tuned with.

    ``lr``/``weight_decay`` of None keep ``pretrain.lr``/``pretrain.weight_decay``;
    ``by_patch`` overrides both per patch length (SPEC §3 tunes iEEG 0.1 s apart).  Any of
    them may be a :class:`SweepValue` (``from_sweep`` in the file, made per patch by
    :func:`config_from_dict`): the value then comes from the sweep's ``best.yaml``, so a
    cell's settings follow the sweep and the DAG makes the cell depend on that file.
    """

    modalities: tuple[str, ...] = ("eeg", "ieeg")
    datasets: tuple[str, ...] | None = None
    lr: float | Mapping[str, SweepValue] | None = None
    weight_decay: float | Mapping[str, SweepValue] | None = None
    by_patch: Mapping[str, Mapping[str, float | SweepValue]] = field(default_factory=dict)

    def _raw(self, patch: str) -> tuple[Any, Any]:
        override = self.by_patch.get(patch, {})
        lr, wd = override.get("lr", self.lr), override.get("weight_decay", self.weight_decay)
        # a family-level from_sweep is a mapping patch -> that patch's sweep
        lr = lr.get(patch) if isinstance(lr, Mapping) else lr
        wd = wd.get(patch) if isinstance(wd, Mapping) else wd
        return lr, wd

    def uses_sweep(self, patch: str) -> bool:
        """Whether a cell at ``patch`` takes its lr or weight decay from the sweep."""
        return bool(self.swept(patch))

    def swept(self, patch: str) -> tuple[str, ...]:
        """Which of ``lr``, ``weight_decay`` a cell at ``patch`` takes from the sweep."""
        pairs = zip(("lr", "weight_decay"), self._raw(patch), strict=True)
        return tuple(k for k, v in pairs if isinstance(v, SweepValue))

    def typed(self, patch: str, pretrain: PretrainConfig) -> dict[str, float]:
        """The values not taken from the sweep (the family's, else ``pretrain``'s): what a
        sweep holds fixed while it tunes the others."""
        base = pretrain.optimiser
        values = dict(zip(("lr", "weight_decay"), self._raw(patch), strict=True))
        return {
            k: float(getattr(base, k) if v is None else v)
            for k, v in values.items()
            if not isinstance(v, SweepValue)
        }

    def optimiser(self, patch: str, pretrain: PretrainConfig) -> tuple[float, float]:
        """(lr, weight_decay) for a cell of this family at ``patch``."""
        base = pretrain.optimiser
        lr, wd = self._raw(patch)
        lr = lr.read("lr") if isinstance(lr, SweepValue) else lr
        wd = wd.read("weight_decay") if isinstance(wd, SweepValue) else wd
        lr = base.lr if lr is None else lr
        wd = base.weight_decay if wd is None else wd
        return float(lr), float(wd)


def _family_value(value: Any, results_dir: str, family: str, patches: Any) -> Any:
    """A file's ``lr``/``weight_decay`` value: ``from_sweep`` becomes a SweepValue per
    patch (each patch has its own sweep), anything else stays as it is."""
    if value != FROM_SWEEP:
        return value
    return {p: SweepValue(str(sweep_best_path(results_dir, family, p))) for p in patches}


def read_sweep_best(path: Path) -> dict[str, float]:
    """The ``lr`` and ``weight_decay`` of a sweep's best.yaml; a ConfigError naming the
    file (and how to make it) when it is missing or incomplete."""
    try:
        best = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} does not exist: the family's lr or weight_decay is {FROM_SWEEP}, so the "
            "hyper-parameter sweep must run first (the DAG's hpsearch stage, or "
            "`diver hpsearch run`)"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    values = {}
    for key in ("lr", "weight_decay"):
        value = best.get(key) if isinstance(best, dict) else None
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{path}: {key} must be a non-negative number, got {value!r}")
        values[key] = float(value)
    return values


@dataclass(frozen=True)
class GridBlock:
    """One block of the grid: the product of its value lists (see ``diver.study.cells``)."""

    family: tuple[str, ...]
    size: tuple[str, ...]
    epochs: tuple[int, ...]
    patch: tuple[str, ...] = ("1s",)
    fraction: tuple[float, ...] = (1.0,)
    subjects: tuple[int | None, ...] = (None,)
    read_epochs: tuple[int, ...] = ()


@dataclass(frozen=True)
class FinetuneConfig:
    """Which pretrained cells are fine-tuned on which tasks, how (SPEC §5)."""

    synth_task: bool = False
    tasks: tuple[str, ...] = ()
    cells: tuple[str, ...] = ()
    modes: tuple[str, ...] = ("full",)
    seeds: tuple[int, ...] | None = None
    epochs: int | None = None


@dataclass(frozen=True)
class LauncherConfig:
    """How training jobs run: a local process or a submitit SLURM job."""

    backend: str = "local"
    site: str | None = None
    local_ranks: int = 1
    poll_seconds: float = 5.0


OPERATIONAL: Mapping[str, bool] = {"operational": True}
"""Field metadata of a ``pretrain`` key that does not change what a run trains
(cadence, logging, timeouts; activation checkpointing, whose recomputation replays the
same RNG; ``torch.compile``, which runs the same operations, only fused - rounding may
differ in the last bits, as between two GPU models): it may differ between attempts of
one run, and is left out of the run's identity (:meth:`PretrainConfig.identity`).  Every
other key changes the result, so a rerun or resume with another value is refused."""


@dataclass(frozen=True)
class OptimiserConfig:
    """MuAdamW and its per-group cosine (SPEC §3).

    ``lr``/``weight_decay`` default to SPEC §3's Small / iEEG / 1 s optimum, transferred
    to every width by muP; a family (``FamilyConfig.optimiser``) may replace them.
    """

    lr: float = 2.30e-3
    weight_decay: float = 2.17e-7
    betas: tuple[float, float] = (0.9, 0.95)
    min_lr_ratio: float = 0.01
    warmup_steps: int = 0
    grad_clip: float = 1.0


@dataclass(frozen=True)
class BatchConfig:
    """Windows per optimizer step, per forward pass and rank, and the loader workers
    (which split each rank's windows, so they change the epoch's batches)."""

    global_batch: int = 8
    micro_batch: int | None = None
    num_workers: int = 0


@dataclass(frozen=True)
class ValidationConfig:
    """The held-out subjects (``split_seed`` also seeds the training fraction and the
    validation masks) and how often the fixed validation loss is measured."""

    split_seed: int = 0
    val_fraction: float = 0.2
    val_stratify: bool = True
    val_batch: int = 8
    val_max_windows: int | None = None
    val_every: int = field(default=0, metadata=OPERATIONAL)
    val_at_start: bool = True


@dataclass(frozen=True)
class CheckpointConfig:
    """How often a run checkpoints and how many complete checkpoints it keeps."""

    checkpoint_every: int = field(default=100, metadata=OPERATIONAL)
    keep_checkpoints: int = field(default=2, metadata=OPERATIONAL)


@dataclass(frozen=True)
class RuntimeConfig:
    """How the processes train: ZeRO stage, precision, compilation, the training seed,
    logging.  ``compile`` wraps the model's forward in ``torch.compile`` through
    DeepSpeed's ``engine.compile`` (``compile_backend``: ``inductor`` generates kernels;
    ``eager``/``aot_eager`` only capture graphs, which tests the compiled path on CPUs,
    where inductor takes minutes to build this model's kernels)."""

    zero_stage: int = 2
    precision: str = "auto"
    activation_checkpointing: bool = field(default=False, metadata=OPERATIONAL)
    compile: bool = field(default=False, metadata=OPERATIONAL)
    compile_backend: str = field(default="inductor", metadata=OPERATIONAL)
    seed: int = 0
    dist_timeout_s: float = field(default=60.0, metadata=OPERATIONAL)
    log_every: int = field(default=10, metadata=OPERATIONAL)


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings (SPEC §3), one small config per component.

    The study config's ``pretrain`` section and the ``diver pretrain`` flags stay flat:
    every flat key belongs to exactly one component (:meth:`from_flat`, :meth:`flat`).
    The embedded default is sized for CPU runs of the ``debug`` ladder (global batch 8);
    the paper's values (global batch 192, ZeRO-2, bf16 on GPUs) go in the study config.
    """

    optimiser: OptimiserConfig = field(default_factory=OptimiserConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    checkpointing: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @classmethod
    def keys(cls) -> dict[str, tuple[str, bool]]:
        """Flat key -> (its component, whether it is operational), component by component."""
        owners: dict[str, tuple[str, bool]] = {}
        for component in fields(cls):
            for key in fields(component.default_factory()):  # type: ignore[misc]
                owners[key.name] = (component.name, bool(key.metadata.get("operational")))
        return owners

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> PretrainConfig:
        """From the flat ``pretrain`` mapping (missing keys keep their defaults)."""
        owners = cls.keys()
        unknown = set(flat) - set(owners)
        if unknown:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}")
        parts: dict[str, dict[str, Any]] = {f.name: {} for f in fields(cls)}
        for key, value in flat.items():
            parts[owners[key][0]][key] = tuple(value) if key == "betas" else value
        return cls(
            **{f.name: f.default_factory(**parts[f.name]) for f in fields(cls)}  # type: ignore[misc]
        )

    def flat(self) -> dict[str, Any]:
        """The flat ``pretrain`` mapping (the config file's and the flags' keys)."""
        return {
            key: getattr(getattr(self, component), key)
            for key, (component, _) in self.keys().items()
        }

    def identity(self) -> dict[str, Any]:
        """The keys that change what a run trains (not :data:`OPERATIONAL` ones)."""
        values = {k: v for k, v in self.flat().items() if not self.keys()[k][1]}
        values["betas"] = list(values["betas"])
        return values

    def with_overrides(self, **overrides: Any) -> PretrainConfig:
        """This config with the non-None ``overrides`` (flat keys: command-line flags)
        applied, validated against the same schema as the config file (so ``--lr -1``
        fails like ``lr: -1``)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        merged = PretrainConfig.from_flat({**self.flat(), **changes})
        validate_config({"pretrain": merged.flat()}, source="<command line>")
        return merged


@dataclass(frozen=True)
class ScalingConfig:
    """Scaling-law fit of the grid (SPEC §4); ``form`` ``auto`` picks what the grid supports."""

    form: str = "auto"
    bootstrap: int = 4000
    seed: int = 0


@dataclass(frozen=True)
class TransferConfig:
    """The muP transfer check (``diver hpsearch transfer``; schema ``hpsearch.transfer``)."""

    enabled: bool = False
    sizes: tuple[str, ...] = ("debug", "debug-2x", "debug-4x")
    lrs: tuple[float, ...] = (5.0e-4, 1.0e-3, 2.0e-3, 4.0e-3, 8.0e-3, 1.6e-2, 3.2e-2)
    steps: int = 20
    seeds: tuple[int, ...] = (0, 1)
    batch: int = 4
    spectral_norm: tuple[str, ...] = ("forward", "ortho")


@dataclass(frozen=True)
class PruningConfig:
    """Median pruning of sweep trials on their validation losses."""

    enabled: bool = True
    startup_trials: int = 3
    warmup_steps: int = 0


@dataclass(frozen=True)
class SweepGridConfig:
    """Points per axis of the grid method (log-spaced over each range)."""

    lr: int = 6
    weight_decay: int = 5


@dataclass(frozen=True)
class HpsearchConfig:
    """The hyper-parameter sweep before the grid (schema ``hpsearch``; ``diver.hpsearch``)."""

    method: str = "tpe"
    trials: int = 6
    startup_trials: int = 3
    size: str = "debug"
    epochs: int = 1
    fraction: float = 1.0
    val_every: int = 2
    lr: tuple[float, float] = (3.0e-4, 3.0e-2)
    weight_decay: tuple[float, float] = (1.0e-8, 1.0e-2)
    grid: SweepGridConfig = field(default_factory=lambda: SweepGridConfig())
    pruning: PruningConfig = field(default_factory=PruningConfig)
    seed: int = 0
    transfer: TransferConfig = field(default_factory=TransferConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HpsearchConfig:
        """From the validated ``hpsearch`` section (defaults filled in)."""
        transfer = dict(data["transfer"])
        return cls(
            method=data["method"],
            trials=data["trials"],
            startup_trials=data["startup_trials"],
            size=data["size"],
            epochs=data["epochs"],
            fraction=float(data["fraction"]),
            val_every=data["val_every"],
            lr=(float(data["lr"][0]), float(data["lr"][1])),
            weight_decay=(float(data["weight_decay"][0]), float(data["weight_decay"][1])),
            grid=SweepGridConfig(**data["grid"]),
            pruning=PruningConfig(**data["pruning"]),
            seed=data["seed"],
            transfer=TransferConfig(
                enabled=transfer["enabled"],
                sizes=tuple(transfer["sizes"]),
                lrs=tuple(float(v) for v in transfer["lrs"]),
                steps=transfer["steps"],
                seeds=tuple(transfer["seeds"]),
                batch=transfer["batch"],
                spectral_norm=tuple(transfer["spectral_norm"]),
            ),
        )


@dataclass(frozen=True)
class StudyConfig:
    """A whole study, as one validated config file describes it."""

    study: str = "diver-default"
    results_dir: str = "results"
    synth: SynthConfig = field(default_factory=SynthConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    families: Mapping[str, FamilyConfig] = field(
        default_factory=lambda: {"mixed": FamilyConfig()}
    )
    grid: tuple[GridBlock, ...] = (
        GridBlock(family=("mixed",), size=("debug",), epochs=(1,)),
    )
    model: Mapping[str, str] = field(default_factory=dict)
    """Model options of every cell (the schema's ``model`` section: where the paper's
    prose and the authors' code differ; defaults are the code's)."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    hpsearch: HpsearchConfig = field(default_factory=lambda: HpsearchConfig())

    @property
    def results_path(self) -> Path:
        return Path(self.results_dir)

    def tracking_uri(self) -> str:
        """The configured MLflow URI, or an absolute SQLite URI under the results folder."""
        if self.tracking.uri:
            return self.tracking.uri
        return f"sqlite:///{(self.results_path / 'mlflow.db').resolve()}"

    def experiment_name(self) -> str:
        return self.tracking.experiment or self.study


def validate_config(
    raw: Mapping[str, Any], *, source: str = "<config>", base_dir: str | Path | None = None
) -> dict[str, Any]:
    """Merge dataset presets into ``raw``, validate it against the config schema, fill
    defaults, and return the result.

    Presets (:mod:`diver.presets`) are merged first because the schema's defaults must
    never win over a preset's values; doing it here means every path to a validated
    config -- :func:`config_from_dict`, the Snakefile, ``diver config --write`` -- sees
    the merged datasets.  ``base_dir`` is where the config file is (a preset is looked
    up beside it); by default the folder of ``source`` when that names a file.
    Raises ConfigError naming ``source`` and the offending key path.
    """
    from diver.presets import expand_presets

    if base_dir is None and source and Path(source).is_file():
        base_dir = Path(source).parent
    base = None if base_dir is None else Path(base_dir)
    raw = expand_presets(raw, source=source, base_dir=base)
    return schemas.validate(raw, "config", source=source, error=ConfigError)


def _fill_placeholders(entry: str, results_dir: str, dataset: str, source: str) -> str:
    """An input path with ``{results_dir}`` filled in; anything else in braces is an
    error naming the dataset (``{{`` and ``}}`` stand for braces)."""
    try:
        return fill_placeholders(entry, {"results_dir": results_dir}, ("results_dir",))
    except ValueError as exc:
        raise ConfigError(
            f"invalid config {source}: dataset {dataset!r}: input {entry!r} {exc}"
        ) from exc


def config_from_dict(
    data: Mapping[str, Any], *, source: str = "<config>", base_dir: str | Path | None = None
) -> StudyConfig:
    """Build the frozen config tree from a mapping (presets merged, then validated: see
    :func:`validate_config`)."""
    data = validate_config(data, source=source, base_dir=base_dir)
    corpus = dict(data["corpus"])
    results_dir = data["results_dir"]
    datasets = tuple(
        DatasetConfig(
            **{
                **ds,
                "inputs": tuple(
                    _fill_placeholders(str(p), results_dir, ds["name"], source)
                    for p in ds["inputs"]
                ),
                "channel_types": dict(ds["channel_types"]),
                "ieeg_subtypes": dict(ds["ieeg_subtypes"]),
            }
        )
        for ds in corpus.pop("datasets")
    )
    names = [ds.name for ds in datasets]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ConfigError(
            f"invalid config {source}:\n  corpus.datasets: duplicate names {duplicated}"
        )
    qc = QCConfig(**corpus.pop("qc"))
    families = {
        name: FamilyConfig(
            modalities=tuple(fam["modalities"]),
            datasets=None if fam["datasets"] is None else tuple(fam["datasets"]),
            lr=_family_value(fam["lr"], results_dir, name, PATCHES),
            weight_decay=_family_value(fam["weight_decay"], results_dir, name, PATCHES),
            by_patch={
                patch: {
                    k: _family_value(v, results_dir, name, [patch])[patch]
                    if v == FROM_SWEEP
                    else v
                    for k, v in values.items()
                }
                for patch, values in fam["by_patch"].items()
            },
        )
        for name, fam in data["families"].items()
    }
    grid = tuple(_grid_block(block) for block in data["grid"])
    _check_grid(grid, families, {ds.name for ds in datasets}, source)
    hpsearch = HpsearchConfig.from_dict(data["hpsearch"])
    _check_hpsearch(hpsearch, source)
    return StudyConfig(
        study=data["study"],
        results_dir=results_dir,
        synth=SynthConfig(**data["synth"]),
        corpus=CorpusConfig(**corpus, qc=qc, datasets=datasets),
        tracking=TrackingConfig(**data["tracking"]),
        families=families,
        grid=grid,
        model=dict(data["model"]),
        pretrain=PretrainConfig.from_flat(data["pretrain"]),
        launcher=LauncherConfig(**data["launcher"]),
        finetune=FinetuneConfig(
            **{
                **data["finetune"],
                "tasks": tuple(data["finetune"]["tasks"]),
                "cells": tuple(data["finetune"]["cells"]),
                "modes": tuple(data["finetune"]["modes"]),
                "seeds": None
                if data["finetune"]["seeds"] is None
                else tuple(data["finetune"]["seeds"]),
            }
        ),
        scaling=ScalingConfig(**data["scaling"]),
        hpsearch=hpsearch,
    )


def _values(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


def _grid_block(block: Mapping[str, Any]) -> GridBlock:
    return GridBlock(
        family=_values(block["family"]),
        size=_values(block["size"]),
        epochs=_values(block["epochs"]),
        patch=_values(block["patch"]),
        fraction=tuple(float(f) for f in _values(block["fraction"])),
        subjects=_values(block["subjects"]),
        read_epochs=tuple(block["read_epochs"]),
    )


def _check_grid(
    grid: tuple[GridBlock, ...],
    families: Mapping[str, FamilyConfig],
    dataset_names: set[str],
    source: str,
) -> None:
    """Cross-references the schema cannot express: family names, datasets, read epochs."""
    problems = []
    for i, block in enumerate(grid):
        for name in block.family:
            if name not in families:
                problems.append(
                    f"  grid.{i}.family: unknown family {name!r}; families: {sorted(families)}"
                )
        late = [e for e in block.read_epochs if e > max(block.epochs)]
        if late:
            problems.append(
                f"  grid.{i}.read_epochs: {late} exceed the block's epochs {list(block.epochs)}"
            )
    for name, family in families.items():
        unknown = sorted(set(family.datasets or ()) - dataset_names)
        if unknown and dataset_names:
            problems.append(f"  families.{name}.datasets: unknown corpus datasets {unknown}")
    if problems:
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(problems))


def _check_hpsearch(hp: HpsearchConfig, source: str) -> None:
    """What the schema cannot say: ranges low < high, transfer lrs increasing <= 2x apart."""
    problems = []
    for key in ("lr", "weight_decay"):
        low, high = getattr(hp, key)
        if not low < high:
            problems.append(f"  hpsearch.{key}: [{low}, {high}] is not a range (low < high)")
    lrs = hp.transfer.lrs
    steps = [b / a for a, b in itertools.pairwise(lrs)]
    if any(r <= 1 or r > 2 * (1 + 1e-9) for r in steps):
        problems.append(
            f"  hpsearch.transfer.lrs: {list(lrs)} must increase by at most 2x per step (one "
            "grid step is the resolution the transfer check claims)"
        )
    if problems:
        raise ConfigError(f"invalid config {source}:\n" + "\n".join(problems))


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """A config file's YAML mapping, unvalidated; ``-`` reads standard input (how the
    workflow hands its resolved config to ``diver config --write``)."""
    try:
        if str(path) == "-":
            raw = yaml.safe_load(sys.stdin) or {}
        else:
            with Path(path).open() as fh:
                raw = yaml.safe_load(fh) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid config {path}: the top level must be a mapping")
    return raw


def load_config(path: str | Path) -> StudyConfig:
    """Read, validate and freeze a study config file."""
    raw = read_config_mapping(path)
    return config_from_dict(raw, source=str(path), base_dir=Path(path).parent)
