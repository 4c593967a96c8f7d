"""Pretraining benchmark: `diver pretrain` (DeepSpeed ZeRO) against a plain PyTorch loop.

Both sides train the same muP model (``build_model`` of ``--size`` / ``--patch``) with
the same optimizer (MuAdamW, the same lr, weight decay and betas, the same per-group
cosine), on the same batches (the same corpus split, ``WindowDataset`` with
spatio-temporal resampling, ``collate_windows``, loader seed), with the same masks
and dropout seeds, the same loss and the same gradient clipping:

- **deepspeed**: the product itself - :func:`diver.train.pretrain.pretrain` with a
  ``PretrainSettings`` whose data fraction and epoch count give the wanted number of
  steps (world size 1 without a launcher, ZeRO ``--zero-stage``, fp32 on CPU, bf16
  with CUDA).  Its step times are read back from the run's ``train_log.csv``
  (``tokens / tokens_per_s`` per step, timed inside the product's loop around batch
  fetch, forward, backward and ``engine.step``), so the figure is the product's, not
  a re-implementation's.  Validation, checkpoints and the final ``model.pt`` are
  outside those timings.
- **plain**: a hand-written loop over the same loader - fetch, forward, backward,
  ``clip_grad_norm_``, ``optimizer.step``, ``scheduler.step``, ``zero_grad`` - timed
  the same way.  fp32 on CPU; with CUDA, ``torch.autocast`` bf16 over fp32 weights
  (plain PyTorch's mixed precision; DeepSpeed's bf16 mode keeps fp32 master weights).

Each side runs in a fresh child process (``--_side``, this script re-invoked) so the
two never share a heap: peak memory is the child's own ``ru_maxrss`` (and, with CUDA,
``torch.cuda.max_memory_allocated``).  The parent imports neither torch nor diver -
a child's ``ru_maxrss`` starts from its parent's resident size - so the figures are
each side's own.  Sides alternate (D P, P D, D P, ... over ``--repeats``) so a drift
in the load of a shared machine hits both alike.  Per run, throughput is real tokens
over the measured steps (all steps after ``--warmup``) divided by their summed step
times; the medians over repeats give the ratio deepspeed / plain and the overhead
(extra time per token), checked against issue 4's target (DeepSpeed at most 10 %
slower on CPU at ``tiny``, batch 8).  The step-1 losses of the two sides are printed
as a check that both did the same work (fp32 on CPU they agree to the last digit).
"process s" is each child's whole wall time: start-up, DeepSpeed's initialisation,
the untimed epoch-end validation and output files on the DeepSpeed side.

Model FLOPs per step are the analytic training account (``diver.model.flops``) summed
over each window's real C x N shape, so GFLOP/s is model arithmetic per second
(padding not counted).  With CUDA the benchmark also prints tokens/s per GPU and
model FLOPs utilisation, MFU = model FLOP/s / ``--peak-tflops`` (default 312: an
A100's dense bf16 peak; 989 for an H100 SXM).

Threads: one per side by default.  The figure of interest is a ratio, and on a small
machine shared with other work, two OpenMP threads on two cores spin-wait whenever the
other is descheduled: step times then swing by 2x between runs (and are slower than
one thread's), while one thread gives repeatable ones.  ``--threads 2`` measures the
product's default (all cores) on an otherwise idle machine.

    python benchmarks/bench_pretrain.py [--size tiny] [--batch 8] [--steps 3]
        [--warmup 1] [--repeats 2] [--corpus DIR] [--zero-stage 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TARGET_OVERHEAD = 0.10  # issue 4: DeepSpeed at most 10 % slower than the plain loop
A100_BF16_TFLOPS = 312.0  # dense bf16 tensor-core peak of an A100 (NVIDIA datasheet)
LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ------------------------------------------------------------------ parent side


def build_corpus(dest: Path, hours: float) -> Path:
    """``diver synth`` + ``diver corpus`` (the embedded study's dataset settings)."""
    synth, corpus = dest / "synth", dest / "corpus"
    print(f"building a {hours:g} h synthetic corpus in {dest} ...", flush=True)
    diver = [sys.executable, "-m", "diver"]
    run_quiet([*diver, "synth", "--out", str(synth), "--hours", str(hours), "--seed", "0"])
    run_quiet(
        [
            *diver,
            "corpus",
            "--config",
            str(REPO / "config" / "config.yaml"),
            "--input",
            f"synth_eeg={synth / 'eeg'}",
            "--input",
            f"synth_ieeg={synth / 'ieeg'}",
            "--out",
            str(corpus),
            "--jobs",
            "2",
            "--quiet",
        ]
    )
    return corpus


def run_quiet(cmd: list[str]) -> None:
    """Run ``cmd``; its output only if it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr}")


def child_env(threads: int) -> dict[str, str]:
    """A single-process world (no launcher variables) with a fixed thread count."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_side(side: str, args: argparse.Namespace, corpus: Path, work: Path, tag: str) -> dict:
    """One side in a fresh process; its JSON result (step times, tokens, memory)."""
    out = work / f"{side}-{tag}"
    result = work / f"{side}-{tag}.json"
    log = work / f"{side}-{tag}.log"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_side",
        side,
        "--_out",
        str(out),
        "--_result",
        str(result),
        "--corpus",
        str(corpus),
        *common_flags(args),
    ]
    start = time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env(args.threads))
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not result.exists():
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"{side} side failed (exit {proc.returncode}):\n{tail}")
    data = json.loads(result.read_text())
    data["process_wall_s"] = wall
    return data


def common_flags(args: argparse.Namespace) -> list[str]:
    return [
        "--size",
        args.size,
        "--patch",
        args.patch,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--zero-stage",
        str(args.zero_stage),
        "--threads",
        str(args.threads),
    ]


def throughput(run: dict, warmup: int) -> tuple[float, float, float]:
    """(tokens/s, model FLOP/s, seconds) over the measured steps (after ``warmup``)."""
    times = run["step_s"][warmup:]
    tokens = run["tokens"][warmup:]
    seconds = sum(times)
    flops = sum(run["flops"][warmup:]) if run.get("flops") else float("nan")
    return sum(tokens) / seconds, flops / seconds, seconds


def report(args: argparse.Namespace, runs: dict[str, list[dict]]) -> None:
    ds, plain = runs["deepspeed"], runs["plain"]
    # Model FLOPs per step are computed by the plain side from the batches' shapes; the
    # DeepSpeed side read the same batches (checked on the token counts below).
    for d, p in zip(ds, plain, strict=True):
        d["flops"] = p["flops"]
    same_tokens = all(d["tokens"] == p["tokens"] for d, p in zip(ds, plain, strict=True))
    first = ds[0]
    cuda = first["cuda"]
    steps = len(first["step_s"])
    measured = steps - args.warmup
    print()
    precision = f"bf16 on {first['device']}" if cuda else "fp32 on CPU"
    print(
        f"size {args.size}, patch {args.patch}, batch {args.batch} (micro {args.batch}, "
        f"world size 1), ZeRO-{args.zero_stage}, {precision}, {args.threads} threads; "
        f"{measured} measured steps after {args.warmup} warm-up, {len(ds)} runs per side"
    )
    print(
        f"{first['n_params']:,} parameters; torch {first['torch']}, deepspeed {first['deepspeed']}"
    )
    print(
        f"same batches on both sides: {'yes' if same_tokens else 'NO (token counts differ)'}; "
        f"step-1 loss deepspeed {ds[0]['loss'][0]:.6f}, plain {plain[0]['loss'][0]:.6f}"
    )
    header = (
        f"{'side':<10} {'tokens/s (runs)':<28} {'median':>8} {'GFLOP/s':>8} "
        f"{'peak RSS MB':>11} {'process s':>9}"
    )
    print(header)
    medians: dict[str, dict[str, float]] = {}
    for name, side_runs in (("deepspeed", ds), ("plain", plain)):
        stats = [throughput(r, args.warmup) for r in side_runs]
        tps = [s[0] for s in stats]
        med = {
            "tps": statistics.median(tps),
            "flops": statistics.median(s[1] for s in stats),
            "rss": statistics.median(r["max_rss_mb"] for r in side_runs),
            "gpu": statistics.median(r["cuda_max_allocated_mb"] for r in side_runs),
            "wall": statistics.median(r["process_wall_s"] for r in side_runs),
        }
        medians[name] = med
        runs_text = " ".join(f"{t:.0f}" for t in tps)
        print(
            f"{name:<10} {runs_text:<28} {med['tps']:>8.1f} {med['flops'] / 1e9:>8.2f} "
            f"{med['rss']:>11.0f} {med['wall']:>9.1f}"
        )
    for name, side_runs in (("deepspeed", ds), ("plain", plain)):
        per_step = [statistics.median(r["step_s"][i] for r in side_runs) for i in range(steps)]
        print(
            f"{name:<10} step times (s, median over runs): "
            + " ".join(f"{t:.2f}" for t in per_step)
        )
    ratio = medians["deepspeed"]["tps"] / medians["plain"]["tps"]
    overhead = 1.0 / ratio - 1.0  # extra time per token under DeepSpeed
    verdict = "PASS" if overhead <= TARGET_OVERHEAD else "MISS"
    print(f"ratio deepspeed / plain (tokens/s): {ratio:.3f}")
    print(
        f"DeepSpeed overhead (extra time per token): {100 * overhead:+.1f} % "
        f"(target <= {100 * TARGET_OVERHEAD:.0f} %): {verdict}"
    )
    rss_d, rss_p = medians["deepspeed"]["rss"], medians["plain"]["rss"]
    print(f"peak RSS deepspeed / plain: {rss_d:.0f} / {rss_p:.0f} MB = {rss_d / rss_p:.2f}")
    if cuda:
        peak = args.peak_tflops * 1e12
        for name in ("deepspeed", "plain"):
            m = medians[name]
            print(
                f"{name:<10} {m['tps']:.0f} tokens/s per GPU, MFU {100 * m['flops'] / peak:.1f} % "
                f"of {args.peak_tflops:g} TFLOP/s, peak allocated {m['gpu']:.0f} MB"
            )
        print(
            f"peak CUDA memory deepspeed / plain: "
            f"{medians['deepspeed']['gpu'] / medians['plain']['gpu']:.2f}"
        )


# ------------------------------------------------------------------- child side


def plan(corpus: str, batch: int, steps: int, seed_config: Any) -> dict[str, Any]:
    """Data fraction and epochs giving at least ``steps`` optimizer steps of full batches.

    Each epoch is ``k`` full batches (the fraction is chosen so the training windows are
    a multiple of ``batch``: no short last step); ``epochs x k >= steps``, as few extra
    steps as the corpus allows.
    """
    from diver.data import make_splits

    n_all = len(make_splits(corpus, 1.0, seed_config.validation).train)
    k_max = n_all // batch
    if k_max < 1:
        raise SystemExit(f"corpus {corpus} has {n_all} training windows, fewer than {batch}")
    epochs = math.ceil(steps / k_max)
    k = math.ceil(steps / epochs)
    target = k * batch
    for fraction in (target / n_all, (target + 0.25) / n_all, (target - 0.25) / n_all):
        fraction = min(fraction, 1.0)
        if len(make_splits(corpus, fraction, seed_config.validation).train) == target:
            return {"fraction": fraction, "epochs": epochs, "steps_per_epoch": k}
    raise SystemExit(f"no data fraction of {n_all} windows gives exactly {target}")


def pretrain_config(args: argparse.Namespace) -> Any:
    """The ``pretrain`` settings of the product run (and the plain loop's constants)."""
    from diver.config import PretrainConfig

    return PretrainConfig.from_flat(
        {
            "zero_stage": args.zero_stage,
            "global_batch": args.batch,
            "micro_batch": args.batch,
            "checkpoint_every": 0,  # none: a checkpoint would only add untimed I/O
            "val_at_start": False,
            "val_max_windows": args.batch,  # one validation batch per epoch end (untimed)
            "log_every": 10**6,
        }
    )


def side_deepspeed(args: argparse.Namespace, config: Any, p: dict[str, Any]) -> dict[str, Any]:
    """Run the product and read its per-step timings back from ``train_log.csv``."""
    import csv

    from diver.study.settings import PretrainSettings
    from diver.train.pretrain import pretrain

    settings = PretrainSettings(
        corpus=args.corpus,
        out=args._out,
        size=args.size,
        patch=args.patch,
        data_fraction=p["fraction"],
        epochs=p["epochs"],
        config=config,
    )
    status = pretrain(settings)
    if status != 0:
        raise SystemExit(f"pretrain exited with {status}")
    with (Path(args._out) / "train_log.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    tokens, step_s, losses = [], [], []
    previous = 0.0
    for row in rows:
        seen = float(row["tokens"])  # cumulative
        tokens.append(seen - previous)
        previous = seen
        step_s.append(tokens[-1] / float(row["tokens_per_s"]))
        losses.append(float(row["loss"]))
    metrics = json.loads((Path(args._out) / "metrics.json").read_text())
    return {"tokens": tokens, "step_s": step_s, "loss": losses, "n_params": metrics["n_params"]}


def side_plain(args: argparse.Namespace, config: Any, p: dict[str, Any]) -> dict[str, Any]:
    """The same training in a hand-written loop (no DeepSpeed import at all)."""
    import torch
    from torch.utils.data import DataLoader

    from diver.data import ResampleConfig, WindowDataset, collate_windows, make_splits
    from diver.model import model_config
    from diver.model.mup_setup import build_model, make_optimizer
    from diver.train.schedule import cosine_schedule
    from diver.train.validation import mixed_seed

    c, opt, seed = config, config.optimiser, config.runtime.seed
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    cfg = model_config(args.size, args.patch)
    splits = make_splits(args.corpus, p["fraction"], c.validation)
    total_steps = p["epochs"] * p["steps_per_epoch"]
    torch.manual_seed(seed)  # as diver.train.engine.build_engine: the same initial weights
    model = build_model(cfg).to(device).train()
    optimizer = make_optimizer(model, lr=opt.lr, weight_decay=opt.weight_decay, betas=opt.betas)
    scheduler = cosine_schedule(
        optimizer, total_steps, warmup_steps=opt.warmup_steps, min_ratio=opt.min_lr_ratio
    )
    dataset = WindowDataset(
        splits.train,
        cfg.patch_samples,
        resample=ResampleConfig(enabled=True),
        seed=seed,
        shuffle=True,
        rank=0,
        world_size=1,
        drop_uneven=True,
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        collate_fn=collate_windows,
        num_workers=c.batch.num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    params = list(model.parameters())
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    tokens, step_s, losses, shapes = [], [], [], []
    step = 0
    for epoch in range(p["epochs"]):
        dataset.set_epoch(epoch)
        batches = iter(loader)
        for _ in range(p["steps_per_epoch"]):
            t0 = time.perf_counter()
            torch.manual_seed(mixed_seed(seed, step, 0))  # dropout, as TrainingLoop._step
            batch = next(batches).to(device)
            n_tokens = float(batch.token_mask.sum())
            generator = torch.Generator(device=device).manual_seed(
                mixed_seed(seed, step, 0, 0, 1)
            )
            with autocast:
                out = model(batch.encoder_inputs(), generator=generator)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, opt.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss = float(out.loss.detach())  # a host sync, as the product's logging
            step_s.append(time.perf_counter() - t0)
            tokens.append(n_tokens)
            losses.append(loss)
            shapes.append(
                list(
                    zip(
                        batch.channel_mask.sum(1).tolist(),
                        batch.patch_mask.sum(1).tolist(),
                        strict=True,
                    )
                )
            )
            step += 1
            print(f"plain step {step}/{total_steps}: {step_s[-1]:.2f} s", flush=True)
    return {
        "tokens": tokens,
        "step_s": step_s,
        "loss": losses,
        "flops": [step_flops(cfg, s) for s in shapes],
        "n_params": sum(p.numel() for p in params),
    }


def step_flops(cfg: Any, shapes: list[tuple[int, int]]) -> float:
    """Analytic training FLOPs of one batch: each window at its own real C x N."""
    from diver.model.flops import forward_flops

    return float(sum(forward_flops(cfg, c, n).training for c, n in shapes))


def child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    config = pretrain_config(args)
    steps = args.warmup + args.steps
    p = plan(args.corpus, args.batch, steps, config)
    if args._side == "deepspeed":
        result = side_deepspeed(args, config, p)
    else:
        result = side_plain(args, config, p)
    cuda = torch.cuda.is_available()
    try:  # the installed version, without importing it into the plain side's heap
        ds_version = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        ds_version = "-"
    result.update(
        {
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "cuda": cuda,
            "cuda_max_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else 0.0,
            "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "torch": torch.__version__,
            "deepspeed": ds_version,
            "deepspeed_imported": "deepspeed" in sys.modules,
            "plan": p,
        }
    )
    Path(args._result).write_text(json.dumps(result))


# ------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", help="model size (default tiny)")
    parser.add_argument("--patch", default="1s", choices=["1s", "0.1s"])
    parser.add_argument("--batch", type=int, default=8, help="global = micro batch (windows)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating")
    parser.add_argument("--corpus", help="corpus folder (default: build a synthetic one)")
    parser.add_argument("--hours", type=float, default=0.5, help="synthetic corpus hours")
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per side (default 1: stable on a shared box, see the docstring)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=A100_BF16_TFLOPS,
        help="accelerator peak for MFU (CUDA only; default 312 = A100 dense bf16)",
    )
    parser.add_argument("--_side", choices=["deepspeed", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    parser.add_argument("--_result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._side:
        child(args)
        return
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error("need --steps >= 1, --warmup >= 0, --repeats >= 1")
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        work = Path(tmp)
        corpus = Path(args.corpus) if args.corpus else build_corpus(work / "data", args.hours)
        runs: dict[str, list[dict]] = {"deepspeed": [], "plain": []}
        started = time.perf_counter()
        for repeat in range(args.repeats):
            order = ("deepspeed", "plain") if repeat % 2 == 0 else ("plain", "deepspeed")
            for side in order:
                print(f"repeat {repeat + 1}/{args.repeats}: {side} ...", end=" ", flush=True)
                run = run_side(side, args, corpus, work, str(repeat))
                runs[side].append(run)
                tps = throughput(run, args.warmup)[0]
                print(
                    f"{tps:.0f} tokens/s over {len(run['step_s']) - args.warmup} steps "
                    f"({run['process_wall_s']:.0f} s process)",
                    flush=True,
                )
        print(f"total {time.perf_counter() - started:.0f} s")
        report(args, runs)


if __name__ == "__main__":
    main()
