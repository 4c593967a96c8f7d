"""Issue 15's GPU check: does DIVER-1 pretraining and fine-tuning work, and how fast, on a GPU?

Usage (through the shell wrapper, which picks the project's Python and thread count)::

    benchmarks/gpu_check.sh                  # on a GPU node: about 5 minutes on one GPU
    benchmarks/gpu_check.sh --dry-run        # the same path on a CPU: debug size, fp32, ~2 min
    benchmarks/gpu_check.sh --peak-tflops 700 --steps 300 --work /scratch/gpu_check --keep

What it does, each step a real ``diver`` command in its own process (as the DAG runs them):

1. builds a synthetic corpus (``diver synth`` + ``diver corpus`` with the embedded
   study's dataset settings) and the synthetic fine-tuning task (``diver task synth`` +
   ``diver task build``);
2. pretrains ``tiny`` (``diver pretrain``, DeepSpeed ZeRO-2, the real loader with
   ``--workers`` DataLoader workers) for about ``--steps`` optimizer steps three times:
   bf16, bf16 with ``torch.compile`` (``pretrain.compile``), and fp32 - the same
   batches, crops, masks and dropout in each (all seeded by step);
3. fine-tunes the bf16 model on the synthetic task on the GPU (``diver finetune
   --device cuda``, full fine-tuning, no baselines);
4. prints one report: tokens/s per GPU, MFU, the loader wait fraction and peak GPU
   memory of the bf16 run; tokens/s with compile off and on; whether the bf16 loss
   tracks the fp32 loss within the tolerance; the fine-tuning metric; the wall time.

Every number comes from the runs' own outputs: ``train_log.csv`` (per step: ``step_s``,
``loader_wait_s``, ``model_flops`` - the analytic account of ``diver.model.flops`` at
each window's real shape - and the tokens) and ``metrics.json`` (the device and
precision the engine actually used, the peak memory).  Throughput is measured over the
steps after ``--warmup`` (compilation, allocator and cuDNN warm-up happen there); MFU
is model FLOP/s over the GPU's dense bf16 peak, looked up by device name (A100 312,
H100 SXM 989, H100 PCIe 756, L40S 362, A10 125 TFLOP/s) or given by ``--peak-tflops``.

**Never silently on the CPU.**  Without CUDA (and without ``--dry-run``) it exits with
status 2 and says so before doing anything.  After every step it checks the device the
child actually ran on (``metrics.json``: the DeepSpeed engine's device and compute
dtype; fine-tuning: where the encoder's weights were) and fails if any step ran on the
CPU or in the wrong precision.  The bf16 runs ask for ``precision: bf16`` explicitly,
which ``resolve_precision`` refuses without CUDA, so a child that lost the GPU fails
at once instead of training on the CPU.  A V100 (no bf16 tensor cores) is refused.

**Dry run** (``--dry-run``): the same path on the CPU with the ``debug`` size and a
handful of steps, fp32 in place of bf16 (``resolve_precision`` refuses bf16 on a CPU:
its message is printed), ``torch.compile`` with the ``eager`` backend (Dynamo's graph
capture through DeepSpeed's ``engine.compile``; inductor's code generation is skipped
because it takes about 5 minutes for the debug model on 2 cores), and the same report.
MFU needs ``--peak-tflops`` there (CPUs have no entry in the table).

Exit status: 0 every check passed, 1 a check failed (the report says which), 2 no GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TASK_FILE = REPO / "config" / "tasks" / "synth_eeg_oscillation.yaml"
STUDY_CONFIG = REPO / "config" / "config.yaml"
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
EXIT_FAILED, EXIT_NO_GPU = 1, 2

#: Dense bf16 tensor-core peaks in TFLOP/s (NVIDIA datasheets; "dense" = without the 2:4
#: sparsity the headline figures assume), matched in order against
#: ``torch.cuda.get_device_name()``.  ``\bA10\b`` does not match "A100" or "A10G".
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b.*\b(SXM|HBM3)", 989.0),
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.0),
    (r"\bA10\b", 125.0),
)
NO_BF16 = (r"\bV100\b", r"\bP100\b", r"\bT4\b")

#: The bf16 run must track the fp32 run: relative difference of the mean of the last
#: LOSS_WINDOW training losses below LOSS_TOLERANCE.  Why 5 %: bf16 rounds to 8
#: significant bits (relative error 2^-8 = 0.4 % per value), while DeepSpeed keeps fp32
#: master weights and optimizer state, so rounding perturbs the trajectory without
#: accumulating in the weights.  Both runs see the same batches, crops, masks and
#: dropout, so their curves differ only by that drift; mixed-precision training
#: (Micikevicius et al. 2018; Kalamkar et al. 2019 for bf16) tracks fp32 to about 1 %
#: over runs this short.  The mean over 20 steps removes the per-batch noise (shapes and
#: masks vary from step to step).  5 % is a few times that drift, and far below what a
#: broken bf16 path gives: NaN, divergence, or a loss stuck near its starting value
#: (tens of percent to orders of magnitude).  The compiled run is held to the same
#: tolerance against the eager one (inductor fuses the same operations: rounding only).
LOSS_TOLERANCE = 0.05
LOSS_WINDOW = 20
#: Fine-tuning must beat chance (0.5 balanced accuracy on this two-class task) clearly:
#: the embedded default's debug models reach 0.9 on it, a broken model stays at 0.5.
MIN_BALANCED_ACCURACY = 0.6


class CheckFailed(Exception):
    """A check failed; the message says which and why."""


@dataclass(frozen=True)
class Mode:
    """What a run of the check trains: the GPU run or the CPU dry run."""

    dry: bool
    size: str
    precision: str  # of the main runs: bf16 on the GPU, fp32 in the dry run
    device: str  # the device type every step must have run on
    compile_backend: str


@dataclass
class RunResult:
    """One pretraining run: its log rows and summary."""

    name: str
    out: Path
    rows: list[dict[str, float]]
    metrics: dict[str, Any]
    wall_s: float

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.rows]


# ------------------------------------------------------------------ pure helpers


def peak_tflops(device_name: str) -> float:
    """The dense bf16 peak of a GPU, by its ``torch.cuda.get_device_name()``.

    Raises CheckFailed for a GPU without bf16 tensor cores (a bf16 check means nothing
    there) and for one not in the table (MFU against a guessed peak would mislead).
    """
    for pattern in NO_BF16:
        if re.search(pattern, device_name):
            raise CheckFailed(
                f"{device_name} has no bf16 tensor cores: DIVER-1 pretrains in bf16 on GPUs "
                "(use an A100, H100, L40S or A10 class GPU)"
            )
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    raise CheckFailed(
        f"no bf16 peak known for {device_name!r}: pass --peak-tflops (the GPU's dense bf16 "
        "TFLOP/s from its datasheet)"
    )


def throughput(rows: list[dict[str, float]], warmup: int) -> dict[str, float]:
    """Tokens/s, model FLOP/s and the loader wait fraction over the steps after ``warmup``.

    Sums, not means of per-step rates: a slow step weighs as much as the time it took.
    """
    measured = rows[warmup:]
    if not measured:
        raise CheckFailed(f"no steps after the {warmup} warm-up steps: raise --steps")
    seconds = sum(r["step_s"] for r in measured)
    tokens = sum(r["step_tokens"] for r in measured)
    return {
        "steps": len(measured),
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "flop_per_s": sum(r["model_flops"] for r in measured) / seconds,
        "loader_wait_s": sum(r["loader_wait_s"] for r in measured),
        "loader_wait_fraction": sum(r["loader_wait_s"] for r in measured) / seconds,
        "warmup_s": sum(r["step_s"] for r in rows[:warmup]),
    }


def loss_difference(run: list[float], reference: list[float], window: int) -> dict[str, float]:
    """Relative difference of the mean of the last ``window`` losses of two runs of the
    same steps (NaN when either holds a non-finite loss)."""
    if len(run) != len(reference):
        raise CheckFailed(f"runs of different lengths: {len(run)} and {len(reference)} steps")
    window = min(window, len(run))
    mean_run = sum(run[-window:]) / window
    mean_ref = sum(reference[-window:]) / window
    diff = abs(mean_run - mean_ref) / abs(mean_ref) if mean_ref else math.inf
    return {"window": window, "run": mean_run, "reference": mean_ref, "rel_diff": diff}


def recompile_limit_hits(log: Path) -> int:
    """How often the run's log says Dynamo gave up recompiling a frame (it then runs that
    frame eagerly, silently but for this warning: "compile on" would be partly off)."""
    return log.read_text(errors="replace").count("torch._dynamo hit config.")


def read_train_log(path: Path) -> list[dict[str, float]]:
    """``train_log.csv`` as floats, with each step's own tokens (the log's are cumulative)."""
    with path.open(newline="") as fh:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    previous = 0.0
    for row in rows:
        row["step_tokens"] = row["tokens"] - previous
        previous = row["tokens"]
    return rows


# ------------------------------------------------------------------ the children


def child_env() -> dict[str, str]:
    """A single-process world (no launcher variables), this repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run(cmd: list[str], log: Path, what: str) -> float:
    """Run ``cmd`` with its output in ``log``; its wall time.  Fails with the log's tail."""
    started = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env())
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise CheckFailed(f"{what} failed (exit {proc.returncode}); end of {log}:\n{tail}")
    return time.perf_counter() - started


def diver(*args: str) -> list[str]:
    return [sys.executable, "-m", "diver", *args]


def probe() -> dict[str, Any]:
    """What torch sees in a fresh process (the children's view, not this one's: the
    parent never initialises CUDA, so it holds no GPU memory while the runs measure)."""
    import torch

    from diver.config import ConfigError, RuntimeConfig
    from diver.train.engine import resolve_precision

    info: dict[str, Any] = {
        "cuda": torch.cuda.is_available(),
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
    }
    if info["cuda"]:
        info["device_name"] = torch.cuda.get_device_name(0)
        info["device_count"] = torch.cuda.device_count()
        # Native bf16 (compute capability >= 8), not the emulation a V100 would report.
        info["bf16"] = torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        resolve_precision(RuntimeConfig(precision="bf16"))
        info["bf16_refused"] = None
    except ConfigError as exc:
        info["bf16_refused"] = str(exc)
    return info


def run_probe(work: Path) -> dict[str, Any]:
    out = work / "probe.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_probe", str(out)]
    run(cmd, work / "probe.log", "probing torch and CUDA")
    return json.loads(out.read_text())


# ------------------------------------------------------------------ the steps


def build_data(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The pretraining corpus and the fine-tuning task set; their paths."""
    synth, corpus, task_root = work / "synth", work / "corpus", work / "task"
    jobs = str(max(1, min(8, os.cpu_count() or 1)))
    wall = run(
        diver("synth", "--out", str(synth), "--hours", str(args.hours), "--seed", "0"),
        work / "synth.log",
        "diver synth",
    )
    wall += run(
        diver(
            "corpus", "--config", str(STUDY_CONFIG),
            "--input", f"synth_eeg={synth / 'eeg'}", "--input", f"synth_ieeg={synth / 'ieeg'}",
            "--out", str(corpus), "--jobs", jobs, "--quiet",
        ),
        work / "corpus.log",
        "diver corpus",
    )  # fmt: skip
    taskset = task_root / "taskset.parquet"
    wall += run(
        diver("task", "synth", "--out", str(task_root / "synth_task"), "--seed", "0"),
        work / "task_synth.log",
        "diver task synth",
    )
    wall += run(
        diver(
            "task", "build", "--task", str(TASK_FILE), "--results-dir", str(task_root),
            "--out", str(taskset),
        ),
        work / "task_build.log",
        "diver task build",
    )  # fmt: skip
    print(f"[data] {args.hours:g} h synthetic corpus and the synthetic task ({wall:.0f} s)")
    return corpus, taskset


def plan_epochs(corpus: Path, args: argparse.Namespace) -> tuple[int, int]:
    """(epochs, steps per epoch) giving at least ``--steps`` optimizer steps.

    The same split and loader arithmetic as ``diver.train.plan`` (world size 1, one
    micro-batch per step): imported here without touching CUDA.
    """
    from diver.data import make_splits, micro_batches_per_epoch

    train = make_splits(corpus, 1.0, pretrain_config(args).validation).train
    per_epoch = micro_batches_per_epoch(len(train), 1, args.workers, args.batch)
    if per_epoch < 1:
        raise CheckFailed(f"corpus {corpus} has too few training windows ({len(train)})")
    return math.ceil(args.steps / per_epoch), per_epoch


def pretrain_config(args: argparse.Namespace) -> Any:
    from diver.config import PretrainConfig

    return PretrainConfig.from_flat(pretrain_section(args, precision="fp32", compile_on=False))


def pretrain_section(args: argparse.Namespace, *, precision: str, compile_on: bool) -> dict:
    """The study config's ``pretrain`` section of one run."""
    return {
        "precision": precision,
        "compile": compile_on,
        "compile_backend": args.mode.compile_backend,
        "global_batch": args.batch,
        "micro_batch": args.batch,
        "num_workers": args.workers,
        "checkpoint_every": 0,  # no checkpoint I/O in the timings
        "val_at_start": False,
        "val_max_windows": args.batch,  # one validation batch at each epoch end
        "val_batch": args.batch,
        "log_every": 50,
    }


def pretrain(
    args: argparse.Namespace, corpus: Path, work: Path, name: str, precision: str, compile_on: bool
) -> RunResult:
    """One ``diver pretrain`` run; its rows and summary, checked for device and precision."""
    config = work / f"{name}.yaml"
    section = pretrain_section(args, precision=precision, compile_on=compile_on)
    config.write_text(json.dumps({"pretrain": section}, indent=2))  # JSON is YAML
    out = work / name
    cmd = diver(
        "pretrain", "--config", str(config), "--corpus", str(corpus), "--size", args.mode.size,
        "--patch", "1s", "--epochs", str(args.epochs), "--out", str(out),
    )  # fmt: skip
    wall = run(cmd, work / f"{name}.log", f"pretraining ({name})")
    metrics = json.loads((out / "metrics.json").read_text())
    result = RunResult(name, out, read_train_log(out / "train_log.csv"), metrics, wall)
    check_device(name, metrics.get("device"), args.mode.device)
    if metrics.get("precision") != precision:
        raise CheckFailed(
            f"{name}: asked for {precision}, the engine computed in {metrics.get('precision')}"
        )
    wanted_compile = args.mode.compile_backend if compile_on else "off"
    if metrics.get("compile") != wanted_compile:
        raise CheckFailed(f"{name}: compile {metrics.get('compile')}, asked for {wanted_compile}")
    if not all(math.isfinite(x) for x in result.losses):
        raise CheckFailed(f"{name}: non-finite training loss (see {out / 'train_log.csv'})")
    print(
        f"[{name}] {len(result.rows)} steps of {args.mode.size} in {metrics['precision']} on "
        f"{metrics['device']}, compile {metrics['compile']}: final loss {result.losses[-1]:.4f} "
        f"({wall:.0f} s)",
        flush=True,
    )
    return result


def check_device(step: str, recorded: Any, expected: str) -> None:
    """Fail unless ``step`` recorded a device of type ``expected`` (``cuda`` or ``cpu``)."""
    kind = str(recorded).split(":")[0] if recorded else None
    if kind != expected:
        raise CheckFailed(
            f"{step} ran on {recorded!r}, not on {expected}: "
            + (
                "it fell back to the CPU"
                if expected == "cuda"
                else "the dry run must stay on the CPU"
            )
        )


def finetune(
    args: argparse.Namespace, taskset: Path, model: Path, work: Path
) -> tuple[dict[str, Any], float]:
    """Full fine-tuning of ``model`` on the synthetic task on the check's device."""
    out = work / "finetune"
    device = "cpu" if args.mode.dry else "cuda"
    cmd = diver(
        "finetune", "--task", str(TASK_FILE), "--taskset", str(taskset),
        "--results-dir", str(taskset.parent), "--pretrained", str(model), "--mode", "full",
        "--out", str(out), "--epochs", str(args.finetune_epochs), "--seeds", "0",
        "--device", device, "--baselines",
    )  # fmt: skip
    wall = run(cmd, work / "finetune.log", "fine-tuning")
    metrics = json.loads((out / "metrics.json").read_text())
    check_device("fine-tuning", metrics.get("device"), args.mode.device)
    print(f"[finetune] {metrics['task']} on {metrics['device']} ({wall:.0f} s)", flush=True)
    return metrics, wall


# ------------------------------------------------------------------ the report


def report(
    args: argparse.Namespace,
    info: dict[str, Any],
    runs: dict[str, RunResult],
    ft: dict[str, Any],
    started: float,
) -> list[str]:
    """Print the report; the names of the checks that failed."""
    failed: list[str] = []
    mode = args.mode
    main, compiled, reference = runs["main"], runs["compiled"], runs["reference"]
    eager = throughput(main.rows, args.warmup)
    fast = throughput(compiled.rows, args.warmup)
    print("\n== gpu_check report ==")
    where = main.metrics.get("device_name") or "CPU"
    print(
        f"device: {where} ({main.metrics['device']}), torch {info['torch']}, "
        f"CUDA {info['cuda_build'] or 'none'}{' - DRY RUN on the CPU' if mode.dry else ''}"
    )
    if mode.dry:
        print(
            f"precision: fp32 in place of bf16 (refused on the CPU by resolve_precision: "
            f"{info['bf16_refused']})"
        )
    else:
        print("precision: bf16 (reference run fp32)")
    print(
        f"run: {mode.size}, global batch {args.batch}, loader workers {args.workers}, "
        f"{len(main.rows)} steps ({args.epochs} epoch(s)); rates over steps "
        f"{args.warmup + 1}-{len(main.rows)}"
    )
    print(
        f"tokens/s per GPU (compile off): {eager['tokens_per_s']:,.0f}"
        + (" (dry run: one CPU process)" if mode.dry else "")
    )
    peak = args.peak_tflops
    achieved = eager["flop_per_s"] / 1e12
    if peak:
        print(
            f"MFU (compile off): {100 * achieved / peak:.2f} % of {peak:g} TFLOP/s "
            f"({args.peak_source}; model FLOPs {achieved:.3f} TFLOP/s)"
        )
    else:
        print(
            f"MFU (compile off): n/a on the CPU (no peak in the table; --peak-tflops sets "
            f"one); model FLOPs {achieved:.4f} TFLOP/s"
        )
    print(
        f"loader wait fraction: {100 * eager['loader_wait_fraction']:.1f} % "
        f"({eager['loader_wait_s']:.2f} s of {eager['seconds']:.1f} s in next(batches))"
    )
    gpu_bytes = main.metrics.get("peak_gpu_memory_bytes")
    rss = main.metrics.get("peak_rss_bytes", 0) / 2**20
    if gpu_bytes is not None:
        print(
            f"peak GPU memory: {gpu_bytes / 2**30:.2f} GiB (torch.cuda.max_memory_allocated); "
            f"peak host RSS {rss:,.0f} MiB"
        )
    else:
        print(f"peak GPU memory: n/a (dry run on the CPU); peak host RSS {rss:,.0f} MiB")

    tracked = loss_difference(main.losses, reference.losses, LOSS_WINDOW)
    ok = tracked["rel_diff"] < LOSS_TOLERANCE
    failed += [] if ok else ["loss tolerance"]
    label = "fp32 (dry run) vs fp32" if mode.dry else "bf16 vs fp32"
    print(
        f"loss tolerance: {label}, mean of the last {tracked['window']} losses "
        f"{tracked['run']:.5f} vs {tracked['reference']:.5f}: relative difference "
        f"{100 * tracked['rel_diff']:.2f} % (< {100 * LOSS_TOLERANCE:g} %): "
        f"{'PASS' if ok else 'FAIL'}"
    )
    fp32 = throughput(reference.rows, args.warmup)
    print(
        f"fp32 reference: tokens/s {fp32['tokens_per_s']:,.0f} "
        f"({mode.precision} x{eager['tokens_per_s'] / fp32['tokens_per_s']:.2f})"
    )
    same = loss_difference(compiled.losses, main.losses, LOSS_WINDOW)
    ok = same["rel_diff"] < LOSS_TOLERANCE
    failed += [] if ok else ["compiled loss"]
    mfu = f", MFU {100 * fast['flop_per_s'] / 1e12 / peak:.2f} %" if peak else ""
    print(
        f"compile ({mode.compile_backend}): tokens/s off {eager['tokens_per_s']:,.0f}, on "
        f"{fast['tokens_per_s']:,.0f} (x{fast['tokens_per_s'] / eager['tokens_per_s']:.2f}"
        f"{mfu}); warm-up steps {fast['warmup_s']:.1f} s (off {eager['warmup_s']:.1f} s); "
        f"loss vs off {100 * same['rel_diff']:.2f} %: {'PASS' if ok else 'FAIL'}"
    )
    limits = recompile_limit_hits(compiled.out.parent / f"{compiled.name}.log")
    if limits:
        print(
            f"compile warning: torch._dynamo hit its recompile limit {limits} times: those "
            "frames ran uncompiled after it (see the compiled run's log)"
        )
    if mode.dry:
        print(
            "compile note: the dry run compiles with the eager backend (graph capture only, "
            "so its rate is no speed measure); inductor's kernels take ~5 min to build for "
            "the debug model on 2 CPU cores"
        )

    summary = ft["models"]["diver"]["summary"]
    accuracy = summary["balanced_accuracy"]["mean"]
    auroc = (summary.get("auroc") or {}).get("mean")
    ok = accuracy is not None and accuracy > MIN_BALANCED_ACCURACY
    failed += [] if ok else ["fine-tuning"]
    print(
        f"finetune: {ft['task']} (full, {len(ft['folds'])} folds) on {ft['device']}: "
        f"balanced accuracy {accuracy:.3f}"
        + (f", AUROC {auroc:.3f}" if auroc is not None else "")
        + f" (> {MIN_BALANCED_ACCURACY:g}): {'PASS' if ok else 'FAIL'}"
    )
    total = time.perf_counter() - started
    target = 120 if mode.dry else 300
    print(f"wall time: {total:.0f} s (target < {target} s)")
    return failed


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Issue 15's GPU check (see the module docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dry-run", action="store_true", help="rehearse on the CPU (debug, fp32)")
    p.add_argument("--steps", type=int, help="optimizer steps per run (GPU 200, dry 6)")
    p.add_argument("--warmup", type=int, help="steps left out of the rates (GPU 10, dry 2)")
    p.add_argument("--batch", type=int, help="global batch, windows (GPU 32, dry 8)")
    p.add_argument("--workers", type=int, help="DataLoader workers (GPU 4, dry 1)")
    p.add_argument("--hours", type=float, help="synthetic corpus hours (GPU 4, dry 0.3)")
    p.add_argument("--finetune-epochs", type=int, help="fine-tuning epochs (GPU 5, dry 2)")
    p.add_argument(
        "--peak-tflops",
        type=float,
        help="the GPU's dense bf16 peak in TFLOP/s (default: from the device name)",
    )
    p.add_argument("--work", type=Path, help="working folder (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the working folder")
    p.add_argument("--_probe", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dry = args.dry_run
    defaults = {
        "steps": 6 if dry else 200,
        "warmup": 2 if dry else 10,
        "batch": 8 if dry else 32,
        "workers": 1 if dry else 4,
        "hours": 0.3 if dry else 4.0,
        "finetune_epochs": 2 if dry else 5,
    }
    args.peak_source = "--peak-tflops"
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.mode = Mode(
        dry=dry,
        size="debug" if dry else "tiny",
        precision="fp32" if dry else "bf16",
        device="cpu" if dry else "cuda",
        compile_backend="eager" if dry else "inductor",
    )
    return args


def no_gpu_message(info: dict[str, Any]) -> str:
    build = (
        f"this torch {info['torch']} is a CPU-only build (torch.version.cuda is None)"
        if not info["cuda_build"]
        else f"torch {info['torch']} (CUDA {info['cuda_build']}) sees no GPU"
    )
    return (
        f"gpu_check: FAIL: no CUDA GPU is visible: torch.cuda.is_available() is False; {build}. "
        "This check measures a GPU and never falls back to the CPU: run it on a GPU node "
        "(check nvidia-smi and CUDA_VISIBLE_DEVICES), or rehearse it on the CPU with --dry-run."
    )


def check(args: argparse.Namespace, work: Path) -> int:
    started = time.perf_counter()
    info = run_probe(work)
    mode = args.mode
    if not mode.dry:
        if not info["cuda"]:
            print(no_gpu_message(info), file=sys.stderr, flush=True)
            return EXIT_NO_GPU
        table_peak = peak_tflops(info["device_name"]) if args.peak_tflops is None else None
        if not info["bf16"]:  # also with --peak-tflops: a bf16 check needs bf16
            raise CheckFailed(
                f"{info['device_name']} has no native bf16 (compute capability below 8.0)"
            )
        args.peak_source = "--peak-tflops" if table_peak is None else "dense bf16 peak"
        args.peak_tflops = args.peak_tflops or table_peak
        print(
            f"gpu_check on {info['device_name']} ({info['device_count']} visible, using cuda:0), "
            f"peak {args.peak_tflops:g} TFLOP/s bf16; work folder {work}",
            flush=True,
        )
    else:
        print(
            f"gpu_check --dry-run on the CPU (GPUs hidden from its steps); work folder {work}\n"
            f"bf16 is refused on the CPU by resolve_precision ({info['bf16_refused']}): "
            "the dry run trains fp32 in its place",
            flush=True,
        )
    corpus, taskset = build_data(args, work)
    args.epochs, per_epoch = plan_epochs(corpus, args)
    print(
        f"[plan] {args.epochs} epoch(s) of {per_epoch} steps of at most {args.batch} windows",
        flush=True,
    )
    runs = {
        "main": pretrain(args, corpus, work, "main", mode.precision, compile_on=False),
        "compiled": pretrain(args, corpus, work, "compiled", mode.precision, compile_on=True),
        "reference": pretrain(args, corpus, work, "reference", "fp32", compile_on=False),
    }
    ft, _ = finetune(args, taskset, runs["main"].out / "model.pt", work)
    failed = report(args, info, runs, ft, started)
    if failed:
        print(f"RESULT: FAIL ({', '.join(failed)})", flush=True)
        return EXIT_FAILED
    print("RESULT: PASS", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._probe is not None:
        args._probe.write_text(json.dumps(probe()))
        return 0
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        # A finished run in it would make `diver pretrain` a no-op: stale figures.
        print(f"gpu_check: FAIL: --work {args.work} is not empty", file=sys.stderr)
        return EXIT_FAILED
    if args.mode.dry:
        # Every step of a dry run sees no GPU, so on a GPU node it rehearses the CPU path
        # rather than half of each (the device checks would fail on a GPU step).
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    status = EXIT_FAILED
    try:
        status = check(args, work)
    except CheckFailed as exc:
        print(f"gpu_check: FAIL: {exc}", file=sys.stderr, flush=True)
    temporary = args.work is None and not args.keep
    if temporary and status in (0, EXIT_NO_GPU):
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"gpu_check: outputs and logs in {work}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
