"""``diver embed`` and the model-loading API: per-window embeddings of recordings on
disk equal the encoder applied to the pretraining corpus' own windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from diver.cli import main
from diver.data import CorpusIndex, ResampleConfig, WindowDataset, collate_windows
from diver.model import CheckpointError, load_encoder, load_pretrained, pool_tokens
from tests.test_pretrain import (
    corpus,  # noqa: F401  (fixture: the synthetic pretraining corpus)
    reference,  # noqa: F401  (fixture: the debug model pretrained on it)
)


def test_load_api_and_errors(reference: Path, tmp_path: Path) -> None:  # noqa: F811
    encoder = load_encoder(reference / "model.pt")
    assert not encoder.training and encoder.config.d_model == 64
    model = load_pretrained(reference / "model.pt")
    assert torch.equal(model.encoder.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a zip")
    with pytest.raises(CheckpointError, match=f"model file {junk} cannot be read"):
        load_encoder(junk)
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="is not a diver model"):
        load_encoder(tmp_path / "other.pt")


def test_pool_tokens_averages_real_tokens_only() -> None:
    tokens = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    channel_mask = torch.tensor([[True, True, False], [True, False, False]])
    patch_mask = torch.tensor([[True, True], [True, False]])
    pooled = pool_tokens(tokens, channel_mask, patch_mask)
    assert torch.allclose(pooled[0], tokens[0, :2].reshape(-1, 4).mean(0))
    assert torch.allclose(pooled[1], tokens[1, 0, 0])


def test_embed_cli_matches_the_encoder_on_corpus_windows(
    corpus: Path,  # noqa: F811
    reference: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    index = CorpusIndex.from_dir(corpus)
    frame = index.frame
    eeg = frame[frame["dataset"] == "synth_eeg"]
    recording = eeg["recording"].value_counts().index[0]  # the one with most windows
    path = next((corpus.parent / "synth" / "eeg").glob(f"{recording}.*"))
    out = tmp_path / "emb.parquet"
    code = main(["embed", "--pretrained", str(reference / "model.pt"), "--input", str(path),
                 "--modality", "eeg", "--out", str(out)])  # fmt: skip
    assert code == 0
    table = pq.read_table(out)
    rows = index.subset((frame["recording"] == recording).to_numpy())
    assert table.num_rows == len(rows) > 0
    assert table.column("window_index").to_pylist() == rows.frame["window_index"].tolist()
    assert set(table.column("recording").to_pylist()) == {recording}
    embedding = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert embedding.shape == (len(rows), 64) and np.isfinite(embedding).all()
    # The same windows from the pretraining corpus (float16 shards), evaluation crop.
    dataset = WindowDataset(rows, 500, resample=ResampleConfig(enabled=False), shuffle=False)
    batch = collate_windows(list(dataset))
    encoder = load_encoder(reference / "model.pt")
    with torch.no_grad():
        tokens = encoder(batch.encoder_inputs())
    expected = pool_tokens(tokens, batch.channel_mask, batch.patch_mask).numpy()
    # float16 (corpus) vs float32 (embed) storage differ far less than windows differ.
    assert np.abs(embedding - expected).max() < 1e-3
    # Windows differ from each other (not a constant output).
    assert np.linalg.norm(embedding - embedding.mean(0), axis=1).min() > 0
