"""A lazy MNE reader for NWB (Neurodata Without Borders) extracellular recordings.

MNE has no NWB reader, and the paper's largest public iEEG corpus (AJILE12, DANDI
000055: 12 subjects, ~1,280 h of ECoG) is NWB only.  :func:`read_raw_nwb` opens one
``.nwb`` file as an :class:`mne.io.BaseRaw` whose samples stay on disk: the metadata
(electrodes table, rate, scaling) is read once through pynwb, and every
``raw.get_data(picks, start, stop)`` reads just that span of the HDF5 dataset with
h5py, so a day-long file is never loaded whole.

What is read, and the choices made:

* **Which series.** The ``ElectricalSeries`` in ``acquisition`` (directly, or inside an
  ``LFP``/``FilteredEphys`` container there) with the **most channels**; ties go to
  the first by name.  The electrode array is normally the many-channel series, while
  extra series hold a few auxiliary leads.  Others are logged and ignored; pass
  ``series=`` to choose one by name.
* **Volts.** NWB stores raw values: volts = data x ``conversion`` x
  ``channel_conversion`` + ``offset`` (the NWB schema's rule).  AJILE12 writes µV
  with ``conversion = 1e-6``.
* **Rate.** ``rate`` when present; otherwise from ``timestamps`` when they are
  regular (every interval within 10 % of the median interval).  Gaps or jitter raise
  a ValueError naming them, so the corpus quarantines the file instead of
  stitching discontinuous data into windows.
* **Names.** The electrodes table's ``label`` column if present, else the group name
  plus the contact's 1-based index within its group (AJILE12's ``GRID1..``,
  ``LAT1..``, which is how its source files named them), else the electrode id.
  Duplicates get ``-1``, ``-2`` ... suffixes (MNE needs unique names).
* **Types.** From the electrode's group (name, description, location), its
  ``location``, any column whose name contains ``type``, and the channel name:
  ECG/EKG/EOG/EMG words
  (or *electrocardiogram* ...) give ``ecg``/``eog``/``emg``, so diver drops them;
  ``depth``/``seeg``/``stereo``/``dbs`` give ``seeg``; ``grid``/``strip``/``ecog``/
  ``subdural`` give ``ecog``.  Anything else stays ``eeg``, MNE's "undecided" that
  diver's :func:`~diver.corpus.channels.describe_channels` resolves from the names
  and the dataset's ``modality``/``ieeg_type`` (set ``modality: ieeg`` and
  ``ieeg_type: ecog`` for AJILE12, whose temporal strips are described only by
  place, e.g. "left anterior temporal").  The reader does not guess iEEG for
  undescribed channels because NWB also holds scalp EEG and animal recordings.
  :attr:`RawNWB.electrode_kinds` keeps each channel's group text, so a group
  described as "ECoG grid" gives the subtype ``grid``.
* **Positions.** The table's ``x, y, z`` go into each channel's ``loc`` in metres
  (NaN where missing), so they travel with the recording.  The NWB schema asks for
  microns (and Allen-atlas axes), but human files store atlas millimetres as they
  are (AJILE12: MNI mm), so units are inferred from the values: a largest
  |coordinate| above 1,000 is µm (a head is ~200 mm across), else
  :func:`~diver.corpus.coordinates.infer_units` (m / cm / mm).  Axes are taken as
  stored.  The NWB table has no field naming the coordinate space (its
  ``reference`` column is the electrical reference, not a space), so the channels'
  frame is MNE's ``unknown`` and the corpus labels them with the dataset's
  ``coord_frame`` (e.g. ``MNI152`` for AJILE12).

Subjects are not read from the file (``subject.subject_id``): discovery must stay
cheap and never opens recordings.  DANDI names files
``sub-<id>/sub-<id>_ses-<n>_ecephys.nwb``, which is BIDS-like, so discovery's
``sub-`` rule already finds the subject.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import mne
import numpy as np
from mne.io.constants import FIFF

from diver.corpus.coordinates import infer_units

log = logging.getLogger(__name__)

# Tolerance on each timestamp interval, relative to the median interval: wider than
# timestamp rounding (µs rounding at 30 kHz is 1.5 %), far narrower than one lost
# sample (100 %).
TIMESTAMP_TOLERANCE = 0.1
# Largest block read from HDF5 in one call, in stored values (64 MB of float32).
READ_BLOCK_VALUES = 1 << 24
_TIMESTAMP_CHUNK = 1 << 20
_UM_ABOVE = 1000.0  # a largest |coordinate| above this is in µm, not mm

_WORD = r"(?<![a-z])"
NON_NEURAL_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        ("ecg", _WORD + r"(ecg|ekg|electrocardiogra)"),
        ("eog", _WORD + r"(eog|heog|veog|electrooculogra)"),
        ("emg", _WORD + r"(emg|electromyogra)"),
    )
)
NEURAL_WORDS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        ("seeg", _WORD + r"(depth|seeg|stereo|dbs)"),
        ("ecog", _WORD + r"(grid|strip|ecog|subdural)"),
    )
)
_ORIG_FORMATS = {"float64": "double", "float32": "single", "int32": "int", "int16": "short"}


def electrode_type(text: str) -> str:
    """MNE channel type announced by an electrode's descriptive text, else ``eeg``.

    Non-neural words win over neural ones: an "ECG strip" is a cardiac lead.
    """
    for kinds in (NON_NEURAL_WORDS, NEURAL_WORDS):
        for kind, pattern in kinds:
            if pattern.search(text):
                return kind
    return "eeg"


def position_units(values: Sequence[float]) -> tuple[str, float]:
    """(units, factor to mm) for NWB electrode coordinates, inferred from the values."""
    finite = [abs(v) for v in values if math.isfinite(v)]
    if finite and max(finite) > _UM_ABOVE:
        return "um", 1e-3
    units = infer_units(finite)
    return units, {"m": 1000.0, "cm": 10.0, "mm": 1.0}[units]


def _unique(names: Sequence[str]) -> list[str]:
    """Names made unique by numbering the repeats, in order (MNE refuses duplicates)."""
    counts = Counter(names)
    seen: Counter[str] = Counter()
    out = []
    taken = set(names)
    for name in names:
        if counts[name] == 1:
            out.append(name)
            continue
        seen[name] += 1
        candidate = f"{name}-{seen[name]}"
        while candidate in taken:
            seen[name] += 1
            candidate = f"{name}-{seen[name]}"
        taken.add(candidate)
        out.append(candidate)
    return out


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _electrical_series(nwbfile: Any) -> dict[str, Any]:
    """Every ElectricalSeries in acquisition, by name (containers' members as ``box/name``)."""
    from pynwb.ecephys import ElectricalSeries

    found: dict[str, Any] = {}
    for name, obj in sorted(nwbfile.acquisition.items()):
        if isinstance(obj, ElectricalSeries):
            found[name] = obj
        for inner, series in sorted(getattr(obj, "electrical_series", {}).items()):
            found[f"{name}/{inner}"] = series
    return found


def _choose_series(nwbfile: Any, wanted: str | None) -> tuple[str, Any]:
    found = _electrical_series(nwbfile)
    if not found:
        raise ValueError("no ElectricalSeries in the NWB file's acquisition")
    if wanted is not None:
        if wanted not in found:
            raise ValueError(f"no ElectricalSeries {wanted!r}; the file has {sorted(found)}")
        return wanted, found[wanted]

    def n_channels(series: Any) -> int:
        shape = series.data.shape
        return 1 if len(shape) == 1 else int(shape[1])

    name = max(sorted(found), key=lambda n: n_channels(found[n]))  # first of equals
    if len(found) > 1:
        others = sorted(set(found) - {name})
        log.info("NWB: reading ElectricalSeries %r (most channels); ignoring %s", name, others)
    return name, found[name]


def _sampling_rate(series: Any) -> float:
    """The series' rate, or one derived from regular timestamps (ValueError otherwise)."""
    if series.rate is not None:
        rate = float(series.rate)
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"ElectricalSeries rate {rate!r} is not a positive number")
        return rate
    stamps = series.timestamps
    if stamps is None:
        raise ValueError("ElectricalSeries has neither a rate nor timestamps")
    stamps = getattr(stamps, "timestamps", stamps)  # linked from another TimeSeries
    n = len(stamps)
    if n < 2:
        raise ValueError(f"ElectricalSeries has {n} timestamp(s); a rate needs at least 2")
    first = np.asarray(stamps[: min(n, _TIMESTAMP_CHUNK)], dtype=np.float64)
    period = float(np.median(np.diff(first)))
    if not period > 0:
        raise ValueError("irregular timestamps: they do not increase")
    low, high = math.inf, -math.inf
    # read in chunks (one sample of overlap) so a day-long series is never loaded whole
    for start in range(0, n - 1, _TIMESTAMP_CHUNK):
        chunk = np.asarray(stamps[start : min(n, start + _TIMESTAMP_CHUNK + 1)], np.float64)
        steps = np.diff(chunk)
        low, high = min(low, float(steps.min())), max(high, float(steps.max()))
    if low < period * (1 - TIMESTAMP_TOLERANCE) or high > period * (1 + TIMESTAMP_TOLERANCE):
        raise ValueError(
            f"irregular timestamps: sample intervals range from {low:.6g} s to {high:.6g} s "
            f"around a median of {period:.6g} s (gaps, overlaps or jitter); the series is "
            "not one continuous recording"
        )
    span = float(stamps[n - 1]) - float(stamps[0])
    return (n - 1) / span


def _group_text(group: Any) -> tuple[str, str]:
    """(name, 'name description location') of an ElectrodeGroup (or a plain name)."""
    if group is None or isinstance(group, str | bytes):
        return _text(group), _text(group)
    name = _text(getattr(group, "name", ""))
    parts = [name, _text(getattr(group, "description", "")), _text(getattr(group, "location", ""))]
    return name, " ".join(p for p in parts if p)


def _electrodes(series: Any) -> dict[str, Any]:
    """Names, MNE types, descriptive text and positions (m) of the series' channels."""
    region = series.electrodes
    table = region.table
    rows = np.asarray(region.data[:], dtype=int).ravel()
    columns = set(table.colnames)

    def column(name: str) -> list[Any] | None:
        if name not in columns:
            return None
        return [table[name][int(r)] for r in rows]

    ids = np.asarray(table.id.data[:])[rows]
    groups = column("group")
    group_names = column("group_name")
    names_g, texts_g = [], []
    for i in range(len(rows)):
        name, text = _group_text(groups[i] if groups is not None else None)
        if group_names is not None and _text(group_names[i]):
            name = _text(group_names[i])
        names_g.append(name)
        texts_g.append(text or name)
    locations = column("location") or [""] * len(rows)
    type_columns = [c for c in sorted(columns) if "type" in c.lower()]
    typed = [column(c) or [] for c in type_columns]

    labels = column("label")
    if labels is not None and all(_text(v) for v in labels):
        names = [_text(v) for v in labels]
    elif all(names_g):
        index: Counter[str] = Counter()
        names = []
        for group in names_g:
            index[group] += 1
            names.append(f"{group}{index[group]}")
    else:
        names = [str(int(i)) for i in ids]

    kinds, types = [], []
    for i in range(len(rows)):
        extra = " ".join(_text(col[i]) for col in typed)
        kinds.append(" ".join(p for p in (texts_g[i], extra) if p))
        types.append(electrode_type(f"{kinds[i]} {_text(locations[i])} {names[i]}"))

    xyz = np.full((len(rows), 3), np.nan)
    if {"x", "y", "z"} <= columns:
        every = np.column_stack(
            [np.asarray(table[c].data[:], dtype=np.float64) for c in ("x", "y", "z")]
        )
        units, to_mm = position_units(every.ravel().tolist())
        log.debug("NWB electrode positions taken as %s", units)
        xyz = every[rows] * (to_mm / 1000.0)
    return {"names": _unique(names), "types": types, "kinds": kinds, "xyz_m": xyz}


def _scaling(series: Any, n_channels: int) -> tuple[np.ndarray, float]:
    """(per-channel factor to volts, offset in volts) from the NWB scaling attributes."""
    conversion = float(series.conversion if series.conversion is not None else 1.0)
    scale = np.full(n_channels, conversion)
    if series.channel_conversion is not None:
        per_channel = np.asarray(series.channel_conversion[:], dtype=np.float64).ravel()
        if per_channel.shape != (n_channels,):
            raise ValueError(
                f"channel_conversion has {per_channel.size} values for {n_channels} channels"
            )
        scale = scale * per_channel
    offset = float(getattr(series, "offset", 0.0) or 0.0)
    return scale, offset


class RawNWB(mne.io.BaseRaw):
    """One NWB ElectricalSeries as a lazily read MNE Raw (see the module docstring)."""

    def __init__(self, fname: str | Path, series: str | None = None, verbose: Any = None):
        from pynwb import NWBHDF5IO

        fname = Path(fname).resolve()  # later reads must not depend on the working folder
        with NWBHDF5IO(str(fname), "r") as io:
            nwbfile = io.read()
            name, chosen = _choose_series(nwbfile, series)
            data = chosen.data
            if not isinstance(data, h5py.Dataset):
                raise ValueError(f"ElectricalSeries {name!r} data is not an HDF5 dataset")
            if data.ndim not in (1, 2):
                raise ValueError(f"ElectricalSeries {name!r} data has {data.ndim} dimensions")
            n_times = int(data.shape[0])
            n_channels = 1 if data.ndim == 1 else int(data.shape[1])
            if n_times == 0:
                raise ValueError(f"ElectricalSeries {name!r} holds no samples")
            sfreq = _sampling_rate(chosen)
            electrodes = _electrodes(chosen)
            if len(electrodes["names"]) != n_channels:
                raise ValueError(
                    f"ElectricalSeries {name!r} has {n_channels} data columns but "
                    f"{len(electrodes['names'])} electrodes"
                )
            scale, offset = _scaling(chosen, n_channels)
            extras = {
                "dataset": data.name,
                "h5_file": data.file.filename,  # an external link may point elsewhere
                "ndim": data.ndim,
                "n_channels": n_channels,
                "scale": scale,
                "offset": offset,
            }
            orig_format = _ORIG_FORMATS.get(str(data.dtype), "double")

        info = mne.create_info(electrodes["names"], sfreq, electrodes["types"], verbose="error")
        for ch, xyz in zip(info["chs"], electrodes["xyz_m"], strict=True):
            ch["loc"][:3] = xyz
            ch["coord_frame"] = FIFF.FIFFV_COORD_UNKNOWN
        super().__init__(
            info,
            preload=False,
            first_samps=(0,),
            last_samps=(n_times - 1,),
            filenames=[fname],
            raw_extras=[extras],
            orig_format=orig_format,
            verbose=verbose,
        )
        self._kinds = dict(zip(info.ch_names, electrodes["kinds"], strict=True))
        self.series_name = name

    @property
    def electrode_kinds(self) -> tuple[str, ...]:
        """Each channel's electrode text, e.g. "GRID ECoG grid left frontal".

        That is the group's name, description and location plus any type-like
        column; looked up by channel name so it stays aligned after picking.
        """
        return tuple(self._kinds.get(name, "") for name in self.ch_names)

    def _read_segment_file(
        self,
        data: np.ndarray,
        idx: slice | np.ndarray,
        fi: int,
        start: int,
        stop: int,
        cals: np.ndarray | None,
        mult: np.ndarray | None,
    ) -> None:
        """Read samples ``start:stop`` of channels ``idx`` into ``data``, in volts.

        Reads the contiguous column span covering ``idx`` in row blocks of at most
        ``READ_BLOCK_VALUES`` values, so memory stays bounded whatever the request.
        """
        extras = self._raw_extras[fi]
        channels = np.arange(extras["n_channels"])[idx]
        lo, hi = int(channels.min()), int(channels.max()) + 1
        scale = extras["scale"][channels][:, np.newaxis]
        rows = max(1, READ_BLOCK_VALUES // (hi - lo))
        with h5py.File(extras["h5_file"], "r") as fh:
            dataset = fh[extras["dataset"]]
            for a in range(start, stop, rows):
                b = min(stop, a + rows)
                if extras["ndim"] == 1:
                    block = np.asarray(dataset[a:b], dtype=np.float64)[np.newaxis]
                else:
                    block = np.asarray(dataset[a:b, lo:hi], dtype=np.float64).T
                volts = block[channels - lo] * scale + extras["offset"]
                out = data[:, a - start : b - start]
                if mult is None:
                    out[:] = volts * cals
                else:
                    out[:] = mult @ volts


def read_raw_nwb(fname: str | Path, *, series: str | None = None, verbose: Any = None) -> RawNWB:
    """Open an NWB file's ElectricalSeries lazily as an MNE Raw (``preload=False``).

    ``series`` names the ElectricalSeries to read (default: the one with the most
    channels).  Raises ValueError for files that cannot be read as one continuous
    recording (no ElectricalSeries, irregular timestamps, inconsistent shapes);
    other failures come from pynwb/h5py (e.g. not an HDF5 file).
    """
    return RawNWB(fname, series=series, verbose=verbose)
