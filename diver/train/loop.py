"""The training loop of one rank: steps, validation, checkpoints, the final outputs.

**Determinism and resume.**  Every source of randomness is a function of the step:
the global torch generator (dropout) is re-seeded from ``(seed, step, rank)`` before
each step, masks come from a generator seeded from ``(seed, step, rank, micro-batch)``,
crops and window order from ``(seed, epoch)`` inside ``WindowDataset``, and the loader
gets its own generator.  A checkpoint holds the engine (weights, optimizer, scheduler)
plus the position in the epoch (:class:`TrainState`); resuming reads and discards the
batches of the epoch already consumed (I/O only, no compute), so a killed and resumed
run reproduces an uninterrupted run's per-step losses exactly (fp32 CPU).

Everything the loop needs is built before it starts (``diver.train.plan``,
``diver.train.engine``, :func:`resume_state`) and handed to :class:`TrainingLoop`;
the only thing that changes while it runs is the :class:`TrainState`.

**What a step costs.**  Each step's row also records its wall time (``step_s``), the
part of it spent waiting for the loader in ``next(batches)`` (``loader_wait_s``: with
workers, the time the prefetched queue was empty) and the model FLOPs of its windows at
their real shapes (``model_flops``, ``diver.model.flops``), so throughput, model FLOPs
utilisation and whether the loader starves the device are read off the run's own logs
rather than re-measured beside it.  On CUDA the loader pins its batches and the copy to
the device is asynchronous; the summary records the device, the precision, whether the
model was compiled and the peak memory.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diver.data import WindowBatch
from diver.data.loader import TrainingLoader
from diver.errors import CheckpointError
from diver.exitcodes import EXIT_PREEMPTED
from diver.model import ModelConfig
from diver.model.flops import batch_training_flops, six_nd, training_flops
from diver.model.load import save_model_file
from diver.study.artifacts import PRETRAIN_METRICS, PretrainMetrics
from diver.study.settings import PretrainSettings
from diver.train import checkpoint as ckpt
from diver.train.distributed import DistEnv, all_reduce_sum, any_rank, barrier
from diver.train.engine import TrainEngine, consolidated_state_dict
from diver.train.outputs import RunLogs, plot_losses, val_by_epoch
from diver.train.plan import RunPlan
from diver.train.preemption import PreemptionFlag
from diver.train.validation import LOSS_PARTS, evaluate, mixed_seed

log = logging.getLogger(__name__)


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


def resume_state(
    engine: Any, info: ckpt.CheckpointInfo, env: DistEnv, loader_state: dict[str, Any]
) -> TrainState:
    """Load checkpoint ``info`` into ``engine``; the training state it was saved at.

    ``loader_state`` (:meth:`RunPlan.loader_state`) must be the checkpoint's: with another
    data layout, skipping the consumed batches would not land where the run stopped.
    """
    client = ckpt.load_checkpoint(engine, info, env)
    saved = client.get("diver")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {info.path} holds no diver training state")
    loader = saved["loader"]
    diff = {k: (loader.get(k), v) for k, v in loader_state.items() if loader.get(k) != v}
    if diff:
        raise CheckpointError(
            f"checkpoint {info.path} was written with another data layout {diff} "
            "(checkpoint value, now); resume with the same settings and world size"
        )
    return TrainState(**saved["state"])


def loader_wait_totals(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """Seconds of the logged steps and of their loader waits, summed over the rows that
    timed both: a resumed run's rows logged by a diver before these columns read nan
    (``CsvLog``), and would make the totals nan."""
    timed = [
        (float(r["step_s"]), float(r["loader_wait_s"]))
        for r in rows
        if math.isfinite(float(r["step_s"])) and math.isfinite(float(r["loader_wait_s"]))
    ]
    return sum(t for t, _ in timed), sum(w for _, w in timed)


class TrainingLoop:
    """Trains one rank from ``state`` to the last step and writes the outputs."""

    def __init__(
        self,
        settings: PretrainSettings,
        env: DistEnv,
        plan: RunPlan,
        engine: TrainEngine,
        model_config: ModelConfig,
        state: TrainState,
        *,
        resumed_from: int | None,
        logs: RunLogs,
        mlflow: Any = None,
    ):
        self.s = settings
        self.c = settings.config
        self.env = env
        self.plan = plan
        self.engine = engine
        self.model_config = model_config
        self.state = state
        self.resumed_from = resumed_from
        self.logs = logs
        self.mlflow = mlflow
        self.out = Path(settings.out)

    def train(self, flag: PreemptionFlag) -> int:
        """Steps to the end (0) or to a preemption signal (checkpoint, EXIT_PREEMPTED)."""
        s, c, env, st, plan = self.s, self.c, self.env, self.state, self.plan
        if self.resumed_from is None and c.validation.val_at_start:
            self._validate()
        # Pinned (page-locked) batches on CUDA: they copy to the GPU asynchronously.
        loader = TrainingLoader(
            plan.dataset,
            plan.micro,
            num_workers=c.batch.num_workers,
            seed=c.runtime.seed,
            device=self.engine.device,
        )
        last_saved = st.step if self.resumed_from is not None else -1
        started = time.perf_counter() - st.elapsed_s
        while st.epoch < s.epochs:
            plan.dataset.set_epoch(st.epoch)
            batches = iter(loader)
            for _ in range(st.batches_in_epoch):  # already consumed before the checkpoint
                next(batches)
            while st.batches_in_epoch < plan.micro_per_epoch:
                k = min(plan.accumulation, plan.micro_per_epoch - st.batches_in_epoch)
                t0 = time.perf_counter()
                metrics = self._step(batches, k)
                step_s = time.perf_counter() - t0
                st.batches_in_epoch += k
                st.step += 1
                epoch_done = st.batches_in_epoch >= plan.micro_per_epoch
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
                    "tokens_per_s": metrics["step_tokens"] / max(step_s, 1e-9),
                    "step_s": step_s,
                    "loader_wait_s": metrics["loader_wait_s"],
                    "model_flops": metrics["model_flops"],
                }
                st.last_train = {k: float(v) for k, v in row.items()}
                if env.is_main:
                    self._log_step(row)
                if epoch_done:
                    st.epoch += 1
                    st.batches_in_epoch = 0
                val_every = c.validation.val_every
                if epoch_done or (val_every and st.step % val_every == 0):
                    self._validate(epoch=st.epoch - 1 if epoch_done else st.epoch)
                stop = any_rank(flag.raised, self.engine.device)
                every = c.checkpointing.checkpoint_every
                due = every and st.step % every == 0
                final = st.step == plan.total_steps
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

    def _log_step(self, row: dict[str, Any]) -> None:
        st = self.state
        self.logs.append_train(row)
        if self.mlflow is not None:
            self.mlflow.log_metrics(
                {f"train_{k}": float(v) for k, v in row.items() if k != "step"}, step=st.step
            )
        if st.step % self.c.runtime.log_every == 0 or st.step == self.plan.total_steps:
            log.info(
                "step %d/%d epoch %d loss %.4f lr %.3g grad %.3g %.0f tok/s",
                st.step,
                self.plan.total_steps,
                st.epoch,
                row["loss"],
                row["lr"],
                row["grad_norm"],
                row["tokens_per_s"],
            )

    def _step(self, batches: Iterator[WindowBatch], k: int) -> dict[str, float]:
        """One optimizer step over ``k`` micro-batches (``k < accumulation`` only at the
        end of an epoch; the gradient is then the mean over those ``k``).

        Tokens and model FLOPs are counted on the host batch, before the copy: on CUDA
        that copy is asynchronous from pinned memory, and reading a device tensor back
        would stall the step on it.  This rank's loader wait is its own (not summed over
        ranks: each rank waits on its own workers while the others may not)."""
        engine, env, st = self.engine.engine, self.env, self.state
        device, dtype = self.engine.device, self.engine.dtype
        non_blocking = device.type == "cuda"
        seed = self.c.runtime.seed
        torch.manual_seed(mixed_seed(seed, st.step, env.rank))  # dropout
        lr = float(engine.optimizer.param_groups[0]["lr"])
        sums = np.zeros(1 + len(LOSS_PARTS))
        tokens = flops = loader_wait = 0.0
        for micro in range(k):
            waiting = time.perf_counter()
            host = next(batches)
            loader_wait += time.perf_counter() - waiting
            tokens += float(host.token_mask.sum())
            flops += batch_training_flops(
                self.model_config,
                host.channel_mask.sum(dim=1).tolist(),
                host.patch_mask.sum(dim=1).tolist(),
            )
            batch = host.to(device, non_blocking=non_blocking)
            generator = torch.Generator(device=device).manual_seed(
                mixed_seed(seed, st.step, env.rank, micro, 1)
            )
            engine.set_gradient_accumulation_boundary(micro == k - 1)
            out = engine(batch.encoder_inputs(dtype), generator=generator)
            engine.backward(out.loss / k, scale_wrt_gas=False)
            parts = [float(out.losses[p].detach()) if p in out.losses else 0.0 for p in LOSS_PARTS]
            sums += np.array([float(out.loss.detach()), *parts]) / k
        manual_norm = None
        if self.c.runtime.zero_stage == 0:
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
            [*sums.tolist(), tokens, flops], device=device if env.world_size > 1 else None
        )
        n = env.world_size
        return {
            "loss": totals[0] / n,
            **{f"loss_{p}": totals[1 + i] / n for i, p in enumerate(LOSS_PARTS)},
            "lr": lr,
            "grad_norm": float("nan") if grad_norm is None else grad_norm,
            "step_tokens": totals[-2],
            "model_flops": totals[-1],
            "loader_wait_s": loader_wait,
        }

    def _validate(self, epoch: int | None = None) -> None:
        st = self.state
        result = evaluate(
            self.engine.engine,
            self.plan.splits.val,
            self.plan.patch_samples,
            batch_size=self.c.validation.val_batch,
            mask_seed=self.c.validation.split_seed,
            device=self.engine.device,
            rank=self.env.rank,
            world_size=self.env.world_size,
            dtype=self.engine.dtype,
            lockstep=self.c.runtime.zero_stage == 3,  # partitioned parameters
        )
        st.last_val = {**result, "step": st.step}
        if self.env.is_main:
            row = {
                "epoch": st.epoch if epoch is None else epoch,
                "step": st.step,
                "tokens": st.tokens_seen,
                **result,
            }
            self.logs.append_val(row)
            if self.mlflow is not None:
                self.mlflow.log_metrics(result, step=st.step)
            log.info("step %d validation loss %.5f", st.step, result["val_loss"])

    def _save(self) -> None:
        if self.env.is_main:
            self.logs.sync()
        client_state = {
            "diver": {
                "state": asdict(self.state),
                "loader": {
                    **self.plan.loader_state(self.s, self.env.world_size),
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
            self.engine.engine,
            self.out / ckpt.CHECKPOINTS_DIR,
            self.state.step,
            client_state,
            self.env,
            keep=self.c.checkpointing.keep_checkpoints,
        )
        if self.env.is_main:
            log.info("checkpoint %s", folder)

    def _runtime_summary(self) -> dict[str, Any]:
        """Where and how this run computed (rank 0's view), for ``metrics.json``.

        The device and precision are the engine's, i.e. what actually ran, so a check
        can tell a GPU run from one that fell back to the CPU; the loader wait fraction
        is over every logged step that timed it (``loader_wait_totals``).
        """
        device = self.engine.device
        runtime = self.c.runtime
        step_s, waited = loader_wait_totals(self.logs.train_rows)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, B on macOS
        summary: dict[str, Any] = {
            "device": str(device),
            "precision": "bf16" if self.engine.dtype == torch.bfloat16 else "fp32",
            "compile": runtime.compile_backend if runtime.compile else "off",
            "num_workers": self.c.batch.num_workers,
            "train_step_s": step_s,
            "loader_wait_s": waited,
            "loader_wait_fraction": waited / step_s if step_s > 0 else None,
            "peak_rss_bytes": rss if sys.platform == "darwin" else rss * 1024,
        }
        if device.type == "cuda":
            summary["device_name"] = torch.cuda.get_device_name(device)
            summary["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        return summary

    def finish(self) -> None:
        """Validate at the last step if not done, write ``model.pt``, the plot and
        ``metrics.json`` (last: it marks the run complete); on every rank."""
        st, s, c, env, plan = self.state, self.s, self.c, self.env, self.plan
        if st.last_val is None or st.last_val.get("step") != st.step:
            self._validate()
        assert st.last_val is not None
        state_dict = consolidated_state_dict(self.engine.engine, c.runtime.zero_stage, env)
        if env.is_main:
            assert state_dict is not None
            save_model_file(self.out / "model.pt", self.model_config, state_dict, step=st.step)
            metrics = {
                **{k: v for k, v in st.last_val.items() if k != "step"},
                "train_loss": (st.last_train or {}).get("loss"),
                "n_params": self.engine.n_params,
                "tokens": plan.token_budget,
                "unique_tokens": plan.unique_tokens,
                "tokens_seen": st.tokens_seen,
                "epochs": s.epochs,
                "steps": st.step,
                "flops": training_flops(self.model_config, plan.token_budget),
                "flops_6nd": six_nd(self.model_config, plan.token_budget),
                "data_fraction": s.data_fraction,
                "family": s.family,
                "subjects": s.subjects,
                "size": s.size,
                "patch": s.patch,
                "val_by_epoch": val_by_epoch(
                    self.logs.val_rows, plan.steps_per_epoch, plan.unique_tokens
                ),
                "d_model": self.model_config.d_model,
                "train_windows": len(plan.splits.train),
                "val_windows": len(plan.splits.val),
                "global_batch": c.batch.global_batch,
                "micro_batch": plan.micro,
                "world_size": env.world_size,
                "zero_stage": c.runtime.zero_stage,
                "lr": c.optimiser.lr,
                "weight_decay": c.optimiser.weight_decay,
                "seed": c.runtime.seed,
                "elapsed_s": st.elapsed_s,
                "resumed_from_step": self.resumed_from,
                **self._runtime_summary(),
            }
            plot_losses(
                self.logs.train_rows, self.logs.val_rows, self.out / "loss_curve.png", s.cell
            )
            if self.mlflow is not None:
                self.mlflow.set_tags(
                    {f"diver.{k}": str(metrics[k]) for k in ("device", "precision", "compile")}
                )
                final = {
                    f"final_{k}": float(v)
                    for k, v in metrics.items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and v is not None
                }
                self.mlflow.log_metrics(final, step=st.step)
                for name in ("run_config.json", "ds_config.json", "loss_curve.png"):
                    self.mlflow.log_artifact(self.out / name)
            path = self.out / PRETRAIN_METRICS
            PretrainMetrics.from_dict(metrics, source=str(path)).write(path)  # checked on write
            if self.mlflow is not None:
                self.mlflow.log_artifact(path)
            print(
                f"pretrain {s.cell}: {st.step} steps, {self.engine.n_params:,} params, val_loss "
                f"{st.last_val['val_loss']:.5f} -> {self.out}",
                flush=True,
            )
        barrier()
