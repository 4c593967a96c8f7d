"""Parity with the authors' DIVER-1 code: their checkpoints in diver give their outputs.

Fixtures (``NAME.ckpt.pt``, ``NAME.io.pt``, ``NAME.json``; see the folder's README) were
made by running the authors' code (DIVER-Project/DIVER-1, ``models/diver.py``) on a fixed
input.  Each is its own test case: diver loads the checkpoint through its importer
(shape, depth and patch read from the tensors), takes each sample's modality and
subtypes from the JSON's ``batch``, and must reproduce **every** output listed in the
JSON except the inputs - the token embedding, the final tokens, every head and every
pretraining target - to 1e-5.  An output name this test does not know fails it.

The folder is ``$DIVER_PARITY_DATA`` (default ``../shared/official_parity`` beside the
repository).  Without it the test is skipped locally; under CI (``CI=true``) a missing
folder, or one without fixtures, is a failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diver.model.load import load_pretrained
from diver.model.official import official_inputs
from diver.model.targets import compute_targets
from tests.conftest import parity_data_dir

pytestmark = pytest.mark.usefixtures("one_thread")

FOLDER = parity_data_dir()
ATOL = 1e-5
INPUTS = {"x", "coords"}
HEADS = {
    "y_org.time_head_output": "time",
    "y_org.fft_amplitude_head_output": "fft",
    "y_org.multiscale_stft_amplitude_head_output": "stft",
}
TARGETS = {"target.time": "time", "target.fft": "fft", "target.stft": "stft"}


FIXTURES = sorted(p.name.removesuffix(".ckpt.pt") for p in FOLDER.glob("*.ckpt.pt"))


def test_fixture_folder_present(parity_data: Path) -> None:
    assert FIXTURES, parity_data  # the fixture fails under CI when there are none


def test_every_fixture_is_complete() -> None:
    for name in FIXTURES:
        for suffix in (".io.pt", ".json"):
            assert (FOLDER / f"{name}{suffix}").is_file(), f"{name}{suffix} is missing"


def diver_outputs(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """(diver's outputs by the fixture's names, the fixture's tensors, its JSON)."""
    meta = json.loads((FOLDER / f"{name}.json").read_text())
    io = torch.load(FOLDER / f"{name}.io.pt", map_location="cpu", weights_only=True)
    model = load_pretrained(FOLDER / f"{name}.ckpt.pt")
    config = model.config
    assert (config.d_model, config.depth, config.patch_samples) == (
        meta["d_model"],
        meta["e_layer"],
        meta["patch_size"],
    )
    inputs = official_inputs(io["x"], io["coords"], meta["batch"], config.patch)
    with torch.no_grad():
        embedding = model.encoder.embed(inputs)
        embedding = embedding + model.encoder.stcpe(
            embedding, inputs.channel_mask, inputs.patch_mask
        )
        tokens = model.encoder(inputs)
        targets = compute_targets(inputs.patches, model.target_spec)
        ours = {"embedding_output": embedding, "y": tokens}
        for key, head in HEADS.items():
            if head in model.heads:
                ours[key] = model.heads[head](tokens)
        for key, target in TARGETS.items():
            if target in targets:
                ours[key] = targets[target]
    return ours, io, meta


@pytest.mark.parametrize("name", FIXTURES)
def test_outputs_match_the_authors_code(name: str) -> None:
    ours, io, meta = diver_outputs(name)
    checked = []
    for key, shape in meta["outputs"].items():
        if key in INPUTS:
            continue
        assert key in ours, f"{name}: diver has no output for {key!r}"
        theirs = io[key].float()
        assert list(theirs.shape) == shape, key
        assert ours[key].shape == theirs.shape, (key, ours[key].shape, theirs.shape)
        diff = (ours[key] - theirs).abs().max().item()
        assert diff <= ATOL, f"{name}: {key} differs by {diff:.3g} (> {ATOL})"
        checked.append(key)
    # every head and target diver has was in the fixture (none silently unchecked)
    assert {"y", "embedding_output"} <= set(checked)
    assert set(ours) == set(checked), set(ours) - set(checked)
