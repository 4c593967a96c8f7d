"""One recording, raw file to Parquet shard: read, type, filter, resample, QA/QC, window.

Memory stays bounded for multi-hour recordings: the file is opened lazily and
processed in blocks of ``block_windows`` windows, each read with enough context on
both sides (the high-pass filter's length) that its windows equal those of
whole-signal processing.  Each block is turned into an :class:`mne.io.RawArray`
and run through the preprocessing chain, so MNE does all the signal work.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mne
import numpy as np
from mne.io.constants import FIFF

from diver.config import CorpusConfig, DatasetConfig
from diver.corpus.channels import (
    IEEG_TYPES,
    ChannelInfo,
    describe_channels,
    in_file_position_mm,
)
from diver.corpus.discovery import RecordingSource, extension
from diver.corpus.nwb import RawNWB, read_raw_nwb
from diver.corpus.preprocess import apply_chain, build_chain, padding_seconds
from diver.corpus.qc import qc_block
from diver.corpus.quarantine import Quarantine
from diver.corpus.shards import ShardWriter, Window, shard_path
from diver.corpus.units import calibrate
from diver.study.budget import window_tokens

log = logging.getLogger(__name__)

HEALTH_BLOCK_SECONDS = 600.0


@dataclass
class RecordingReport:
    """What processing a recording produced: its qc.csv row and channels.csv rows."""

    qc: dict[str, Any]
    channels: list[dict[str, Any]] = field(default_factory=list)


# qc.csv columns and the values a recording gets before anything is known about it.
QC_DEFAULTS: dict[str, Any] = {
    "dataset": "",
    "recording": "",
    "subject": "",
    "subject_source": "",
    "path": "",
    "status": "quarantined",
    "reason": "",
    "sfreq": math.nan,
    "duration_s": math.nan,
    "channels_in": 0,
    "channels_neural": 0,
    "channels_kept": 0,
    "channels_dropped": 0,
    "windows_total": 0,
    "windows_kept": 0,
    "windows_dropped": 0,
    "hours": 0.0,
    "hours_kept": 0.0,
    "channel_hours": 0.0,
    "tokens": 0.0,
    "cbramod_channel_hours": 0.0,
}
QC_COLUMNS = list(QC_DEFAULTS)


def _qc_row(source: RecordingSource, **values: Any) -> dict[str, Any]:
    unknown = set(values) - set(QC_DEFAULTS)
    if unknown:
        raise KeyError(f"not qc.csv columns: {sorted(unknown)}")
    return {
        **QC_DEFAULTS,
        "dataset": source.dataset,
        "recording": source.recording,
        "subject": source.subject,
        "subject_source": source.subject_source,
        "path": str(source.path),
        **values,
    }


def quarantined_row(row: dict[str, Any], reason: str) -> dict[str, Any]:
    """``row``'s recording as a quarantined qc row: the row :func:`process_recording`
    makes for that recording when it is quarantined before being read."""
    keep = ("dataset", "recording", "subject", "subject_source", "path")
    return {**QC_DEFAULTS, **{k: row[k] for k in keep}, "status": "quarantined", "reason": reason}


def _channel_rows(
    source: RecordingSource,
    infos: list[ChannelInfo],
    status: list[str],
    windows_kept: np.ndarray,
    windows_dropped: np.ndarray,
) -> list[dict[str, Any]]:
    return [
        {
            "dataset": source.dataset,
            "recording": source.recording,
            "name_raw": ch.name_raw,
            "name": ch.name,
            "type": ch.type,
            "subtype": ch.subtype,
            "x": ch.xyz_mm[0],
            "y": ch.xyz_mm[1],
            "z": ch.xyz_mm[2],
            "coord_frame": ch.coord_frame,
            "status": status[i],
            "windows_kept": int(windows_kept[i]),
            "windows_dropped": int(windows_dropped[i]),
        }
        for i, ch in enumerate(infos)
    ]


def _read_mne(path: Path) -> mne.io.BaseRaw:
    return mne.io.read_raw(path, preload=False, verbose="error")


def _read_nwb(path: Path) -> mne.io.BaseRaw:
    return read_raw_nwb(path, verbose="error")


# Extensions MNE cannot read, with diver's own lazy reader; all others go to MNE.
READERS: dict[str, Callable[[Path], mne.io.BaseRaw]] = {".nwb": _read_nwb}


def read_raw(path: Path) -> mne.io.BaseRaw:
    """Open a recording lazily; any reader failure becomes a Quarantine."""
    reader = READERS.get(extension(Path(path)), _read_mne)
    try:
        return reader(path)
    except Exception as exc:  # readers raise many types for bad files
        raise Quarantine(f"unreadable: {type(exc).__name__}: {exc}") from exc


# MNE's coordinate frames as written into channels.csv / the shards' coord_frame.
MNE_FRAMES = {
    FIFF.FIFFV_COORD_HEAD: "mne_head",
    FIFF.FIFFV_COORD_MRI: "mne_mri",
    FIFF.FIFFV_MNE_COORD_MNI_TAL: "mne_mni_tal",
    FIFF.FIFFV_MNE_COORD_FS_TAL: "mne_fs_tal",
    FIFF.FIFFV_MNE_COORD_RAS: "mne_ras",
}


def in_file_positions(
    raw: mne.io.BaseRaw, dataset: DatasetConfig
) -> tuple[list[tuple[float, float, float]], str]:
    """Channel positions the recording itself stores (metres, per channel) and their frame.

    The frame is MNE's frame of the positioned channels (the most common one, should
    they differ), or the dataset's ``coord_frame`` when MNE calls it unknown -- as
    the NWB reader does, NWB having no field that names the space.
    """
    locs = [ch["loc"] for ch in raw.info["chs"]]
    positions = [(float(loc[0]), float(loc[1]), float(loc[2])) for loc in locs]
    frames = Counter(
        int(ch["coord_frame"])
        for ch, xyz in zip(raw.info["chs"], positions, strict=True)
        if in_file_position_mm(xyz) is not None
    )
    frame = MNE_FRAMES.get(frames.most_common(1)[0][0], "") if frames else ""
    return positions, frame or dataset.coord_frame


def channel_health(
    raw: mne.io.BaseRaw,
    picks: np.ndarray,
    flat_std_uv: float,
    factors: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(all_nan, flat) per picked channel over the whole recording, read block by block.

    Whole-recording dead channels (unused amplifier inputs, disconnected contacts)
    are removed before window QC; counted per window they would make every window
    look compromised.  ``factors`` (per pick, from :func:`diver.corpus.units.calibrate`)
    put the reader's volts into true volts first.
    """
    n = raw.n_times
    scale = (np.ones(len(picks)) if factors is None else np.asarray(factors))[:, None] * 1e6
    step = max(1, int(HEALTH_BLOCK_SECONDS * raw.info["sfreq"]))
    count = np.zeros(len(picks))
    total = np.zeros(len(picks))
    total_sq = np.zeros(len(picks))
    for start in range(0, n, step):
        try:
            block = raw.get_data(picks=picks, start=start, stop=min(n, start + step)) * scale
        except Exception as exc:
            raise Quarantine(f"unreadable data: {type(exc).__name__}: {exc}") from exc
        finite = np.isfinite(block)
        block = np.where(finite, block, 0.0)
        # plain float64 sums: even a 10 mV DC offset leaves var = E[x^2] - mean^2 exact
        # to ~1e-8 µV^2, far below the flat threshold (0.1 µV std)
        count += finite.sum(axis=1)
        total += block.sum(axis=1)
        total_sq += (block**2).sum(axis=1)
    all_nan = count == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
        var = np.maximum(total_sq / count - mean**2, 0.0)
    flat = ~all_nan & ~(np.sqrt(var) >= flat_std_uv)
    return all_nan, flat


def process_recording(
    source: RecordingSource, dataset: DatasetConfig, corpus: CorpusConfig, out_dir: Path
) -> RecordingReport:
    """Process one recording into its shard; never raises for bad input (it quarantines)."""
    try:
        return _process(source, dataset, corpus, out_dir)
    except Quarantine as exc:
        log.warning("%s/%s quarantined: %s", source.dataset, source.recording, exc)
        return RecordingReport(qc=_qc_row(source, status="quarantined", reason=str(exc)))


def _process(
    source: RecordingSource, dataset: DatasetConfig, corpus: CorpusConfig, out_dir: Path
) -> RecordingReport:
    if source.problem:
        raise Quarantine(source.problem)
    raw = read_raw(source.path)
    sfreq_in = float(raw.info["sfreq"])
    duration = raw.n_times / sfreq_in
    base = {"sfreq": sfreq_in, "duration_s": duration, "hours": duration / 3600.0}
    positions_m, positions_frame = in_file_positions(raw, dataset)
    infos = describe_channels(
        raw.ch_names,
        raw.get_channel_types(),
        source,
        dataset,
        positions_m=positions_m,
        positions_frame=positions_frame,
        electrode_kinds=raw.electrode_kinds if isinstance(raw, RawNWB) else None,
    )
    status = ["kept" if ch.neural else ch.drop_reason for ch in infos]
    n_in = len(infos)
    zeros = np.zeros(n_in, dtype=int)

    def report(qc_values: dict[str, Any], kept: np.ndarray = zeros, dropped: np.ndarray = zeros):
        row = _qc_row(source, **base, channels_in=n_in, **qc_values)
        return RecordingReport(row, _channel_rows(source, infos, status, kept, dropped))

    neural = np.array([i for i, ch in enumerate(infos) if ch.neural], dtype=int)
    n_neural = len(neural)
    if n_neural == 0:
        return report({"reason": "no neural channels", "channels_dropped": n_in})
    if sfreq_in < corpus.min_sfreq:
        reason = f"sampling rate {sfreq_in:g} Hz below min_sfreq {corpus.min_sfreq:g} Hz"
        return report({"reason": reason, "channels_neural": n_neural, "channels_dropped": n_in})

    n_samples = corpus.window_samples
    n_out = math.floor(raw.n_times * corpus.sfreq / sfreq_in)
    n_windows = n_out // n_samples
    if n_windows == 0:
        reason = f"{duration:.1f} s is shorter than one {corpus.window_seconds:g} s window"
        return report(
            {
                "status": "too_short",
                "reason": reason,
                "channels_neural": n_neural,
                "channels_kept": n_neural,
                "channels_dropped": n_in - n_neural,
            }
        )

    try:
        setting = f"units of dataset {source.dataset!r} in the config"
        factors = calibrate(raw, neural, dataset.units, setting=setting)
    except Quarantine as exc:
        return report({"reason": str(exc), "channels_neural": n_neural, "channels_dropped": n_in})
    all_nan, flat = channel_health(raw, neural, corpus.qc.flat_std_uv, factors)
    for idx, is_nan, is_flat in zip(neural, all_nan, flat, strict=True):
        if is_nan:
            status[idx] = "nan"
        elif is_flat:
            status[idx] = "flat"
    live = neural[~(all_nan | flat)]
    live_factors = factors[~(all_nan | flat)]
    if len(live) == 0:
        reason = f"no usable channels: {int(flat.sum())} flat, {int(all_nan.sum())} all-NaN"
        return report({"reason": reason, "channels_neural": n_neural, "channels_dropped": n_in})

    live_infos = [infos[i] for i in live]
    is_ieeg = np.array([ch.type in IEEG_TYPES for ch in live_infos])
    scale = np.where(is_ieeg, corpus.qc.ieeg_scale_uv, corpus.qc.eeg_scale_uv)
    chain = build_chain(
        sfreq_in=sfreq_in,
        sfreq_out=corpus.sfreq,
        highpass=dataset.highpass,
        line_freq=dataset.line_freq,
        harmonics=dataset.harmonics_for(bool(is_ieeg.any())),
    )
    pad_s = padding_seconds(chain)
    names = [ch.name for ch in live_infos]
    types = np.array([ch.type for ch in live_infos])
    subtypes = np.array([ch.subtype for ch in live_infos])
    coords = np.array([ch.xyz_mm for ch in live_infos], dtype=np.float32).reshape(-1, 3)
    frames = sorted({ch.coord_frame for ch in live_infos if np.isfinite(ch.xyz_mm).all()})
    coord_frame = "+".join(frames) if frames else "unknown"
    info = mne.create_info(names, sfreq_in, "eeg", verbose="error")

    kept_counts = np.zeros(len(live), dtype=int)
    dropped_counts = np.zeros(len(live), dtype=int)
    windows_kept = 0
    channel_hours = tokens = cbramod_hours = 0.0
    hours_per_window_channel = corpus.window_seconds / 3600.0
    path = shard_path(out_dir, source.dataset, source.recording)
    with ShardWriter(
        path,
        signal_dtype=corpus.signal_dtype,
        row_group_windows=corpus.row_group_windows,
        signal_compression=corpus.signal_compression,
    ) as writer:
        for w0 in range(0, n_windows, corpus.block_windows):
            w1 = min(n_windows, w0 + corpus.block_windows)
            block = _block_windows(
                raw, live, live_factors, info, chain, sfreq_in, corpus, w0, w1, pad_s
            )
            verdict = qc_block(block, scale, corpus.qc)
            keep = verdict.kept_channels
            kept_counts += keep.sum(axis=0)
            dropped_counts += (~keep).sum(axis=0)
            cbramod_hours += float(verdict.cbramod_ok.sum()) * len(live) * hours_per_window_channel
            for j in np.flatnonzero(verdict.window_ok):
                sel = keep[j]
                n_sel = int(sel.sum())
                modality = "ieeg" if is_ieeg[sel].any() else "eeg"
                writer.write(
                    Window(
                        dataset=source.dataset,
                        subject=source.subject,
                        recording=source.recording,
                        window_index=int(w0 + j),
                        start_seconds=(w0 + j) * corpus.window_seconds,
                        modality=modality,
                        sfreq=corpus.sfreq,
                        coord_frame=coord_frame,
                        channel_names=[n for n, s in zip(names, sel, strict=True) if s],
                        channel_types=types[sel].tolist(),
                        channel_subtypes=subtypes[sel].tolist(),
                        coords_mm=coords[sel],
                        signal=verdict.scaled[j][sel],
                    )
                )
                windows_kept += 1
                channel_hours += n_sel * hours_per_window_channel
                tokens += float(window_tokens(n_sel))

    for k, idx in enumerate(live):
        if kept_counts[k] == 0:
            status[idx] = "dropped in every window"
    all_kept = np.zeros(n_in, dtype=int)
    all_dropped = np.zeros(n_in, dtype=int)
    all_kept[live] = kept_counts
    all_dropped[live] = dropped_counts
    channels_kept = int((kept_counts > 0).sum())
    return report(
        {
            # A recording that yields nothing is not "kept": --strict counts it.
            "status": "kept" if windows_kept else "qc_rejected",
            "reason": "" if windows_kept else "every window failed QC",
            "channels_neural": n_neural,
            "channels_kept": channels_kept,
            "channels_dropped": n_in - channels_kept,
            "windows_total": n_windows,
            "windows_kept": windows_kept,
            "windows_dropped": n_windows - windows_kept,
            "hours_kept": windows_kept * corpus.window_seconds / 3600.0,
            "channel_hours": channel_hours,
            "tokens": tokens,
            "cbramod_channel_hours": cbramod_hours,
        },
        all_kept,
        all_dropped,
    )


def _block_windows(
    raw: mne.io.BaseRaw,
    picks: np.ndarray,
    factors: np.ndarray,
    info: mne.Info,
    chain: list,
    sfreq_in: float,
    corpus: CorpusConfig,
    w0: int,
    w1: int,
    pad_s: float,
) -> np.ndarray:
    """Windows ``w0 .. w1-1`` preprocessed, in µV, as ``(w1 - w0, C, S)``; ``factors``
    (per pick) put the reader's volts into true volts."""
    t0 = w0 * corpus.window_seconds
    t1 = w1 * corpus.window_seconds
    start = max(0, math.floor((t0 - pad_s) * sfreq_in))
    stop = min(raw.n_times, math.ceil((t1 + pad_s) * sfreq_in))
    try:
        data = raw.get_data(picks=picks, start=start, stop=stop) * factors[:, None]
    except Exception as exc:
        raise Quarantine(f"unreadable data: {type(exc).__name__}: {exc}") from exc
    bad = ~np.isfinite(data)
    if bad.any():
        # Filters would smear a NaN over the whole block; zero it for filtering and
        # put NaN back on the corresponding output span so QC sees the channel as bad.
        data = np.where(bad, 0.0, data)
    chunk = apply_chain(mne.io.RawArray(data, info, verbose="error"), chain)
    out = chunk.get_data()
    if bad.any():
        ch, idx = np.nonzero(bad)
        mapped = np.rint(idx * (out.shape[1] / data.shape[1])).astype(int)
        out[ch, np.clip(mapped, 0, out.shape[1] - 1)] = np.nan
    # The resampler maps the block onto a whole number of output samples, so its true
    # output rate differs from corpus.sfreq by up to half a sample over the block;
    # each window's start is placed with the true rate, keeping the time base within
    # a fraction of a sample in every window however long the block.
    out_rate = out.shape[1] * sfreq_in / data.shape[1]
    n_samples = corpus.window_samples
    block = np.empty((w1 - w0, len(picks), n_samples))
    for j in range(w1 - w0):
        first = round((t0 + j * corpus.window_seconds - start / sfreq_in) * out_rate)
        segment = out[:, first : first + n_samples]
        short = n_samples - segment.shape[1]
        if short > 2:
            raise RuntimeError(f"window {w0 + j} is {short} samples short after resampling")
        block[j] = np.pad(segment, ((0, 0), (0, short)), mode="edge") if short else segment
    return block * 1e6
