"""Per-window embeddings of new recordings with a pretrained encoder (``diver embed``).

For users who want DIVER-1 features rather than a fine-tuned classifier.  Recordings
go through exactly the corpus stage (``diver.corpus.recording.process_recording``:
typing, positions, filters, 500 Hz, scaling, QA/QC, 30 s windows) into a temporary
folder beside the output, so the encoder sees what it saw in pretraining; a window
the QA/QC drops is not embedded, and a recording the corpus would quarantine is
reported and skipped.  Each window is cut as pretraining's validation does (the
deterministic evaluation crop: at most 32 channels spread over the montage, the
first 30 patches), encoded in eval mode, and its tokens averaged over channels and
patches (:func:`diver.model.pool_tokens`).

Output: one Parquet row per window with ``dataset``, ``subject``, ``recording``,
``window_index``, ``start_seconds``, ``modality``, ``n_channels`` / ``n_patches``
(those encoded) and ``embedding`` (a fixed-size list of d float32); the footer
names the model file and its config.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from diver.atomic import replacing
from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.discovery import discover_recordings
from diver.corpus.recording import process_recording
from diver.corpus.shards import WINDOW_KEY_FIELDS, coords_of, shard_path, signals_of
from diver.data.dataset import (
    WindowSample,
    channel_subtype_id,
    channel_type_id,
    collate_windows,
    modality_id,
)
from diver.data.resample import ResampleConfig, apply_crop, eval_crop
from diver.errors import DiverError
from diver.model.load import load_checkpoint, load_encoder, pool_tokens

log = logging.getLogger(__name__)


def embedding_schema(d_model: int) -> pa.Schema:
    """Columns of an embeddings file (``embedding``: d float32 per window)."""
    return pa.schema(
        [
            *WINDOW_KEY_FIELDS,
            ("n_channels", pa.int32()),
            ("n_patches", pa.int32()),
            ("embedding", pa.list_(pa.float32(), d_model)),
        ]
    )


@dataclass(frozen=True)
class EmbedSummary:
    out: Path
    windows: int
    recordings: int
    skipped: tuple[tuple[str, str], ...]  # (recording, reason) of those not embedded
    d_model: int


def _samples(shard: Path, patch_samples: int, crop: ResampleConfig) -> list[WindowSample]:
    table = pq.read_table(shard)
    signals, coords = signals_of(table), coords_of(table)
    col = table.column
    types, subtypes = col("channel_types").to_pylist(), col("channel_subtypes").to_pylist()
    out = []
    for i, signal in enumerate(signals):
        n_patches = signal.shape[1] // patch_samples
        cut = eval_crop(signal.shape[0], n_patches, crop)
        kept = cut.channels.tolist()
        out.append(
            WindowSample(
                signal=torch.from_numpy(apply_crop(signal, cut, patch_samples)),
                coords=torch.from_numpy(np.array(coords[i][cut.channels], dtype=np.float32)),
                channel_type_ids=torch.tensor([channel_type_id(types[i][c]) for c in kept]),
                channel_subtype_ids=torch.tensor(
                    [channel_subtype_id(subtypes[i][c]) for c in kept]
                ),
                modality_id=modality_id(col("modality")[i].as_py()),
                channels=torch.from_numpy(cut.channels),
                patch_start=0,
                patch_samples=patch_samples,
                dataset=col("dataset")[i].as_py(),
                subject=col("subject")[i].as_py(),
                recording=col("recording")[i].as_py(),
                window_index=int(col("window_index")[i].as_py()),
            )
        )
    return out


def embed_recordings(
    pretrained: Path | str,
    inputs: Sequence[str],
    out: Path | str,
    *,
    dataset: DatasetConfig | None = None,
    corpus: CorpusConfig | None = None,
    batch_size: int = 16,
    device: str = "cpu",
) -> EmbedSummary:
    """Embed every 30 s window of the recordings under ``inputs`` into ``out`` (Parquet).

    ``dataset`` gives typing and filter settings (default: modality ``auto``, the
    corpus defaults); its ``inputs`` are replaced by ``inputs``.
    """
    out = Path(out)
    config, _, _ = load_checkpoint(pretrained)
    encoder = load_encoder(pretrained, device=device)
    dataset = replace(dataset or DatasetConfig(name="embed", inputs=()), inputs=tuple(inputs))
    corpus = replace(corpus or CorpusConfig(), signal_dtype="float32", jobs=1)
    sources = discover_recordings(dataset)
    if not sources:
        raise DiverError(f"no recordings found under {list(inputs)}")
    crop = ResampleConfig(enabled=False)
    rows: dict[str, list] = {
        k: []
        for k in (
            "dataset", "subject", "recording", "window_index", "start_seconds", "modality",
            "n_channels", "n_patches", "embedding",
        )
    }  # fmt: skip
    skipped = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".embed-", dir=out.parent) as tmp:
        for source in sources:
            report = process_recording(source, dataset, corpus, Path(tmp))
            shard = shard_path(Path(tmp), source.dataset, source.recording)
            if not shard.exists():
                reason = report.qc.get("reason") or report.qc.get("status", "no window")
                log.warning("%s: not embedded (%s)", source.path, reason)
                skipped.append((source.recording, str(reason)))
                continue
            starts = pq.read_table(shard, columns=["start_seconds", "modality"])
            samples = _samples(shard, config.patch_samples, crop)
            for b in range(0, len(samples), batch_size):
                batch = collate_windows(samples[b : b + batch_size]).to(device)
                with torch.no_grad():
                    tokens = encoder(batch.encoder_inputs())
                    pooled = pool_tokens(tokens, batch.channel_mask, batch.patch_mask)
                for j, vector in enumerate(pooled.float().cpu().numpy()):
                    k = b + j
                    rows["dataset"].append(batch.datasets[j])
                    rows["subject"].append(batch.subjects[j])
                    rows["recording"].append(batch.recordings[j])
                    rows["window_index"].append(samples[k].window_index)
                    rows["start_seconds"].append(starts.column("start_seconds")[k].as_py())
                    rows["modality"].append(starts.column("modality")[k].as_py())
                    rows["n_channels"].append(samples[k].n_channels)
                    rows["n_patches"].append(samples[k].n_patches)
                    rows["embedding"].append(vector)
    d = config.d_model
    flat = np.concatenate(rows["embedding"]) if rows["embedding"] else np.zeros(0, np.float32)
    schema = embedding_schema(d)
    arrays = [pa.array(rows[f.name], f.type) for f in schema if f.name != "embedding"]
    arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), d))
    table = pa.Table.from_arrays(arrays, schema=schema)
    meta = {"pretrained": str(Path(pretrained).resolve()), "model_config": asdict(config)}
    table = table.replace_schema_metadata({b"diver.embed": json.dumps(meta).encode()})
    with replacing(out) as tmp_out:
        pq.write_table(table, tmp_out, compression="zstd")
    return EmbedSummary(out, table.num_rows, len(sources), tuple(skipped), d)
