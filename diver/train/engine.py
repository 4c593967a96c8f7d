"""The model as DeepSpeed trains it: batch geometry, precision, ZeRO, warm start.

``build_model`` (muP) is counted before ``deepspeed.initialize`` (ZeRO-3 partitions the
parameters), ``MuAdamW`` is handed to DeepSpeed as the client optimizer (naming an
optimizer in the DeepSpeed config would JIT-build ``fused_adam``) and SPEC §3's cosine
is applied to each muP group's own peak (``diver.train.schedule``).  fp32 on CPU; bf16
only with CUDA; ``torch.compile`` on request (``pretrain.compile``).  Everything
DeepSpeed-specific the loop needs is here, so the loop reads as training, not as
framework set-up.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch

from diver.config import BatchConfig, ConfigError, PretrainConfig, RuntimeConfig
from diver.model import DiverPretrainModel, ModelConfig
from diver.model.load import load_checkpoint, load_weights
from diver.model.mup_setup import build_model, make_optimizer
from diver.study.settings import PretrainSettings
from diver.train.distributed import DistEnv
from diver.train.schedule import cosine_schedule


def batch_geometry(config: BatchConfig, world_size: int) -> tuple[int, int]:
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


def resolve_precision(config: RuntimeConfig) -> bool:
    """Whether to train in bf16 (``auto``: exactly when CUDA is available)."""
    cuda = torch.cuda.is_available()
    if config.precision == "bf16" and not cuda:
        raise ConfigError(
            "precision bf16 needs CUDA; on CPUs use fp32 (bf16 matmuls are ~100x slower there)"
        )
    return config.precision == "bf16" or (config.precision == "auto" and cuda)


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
        "gradient_clipping": config.optimiser.grad_clip,
        "zero_optimization": {"stage": config.runtime.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


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


def compile_model(engine: Any, backend: str) -> None:
    """``torch.compile`` the engine's module in place (DeepSpeed's ``engine.compile``).

    Through the engine rather than ``torch.compile(model)`` before ``initialize``: the
    engine keeps calling its own module (its ZeRO hooks stay on it) and the compiled
    call is installed on that same module (``nn.Module.compile``), so parameter names,
    checkpoints and ``model.pt`` are those of an uncompiled run.  Batches differ in
    channel and patch counts, so the first recompilation marks those dimensions
    dynamic; the data-dependent branches (padding or not, masked-token gathers) are
    graph breaks that run eagerly.
    """
    if not hasattr(engine, "compile"):  # DeepSpeed before 0.14
        raise ConfigError("pretrain.compile needs DeepSpeed >= 0.14 (engine.compile)")
    engine.compile(backend=backend)


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


def warm_start(
    model: torch.nn.Module, model_config: ModelConfig, path: str, *, size: str
) -> None:
    """Start from another model's weights (a ``model.pt``, or the authors' checkpoint
    as ``diver model import`` reads it); the architecture must be the cell's
    (``model_config``, of model size ``size``).  On a resume the run's own checkpoint
    then overwrites them."""
    config, state, _ = load_checkpoint(path)
    if config != model_config:
        mine, theirs = asdict(model_config), asdict(config)
        diff = {k: (theirs[k], v) for k, v in mine.items() if theirs[k] != v}
        raise ConfigError(
            f"--init-from {path} is not a {size}/{model_config.patch} model: "
            f"(file, cell) differ in {diff}"
        )
    load_weights(model, state, path)


@dataclass(frozen=True)
class TrainEngine:
    """The DeepSpeed engine of a run and what was fixed in building it."""

    engine: Any  # deepspeed.DeepSpeedEngine: the model, optimizer and scheduler
    device: torch.device
    dtype: torch.dtype  # the model's compute dtype (inputs are cast to it)
    n_params: int  # counted before ZeRO-3 partitions the parameters
    ds_config: dict[str, Any]

    def release(self) -> None:
        """Let go of the engine so that it, and the process groups it holds, can be freed
        before the process groups are destroyed (see ``teardown_distributed``).

        ``destroy`` removes DeepSpeed's hooks, whose closures hold the engine; ZeRO-3
        also parks the model in a module-level stack for good, and the model's
        parameters carry DeepSpeed's world group, so it is taken off that stack.
        """
        self.engine.destroy()
        from deepspeed.runtime.zero import parameter_offload, partitioned_param_coordinator

        stack = parameter_offload.FWD_MODULE_STACK
        stack[:] = [module for module in stack if module is not self.engine.module]
        # ZeRO-3's coordinator memoises a method in a class-level lru_cache keyed by the
        # coordinator and the model's submodules: it keeps the whole engine alive.
        coordinator = partitioned_param_coordinator.PartitionedParameterCoordinator
        for attribute in vars(coordinator).values():
            for cell in getattr(attribute, "__closure__", None) or ():
                cache_clear = getattr(cell.cell_contents, "cache_clear", None)
                if cache_clear is not None:
                    cache_clear()


def build_engine(
    settings: PretrainSettings,
    model_config: ModelConfig,
    *,
    micro: int,
    accumulation: int,
    total_steps: int,
    world_size: int,
    bf16: bool,
) -> TrainEngine:
    """The muP model (``model_config``: the cell's), MuAdamW and the per-group cosine,
    wrapped by DeepSpeed."""
    config = settings.config
    torch.manual_seed(config.runtime.seed)
    model = build_model(model_config)
    if settings.init_from is not None:
        warm_start(model, model_config, settings.init_from, size=settings.size)
    n_params = sum(p.numel() for p in model.parameters())  # before ZeRO-3 partitions
    if config.runtime.activation_checkpointing:
        enable_activation_checkpointing(model)
    opt = config.optimiser
    optimizer = make_optimizer(model, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas)
    ds_config = deepspeed_config(config, micro, accumulation, world_size, bf16)
    warmup, min_ratio = opt.warmup_steps, opt.min_lr_ratio

    def scheduler(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        return cosine_schedule(opt, total_steps, warmup_steps=warmup, min_ratio=min_ratio)

    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    from diver.train import safe_checkpoint

    safe_checkpoint.install(engine)  # resuming never unpickles code from the folder
    if config.runtime.compile:
        compile_model(engine, config.runtime.compile_backend)
    return TrainEngine(
        engine=engine,
        device=engine.device,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        n_params=n_params,
        ds_config=ds_config,
    )
