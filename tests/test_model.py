"""The DIVER-1 model (SPEC §2): any-variate equivariance, padding, the masked loss, registry.

Every check runs the real model (``build_model``, the muP-parametrised one training
uses) on small random windows, in eval mode unless training is the point.  Channel
biases of every any-variate attention are randomised first (they start at zero), so
the same-channel / cross-channel path really takes part in the equivariance checks.

Target values on pure sinusoids are covered by tests/test_targets.py, the
width-scaling of activations (muP coordinate check) by tests/test_mup.py.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from diver.data import dataset
from diver.model import embedding
from diver.model.config import (
    PUBLISHED_PARAMS,
    PUBLISHED_SIZES,
    SIZES,
    TINY_1S_ENCODER_PARAMS,
    model_config,
)
from diver.model.embedding import ModalityEmbedding
from diver.model.inputs import EncoderInputs
from diver.model.layers import AnyVariateAttention, rotary
from diver.model.mup_setup import build_model, count_parameters, make_optimizer
from diver.model.pretrain import DiverPretrainModel
from diver.model.targets import compute_targets

pytestmark = pytest.mark.usefixtures("one_thread")

PATCHES = ("1s", "0.1s")
PATCH_SAMPLES = {"1s": 500, "0.1s": 50}
# SPEC §2, written out here rather than read from the config under test.
LAMBDA = {"1s": {"time": 1.0, "fft": 0.1, "stft": 1.0}, "0.1s": {"time": 1.0, "fft": 1.0}}
HEAD_VALUES = {"1s": 500 + 200 + 4 * 80 + 19 * 20, "0.1s": 50 + 200}  # 1,400 and 250
SPEC_WIDTHS = {"tiny": 256, "small": 512, "base": 768, "large": 1024, "xl": 2048, "xxl": 3072}
ATOL = 2e-5  # float32 re-association (different T in SDPA, different batch shapes)
RTOL = 1e-4


def eval_model(patch: str, seed: int = 0, **overrides: object) -> DiverPretrainModel:
    """A ``debug`` model in eval mode (dropout off) with random channel biases."""
    torch.manual_seed(seed)
    model = build_model(model_config("debug", patch, **overrides)).eval()
    for module in model.modules():
        if isinstance(module, AnyVariateAttention):
            torch.nn.init.normal_(module.channel_bias, std=1.0)
    return model


def random_batch(
    patch: str, shapes: list[tuple[int, int]], seed: int = 0
) -> tuple[EncoderInputs, list[EncoderInputs]]:
    """A padded batch of windows with (channels, patches) ``shapes``, and each window alone.

    Padding is filled with loud garbage (large signal, random coordinates and ids), so
    any leak of a padded token into a valid one shows.
    """
    g = torch.Generator().manual_seed(seed)
    p = PATCH_SAMPLES[patch]
    b = len(shapes)
    c_max = max(c for c, _ in shapes)
    n_max = max(n for _, n in shapes)
    batch = {
        "patches": 50 * torch.randn(b, c_max, n_max, p, generator=g) + 20,
        "coords_mm": 80 * torch.randn(b, c_max, 3, generator=g),
        "type_ids": torch.randint(0, 5, (b, c_max), generator=g),
        "subtype_ids": torch.randint(0, 5, (b, c_max), generator=g),
        "channel_mask": torch.zeros(b, c_max, dtype=torch.bool),
        "patch_mask": torch.zeros(b, n_max, dtype=torch.bool),
    }
    singles = []
    for i, (c, n) in enumerate(shapes):
        t = torch.arange(n * p) / 500.0
        freqs = 2 + 60 * torch.rand(c, 1, generator=g)
        signal = torch.sin(2 * math.pi * freqs * t) + 0.5 * torch.randn(c, n * p, generator=g)
        coords = 60 * torch.rand(c, 3, generator=g) - 30
        coords[0] = float("nan")  # an unknown position: zero encoding
        single = {
            "patches": signal.view(1, c, n, p),
            "coords_mm": coords[None],
            "type_ids": torch.randint(1, 4, (1, c), generator=g),
            "subtype_ids": torch.randint(1, 5, (1, c), generator=g),
            "channel_mask": torch.ones(1, c, dtype=torch.bool),
            "patch_mask": torch.ones(1, n, dtype=torch.bool),
        }
        singles.append(single)
        batch["patches"][i, :c, :n] = single["patches"][0]
        batch["coords_mm"][i, :c] = coords
        batch["type_ids"][i, :c] = single["type_ids"][0]
        batch["subtype_ids"][i, :c] = single["subtype_ids"][0]
        batch["channel_mask"][i, :c] = True
        batch["patch_mask"][i, :n] = True
    return EncoderInputs(**batch), [EncoderInputs(**single) for single in singles]


def encode(model: DiverPretrainModel, batch: EncoderInputs) -> torch.Tensor:
    with torch.no_grad():
        return model.encoder(batch)


def permute_channels(
    batch: EncoderInputs, perm: torch.Tensor, keys: tuple[str, ...]
) -> EncoderInputs:
    return replace(batch, **{k: getattr(batch, k)[:, perm] for k in keys})


def valid_tokens(batch: EncoderInputs) -> torch.Tensor:
    return batch.valid_tokens()


# --- 1. any-variate properties ----------------------------------------------------------


PER_CHANNEL = ("patches", "type_ids", "subtype_ids", "channel_mask")
# 1 s: N = 9 > the STCPE window (7), so the window slides; 0.1 s: N = 12.  The last
# channel of the 6 is padding, which the permutation moves around too.
PERM_SHAPES = {"1s": [(5, 9), (6, 9)], "0.1s": [(5, 12), (6, 12)]}
PERM = torch.tensor([3, 0, 5, 1, 4, 2])


@pytest.mark.parametrize("patch", PATCHES)
def test_channel_permutation_equivariant_without_positions(patch: str) -> None:
    model = eval_model(patch, use_position=False)
    batch, _ = random_batch(patch, PERM_SHAPES[patch])
    valid = valid_tokens(batch)
    out = encode(model, batch)
    # Positions off: coordinates are ignored, so they stay put while the channels move.
    permuted = encode(model, permute_channels(batch, PERM, PER_CHANNEL))
    expected = out[:, PERM]
    assert torch.allclose(permuted[valid[:, PERM]], expected[valid[:, PERM]], atol=ATOL, rtol=RTOL)
    # not vacuous: channels differ from each other, so a wrong permutation would show
    assert not torch.allclose(out[1, PERM], out[1], atol=1e-2)
    # and the coordinates really are unused
    shuffled = replace(batch, coords_mm=batch.coords_mm.flip(1))
    assert torch.allclose(encode(model, shuffled)[valid], out[valid], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("patch", PATCHES)
def test_channel_permutation_with_coordinates_equivariant(patch: str) -> None:
    model = eval_model(patch)
    batch, _ = random_batch(patch, PERM_SHAPES[patch])
    valid = valid_tokens(batch)[:, PERM]
    out = encode(model, batch)
    permuted = encode(model, permute_channels(batch, PERM, (*PER_CHANNEL, "coords_mm")))
    assert torch.allclose(permuted[valid], out[:, PERM][valid], atol=ATOL, rtol=RTOL)
    # control: moving the channels but not their coordinates is a different input
    moved = encode(model, permute_channels(batch, PERM, PER_CHANNEL))
    assert not torch.allclose(moved[valid], out[:, PERM][valid], atol=1e-2)


def test_any_variate_attention_matches_formula() -> None:
    """score = q_i R_(i-j) k_j / d_head + u1 [same channel] + u2 [different channel]."""
    torch.manual_seed(0)
    attn = AnyVariateAttention(dim=64, n_heads=2).eval()
    torch.nn.init.normal_(attn.channel_bias, std=1.0)
    b, t = 2, 12
    x = torch.randn(b, t, 64)
    pos = torch.randint(0, 5, (b, t))
    chan = torch.randint(0, 3, (b, t))
    valid = torch.rand(b, t) < 0.8
    valid[:, 0] = True
    with torch.no_grad():
        got = attn(x, pos, chan, valid)
        q, k, v = attn.qkv(x).view(b, t, 3, 2, 32).unbind(dim=2)
        q = rotary(attn.q_norm(q).transpose(1, 2), pos[:, None])
        k = rotary(attn.k_norm(k).transpose(1, 2), pos[:, None])
        scores = q @ k.transpose(-1, -2) / 32  # muP: 1/d_head, not 1/sqrt(d_head)
        same = (chan[:, :, None] == chan[:, None, :])[:, None]
        u = attn.channel_bias
        # the code's order: u[0] cross-channel (u2), u[1] same-channel (u1)
        scores = scores + torch.where(same, u[1][None, :, None, None], u[0][None, :, None, None])
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        y = scores.softmax(-1) @ v.transpose(1, 2)
        want = attn.out(y.transpose(1, 2).reshape(b, t, 64))
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_rotary_scores_depend_on_relative_patch_index_only() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 32, generator=g)
    for i, j, shift in [(3, 1, 5), (0, 7, 11), (4, 4, 2)]:
        a = rotary(q, torch.tensor(i)) @ rotary(k, torch.tensor(j))
        b = rotary(q, torch.tensor(i + shift)) @ rotary(k, torch.tensor(j + shift))
        assert torch.allclose(a, b, atol=1e-5)
    # and it is not trivially constant: a different offset changes the score
    assert not torch.allclose(
        rotary(q, torch.tensor(3)) @ rotary(k, torch.tensor(1)),
        rotary(q, torch.tensor(3)) @ rotary(k, torch.tensor(2)),
        atol=1e-3,
    )


# --- 2. padding: a mixed batch equals each window alone --------------------------------

# (channels, patches); N = 4 < the STCPE window 7: a window shorter than one STCPE window.
MIXED_SHAPES = [(3, 9), (5, 4), (2, 12)]


@pytest.mark.parametrize("patch", PATCHES)
def test_padded_batch_matches_each_window_alone(patch: str) -> None:
    model = eval_model(patch)
    batch, singles = random_batch(patch, MIXED_SHAPES, seed=1)
    out = encode(model, batch)
    assert out.shape == (3, 5, 12, 64)
    for i, ((c, n), single) in enumerate(zip(MIXED_SHAPES, singles, strict=True)):
        alone = encode(model, single)
        assert alone.shape == (1, c, n, 64)
        assert torch.allclose(out[i, :c, :n], alone[0], atol=ATOL, rtol=RTOL), i

    # Same mask -> per target, the batch MSE is the token-weighted mean of the windows'.
    g = torch.Generator().manual_seed(2)
    mask = torch.rand(valid_tokens(batch).shape, generator=g) < 0.5  # also over padding
    with torch.no_grad():
        full = model(batch, mask=mask)
        assert torch.equal(full.mask, mask & valid_tokens(batch))
        parts, counts = [], []
        for i, ((c, n), single) in enumerate(zip(MIXED_SHAPES, singles, strict=True)):
            own = mask[i : i + 1, :c, :n]
            assert own.any()
            parts.append(model(single, mask=own).losses)
            counts.append(int(own.sum()))
    assert set(full.losses) == set(LAMBDA[patch])
    for key, value in full.losses.items():
        pooled = sum(m * p[key] for m, p in zip(counts, parts, strict=True)) / sum(counts)
        assert torch.allclose(value, pooled, atol=1e-5, rtol=1e-4), key


# --- 3. the loss sees masked tokens only ------------------------------------------------


def _capture_encoder_input(model: DiverPretrainModel) -> tuple[list[torch.Tensor], object]:
    seen: list[torch.Tensor] = []
    handle = model.encoder.register_forward_pre_hook(lambda _m, args: seen.append(args[0].patches))
    return seen, handle


@pytest.mark.parametrize("patch", PATCHES)
def test_loss_equals_manual_masked_reconstruction(patch: str) -> None:
    model = eval_model(patch)
    batch, _ = random_batch(patch, [(4, 9), (3, 6)], seed=3)
    valid = valid_tokens(batch)
    g = torch.Generator().manual_seed(4)
    mask = (torch.rand(valid.shape, generator=g) < 0.5) & valid
    seen, handle = _capture_encoder_input(model)
    with torch.no_grad():
        out = model(batch, mask=mask)
    handle.remove()

    # masked patches are zeros before the encoder; the rest are the patches themselves
    visible = seen[0]
    assert torch.equal(visible[mask], torch.zeros_like(visible[mask]))
    assert torch.equal(visible[~mask], batch.patches[~mask])

    # the loss, rebuilt from the model's parts and SPEC §2's lambdas
    zeroed = batch.patches * (~mask)[..., None]

    with torch.no_grad():
        h = model.encoder(batch.with_patches(zeroed))[mask]
        targets = compute_targets(batch.patches[mask], model.target_spec)
        mse = {k: ((model.heads[k](h) - targets[k]) ** 2).mean() for k in LAMBDA[patch]}
    assert set(out.losses) == set(LAMBDA[patch])
    for key in LAMBDA[patch]:
        assert torch.allclose(out.losses[key], mse[key], atol=1e-6, rtol=1e-5), key
    manual = sum(LAMBDA[patch][k] * mse[k] for k in LAMBDA[patch])
    assert torch.allclose(out.loss, manual, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("patch", PATCHES)
def test_masked_patch_reaches_the_loss_only_as_a_target(patch: str) -> None:
    model = eval_model(patch)
    batch, _ = random_batch(patch, [(4, 9), (3, 6)], seed=5)
    valid = valid_tokens(batch)
    g = torch.Generator().manual_seed(6)
    mask = (torch.rand(valid.shape, generator=g) < 0.5) & valid
    masked_token = tuple(int(i) for i in mask.nonzero()[0])
    unmasked_token = tuple(int(i) for i in (valid & ~mask).nonzero()[0])
    padded_token = (1, 3, 7)  # channel 3, patch 7 of the 3 x 6 window
    assert not valid[padded_token]

    def run(patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen, handle = _capture_encoder_input(model)
        with torch.no_grad():
            loss = model(batch.with_patches(patches), mask=mask).loss
        handle.remove()
        return loss, seen[0]

    base_loss, base_input = run(batch.patches)
    bump = 3 * torch.sin(torch.arange(PATCH_SAMPLES[patch]) * 0.7)

    changed = batch.patches.clone()
    changed[masked_token] += bump
    loss, encoder_input = run(changed)
    assert torch.equal(encoder_input, base_input)  # the encoder never sees it...
    assert not torch.isclose(loss, base_loss, rtol=1e-3)  # ...the target does

    changed = batch.patches.clone()
    changed[unmasked_token] += bump
    _, encoder_input = run(changed)
    assert not torch.equal(encoder_input, base_input)  # a visible patch is input

    changed = batch.patches.clone()
    changed[padded_token] += 1e3 * bump
    loss, _ = run(changed)
    assert torch.allclose(loss, base_loss, atol=1e-6, rtol=1e-6)  # padding: nowhere


def test_loss_gradient_flows_only_from_masked_tokens() -> None:
    model = eval_model("1s")
    batch, _ = random_batch("1s", [(4, 9), (3, 6)], seed=7)
    valid = valid_tokens(batch)
    mask = (torch.rand(valid.shape, generator=torch.Generator().manual_seed(8)) < 0.5) & valid
    outputs: list[torch.Tensor] = []

    def keep(_module: object, _args: object, output: torch.Tensor) -> None:
        output.retain_grad()
        outputs.append(output)

    handle = model.encoder.register_forward_hook(keep)
    model(batch, mask=mask).loss.backward()
    handle.remove()
    grad = outputs[0].grad
    assert grad is not None
    assert torch.equal(grad[~mask], torch.zeros_like(grad[~mask]))
    assert (grad[mask].abs().sum(dim=-1) > 0).all()


def test_mask_is_bernoulli_half_over_valid_tokens_only() -> None:
    model = DiverPretrainModel(model_config("debug"))
    g = torch.Generator().manual_seed(9)
    b, c, n = 96, 32, 30
    channel_mask = torch.arange(c)[None] < torch.randint(1, c + 1, (b, 1), generator=g)
    patch_mask = torch.arange(n)[None] < torch.randint(1, n + 1, (b, 1), generator=g)
    valid = channel_mask[:, :, None] & patch_mask[:, None, :]
    mask = model.draw_mask(valid, torch.Generator().manual_seed(10))
    assert not (mask & ~valid).any()  # never a padded token
    n_valid = int(valid.sum())
    assert n_valid > 20_000
    fraction = mask.sum().item() / n_valid
    assert abs(fraction - 0.5) < 5 * 0.5 / math.sqrt(n_valid)  # 5 binomial sigmas
    # independent per token: a neighbour (next patch, next channel) is masked half the time
    for neighbours in (
        (mask[:, :, :-1], mask[:, :, 1:], valid[:, :, 1:]),
        (mask[:, :-1], mask[:, 1:], valid[:, 1:]),
    ):
        here, there, there_valid = neighbours
        pairs = here & there_valid
        assert abs((there & pairs).sum().item() / pairs.sum().item() - 0.5) < 0.02
    # reproducible from the generator, and different across seeds
    again = model.draw_mask(valid, torch.Generator().manual_seed(10))
    assert torch.equal(again, mask)
    assert not torch.equal(model.draw_mask(valid, torch.Generator().manual_seed(11)), mask)


def test_mask_never_empty_and_forward_mask_within_valid() -> None:
    model = DiverPretrainModel(model_config("debug"))
    one = torch.zeros(200, 3, 4, dtype=torch.bool)
    one[:, 1, 2] = True  # a single valid token per sample: it is always masked
    assert torch.equal(model.draw_mask(one, torch.Generator().manual_seed(0)), one)

    model = eval_model("0.1s")
    batch, _ = random_batch("0.1s", MIXED_SHAPES, seed=12)
    with torch.no_grad():
        out = model(batch, generator=torch.Generator().manual_seed(13))
    valid = valid_tokens(batch)
    assert out.mask.any() and not (out.mask & ~valid).any()
    assert torch.isfinite(out.loss)


def test_channel_ids_agree_with_data() -> None:
    """diver.data writes the ids the modality embedding reads (embedding.py's docstring)."""
    assert dataset.CHANNEL_TYPE_IDS == {
        "eeg": embedding.TYPE_EEG,
        "seeg": embedding.TYPE_SEEG,
        "ecog": embedding.TYPE_ECOG,
    }
    first = embedding.SUBTYPE_FIRST
    subtype_ids = {"grid": first, "strip": first + 1, "depth": first + 2}
    assert subtype_ids == dataset.CHANNEL_SUBTYPE_IDS
    assert dataset.NO_SUBTYPE_ID == 1 and dataset.PAD_ID == 0
    assert dataset.OTHER_CHANNEL_TYPE_ID not in dataset.CHANNEL_TYPE_IDS.values()

    # Behaviour: pad / other types and pad / no subtype contribute nothing; EEG and the
    # two iEEG types are learned, sEEG and ECoG sharing the iEEG vector.
    torch.manual_seed(0)
    modality = ModalityEmbedding(16)
    ids = dataset.CHANNEL_TYPE_IDS
    types = torch.tensor(
        [dataset.PAD_ID, ids["eeg"], ids["seeg"], ids["ecog"], dataset.OTHER_CHANNEL_TYPE_ID]
    )
    with torch.no_grad():
        by_type = modality(types, torch.full_like(types, dataset.NO_SUBTYPE_ID))
        subs = torch.tensor(
            [dataset.PAD_ID, dataset.NO_SUBTYPE_ID, *dataset.CHANNEL_SUBTYPE_IDS.values()]
        )
        by_subtype = modality(torch.full_like(subs, dataset.PAD_ID), subs)
    assert torch.equal(by_type[0], torch.zeros(16)) and torch.equal(by_type[4], torch.zeros(16))
    assert torch.equal(by_type[2], by_type[3]) and not torch.equal(by_type[1], by_type[2])
    assert torch.equal(by_type[1], modality.type_embedding.weight[0])
    assert torch.equal(by_subtype[:2], torch.zeros(2, 16))
    assert torch.equal(by_subtype[2:], modality.subtype_embedding.weight)


# --- 6. a debug model overfits one batch ------------------------------------------------


def test_debug_model_overfits_one_batch() -> None:
    """With a fixed mask, 250 MuAdamW steps memorise the masked tokens.

    Most of the first drop is the heads' biases learning the targets' means, so the
    bar is the best constant predictor (per-value mean over masked tokens): beating
    it by far needs token-specific information from the encoder.
    """
    torch.manual_seed(0)
    model = build_model(model_config("debug")).train()
    batch, _ = random_batch("1s", [(3, 4), (3, 4)], seed=14)
    mask = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(15)) < 0.5
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(250):
        loss = model(batch, mask=mask).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = model(batch, mask=mask).loss.item()
    targets = compute_targets(batch.patches[mask], model.target_spec)
    constant = sum(
        w * targets[k].var(dim=0, unbiased=False).mean().item() for k, w in LAMBDA["1s"].items()
    )
    assert losses[-1] < 0.05 * losses[0]  # measured 0.007-0.018 over 5 seeds
    assert final < 0.15 * constant  # measured 0.025-0.049


# --- 7. registry and parameter contract -------------------------------------------------


def test_registry_sizes() -> None:
    for size, width in SPEC_WIDTHS.items():
        config = model_config(size)
        assert (config.d_model, config.depth, config.head_dim) == (width, 12, 32)
    assert set(PUBLISHED_SIZES) == set(SPEC_WIDTHS)
    assert [SIZES[s]["d_model"] for s in ("debug", "debug-2x", "debug-4x")] == [64, 128, 256]
    with pytest.raises(ValueError, match="unknown model size"):
        model_config("huge")


@pytest.mark.parametrize(("size", "patch"), sorted(PUBLISHED_PARAMS))
def test_published_parameter_count(size: str, patch: str) -> None:
    """Exactly the authors' code's totals (SPEC §2), and the paper's rounding of them."""
    total = count_parameters(model_config(size, patch))
    assert total == PUBLISHED_PARAMS[(size, patch)]
    paper = {"0.1s": 12.72e6, "1s": 13.03e6} if size == "tiny" else None
    if paper:
        assert round(total / 1e4) / 100 == paper[patch] / 1e6
    # heads: one (d + 1)-wide linear map per predicted value, plus the mask token
    heads = total - count_parameters(model_config(size, patch), part="encoder")
    assert heads == (SPEC_WIDTHS[size] + 1) * HEAD_VALUES[patch] + PATCH_SAMPLES[patch]


def test_encoder_only_tiny_1s() -> None:
    encoder = count_parameters(model_config("tiny", "1s"), part="encoder")
    assert encoder == TINY_1S_ENCODER_PARAMS == 12_666_306  # SPEC §2


@pytest.mark.parametrize("patch", PATCHES)
@pytest.mark.parametrize("size", ["debug", "debug-2x", "debug-4x"])
def test_debug_ladder_trains(size: str, patch: str) -> None:
    torch.manual_seed(0)
    model = build_model(model_config(size, patch)).train()
    optimizer = make_optimizer(model, lr=1e-3, weight_decay=0.01)
    batch, _ = random_batch(patch, [(3, 5), (2, 8)], seed=16)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = model(batch, generator=torch.Generator().manual_seed(17)).loss
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(before) - trainable == {"mask_token"}  # frozen, as in the authors' code
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    optimizer.step()
    moved = [not torch.equal(p, before[name]) for name, p in model.named_parameters()]
    assert all(moved[i] for i, name in enumerate(before) if name in trainable)
    assert torch.equal(model.mask_token, torch.zeros(PATCH_SAMPLES[patch]))
