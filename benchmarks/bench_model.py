"""Model benchmark: forward + backward tokens per second of DIVER-1 against a plain
``torch.nn.TransformerEncoder`` of the same width, depth and token count, in the same run.

For each size (``debug`` and ``tiny`` by default) on this CPU:

- DIVER-1: the muP pretraining model (``build_model``, train mode) on a batch of
  B windows of C channels x N patches (1 s patches unless ``--patch 0.1s``), with a
  fixed half-masked token mask; one step = ``model(inputs, mask).loss.backward()``.
- plain: ``nn.TransformerEncoder(nn.TransformerEncoderLayer(d, d // 32 heads, 4 d,
  dropout 0.1, batch_first, norm_first), depth)`` on a (B, C x N, d) input - the same
  number of tokens - with a linear d -> d head and an MSE loss; one step = forward +
  backward.

The two are timed in alternating rounds of a few steps each, every step timed on its
own, and each side's throughput is taken from its *median* step time, so a change in
machine load (this may be a shared box) hits both alike and a spike does not decide
the result.  The ratio diver / plain is printed along with each side's tokens/s and
FLOP throughput: DIVER-1's from the analytic account
(``diver.model.flops``, which matches ``FlopCounterMode`` exactly), the plain
encoder's from ``FlopCounterMode`` over one step.  Tokens are real (channel, patch)
tokens, B x C x N per step, on both sides; DIVER-1's extra work per token (register
grid, STCPE, CNN and spectral embedding, SwiGLU's third matrix, reconstruction heads)
is what the FLOP columns show.

    python benchmarks/bench_model.py [--quick] [--sizes debug tiny] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diver.model.config import ModelConfig, model_config
from diver.model.flops import forward_flops
from diver.model.inputs import EncoderInputs
from diver.model.mup_setup import build_model

# (batch, channels, patches) per size; tiny gets a smaller batch to keep the run short.
SHAPES = {"debug": (4, 16, 15), "tiny": (2, 16, 15)}
QUICK_SHAPES = {"debug": (2, 8, 10), "tiny": (1, 8, 10)}
DEFAULT_SHAPE = (2, 16, 15)


@dataclass
class Result:
    size: str
    shape: tuple[int, int, int]
    diver_tps: float
    plain_tps: float
    diver_gflops: float
    plain_gflops: float
    diver_flop_per_token: float
    plain_flop_per_token: float


def diver_step(config: ModelConfig, b: int, c: int, n: int) -> tuple[Callable[[], None], float]:
    """A forward + backward step of DIVER-1 and its training FLOPs (analytic account)."""
    model = build_model(config).train()
    g = torch.Generator().manual_seed(0)
    channel_mask = torch.ones(b, c, dtype=torch.bool)
    patch_mask = torch.ones(b, n, dtype=torch.bool)
    valid = channel_mask[:, :, None] & patch_mask[:, None, :]
    batch = {
        "patches": 0.1 * torch.randn(b, c, n, config.patch_samples, generator=g),
        "coords_mm": 50 * torch.randn(b, c, 3, generator=g),
        "type_ids": torch.full((b, c), 2, dtype=torch.long),  # sEEG
        "subtype_ids": torch.full((b, c), 4, dtype=torch.long),  # depth
        "channel_mask": channel_mask,
        "patch_mask": patch_mask,
    }
    inputs, mask = EncoderInputs(**batch), model.draw_mask(valid, g)
    mask_fraction = mask.float().mean().item()
    flops = b * forward_flops(config, c, n, mask_prob=mask_fraction).training

    def step() -> None:
        model(inputs, mask).loss.backward()
        model.zero_grad(set_to_none=True)

    return step, flops


def plain_step(config: ModelConfig, b: int, c: int, n: int) -> tuple[Callable[[], None], float]:
    """A forward + backward step of the plain encoder and its FLOPs (``FlopCounterMode``)."""
    d = config.d_model
    layer = nn.TransformerEncoderLayer(
        d_model=d,
        nhead=d // 32 if d >= 32 else 1,
        dim_feedforward=4 * d,
        dropout=config.dropout,
        batch_first=True,
        norm_first=True,
    )
    encoder = nn.TransformerEncoder(layer, num_layers=config.depth, enable_nested_tensor=False)
    head = nn.Linear(d, d)
    model = nn.Sequential(encoder, head).train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, c * n, d, generator=g)
    target = torch.randn(b, c * n, d, generator=g)

    def step() -> None:
        nn.functional.mse_loss(model(x), target).backward()
        model.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:  # math backend: attention shows as bmm
        step()
    return step, float(counter.get_total_flops())


def bench(size: str, patch: str, shape: tuple[int, int, int], rounds: int, steps: int) -> Result:
    config = model_config(size, patch)
    b, c, n = shape
    diver, diver_flops = diver_step(config, b, c, n)
    plain, plain_flops = plain_step(config, b, c, n)
    for fn in (diver, plain):  # warm-up: allocator, oneDNN kernels, autograd graph caches
        fn()
        fn()
    times: dict[str, list[float]] = {"diver": [], "plain": []}
    for _ in range(rounds):
        for name, fn in (("diver", diver), ("plain", plain)):
            for _ in range(steps):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    step_time = {name: statistics.median(ts) for name, ts in times.items()}
    tokens = b * c * n
    return Result(
        size=size,
        shape=shape,
        diver_tps=tokens / step_time["diver"],
        plain_tps=tokens / step_time["plain"],
        diver_gflops=diver_flops / step_time["diver"] / 1e9,
        plain_gflops=plain_flops / step_time["plain"] / 1e9,
        diver_flop_per_token=diver_flops / (b * c * n),
        plain_flop_per_token=plain_flops / (b * c * n),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["debug", "tiny"])
    parser.add_argument("--patch", default="1s", choices=["1s", "0.1s"])
    parser.add_argument("--quick", action="store_true", help="small shapes, few steps")
    parser.add_argument("--rounds", type=int, default=None, help="alternating timing rounds")
    parser.add_argument("--steps", type=int, default=None, help="steps per round per model")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rounds = args.rounds or (2 if args.quick else 4)
    steps = args.steps or (2 if args.quick else 3)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, patch {args.patch}, "
        f"{rounds} rounds x {steps} steps per model, forward + backward, median step"
    )
    header = (
        f"{'size':<7} {'B x C x N':<11} {'diver tok/s':>11} {'plain tok/s':>11} "
        f"{'ratio':>6} {'diver GF/s':>10} {'plain GF/s':>10} "
        f"{'diver MF/tok':>12} {'plain MF/tok':>12}"
    )
    print(header)
    for size in args.sizes:
        shape = shapes.get(size, DEFAULT_SHAPE)
        r = bench(size, args.patch, shape, rounds, steps)
        print(
            f"{r.size:<7} {'x'.join(map(str, r.shape)):<11} {r.diver_tps:>11.0f} "
            f"{r.plain_tps:>11.0f} {r.diver_tps / r.plain_tps:>6.3f} {r.diver_gflops:>10.2f} "
            f"{r.plain_gflops:>10.2f} {r.diver_flop_per_token / 1e6:>12.2f} "
            f"{r.plain_flop_per_token / 1e6:>12.2f}",
            flush=True,
        )
    print("ratio = diver tokens/s / plain tokens/s; GF/s = 1e9 FLOP/s; MF/tok = training 1e6 FLOP")


if __name__ == "__main__":
    main()
