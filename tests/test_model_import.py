"""`diver model import` and loading the authors' checkpoints: layouts, refusals, safety.

The checkpoints are the authors' parity fixtures (real files of their code's layout,
see tests/test_parity.py); the other layouts - DeepSpeed's ``{"module": ...}``, a bare
state dict, ``module.`` / ``backbone.`` prefixes, braindecode's ``DIVER1`` names - are
written from them here.  Every accepted layout must give the same weights; every
refused file must name the file and the problem, and write nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diver.model import CheckpointError, load_pretrained
from diver.model.load import import_checkpoint, load_checkpoint
from diver.model.official import official_inputs

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = "official_d256_L2_p500"  # float32, 2 layers, 1 s patches
TINY_BF16 = "official_d256_L12_p50"  # the released Tiny-0.1s shape, bfloat16

# braindecode's DIVER1 names for the authors' (its PR #1170 converter's table, written
# out here independently of diver.model.official).
BRAINDECODE = [
    ("token_manager.special_tokens.N_token.param", "patch_register"),
    ("token_manager.special_tokens.C_token.param", "chan_register"),
    ("token_manager.special_tokens.NC_token.param", "global_register"),
    ("embedding.0.proj_in.", "patch_cnn.proj_in."),
    ("embedding.1.embedding.spectral_proj.", "spectral_emb.spectral_proj."),
    ("embedding.2.embedding.embedding2.models.0.embedding.", "chan_emb.type_emb."),
    ("embedding.2.embedding.embedding2.models.1.embedding.", "chan_emb.subtype_emb."),
    ("embedding.3.embedding.0.module.", "stcpe.down."),
    ("embedding.3.embedding.2.module.", "stcpe.up."),
    ("embedding.3.embedding.1.model.encoder.", "stcpe.encoder."),
    ("encoder.encoder.", "encoder."),
]


def authors_state(parity_data: Path, name: str = SMALL) -> dict[str, torch.Tensor]:
    payload = torch.load(parity_data / f"{name}.ckpt.pt", weights_only=True)
    return payload["model_state_dict"]


def fixture_tokens(parity_data: Path, model_file: Path, name: str = SMALL) -> float:
    """Max |difference| of the encoder output against the authors' ``y``."""
    meta = json.loads((parity_data / f"{name}.json").read_text())
    io = torch.load(parity_data / f"{name}.io.pt", weights_only=True)
    model = load_pretrained(model_file)
    with torch.no_grad():
        tokens = model.encoder(official_inputs(io["x"], io["coords"], meta["batch"], "1s"))
    return (tokens - io["y"]).abs().max().item()


def test_every_layout_gives_the_same_weights(parity_data: Path, tmp_path: Path) -> None:
    state = authors_state(parity_data)
    _, reference, extra = load_checkpoint(parity_data / f"{SMALL}.ckpt.pt")
    assert extra == {"source": "authors"}
    layouts = {
        "deepspeed": {"module": {**state, "note": None}, "optimizer": None, "ds_version": "0"},
        "bare": state,
        "state_dict": {"state_dict": state},
        "dataparallel": {"model_state_dict": {f"module.{k}": v for k, v in state.items()}},
        "finetune_backbone": {f"backbone.{k}": v for k, v in state.items()},
        "bf16": {"model_state_dict": {k: v.bfloat16() for k, v in state.items()}},
    }
    for label, payload in layouts.items():
        path = tmp_path / f"{label}.pt"
        torch.save(payload, path)
        config, weights, _ = load_checkpoint(path)
        assert (config.d_model, config.depth, config.patch) == (256, 2, "1s"), label
        assert weights.keys() == reference.keys(), label
        for key, value in weights.items():
            assert value.dtype == torch.float32, (label, key)
            if label == "bf16":
                assert torch.equal(value, reference[key].bfloat16().float()), (label, key)
            else:
                assert torch.equal(value, reference[key]), (label, key)


def test_import_cli_writes_a_model_that_reproduces_the_authors_tokens(
    parity_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "models" / "imported.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "diver", "model", "import", "--from",
         str(parity_data / f"{SMALL}.ckpt.pt"), "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "d_model 256, depth 2, 1s" in proc.stdout
    payload = torch.load(out, weights_only=True)
    assert {"state_dict", "model_config", "step", "imported_from"} <= set(payload)
    assert fixture_tokens(parity_data, out) <= 1e-5
    assert [p.name for p in out.parent.iterdir()] == ["imported.pt"]  # no temporary left


def test_bf16_tiny_imports_with_depth_and_patch_from_shapes(
    parity_data: Path, tmp_path: Path
) -> None:
    config = import_checkpoint(parity_data / f"{TINY_BF16}.ckpt.pt", tmp_path / "tiny.pt")
    assert (config.d_model, config.depth, config.patch) == (256, 12, "0.1s")
    model = load_pretrained(tmp_path / "tiny.pt")
    assert set(model.heads) == {"time", "fft"}  # no STFT head at 0.1 s (SPEC §2)
    assert next(model.parameters()).dtype == torch.float32


def test_braindecode_names_load_with_fresh_heads(parity_data: Path, tmp_path: Path) -> None:
    renamed = {}
    for key, value in authors_state(parity_data).items():
        if key == "mask_encoding" or key.startswith("heads."):
            continue  # braindecode's port has no pretraining heads or mask token
        for authors, theirs in BRAINDECODE:
            if key.startswith(authors):
                key = theirs + key.removeprefix(authors)
                break
        renamed[key.replace("var_attn_bias.emb.weight", "channel_bias.weight")] = value
    renamed["final_layer.weight"] = torch.zeros(2, 2048)  # its classifier: not imported
    renamed["final_layer.bias"] = torch.zeros(2)
    source = tmp_path / "braindecode.pt"
    torch.save(renamed, source)
    _, _, extra = load_checkpoint(source)
    assert extra["source"] == "braindecode"
    assert "mask_token" in extra["initialised"]
    assert any(k.startswith("heads.") for k in extra["initialised"])
    import_checkpoint(source, tmp_path / "bd_model.pt")
    assert fixture_tokens(parity_data, tmp_path / "bd_model.pt") <= 1e-5


def _refused(source: Path, out: Path, *match: str) -> None:
    with pytest.raises(CheckpointError) as info:
        import_checkpoint(source, out)
    message = str(info.value)
    assert str(source) in message
    for text in match:
        assert text in message, message


def test_refusals_name_the_file_and_keys_and_write_nothing(
    parity_data: Path, tmp_path: Path
) -> None:
    state = authors_state(parity_data)
    out = tmp_path / "model.pt"
    out.write_bytes(b"an earlier model, which a failed import must not touch")

    extra = dict(state, **{"encoder.encoder.layers.0.self_attn.lora_A": torch.zeros(2)})
    torch.save({"model_state_dict": extra}, tmp_path / "extra.pt")
    _refused(tmp_path / "extra.pt", out, "lora_A")

    missing = {k: v for k, v in state.items() if k != "encoder.encoder.layers.1.ffn.fc2.weight"}
    torch.save({"model_state_dict": missing}, tmp_path / "missing.pt")
    _refused(tmp_path / "missing.pt", out, "encoder.blocks.1.ffn.w2.weight", "missing")

    no_heads = {k: v for k, v in state.items() if not k.startswith("heads.")}
    torch.save(no_heads, tmp_path / "no_heads.pt")
    _refused(tmp_path / "no_heads.pt", out, "heads.time.weight")

    gap = {k: v for k, v in state.items() if not k.startswith("encoder.encoder.layers.0.")}
    torch.save(gap, tmp_path / "gap.pt")
    _refused(tmp_path / "gap.pt", out, "layers [1]")

    wrong_mask = dict(state, mask_encoding=torch.zeros(50))
    torch.save(wrong_mask, tmp_path / "mask.pt")
    _refused(tmp_path / "mask.pt", out, "mask token")

    torch.save({"optimizer": {"lr": 1.0}}, tmp_path / "other.pt")
    _refused(tmp_path / "other.pt", out, "not a diver model")

    (tmp_path / "text.pt").write_text("not a checkpoint")
    _refused(tmp_path / "text.pt", out, "cannot be read")

    assert out.read_bytes() == b"an earlier model, which a failed import must not touch"
    assert sorted(p.name for p in tmp_path.iterdir() if "tmp" in p.name) == []


def test_import_cli_reports_a_bad_file_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_text("nope")
    proc = subprocess.run(
        [sys.executable, "-m", "diver", "model", "import", "--from", str(tmp_path / "bad.pt"),
         "--out", str(tmp_path / "out.pt")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert str(tmp_path / "bad.pt") in proc.stderr
    assert not (tmp_path / "out.pt").exists()


class _Payload:
    """An object whose unpickling runs a command - what a hostile checkpoint carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_code_payload_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    hostile = tmp_path / "hostile.pt"
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "hook": _Payload(marker)}, hostile)
    # the attack is real: a plain unpickling runs it
    torch.load(hostile, weights_only=False)
    assert marker.exists()
    marker.unlink()
    _refused(hostile, tmp_path / "out.pt", "cannot be read")
    with pytest.raises(CheckpointError):
        load_pretrained(hostile)
    assert not marker.exists()
    assert not (tmp_path / "out.pt").exists()


def test_imported_model_embeds_a_real_recording(
    parity_data: Path, shared_data: Path, tmp_path: Path
) -> None:
    """`diver embed --pretrained` takes the imported file: one d-vector per 30 s window
    of a real recording (FIF, 200 Hz), from the authors' weights."""
    import pandas as pd
    import pyarrow.parquet as pq

    from diver.cli import main

    model = tmp_path / "imported.pt"
    import_checkpoint(parity_data / f"{SMALL}.ckpt.pt", model)
    out = tmp_path / "emb.parquet"
    recording = shared_data / "resting_yasa" / "data_resting_EO_200Hz_raw.fif"
    code = main(["embed", "--pretrained", str(model), "--input", str(recording),
                 "--modality", "eeg", "--threads", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    frame = pd.read_parquet(out)
    assert len(frame) == 12  # six minutes of resting EEG: twelve 30 s windows
    meta = json.loads(pq.read_schema(out).metadata[b"diver.embed"])
    assert meta["pretrained"] == str(model.resolve()) and meta["model_config"]["depth"] == 2
    vectors = np.stack(frame["embedding"].to_numpy())
    assert vectors.shape[1] == 256 and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])  # windows differ


@pytest.mark.slow
def test_imported_tiny_fine_tunes_on_a_shipped_task(parity_data: Path, tmp_path: Path) -> None:
    """The released Tiny-0.1s shape (bf16) -> `diver model import` -> `diver finetune
    --pretrained` on the shipped synthetic iEEG task runs end to end (random weights:
    only that it runs and reports, not how well)."""
    from tests.conftest import REPO_ROOT

    diver = [sys.executable, "-m", "diver"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*diver, *args], capture_output=True, text=True, check=False, cwd=tmp_path, env=env
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    model = tmp_path / "tiny01.pt"
    run("model", "import", "--from", str(parity_data / f"{TINY_BF16}.ckpt.pt"), "--out", str(model))
    run("task", "synth", "--out", str(tmp_path / "results" / "synth_task"))
    task = REPO_ROOT / "config" / "tasks" / "synth_ieeg_oscillation.yaml"
    run("finetune", "--task", str(task), "--pretrained", str(model), "--mode", "linear-probe",
        "--epochs", "1", "--seeds", "41", "--baselines", "--results-dir",
        str(tmp_path / "results"), "--out", str(tmp_path / "ft"))  # fmt: skip
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert "diver" in json.dumps(metrics)
    assert (tmp_path / "ft" / "predictions.csv").stat().st_size > 0
