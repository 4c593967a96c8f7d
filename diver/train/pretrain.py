"""DIVER-1 pretraining on DeepSpeed (SPEC §3): one grid cell = one call of :func:`pretrain`.

A cell is (size, patch, data fraction, epochs) on one corpus.  What the run does:

**Data.**  Validation is a set of held-out *subjects* (``split_subjects``, keyed by
``split_seed``, not by the training seed), so every cell of the grid is validated on
the same windows; the training fraction is taken from the remaining subjects
(``take_fraction``: nested, 10 % is inside 20 %).  Training windows stream through
``WindowDataset`` with spatio-temporal resampling (SPEC §2), sharded by rank and
loader worker; ``drop_uneven`` keeps every rank's count equal.  Validation uses the
deterministic evaluation crop, fixed batches of ``val_batch`` windows and a fixed mask
per batch (a ``torch.Generator`` seeded from ``(split_seed, batch index)``), so
``val_loss`` is comparable across sizes, fractions, epochs, seeds and world sizes.

**Budget.**  ``unique_tokens`` is U_D of the training fraction (SPEC §1: per window
``min(C, 32) x 30 x 0.75 x 0.75``), the token budget is ``epochs x U_D`` and FLOPs are
reported both as the model's account (``training_flops``) and as 6ND (``six_nd``).
One epoch is ``K`` micro-batches per rank (every window once) and ``ceil(K / GAS)``
optimizer steps: ``ceil(windows / global_batch)`` when the world size divides the
window count; the last step of an epoch may accumulate fewer micro-batches and is then
averaged over those (``set_gradient_accumulation_boundary``).

**Model and optimizer.**  ``build_model`` (muP), parameters counted before
``deepspeed.initialize`` (ZeRO-3 partitions them), ``MuAdamW`` handed to DeepSpeed as
the client optimizer (naming an optimizer in the DeepSpeed config would JIT-build
``fused_adam``), and SPEC §3's cosine applied to each muP group's own peak
(``diver.train.schedule``).  fp32 on CPU; bf16 only with CUDA.

**Determinism and resume.**  Every source of randomness is a function of the step:
the global torch generator (dropout) is re-seeded from ``(seed, step, rank)`` before
each step, masks come from a generator seeded from ``(seed, step, rank, micro-batch)``,
crops and window order from ``(seed, epoch)`` inside ``WindowDataset``, and the loader
gets its own generator.  A checkpoint holds the engine (weights, optimizer, scheduler)
plus the position in the epoch; resuming reads and discards the batches of the epoch
already consumed (I/O only, no compute), so a killed and resumed run reproduces an
uninterrupted run's per-step losses exactly (fp32 CPU).  SIGTERM / SIGUSR1 / SIGUSR2
(SLURM and submitit preemption) set a flag; at the next step boundary every rank saves
and the process exits with ``EXIT_PREEMPTED``.

**Outputs** (rank 0; all but the two logs written atomically): ``train_log.csv`` and
``val_log.csv`` (appended per step, cut back to the checkpoint on resume),
``checkpoints/step-N/``,
``model.pt`` (consolidated fp32 state dict + ModelConfig + step; loads with plain
``torch.load``), ``metrics.json`` (last: its presence with matching settings makes a
rerun a no-op), ``run_config.json``, ``ds_config.json`` and ``loss_curve.png``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import signal
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from diver.atomic import replacing, write_text_atomic
from diver.config import ConfigError, PretrainConfig, validate_config
from diver.data import (
    CorpusIndex,
    CorpusIndexError,
    ResampleConfig,
    WindowBatch,
    WindowDataset,
    collate_windows,
    split_subjects,
    take_fraction,
    take_subjects,
)
from diver.errors import CheckpointError, DiverError
from diver.exitcodes import EXIT_PREEMPTED
from diver.model import DiverPretrainModel, ModelConfig, model_config
from diver.model.config import MODEL_OPTIONS
from diver.model.flops import six_nd, training_flops
from diver.model.load import load_checkpoint, load_weights, save_model_file
from diver.model.mup_setup import build_model, make_optimizer
from diver.study.budget import window_tokens
from diver.study.cells import cell_key
from diver.train import checkpoint as ckpt
from diver.train.distributed import (
    DistEnv,
    all_reduce_sum,
    any_rank,
    barrier,
    setup_distributed,
    teardown_distributed,
)
from diver.train.schedule import cosine_schedule

log = logging.getLogger(__name__)

"""Exit status after a preemption signal was handled (checkpoint saved): BSD
``EX_TEMPFAIL``, "temporary failure, retry" - the launcher reruns the same command."""
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


TRAIN_COLUMNS = (
    "step",
    "epoch",
    "loss",
    "loss_time",
    "loss_fft",
    "loss_stft",
    "lr",
    "grad_norm",
    "tokens",
    "tokens_per_s",
)
VAL_COLUMNS = (
    "epoch",
    "step",
    "tokens",
    "val_loss",
    "val_loss_time",
    "val_loss_fft",
    "val_loss_stft",
)
LOSS_PARTS = ("time", "fft", "stft")

# Settings that change what is trained: a rerun or resume with different values is an
# error.  The rest (checkpoint/validation cadence, logging, timeouts, activation
# checkpointing - recomputation replays the same RNG) may change between attempts.
OPERATIONAL_KEYS = frozenset(
    {
        "checkpoint_every",
        "keep_checkpoints",
        "val_every",
        "log_every",
        "dist_timeout_s",
        "activation_checkpointing",
    }
)


class PretrainError(DiverError, RuntimeError):
    """A pretraining run cannot start or continue; the message says why."""


class _Preempted(BaseException):
    """Unwinds a preempted run (checkpoint saved) through its context managers.

    A BaseException, like KeyboardInterrupt, so ``tracking.child_run`` ends the MLflow
    run as KILLED rather than FINISHED or FAILED.
    """


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
        from diver.model.config import PATCH_SAMPLES, SIZES

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
        config = {k: v for k, v in asdict(self.config).items() if k not in OPERATIONAL_KEYS}
        config["betas"] = list(config["betas"])
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
            **config,
        }

    def model_config(self) -> ModelConfig:
        """The cell's architecture: its size and patch, with the study's model options."""
        return model_config(self.size, self.patch, **self.model_options)


@dataclass(frozen=True)
class TrackingTarget:
    """Where to log the cell's MLflow child run (rank 0 only)."""

    uri: str
    parent_run_id: str
    manifest: Path | None = None


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Splits:
    """The training fraction and the fixed validation set of a corpus."""

    train: CorpusIndex
    val: CorpusIndex


def make_splits(
    corpus: Path | str,
    data_fraction: float,
    config: PretrainConfig,
    index: CorpusIndex | None = None,
    *,
    modalities: tuple[str, ...] | None = None,
    datasets: tuple[str, ...] | None = None,
    subjects: int | None = None,
) -> Splits:
    """The family's windows; validation subjects first, then the nested training data.

    ``modalities``/``datasets`` select a corpus family (SPEC §3: iEEG, EEG, both);
    ``subjects`` keeps a nested subset of the training subjects before the fraction.
    """
    if index is None:
        try:
            index = CorpusIndex.from_dir(corpus)
        except CorpusIndexError as exc:  # an OSError; the CLI reports DiverErrors cleanly
            raise PretrainError(str(exc)) from exc
    if modalities is not None or datasets is not None:
        keep = np.ones(len(index), dtype=bool)
        if modalities is not None:
            keep &= index.frame["modality"].isin(list(modalities)).to_numpy()
        if datasets is not None:
            keep &= index.frame["dataset"].isin(list(datasets)).to_numpy()
        if not keep.any():
            raise PretrainError(
                f"corpus {corpus} has no windows of modalities {list(modalities or [])} "
                f"in datasets {list(datasets) if datasets is not None else 'any'}; its datasets: "
                f"{sorted(index.frame['dataset'].unique())}"
            )
        index = index.subset(keep)
    train_all, val = split_subjects(
        index, config.val_fraction, config.split_seed, stratify_by_dataset=config.val_stratify
    )
    if len(val) == 0 or len(train_all) == 0:
        n_subjects = len(index.subjects())
        raise PretrainError(
            f"corpus {corpus} has {n_subjects} subject(s); a subject-level validation split "
            f"(val_fraction {config.val_fraction}) needs at least two"
        )
    if config.val_max_windows is not None and len(val) > config.val_max_windows:
        val = take_fraction(val, config.val_max_windows / len(val), config.split_seed)
    if subjects is None:
        train = take_fraction(train_all, data_fraction, config.split_seed)
        return Splits(train=train, val=val)
    # Subject sweep at fixed data (SPEC §3): the fraction still counts against *all*
    # training windows, drawn from the chosen subjects only.
    n_windows = max(1, round(data_fraction * len(train_all)))
    try:
        chosen = take_subjects(train_all, subjects, config.split_seed)
    except ValueError as exc:
        raise PretrainError(f"corpus {corpus}: --subjects {subjects}: {exc}") from exc
    if n_windows > len(chosen):
        raise PretrainError(
            f"corpus {corpus}: {subjects} training subjects have {len(chosen)} windows, fewer "
            f"than the {n_windows} that --data-fraction {data_fraction} asks for; lower the "
            "fraction so every point of the subject sweep has the same data"
        )
    train = take_fraction(chosen, n_windows / len(chosen), config.split_seed)
    return Splits(train=train, val=val)


def unique_tokens(index: CorpusIndex, patch_samples: int) -> float:
    """U_D of SPEC §1 over the index's windows (:mod:`diver.study.budget`)."""
    frame = index.frame
    patches = frame["n_samples"].to_numpy() // patch_samples
    return float(np.sum(window_tokens(frame["n_channels"].to_numpy(), patches)))


def micro_batches_per_epoch(n_windows: int, world_size: int, workers: int, micro: int) -> int:
    """Micro-batches every rank takes per epoch: the minimum over ranks.

    ``WindowDataset(drop_uneven=True)`` gives each rank ``n // world_size`` windows,
    split into one contiguous slice per loader worker, and each worker batches its own
    slice; with workers, ranks can end up one batch apart.  Every rank must run the same
    number of forward/backward passes (the gradient reductions are collective), so all
    stop at the smallest count, computed identically on every rank without talking.
    """
    total = (n_windows // world_size) * world_size
    consumers = max(workers, 1)
    n_slices = world_size * consumers
    counts = []
    for rank in range(world_size):
        count = 0
        for worker in range(consumers):
            c = rank * consumers + worker
            size = (c + 1) * total // n_slices - c * total // n_slices
            count += math.ceil(size / micro)
        counts.append(count)
    return min(counts)


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (numpy's SeedSequence: stable across runs and
    machines; sequences of different lengths give unrelated seeds)."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def model_inputs(batch: WindowBatch, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Keyword arguments of ``DiverPretrainModel.forward`` from a collated batch.

    The signal goes in the model's compute dtype (bf16 under DeepSpeed's bf16 mode,
    which casts the module, not its inputs); the model computes its reconstruction
    targets in fp32 and coordinates stay fp32 for the position encoding.
    """
    return {
        "patches": batch.signal.to(dtype),
        "coords_mm": batch.coords,
        "type_ids": batch.channel_type_ids,
        "subtype_ids": batch.channel_subtype_ids,
        "channel_mask": batch.channel_mask,
        "patch_mask": batch.patch_mask,
    }


def validation_loader(
    val: CorpusIndex,
    patch_samples: int,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Iterable[WindowBatch], list[int]]:
    """This rank's validation batches and their global batch numbers.

    Global batch b is windows ``b * batch_size ...`` of the validation index in its
    canonical order; rank r evaluates batches ``b = r, r + W, ...``.  The rank reads only
    those windows (a subset index keeps the order, so the batches come out identical).
    """
    n = len(val)
    n_batches = math.ceil(n / batch_size)
    mine = list(range(rank, n_batches, world_size))
    if not mine:  # more ranks than batches: this one only joins the all-reduce
        return [], []
    keep = np.zeros(n, dtype=bool)
    for b in mine:
        keep[b * batch_size : (b + 1) * batch_size] = True
    dataset = WindowDataset(
        val.subset(keep),
        patch_samples,
        resample=ResampleConfig(enabled=False),
        shuffle=False,
        rank=0,
        world_size=1,
    )
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_windows, num_workers=0)
    return loader, mine


@torch.no_grad()
def evaluate(
    model: Any,
    val: CorpusIndex,
    patch_samples: int,
    *,
    batch_size: int,
    mask_seed: int,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Validation loss and its parts, averaged over masked tokens of the fixed set.

    Each batch's losses (means over its masked tokens) are weighted by its masked-token
    count, so the result is the mean over every masked token of the set whatever the
    batching across ranks.  ``model`` is a DeepSpeed engine or a plain module; it is
    put in eval mode (no dropout) and back in the mode it was in.
    """
    was_training = model.training
    model.eval()
    loader, batch_ids = validation_loader(
        val, patch_samples, batch_size, rank=rank, world_size=world_size
    )
    sums = np.zeros(1 + 1 + len(LOSS_PARTS))  # weight, loss, parts
    try:
        for b, batch in zip(batch_ids, loader, strict=True):
            generator = torch.Generator(device=device).manual_seed(_seed(mask_seed, b))
            out = model(**model_inputs(batch.to(device), dtype), generator=generator)
            weight = float(out.mask.sum())
            parts = [float(out.losses[k]) if k in out.losses else 0.0 for k in LOSS_PARTS]
            sums += weight * np.array([1.0, float(out.loss), *parts])
    finally:
        model.train(was_training)
    totals = all_reduce_sum(sums.tolist(), device=device if world_size > 1 else None)
    weight = totals[0]
    if weight <= 0:
        raise PretrainError("the validation set produced no masked tokens")
    result = {"val_loss": totals[1] / weight}
    result.update({f"val_loss_{k}": totals[2 + i] / weight for i, k in enumerate(LOSS_PARTS)})
    return result


# ---------------------------------------------------------------------- helpers


class CsvLog:
    """An append-only CSV of one row per step, written by rank 0 (flushed per row).

    On resume, :meth:`truncate` keeps the rows up to the checkpoint's step (a kill after
    the checkpoint leaves later rows, possibly a partial last line) so the resumed run
    appends exactly where the checkpoint left off.
    """

    def __init__(self, path: Path, columns: tuple[str, ...]):
        self.path = path
        self.columns = columns
        self._fh: Any = None

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with self.path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != self.columns:
                return []
            return [r for r in reader if None not in r.values() and None not in r]

    def truncate(self, max_step: int) -> list[dict[str, str]]:
        """Keep complete rows with ``step <= max_step`` (all gone for a fresh start)."""
        kept = []
        for row in self.rows():
            try:
                step = int(row["step"])
                for column in self.columns:
                    float(row[column])
            except (TypeError, ValueError):
                continue  # a line cut short by a kill
            if step <= max_step:
                kept.append(row)
        lines = [",".join(self.columns)] + [",".join(row[c] for c in self.columns) for row in kept]
        write_text_atomic(self.path, "\n".join(lines) + "\n")
        return kept

    def append(self, row: Mapping[str, Any]) -> None:
        if self._fh is None:
            self._fh = self.path.open("a", newline="")
        self._fh.write(",".join(_fmt(row[c]) for c in self.columns) + "\n")
        self._fh.flush()

    def sync(self) -> None:
        """Make the rows so far durable (before a checkpoint claims them)."""
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _fmt(value: Any) -> str:
    """``repr`` of floats: the shortest string that reads back to the same double."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


class PreemptionFlag:
    """Set by SIGTERM/SIGUSR1/SIGUSR2; the loop checks it at step boundaries.

    The handler only records the signal: saving inside a handler could interrupt
    DeepSpeed mid-collective.  Previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __enter__(self) -> PreemptionFlag:
        for sig in PREEMPT_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        previous = self._previous.get(self.signum) if self.signum is not None else None
        if callable(previous):
            # Hand the signal on, now that the checkpoint is written, to whoever was
            # listening before: under submitit that is its requeue handler (SLURM
            # preemption / time limit), which resubmits the job to resume from here.
            previous(self.signum, None)

    @property
    def raised(self) -> bool:
        return self.signum is not None


def enable_activation_checkpointing(model: DiverPretrainModel) -> None:
    """Recompute every encoder block in the backward pass (``torch.utils.checkpoint``).

    The block's ``forward`` is wrapped on the instance, so parameter names and the
    state dict are unchanged; the RNG state is replayed, so dropout masks - and hence
    losses - are the same as without checkpointing.
    """
    from torch.utils.checkpoint import checkpoint

    for block in model.encoder.blocks:
        original = block.forward

        def forward(*args: torch.Tensor, _original: Any = original) -> torch.Tensor:
            if not torch.is_grad_enabled():
                return _original(*args)
            return checkpoint(_original, *args, use_reentrant=False)

        block.forward = forward  # type: ignore[method-assign]


def deepspeed_config(
    config: PretrainConfig, micro: int, accumulation: int, world_size: int, bf16: bool
) -> dict[str, Any]:
    """The DeepSpeed config: batch geometry, ZeRO stage, clipping, precision.

    No ``optimizer`` or ``scheduler`` entry: both are the client's (MuAdamW and the
    per-group cosine).  Progress printing is off (the loop logs its own).
    """
    return {
        "train_batch_size": micro * accumulation * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": config.grad_clip,
        "zero_optimization": {"stage": config.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def batch_geometry(config: PretrainConfig, world_size: int) -> tuple[int, int]:
    """``(micro_batch, accumulation)`` with ``global = micro x accumulation x world``."""
    micro = config.micro_batch
    if micro is None:
        if config.global_batch % world_size:
            raise ConfigError(
                f"global batch {config.global_batch} is not divisible by world size "
                f"{world_size}; set micro_batch"
            )
        micro = config.global_batch // world_size
    per_step = micro * world_size
    if config.global_batch % per_step:
        raise ConfigError(
            f"global batch {config.global_batch} is not a multiple of micro batch {micro} x "
            f"world size {world_size} = {per_step}"
        )
    return micro, config.global_batch // per_step


def resolve_precision(config: PretrainConfig) -> bool:
    """Whether to train in bf16 (``auto``: exactly when CUDA is available)."""
    cuda = torch.cuda.is_available()
    if config.precision == "bf16" and not cuda:
        raise ConfigError(
            "precision bf16 needs CUDA; on CPUs use fp32 (bf16 matmuls are ~100x slower there)"
        )
    return config.precision == "bf16" or (config.precision == "auto" and cuda)


def consolidated_state_dict(engine: Any, zero_stage: int, env: DistEnv) -> dict[str, Any] | None:
    """The full fp32 model state dict on rank 0 (None elsewhere); call on all ranks.

    ZeRO 0-2 keep whole parameters on every rank; ZeRO-3 partitions them, so they are
    gathered module by module (``_zero3_consolidated_16bit_state_dict``, which despite
    its name returns the parameters in their training dtype).  Under bf16 these are the
    bf16 weights, upcast.
    """
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()
    else:
        state = engine.module.state_dict() if env.is_main else None
    if state is None:
        return None
    return {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone()
        for k, v in state.items()
    }


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def plot_losses(
    train_rows: list[Mapping[str, Any]], val_rows: list[Mapping[str, Any]], path: Path, title: str
) -> None:
    """Training and validation loss against step, as a PNG (Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if train_rows:
        ax.plot(
            [int(r["step"]) for r in train_rows],
            [float(r["loss"]) for r in train_rows],
            label="train",
            lw=1,
        )
    if val_rows:
        ax.plot(
            [int(r["step"]) for r in val_rows],
            [float(r["val_loss"]) for r in val_rows],
            "o-",
            label="validation",
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with replacing(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------- run


@dataclass
class TrainState:
    """Where training stands; saved as the checkpoint's client state."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    tokens_seen: float = 0.0
    elapsed_s: float = 0.0
    last_val: dict[str, float] | None = None
    last_train: dict[str, float] | None = None


def completed(out: Path, identity: Mapping[str, Any]) -> bool:
    """Whether ``out`` holds finished outputs of the same settings (then a no-op).

    Finished outputs of *different* settings are an error: overwriting them silently
    would mix two cells in one folder.
    """
    metrics = out / "metrics.json"
    if not metrics.exists() or not (out / "model.pt").exists():
        return False
    _check_identity(out, identity)
    return True


def _check_identity(out: Path, identity: Mapping[str, Any]) -> None:
    path = out / "run_config.json"
    if not path.exists():
        return
    try:
        recorded = json.loads(path.read_text())["identity"]
    except (OSError, ValueError, KeyError) as exc:
        raise PretrainError(
            f"{path} is unreadable ({exc}); delete it or use another --out"
        ) from exc
    current = json.loads(json.dumps(identity))
    diff = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if diff:
        details = "; ".join(f"{k}: {recorded.get(k)!r} there, {current.get(k)!r} now" for k in diff)
        raise PretrainError(
            f"{out} belongs to a run with other settings ({details}); use another --out "
            "or delete the folder"
        )


def planned_flops(settings: PretrainSettings) -> float:
    """Training FLOPs the cell will spend (SPEC §2 account x epochs x U_D).

    Reads only the corpus index (Parquet metadata), so a launcher can size a job's wall
    time before any GPU is allocated.
    """
    splits = make_splits(
        settings.corpus, settings.data_fraction, settings.config,
        modalities=settings.modalities, datasets=settings.datasets, subjects=settings.subjects,
    )
    cfg = settings.model_config()
    tokens = settings.epochs * unique_tokens(splits.train, cfg.patch_samples)
    return float(training_flops(cfg, tokens))


def pretrain(settings: PretrainSettings, *, tracking: TrackingTarget | None = None) -> int:
    """Run (or resume, or confirm) one pretraining cell; returns the exit status.

    0 when the outputs are complete (now or already), :data:`EXIT_PREEMPTED` after a
    preemption signal was handled.  Must run on every rank of the job.
    """
    out = Path(settings.out)
    identity = settings.identity()
    if completed(out, identity):
        if os.environ.get("RANK", "0") == "0":
            print(f"pretrain {settings.cell}: already complete ({out / 'metrics.json'})")
        return 0
    _check_identity(out, identity)
    # Before any process group or model exists: a broken checkpoints/ folder fails fast.
    resume = ckpt.find_resume_checkpoint(out / ckpt.CHECKPOINTS_DIR)
    env = setup_distributed(settings.config.dist_timeout_s)
    try:
        return _Run(settings, env, tracking).run(resume)
    finally:
        teardown_distributed()


class _Run:
    """State and steps of one pretraining process (one rank)."""

    def __init__(self, settings: PretrainSettings, env: DistEnv, tracking: TrackingTarget | None):
        self.s = settings
        self.c = settings.config
        self.env = env
        self.tracking = tracking
        self.out = Path(settings.out)
        self.ckpt_root = self.out / ckpt.CHECKPOINTS_DIR
        self.mlflow: Any = None

    # ----------------------------------------------------------------- set-up

    def run(self, resume: ckpt.CheckpointInfo | None) -> int:
        """Set up, resume if asked, train, write the outputs; the exit status."""
        s, env = self.s, self.env
        bf16 = resolve_precision(self.c)
        self.dtype = torch.bfloat16 if bf16 else torch.float32
        self.micro, self.accumulation = batch_geometry(self.c, env.world_size)
        self.model_config = s.model_config()
        self._prepare_data()
        self._build_engine(bf16)

        self.state = TrainState()
        self.resumed_from: int | None = None
        if resume is not None:
            self._resume(resume)

        self.train_log = CsvLog(self.out / "train_log.csv", TRAIN_COLUMNS)
        self.val_log = CsvLog(self.out / "val_log.csv", VAL_COLUMNS)
        self.train_rows: list[dict[str, str]] = []
        self.val_rows: list[dict[str, str]] = []
        if env.is_main:
            # Written once the settings proved usable, so a typo does not claim the folder.
            self.out.mkdir(parents=True, exist_ok=True)
            _write_json(
                self.out / "run_config.json",
                {"identity": s.identity(), "settings": asdict(s), "cell": s.cell},
            )
            keep_until = self.state.step if self.resumed_from is not None else -1
            self.train_rows = self.train_log.truncate(keep_until)
            self.val_rows = self.val_log.truncate(keep_until)
            _write_json(self.out / "ds_config.json", self.ds_config)
        barrier()

        try:
            with contextlib.ExitStack() as stack:
                if env.is_main and self.tracking is not None:
                    self.mlflow = stack.enter_context(self._child_run())
                    self._log_run_start()
                flag = stack.enter_context(PreemptionFlag())
                stack.callback(self.train_log.close)
                stack.callback(self.val_log.close)
                if self._train(flag) == EXIT_PREEMPTED:
                    if self.mlflow is not None:
                        self.mlflow.set_tags({"diver.preempted_at_step": str(self.state.step)})
                    raise _Preempted  # through child_run, which marks the run KILLED
                self._finish()
        except _Preempted:
            return EXIT_PREEMPTED
        return 0

    def _prepare_data(self) -> None:
        """Splits, the token budget, this rank's training stream and the epoch length."""
        s, c, env = self.s, self.c, self.env
        self.patch_samples = self.model_config.patch_samples
        self.splits = make_splits(
            s.corpus, s.data_fraction, c,
            modalities=s.modalities, datasets=s.datasets, subjects=s.subjects,
        )
        self.unique_tokens = unique_tokens(self.splits.train, self.patch_samples)
        self.token_budget = s.epochs * self.unique_tokens
        self.dataset = WindowDataset(
            self.splits.train,
            self.patch_samples,
            resample=ResampleConfig(enabled=True),
            seed=c.seed,
            shuffle=True,
            rank=env.rank,
            world_size=env.world_size,
            drop_uneven=True,
        )
        self.micro_per_epoch = micro_batches_per_epoch(
            len(self.splits.train), env.world_size, c.num_workers, self.micro
        )
        if self.micro_per_epoch < 1:
            raise PretrainError(
                f"{len(self.splits.train)} training windows cannot feed {env.world_size} ranks"
            )
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / self.accumulation)
        self.total_steps = s.epochs * self.steps_per_epoch
        if c.warmup_steps >= self.total_steps:
            raise ConfigError(
                f"warmup_steps {c.warmup_steps} must be below the run's {self.total_steps} steps"
            )

    def _build_engine(self, bf16: bool) -> None:
        """The muP model, MuAdamW and the per-group cosine, wrapped by DeepSpeed."""
        c, env = self.c, self.env
        torch.manual_seed(c.seed)
        model = build_model(self.model_config)
        if self.s.init_from is not None:
            self._warm_start(model, self.s.init_from)
        self.n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions
        if c.activation_checkpointing:
            enable_activation_checkpointing(model)
        optimizer = make_optimizer(model, lr=c.lr, weight_decay=c.weight_decay, betas=c.betas)
        self.ds_config = deepspeed_config(c, self.micro, self.accumulation, env.world_size, bf16)
        total_steps, warmup, min_ratio = self.total_steps, c.warmup_steps, c.min_lr_ratio

        def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
            return cosine_schedule(opt, total_steps, warmup_steps=warmup, min_ratio=min_ratio)

        import deepspeed
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.ds_config
        )
        self.device = self.engine.device

    def _warm_start(self, model: torch.nn.Module, path: str) -> None:
        """Start from another model's weights (a ``model.pt``, or the authors' checkpoint
        as ``diver model import`` reads it); the architecture must be this cell's.  On a
        resume the run's own checkpoint then overwrites them."""
        config, state, _ = load_checkpoint(path)
        if config != self.model_config:
            mine, theirs = asdict(self.model_config), asdict(config)
            diff = {k: (theirs[k], v) for k, v in mine.items() if theirs[k] != v}
            raise ConfigError(
                f"--init-from {path} is not a {self.s.size}/{self.s.patch} model: "
                f"(file, cell) differ in {diff}"
            )
        load_weights(model, state, path)

    def _resume(self, info: ckpt.CheckpointInfo) -> None:
        client = ckpt.load_checkpoint(self.engine, info, self.env)
        saved = client.get("diver")
        if not isinstance(saved, dict):
            raise CheckpointError(f"checkpoint {info.path} holds no diver training state")
        loader = saved["loader"]
        expected = self._loader_state()
        diff = {k: (loader.get(k), v) for k, v in expected.items() if loader.get(k) != v}
        if diff:
            raise CheckpointError(
                f"checkpoint {info.path} was written with another data layout {diff} "
                "(checkpoint value, now); resume with the same settings and world size"
            )
        self.state = TrainState(**saved["state"])
        self.resumed_from = self.state.step
        if self.env.is_main:
            message = (
                f"resumed from checkpoint {info.path} at step {self.state.step} "
                f"(epoch {self.state.epoch}, batch {self.state.batches_in_epoch})"
            )
            log.info(message)
            print(f"pretrain {self.s.cell}: {message}", flush=True)

    def _loader_state(self) -> dict[str, Any]:
        """What the position in an epoch means: the same values make skipping exact."""
        return {
            "seed": self.c.seed,
            "world_size": self.env.world_size,
            "num_workers": self.c.num_workers,
            "micro_batch": self.micro,
            "accumulation": self.accumulation,
            "train_windows": len(self.splits.train),
            "micro_per_epoch": self.micro_per_epoch,
        }

    def _child_run(self) -> contextlib.AbstractContextManager[Any]:
        from diver.tracking.runs import child_run

        assert self.tracking is not None
        return child_run(
            self.tracking.uri,
            self.tracking.parent_run_id,
            stage="pretrain",
            cell=self.s.cell,
            manifest=self.tracking.manifest,
            tags={"diver.resumed_from_step": str(self.resumed_from)} if self.resumed_from else None,
        )

    def _log_run_start(self) -> None:
        params = {
            "size": self.s.size,
            "patch": self.s.patch,
            "data_fraction": self.s.data_fraction,
            "epochs": self.s.epochs,
            "corpus": str(Path(self.s.corpus).resolve()),
            "world_size": self.env.world_size,
            "micro_batch": self.micro,
            "gradient_accumulation": self.accumulation,
            "n_params": self.n_params,
            "d_model": self.model_config.d_model,
            "depth": self.model_config.depth,
            "train_windows": len(self.splits.train),
            "val_windows": len(self.splits.val),
            "unique_tokens": self.unique_tokens,
            "token_budget": self.token_budget,
            "total_steps": self.total_steps,
            **{k: v for k, v in asdict(self.c).items() if k != "betas"},
            "betas": ",".join(str(b) for b in self.c.betas),
        }
        self.mlflow.log_params(params)
        # A resumed run is a new MLflow run: replay the curve so far into it.
        for row in self.train_rows:
            self.mlflow.log_metrics(
                {f"train_{k}": float(row[k]) for k in TRAIN_COLUMNS if k not in ("step",)},
                step=int(row["step"]),
            )
        for row in self.val_rows:
            self.mlflow.log_metrics(
                {k: float(row[k]) for k in VAL_COLUMNS if k.startswith("val_")},
                step=int(row["step"]),
            )

    # ------------------------------------------------------------------- loop

    def _train(self, flag: PreemptionFlag) -> int:
        s, c, env, st = self.s, self.c, self.env, self.state
        if self.resumed_from is None and c.val_at_start:
            self._validate()
        loader = DataLoader(
            self.dataset,
            batch_size=self.micro,
            collate_fn=collate_windows,
            num_workers=c.num_workers,
            generator=torch.Generator().manual_seed(c.seed),
        )
        last_saved = st.step if self.resumed_from is not None else -1
        started = time.perf_counter() - st.elapsed_s
        while st.epoch < s.epochs:
            self.dataset.set_epoch(st.epoch)
            batches = iter(loader)
            for _ in range(st.batches_in_epoch):  # already consumed before the checkpoint
                next(batches)
            while st.batches_in_epoch < self.micro_per_epoch:
                k = min(self.accumulation, self.micro_per_epoch - st.batches_in_epoch)
                t0 = time.perf_counter()
                metrics = self._step(batches, k)
                st.batches_in_epoch += k
                st.step += 1
                epoch_done = st.batches_in_epoch >= self.micro_per_epoch
                st.tokens_seen += metrics["step_tokens"]
                st.elapsed_s = time.perf_counter() - started
                row = {
                    "step": st.step,
                    "epoch": st.epoch,
                    "loss": metrics["loss"],
                    "loss_time": metrics["loss_time"],
                    "loss_fft": metrics["loss_fft"],
                    "loss_stft": metrics["loss_stft"],
                    "lr": metrics["lr"],
                    "grad_norm": metrics["grad_norm"],
                    "tokens": st.tokens_seen,
                    "tokens_per_s": metrics["step_tokens"] / max(time.perf_counter() - t0, 1e-9),
                }
                st.last_train = {k: float(v) for k, v in row.items()}
                if env.is_main:
                    self.train_log.append(row)
                    self.train_rows.append({k: str(v) for k, v in row.items()})
                    if self.mlflow is not None:
                        self.mlflow.log_metrics(
                            {f"train_{k}": float(v) for k, v in row.items() if k != "step"},
                            step=st.step,
                        )
                    if st.step % c.log_every == 0 or st.step == self.total_steps:
                        log.info(
                            "step %d/%d epoch %d loss %.4f lr %.3g grad %.3g %.0f tok/s",
                            st.step,
                            self.total_steps,
                            st.epoch,
                            row["loss"],
                            row["lr"],
                            row["grad_norm"],
                            row["tokens_per_s"],
                        )
                if epoch_done:
                    st.epoch += 1
                    st.batches_in_epoch = 0
                if epoch_done or (c.val_every and st.step % c.val_every == 0):
                    self._validate(epoch=st.epoch - 1 if epoch_done else st.epoch)
                stop = any_rank(flag.raised, self.device)
                due = c.checkpoint_every and st.step % c.checkpoint_every == 0
                final = st.step == self.total_steps
                if (due and not final) or (stop and st.step != last_saved and not final):
                    self._save()
                    last_saved = st.step
                if stop and not final:
                    if env.is_main:
                        print(
                            f"pretrain {s.cell}: preempted (signal {flag.signum}); checkpoint at "
                            f"step {st.step}, rerun the same command to resume",
                            flush=True,
                        )
                    return EXIT_PREEMPTED
                if epoch_done:
                    break
        return 0

    def _step(self, batches: Iterator[WindowBatch], k: int) -> dict[str, float]:
        """One optimizer step over ``k`` micro-batches (``k < accumulation`` only at the
        end of an epoch; the gradient is then the mean over those ``k``)."""
        engine, env, st = self.engine, self.env, self.state
        torch.manual_seed(_seed(self.c.seed, st.step, env.rank))  # dropout
        lr = float(engine.optimizer.param_groups[0]["lr"])
        sums = np.zeros(1 + len(LOSS_PARTS))
        tokens = 0.0
        for micro in range(k):
            batch = next(batches).to(self.device)
            tokens += float(batch.token_mask.sum())
            generator = torch.Generator(device=self.device).manual_seed(
                _seed(self.c.seed, st.step, env.rank, micro, 1)
            )
            engine.set_gradient_accumulation_boundary(micro == k - 1)
            out = engine(**model_inputs(batch, self.dtype), generator=generator)
            engine.backward(out.loss / k, scale_wrt_gas=False)
            parts = [float(out.losses[p].detach()) if p in out.losses else 0.0 for p in LOSS_PARTS]
            sums += np.array([float(out.loss.detach()), *parts]) / k
        manual_norm = None
        if self.c.zero_stage == 0:
            # Stage 0 clips with torch's clip_grad_norm_ and does not keep the norm.
            grads = [p.grad for p in engine.module.parameters() if p.grad is not None]
            manual_norm = float(
                torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
                )
            )
        engine.step()
        norm = engine.get_global_grad_norm()
        grad_norm = float(norm) if norm is not None else manual_norm
        totals = all_reduce_sum(
            [*sums.tolist(), tokens], device=self.device if env.world_size > 1 else None
        )
        n = env.world_size
        return {
            "loss": totals[0] / n,
            **{f"loss_{p}": totals[1 + i] / n for i, p in enumerate(LOSS_PARTS)},
            "lr": lr,
            "grad_norm": float("nan") if grad_norm is None else grad_norm,
            "step_tokens": totals[-1],
        }

    def _validate(self, epoch: int | None = None) -> None:
        st = self.state
        result = evaluate(
            self.engine,
            self.splits.val,
            self.patch_samples,
            batch_size=self.c.val_batch,
            mask_seed=self.c.split_seed,
            device=self.device,
            rank=self.env.rank,
            world_size=self.env.world_size,
            dtype=self.dtype,
        )
        st.last_val = {**result, "step": st.step}
        if self.env.is_main:
            row = {
                "epoch": st.epoch if epoch is None else epoch,
                "step": st.step,
                "tokens": st.tokens_seen,
                **result,
            }
            self.val_log.append(row)
            self.val_rows.append({k: str(v) for k, v in row.items()})
            if self.mlflow is not None:
                self.mlflow.log_metrics(result, step=st.step)
            log.info("step %d validation loss %.5f", st.step, result["val_loss"])

    def _save(self) -> None:
        if self.env.is_main:
            self.train_log.sync()
            self.val_log.sync()
        client_state = {
            "diver": {
                "state": asdict(self.state),
                "loader": {
                    **self._loader_state(),
                    "epoch": self.state.epoch,
                    "batches_in_epoch": self.state.batches_in_epoch,
                },
                "rng": ckpt.capture_rng(),
                "identity": self.s.identity(),
            },
            "epoch": self.state.epoch,
            "batches_in_epoch": self.state.batches_in_epoch,
        }
        folder = ckpt.save_checkpoint(
            self.engine,
            self.ckpt_root,
            self.state.step,
            client_state,
            self.env,
            keep=self.c.keep_checkpoints,
        )
        if self.env.is_main:
            log.info("checkpoint %s", folder)

    # ----------------------------------------------------------------- finish

    def _val_by_epoch(self) -> list[dict[str, float]]:
        """Validation loss at each epoch end (SPEC §3 reads one long run at several epochs).

        Tokens are those of that many epochs over the cell's data, so each row is a
        point (N, D = e x U_D, U_D, L) of the scaling grid.
        """
        rows: dict[int, dict[str, float]] = {}
        for row in self.val_rows:
            step = int(row["step"]) if row.get("step") else 0
            if step <= 0 or step % self.steps_per_epoch or not row.get("val_loss"):
                continue  # not an epoch end (the start, or a mid-epoch validation)
            epoch = step // self.steps_per_epoch
            rows[epoch] = {
                "epoch": epoch,
                "tokens": epoch * self.unique_tokens,
                "val_loss": float(row["val_loss"]),
            }
        return [rows[e] for e in sorted(rows)]

    def _finish(self) -> None:
        st, s, env = self.state, self.s, self.env
        if st.last_val is None or st.last_val.get("step") != st.step:
            self._validate()
        assert st.last_val is not None
        state_dict = consolidated_state_dict(self.engine, self.c.zero_stage, env)
        if env.is_main:
            assert state_dict is not None
            save_model_file(self.out / "model.pt", self.model_config, state_dict, step=st.step)
            metrics = {
                **{k: v for k, v in st.last_val.items() if k != "step"},
                "train_loss": (st.last_train or {}).get("loss"),
                "n_params": self.n_params,
                "tokens": self.token_budget,
                "unique_tokens": self.unique_tokens,
                "tokens_seen": st.tokens_seen,
                "epochs": s.epochs,
                "steps": st.step,
                "flops": training_flops(self.model_config, self.token_budget),
                "flops_6nd": six_nd(self.model_config, self.token_budget),
                "data_fraction": s.data_fraction,
                "family": s.family,
                "subjects": s.subjects,
                "size": s.size,
                "patch": s.patch,
                "val_by_epoch": self._val_by_epoch(),
                "d_model": self.model_config.d_model,
                "train_windows": len(self.splits.train),
                "val_windows": len(self.splits.val),
                "global_batch": self.c.global_batch,
                "micro_batch": self.micro,
                "world_size": env.world_size,
                "zero_stage": self.c.zero_stage,
                "lr": self.c.lr,
                "weight_decay": self.c.weight_decay,
                "seed": self.c.seed,
                "elapsed_s": st.elapsed_s,
                "resumed_from_step": self.resumed_from,
            }
            plot_losses(self.train_rows, self.val_rows, self.out / "loss_curve.png", s.cell)
            if self.mlflow is not None:
                final = {
                    f"final_{k}": float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and v is not None
                }
                self.mlflow.log_metrics(final, step=st.step)
                for name in ("run_config.json", "ds_config.json", "loss_curve.png"):
                    self.mlflow.log_artifact(self.out / name)
            _write_json(self.out / "metrics.json", metrics)
            if self.mlflow is not None:
                self.mlflow.log_artifact(self.out / "metrics.json")
            print(
                f"pretrain {s.cell}: {st.step} steps, {self.n_params:,} params, val_loss "
                f"{st.last_val['val_loss']:.5f} -> {self.out}",
                flush=True,
            )
        barrier()


def settings_with_overrides(base: PretrainConfig, **overrides: Any) -> PretrainConfig:
    """``base`` with the non-None ``overrides`` (command-line flags) applied, validated
    against the same schema as the config file (so ``--lr -1`` fails like ``lr: -1``)."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - set(PretrainConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown pretrain settings {sorted(unknown)}")
    merged = replace(base, **changes)
    validate_config({"pretrain": asdict(merged)}, source="<command line>")
    return merged
