"""FLOPs account of DIVER-1 per forward/backward (SPEC §2, §4): what pretraining logs and
what the scaling fit's compute axis uses.

Two numbers, kept apart on purpose:

- :func:`six_nd` is the scaling law's ``C = 6 N D`` (SPEC §4, Kaplan et al. 2020,
  Hoffmann et al. 2022): parameters x tokens x 6, nothing else.  It is the compute
  axis of the fit and of ``N_opt(C)``, so it must be exactly that rule.
- :func:`flops_per_token` / :func:`training_flops` are the *actual* arithmetic of one
  training step, term by term (below), for throughput (model FLOPs utilisation) and for
  comparing runs whose context lengths differ - 6ND ignores attention, which here is
  not small: the encoder attends over the whole (C + 1) x (N + 1) grid.

Conventions.  One multiply-add is 2 FLOPs.  A *token* is one real (channel, patch)
cell, the unit of ``U_D`` (SPEC §1), so register tokens are overhead spread over the
real ones.  Training = forward + backward, and the backward of a matrix product costs
twice its forward (gradient of the input and of the weight), so training = 3 x forward
- except where the input carries no gradient (the first conv sees raw patches; the
spectral projection in ``spectral_input="patch"`` mode sees |rFFT| of raw patches),
whose backward computes only the weight gradient: 2 x forward.

Forward terms of one window of C channels x N patches (d = width, L = depth):

1. ``cnn``: per patch, conv1 ``2 * l * h * k`` (1 input channel), conv2 and conv3
   ``2 * l * h * h * 3`` each; ``h`` = CNN width, ``l`` = output positions (8 for 1 s,
   16 for 0.1 s, so ``l * h = d``), ``k`` = first kernel (63 for both patch lengths).
2. ``spectral``: ``2 * (n/2 + 1) * d`` per token (the |rFFT| -> Linear projection;
   n = d for the code's FFT of the CNN token, P for the paper's FFT of the patch).
3. ``stcpe_dense``: projections ``2 * d * e`` in and out per token (e = d/8), plus one
   transformer block per window token, ``2 * (4 e^2 + 3 e f)`` (qkv, out, SwiGLU with
   f = d/2); windows of w = 7 patches slide with stride 1 over the time axis
   zero-padded by w - 1 on both sides (the authors' code), so there are ``N + w - 1``
   windows of ``C * w`` tokens and each real token is processed w times.
4. ``stcpe_attention``: ``4 * (C w)^2 * e`` per window: Q K^T and A V, each
   ``2 * n_ctx * e`` per query, with n_ctx = C w.
5. ``encoder_dense``: ``L * 2 * (4 d^2 + 3 d d_ff)`` per grid token, over
   ``(C + 1)(N + 1)`` grid tokens (registers included).  Per layer this is
   ``2 * (weights of the layer)``: the "2N" of 6ND.
6. ``encoder_attention``: ``L * 4 * T^2 * d`` with T = (C + 1)(N + 1): per token
   ``4 L T d``.  Kaplan et al. (2020, Table 1) write ``2 n_layer n_ctx d_attn`` per
   token forward: that is a *causal* decoder, where a query sees n_ctx/2 keys on
   average; DIVER-1's encoder is bidirectional, so each query sees all T keys and the
   term is twice Kaplan's.
7. ``heads``: ``2 * d * (values per token)`` on *masked* tokens only, ``mask_prob * C N``
   of them (1,400 values per 1 s token with the code's STFT set, 250 per 0.1 s token).

Excluded (not matrix products, or not per-token work that scales with the model):
norms (RMSNorm, QK-norm, GroupNorm), softmax, rotary, GELU/SiLU and other element-wise
ops, biases, the attention mask, dropout, the rFFT of the spectral embedding and the
targets' FFT/STFT (computed without gradient), the loss, and the optimizer step.
:class:`torch.utils.flop_counter.FlopCounterMode` covers exactly the matrix products
and convolutions (``mm``/``addmm``/``bmm``/``convolution`` and their backward, and SDPA
when it is not decomposed), i.e. all seven terms, so :func:`measured_flops` checks the
total and :func:`measured_flop_counts` (per module) the forward term by term.  It too
ignores biases (``addmm`` is counted as its product) and the element-wise rest.

Sanity ratio against SPEC §2 ("FLOPs per epoch on the iEEG corpus, 1 s: Tiny 77.5
PFLOP, XXL 7.64 EFLOP"), recorded in ``tests/test_flops.py``: the paper gives no
formula; the iEEG corpus is 5,310 h = 637,200 windows of 30 s.  With full 32 x 30
windows (960 tokens, no spatio-temporal resampling) this account gives ~75 PFLOP for
Tiny-1s (ratio ~0.97) and ~7.5 EFLOP for XXL (~0.98); with U_D's 540 tokens per window
and the mean STR shape (24 x 22.5) it gives about half.  The two paper figures keep
one ratio to ``(6 N + 12 L T d) x tokens`` (T = 33 x 31 = 1,023) at both sizes - 0.975
with 1,023 tokens per window, 0.915 with 960 - although Tiny and XXL weigh the
attention term very differently (33 % vs 4 % of a 32 x 30 forward), so their formula looks
like 6ND plus the bidirectional attention term over the register grid; only the
token count per epoch is uncertain.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diver.model.config import ModelConfig
from diver.model.embedding import PatchCNN
from diver.model.inputs import EncoderInputs
from diver.model.mup_setup import count_parameters
from diver.model.pretrain import DiverPretrainModel
from diver.model.targets import TargetSpec
from diver.study.budget import MAX_CHANNELS, MAX_PATCHES, STR_MEAN_FRACTION

STR_MEAN_CHANNELS = MAX_CHANNELS * STR_MEAN_FRACTION
"""Mean channels per window after spatio-temporal resampling (SPEC §1-§2: C' ~ 32 x
Beta(3, 1), mean 3/4), the shape behind U_D's 540 = 24 x 22.5 tokens per window."""
STR_MEAN_PATCHES = MAX_PATCHES * STR_MEAN_FRACTION
"""Mean patches per window after spatio-temporal resampling (30 x 3/4)."""


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward FLOPs of one window, by term (module docstring), and the training total.

    ``n_tokens`` is the real C x N tokens the window contributes to a token budget.
    ``no_input_grad`` is the part of the forward whose input carries no gradient, so
    its backward is 1 x rather than 2 x forward.
    """

    cnn: float
    spectral: float
    stcpe_dense: float
    stcpe_attention: float
    encoder_dense: float
    encoder_attention: float
    heads: float
    n_tokens: float
    no_input_grad: float

    @property
    def terms(self) -> dict[str, float]:
        """The seven forward terms by name (for logging and the tests)."""
        skip = {"n_tokens", "no_input_grad"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    @property
    def forward(self) -> float:
        return sum(self.terms.values())

    @property
    def backward(self) -> float:
        """2 x forward, minus the input gradients nobody needs (module docstring)."""
        return 2 * self.forward - self.no_input_grad

    @property
    def training(self) -> float:
        return self.forward + self.backward

    @property
    def attention(self) -> float:
        """The context-dependent part (grows with C and N faster than the token count)."""
        return self.stcpe_attention + self.encoder_attention


def _cnn_geometry(config: ModelConfig) -> tuple[int, int, int]:
    """(output positions l, width h, first kernel k), read off the module itself (meta
    device: no memory), so the account follows ``PatchCNN`` if its layers change."""
    with torch.device("meta"):
        cnn = PatchCNN(config)
    first = cnn.convs[0]
    assert isinstance(first, nn.Conv2d)
    length = config.patch_samples + 2 * cnn.pad
    positions = (length + 2 * first.padding[1] - first.kernel_size[1]) // first.stride[1] + 1
    return positions, first.out_channels, first.kernel_size[1]


def forward_flops(
    config: ModelConfig,
    n_channels: float,
    n_patches: float,
    *,
    mask_prob: float | None = None,
) -> FlopsBreakdown:
    """Forward FLOPs of one window of ``n_channels`` x ``n_patches`` real tokens.

    Shapes may be fractional (a mean shape over spatio-temporal resampling); that is
    the cost of the mean window, which under-counts the attention of a spread of shapes
    only by the (small) variance term.  ``mask_prob`` defaults to the config's (SPEC
    §2: 0.5) and sets how many tokens reach the reconstruction heads.
    """
    if n_channels <= 0 or n_patches <= 0:
        raise ValueError(f"need a non-empty window, got C={n_channels}, N={n_patches}")
    c, n, d = float(n_channels), float(n_patches), config.d_model
    p = config.mask_prob if mask_prob is None else mask_prob
    tokens = c * n

    positions, h, k = _cnn_geometry(config)
    conv1 = 2 * positions * h * k
    cnn = tokens * (conv1 + 2 * 2 * positions * h * h * 3)

    spectral_in = (d if config.spectral_input == "token" else config.patch_samples) // 2 + 1
    spectral = tokens * 2 * spectral_in * d
    no_input_grad = tokens * conv1 + (spectral if config.spectral_input == "patch" else 0.0)

    e, f = config.stcpe_dim, config.stcpe_ff
    w = float(config.stcpe_window)
    windows = n + w - 1
    window_tokens = c * w
    stcpe_dense = tokens * 2 * (2 * d * e) + windows * window_tokens * 2 * (4 * e * e + 3 * e * f)
    stcpe_attention = windows * 4 * window_tokens**2 * e

    grid = (c + 1) * (n + 1)
    encoder_dense = config.depth * grid * 2 * (4 * d * d + 3 * d * config.d_ff)
    encoder_attention = config.depth * 4 * grid**2 * d

    spec = TargetSpec(
        patch_samples=config.patch_samples,
        stft_set=config.stft_set,
        spectrum=config.target_spectrum,
    )
    weights = dict(zip(("time", "fft", "stft"), config.loss_weights, strict=True))
    head_values = sum(size for name, size in spec.sizes.items() if weights[name] > 0)
    heads = p * tokens * 2 * d * head_values

    return FlopsBreakdown(
        cnn=cnn,
        spectral=spectral,
        stcpe_dense=stcpe_dense,
        stcpe_attention=stcpe_attention,
        encoder_dense=encoder_dense,
        encoder_attention=encoder_attention,
        heads=heads,
        n_tokens=tokens,
        no_input_grad=no_input_grad,
    )


def flops_per_token(
    config: ModelConfig,
    n_channels: float = STR_MEAN_CHANNELS,
    n_patches: float = STR_MEAN_PATCHES,
    *,
    training: bool = True,
) -> float:
    """FLOPs per real token of a C x N window: forward + backward (``training``) or forward.

    The analogue of Kaplan's ``6 N + 6 n_layer n_ctx d_attn``, but with every term of
    this architecture (module docstring).  Per token, so it depends on the window shape
    only through the attention and the register overhead.
    """
    breakdown = forward_flops(config, n_channels, n_patches)
    total = breakdown.training if training else breakdown.forward
    return total / breakdown.n_tokens


def training_flops(
    config: ModelConfig,
    tokens: float,
    n_channels: float = STR_MEAN_CHANNELS,
    n_patches: float = STR_MEAN_PATCHES,
) -> float:
    """Training FLOPs for a budget of ``tokens`` real tokens, in windows of the given shape.

    The default shape is the mean after spatio-temporal resampling (24 x 22.5), the one
    U_D's 540 tokens per window assumes, so ``training_flops(config, U_D * epochs)`` is
    the compute of a run; pass 32 x 30 for full windows.
    """
    return tokens * flops_per_token(config, n_channels, n_patches)


@functools.lru_cache(maxsize=4096)
def window_training_flops(config: ModelConfig, n_channels: int, n_patches: int) -> float:
    """Training FLOPs of one window at its real ``n_channels`` x ``n_patches`` shape.

    Cached because the training loop asks for every window of every step and a run sees
    at most 32 x 30 distinct shapes per model, while :func:`forward_flops` builds the
    patch CNN (on the meta device) each time to read its geometry.
    """
    return forward_flops(config, n_channels, n_patches).training


def batch_training_flops(
    config: ModelConfig, n_channels: Iterable[int], n_patches: Iterable[int]
) -> float:
    """Training FLOPs of a batch, summed over its windows' own shapes.

    What throughput (MFU) must count: a padded batch costs the padded shape on the
    device, but only the real tokens are model work, and attention makes the cost of a
    window depend on its shape, not just its token count (so a mean shape is not enough).
    """
    return sum(
        window_training_flops(config, int(c), int(n))
        for c, n in zip(n_channels, n_patches, strict=True)
    )


def non_embedding_params(config: ModelConfig) -> int:
    """Parameters without lookup tables (Kaplan's N): total minus the modality
    embeddings and the three register tokens, which are read, not multiplied, per token.
    Norm gains and the reconstruction heads stay in."""
    with torch.device("meta"):
        model = DiverPretrainModel(config)
    lookups = sum(
        p.numel() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()
    )
    lookups += sum(p.numel() for name, p in model.named_parameters() if name.endswith("_register"))
    return count_parameters(config) - lookups


def six_nd(config: ModelConfig, tokens: float, *, params: str = "total") -> float:
    """The scaling law's compute ``C = 6 N D`` (SPEC §4) for ``tokens`` = D.

    ``params`` picks N: ``total`` (SPEC §2's table, heads included - what the fit's N
    is), ``encoder``, or ``non_embedding`` (:func:`non_embedding_params`).
    """
    if params == "non_embedding":
        n = non_embedding_params(config)
    elif params in ("total", "encoder"):
        n = count_parameters(config, part=params)
    else:
        raise ValueError(f"params must be 'total', 'encoder' or 'non_embedding', got {params!r}")
    return 6.0 * n * tokens


def measured_flop_counts(
    model: DiverPretrainModel,
    inputs: EncoderInputs,
    mask: torch.Tensor | None = None,
    *,
    backward: bool = True,
) -> dict[str, dict[str, int]]:
    """``FlopCounterMode``'s counts of one forward (+ backward) of ``model(inputs, mask)``:
    ``{module path: {aten op: FLOPs}}``, with the whole run under ``"Global"``.

    Attention runs on the math SDPA backend, which decomposes into ``bmm`` that the
    counter sees (the CPU flash kernel has no registered formula and would count 0).
    Gradients come from ``torch.autograd.grad``, so no ``.grad`` is left on the model.
    The per-module split is trustworthy for the forward only: the counter attributes
    backward ops to whichever module hooks fired last, so only ``"Global"`` is right
    once ``backward`` is on.
    """
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        out = model(inputs, mask)
        if backward:
            params = [p for p in model.parameters() if p.requires_grad]
            torch.autograd.grad(out.loss, params, allow_unused=True)
    return {
        module: {str(op).removeprefix("aten."): int(flops) for op, flops in ops.items()}
        for module, ops in counter.get_flop_counts().items()
    }


def measured_flops(
    model: DiverPretrainModel,
    inputs: EncoderInputs,
    mask: torch.Tensor | None = None,
    *,
    backward: bool = True,
) -> int:
    """Total FLOPs of one forward (+ backward) by ``FlopCounterMode`` (see
    :func:`measured_flop_counts`), to check the analytic account against."""
    counts = measured_flop_counts(model, inputs, mask, backward=backward)
    return sum(counts["Global"].values())
