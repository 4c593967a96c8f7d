"""Channel names, types, iEEG subtypes and positions, derived once per recording.

EDF/BDF readers call every channel ``eeg`` (SPEC §1), so the type the model sees is
re-derived here from, in order: the dataset's hints, a BIDS ``channels.tsv``, a
reader's own non-``eeg`` type, non-neural name patterns, the dataset's named MNE
montage (``DatasetConfig.montage``), an electrodes file, the 10-05 montage, and
finally the dataset's declared modality.  Non-neural channels are kept in the
description (for the channels report) with a ``drop_reason``.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from diver.config import DatasetConfig
from diver.corpus.coordinates import (
    NAN_XYZ,
    SCALP_FRAME,
    UNKNOWN_FRAME,
    XYZ,
    ElectrodeTable,
    midpoint,
    montage_position_mm,
    montage_spelling,
    named_montage,
    named_montage_spelling,
    read_electrodes,
)
from diver.corpus.discovery import RecordingSource

log = logging.getLogger(__name__)

NEURAL_TYPES = frozenset({"eeg", "seeg", "ecog"})
IEEG_TYPES = frozenset({"seeg", "ecog"})
CHANNEL_TYPES = frozenset(
    {"eeg", "seeg", "ecog", "ecg", "eog", "emg", "dc", "acc", "stim", "resp", "misc"}
)


@dataclass(frozen=True)
class ChannelInfo:
    """Everything the corpus records about one input channel."""

    name_raw: str
    name: str
    type: str  # one of CHANNEL_TYPES
    subtype: str  # 'grid' | 'strip' | 'depth' | '' (iEEG only)
    xyz_mm: tuple[float, float, float]  # NaN where unknown
    coord_frame: str
    drop_reason: str = ""

    @property
    def neural(self) -> bool:
        """Whether the channel goes into the pretraining corpus."""
        return self.type in NEURAL_TYPES and not self.drop_reason


# --- names ----------------------------------------------------------------------------

REFERENCE_SUFFIXES = frozenset({"REF", "LE", "AR", "AVG", "A1", "A2", "M1", "M2"})
OLD_1020_NAMES = {"T3": "T7", "T4": "T8", "T5": "P7", "T6": "P8"}
_EEG_PREFIX = re.compile(r"^EEG[\s_]+", re.IGNORECASE)


def clean_name(raw: str) -> str:
    """The label minus surrounding whitespace and dots (eegmmidb pads with dots)."""
    return raw.strip().strip(".").strip()


def _montage_name(text: str) -> str | None:
    """Montage spelling of ``text``, with old 10-20 temporal names mapped to 10-10."""
    text = text.strip().strip(".").strip()
    renamed = OLD_1020_NAMES.get(text.upper())
    return montage_spelling(renamed or text)


def normalise_name(raw: str) -> str:
    """One spelling per scalp site, other labels only trimmed.

    ``Fc5.`` -> ``FC5``; TUEG ``EEG FP1-REF`` -> ``Fp1``; ``F4-A1`` -> ``F4`` (a
    reference suffix goes only when the rest is a montage name); ``T3`` -> ``T7``;
    ``Fp1-F7`` stays a bipolar pair in montage spelling.  iEEG contacts (``L'1``,
    ``LA1``) keep their spelling: their names must still match their electrodes file.
    """
    clean = clean_name(raw)
    body = _EEG_PREFIX.sub("", clean)
    whole = _montage_name(body)
    if whole is not None:
        return whole
    parts = body.split("-")
    if len(parts) == 2:
        left = _montage_name(parts[0])
        if left is not None:
            if parts[1].strip().upper() in REFERENCE_SUFFIXES:
                return left
            right = _montage_name(parts[1])
            if right is not None:
                return f"{left}-{right}"
    return clean


@dataclass(frozen=True)
class MontageMatch:
    """A channel label found in one of the dataset's named MNE montages."""

    montage: str  # the MNE montage's name, e.g. 'GSN-HydroCel-129'
    sites: tuple[str, ...]  # its electrode, or the two of a bipolar pair, as it spells them

    @property
    def name(self) -> str:
        """The channel's name: the montage's spelling (``A2-A1`` for a pair)."""
        return "-".join(self.sites)


def montages_of(setting: str | Sequence[str] | None) -> tuple[str, ...]:
    """The montages a dataset's ``montage`` setting names, in order.

    The config holds one name (or null); a sequence is accepted too, for datasets
    recorded with more than one system (PEERS: BioSemi 128 and EGI GSN 129, whose
    names do not overlap) -- the first montage holding a label wins.
    """
    if setting is None:
        return ()
    return (setting,) if isinstance(setting, str) else tuple(setting)


def dataset_montage_name(
    raw: str, montage: str | Sequence[str] | None, bids_datatype: str | None
) -> MontageMatch | None:
    """Where ``raw`` is in the dataset's named MNE montage(s), or None.

    A dataset that names a montage (``GSN-HydroCel-129``, ``biosemi128``) declares
    that its recordings' channels with those names are that montage's electrodes, so
    they keep the montage's spelling rather than going through
    :func:`normalise_name`: BioSemi's ``C1`` is not the 10-05 ``C1``, and its ``A1``
    is an electrode near the vertex, not an ear reference to strip from a label.
    Matched on the cleaned label (case-insensitive), also without an ``EEG`` prefix;
    a pair of one montage's names (``A2-A1``) is a bipolar derivation in montage
    spelling, and a montage name with a reference suffix that is not itself one of
    the montage's names (``E1-REF``) is that name.  A recording in a BIDS ``ieeg``
    folder is intracranial whatever its labels, so a scalp montage does not apply.
    """
    if bids_datatype == "ieeg":
        return None
    clean = clean_name(raw)
    body = _EEG_PREFIX.sub("", clean)
    parts = body.split("-")
    for kind in montages_of(montage):
        for candidate in (clean, body):
            spelling = named_montage_spelling(kind, candidate)
            if spelling is not None:
                return MontageMatch(kind, (spelling,))
        if len(parts) == 2:
            left = named_montage_spelling(kind, parts[0])
            right = named_montage_spelling(kind, parts[1])
            if left is not None and right is not None:
                return MontageMatch(kind, (left, right))
            if left is not None and parts[1].strip().upper() in REFERENCE_SUFFIXES:
                return MontageMatch(kind, (left,))
    return None


def scalp_position_mm(name: str) -> tuple[float, float, float] | None:
    """Template position of a normalised scalp name; a bipolar pair gets the midpoint."""
    position = montage_position_mm(name)
    if position is not None:
        return position
    parts = name.split("-")
    if len(parts) == 2:
        a, b = montage_position_mm(parts[0]), montage_position_mm(parts[1])
        if a is not None and b is not None:
            return midpoint(a, b)
    return None


# --- non-neural name patterns (rule 4) -----------------------------------------------

_TOKEN = r"(?<![a-z])"  # start of the name or after a non-letter
NAME_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern, re.IGNORECASE))
    for kind, pattern in (
        ("ecg", _TOKEN + r"(ecg|ekg)"),
        ("eog", _TOKEN + r"(eog|heog|veog)"),
        ("eog", r"^(eog\s+)?(loc|roc|luc|llc|ruc|rlc)(-\w+)?$"),
        ("eog", r"^(eog\s+)?e[12]-(m|a)[12]$"),  # AASM E1-M2 / E2-M1
        ("emg", _TOKEN + r"(emg|chin|[lr]?leg\d*(?![a-z]))"),
        ("dc", _TOKEN + r"dc\s?\d+"),
        ("acc", r"^(acc(el(erometer)?)?)[\s_-]?([xyz]|[1-3])?$"),
        ("stim", r"^(trig(ger)?|status|sti\s?\d+|stim|events?|markers?|mark\d*|photic)\b"),
        ("resp", r"^(resp\w*|thor\w*|abd\w*|chest|airflow|flow|nasal\w*|snore\w*|cpap|ptaf)\b"),
        (
            "misc",
            r"^(spo2|sao2|pulse\w*|pleth\w*|hr|heart\s?rate|pos(ition)?|light|ox\s?stat\w*|"
            r"ibi|bursts|suppr|temp\w*|gsr|eda|etco2|co2|((edf|bdf)\s)?annotations?)\b",
        ),
    )
)


def name_pattern_type(name: str) -> str | None:
    """The non-neural type a channel's name announces (``EKG1`` -> ecg), or None."""
    for kind, pattern in NAME_PATTERNS:
        if pattern.search(name):
            return kind
    return None


# --- BIDS channels.tsv (rule 2) ------------------------------------------------------

BIDS_TYPES = {
    "EEG": "eeg", "SEEG": "seeg", "ECOG": "ecog", "DBS": "seeg",
    "ECG": "ecg", "EKG": "ecg", "EOG": "eog", "HEOG": "eog", "VEOG": "eog",
    "EMG": "emg", "TRIG": "stim", "STIM": "stim", "MISC": "misc", "REF": "misc",
    "RESP": "resp", "ADC": "dc", "DAC": "misc", "GSR": "misc", "PPG": "misc",
    "TEMP": "misc", "AUDIO": "misc", "PD": "misc", "EYEGAZE": "misc", "PUPIL": "misc",
    "SYSCLOCK": "misc", "OTHER": "misc", "HLU": "misc", "FITERR": "misc",
}  # fmt: skip


@dataclass(frozen=True)
class BidsChannel:
    type: str | None  # our type, None when the TSV's type is absent or unknown
    bad: bool


def read_channels_tsv(path: Path) -> dict[str, BidsChannel]:
    """``name`` -> (type, bad) from a BIDS channels.tsv; unknown type strings are None."""
    table: dict[str, BidsChannel] = {}
    with Path(path).open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
            name = row.get("name", "")
            if not name:
                continue
            declared = row.get("type", "").upper()
            kind = BIDS_TYPES.get(declared)
            if declared and declared != "N/A" and kind is None:
                log.warning("%s: channel %r has unknown BIDS type %r", path, name, declared)
            table.setdefault(name, BidsChannel(kind, row.get("status", "").lower() == "bad"))
    return table


def _lookup(table: Mapping[str, BidsChannel], names: Sequence[str]) -> BidsChannel | None:
    for name in names:
        if name in table:
            return table[name]
    folded = {k.casefold(): v for k, v in table.items()}
    for name in names:
        if name.casefold() in folded:
            return folded[name.casefold()]
    return None


# --- reader types (rule 3) -----------------------------------------------------------

MNE_TYPES = {
    "ecg": "ecg", "eog": "eog", "emg": "emg", "stim": "stim", "misc": "misc",
    "seeg": "seeg", "ecog": "ecog", "dbs": "seeg", "resp": "resp", "bio": "misc",
}  # fmt: skip


def _mne_type(mne_type: str) -> str | None:
    """Our type for a reader's non-``eeg`` type (anything unfamiliar is misc)."""
    if mne_type in {"eeg", "csd"}:
        return None
    return MNE_TYPES.get(mne_type, "misc")


# --- electrodes-file kinds (rule 5, subtypes) ----------------------------------------


def _electrode_type(kind: str, group: str, default: str) -> str:
    text = f"{kind} {group}"
    if "depth" in text or "seeg" in text or "stereo" in text:
        return "seeg"
    if "grid" in text or "strip" in text or "ecog" in text:
        return "ecog"
    return default


def _ecog_subtype(name: str, kind: str, group: str, hints: Mapping[str, str]) -> str:
    for pattern, subtype in hints.items():
        if re.fullmatch(pattern, name, re.IGNORECASE):
            return subtype
    for text in (kind, group, name.lower()):
        for subtype in ("grid", "strip"):
            if subtype in text:
                return subtype
    return ""


# --- iEEG shafts whose contact names look like 10-05 sites ---------------------------

_CONTACT = re.compile(r"^([A-Za-z]+'?)(\d+)$")


def _shaft_prefixes(cleaned: Sequence[str]) -> set[str]:
    """Letter prefixes with at least one contact that is not a montage name.

    A shaft ``C`` with contacts ``C1..C12`` has ``C1..C6`` that spell 10-05 sites;
    ``C7`` and up do not, which gives the shaft away.  Used only where the recording
    is known to be intracranial, since TUEG's ``T1`` would otherwise claim ``T7``.
    """
    prefixes = set()
    for name in cleaned:
        match = _CONTACT.match(name)
        if match and _montage_name(name) is None:
            prefixes.add(match.group(1).casefold())
    return prefixes


def _long_prefixes(cleaned: Sequence[str]) -> set[str]:
    """Letter prefixes numbered beyond 3: a shaft (ACC1..ACC8), not a 3-axis accelerometer."""
    prefixes = set()
    for name in cleaned:
        match = _CONTACT.match(name)
        if match and int(match.group(2)) > 3:
            prefixes.add(match.group(1).casefold())
    return prefixes


def _has_prefix(name: str, prefixes: set[str]) -> bool:
    match = _CONTACT.match(name)
    return bool(match) and match.group(1).casefold() in prefixes


# --- the rules -----------------------------------------------------------------------


def _electrode_names(raw: str, clean: str, name: str) -> list[str]:
    """Spellings under which a channel may appear in its electrodes file."""
    bare = re.sub(r"^(POL|EEG|SEEG|ECOG)[\s_]+", "", clean, flags=re.IGNORECASE)
    bare = re.sub(r"[\s_-]+ref$", "", bare, flags=re.IGNORECASE)
    return [raw, clean, name, bare]


@dataclass(frozen=True)
class InFilePosition:
    """What the recording itself says about one channel's electrode."""

    xyz_mm: XYZ | None  # None when the file has no position for it
    frame: str
    kind: str  # free text such as an NWB group's "ECoG grid" ('' when unknown)


@dataclass(frozen=True)
class _Context:
    """What describe_channels knows about the whole recording."""

    dataset: DatasetConfig
    source: RecordingSource
    bids: Mapping[str, BidsChannel]
    electrodes: ElectrodeTable | None
    shafts: set[str]
    long_prefixes: set[str]


def _hint_type(name: str, hints: Mapping[str, str]) -> str | None:
    for pattern, kind in hints.items():
        if re.fullmatch(pattern, name, re.IGNORECASE):
            return kind
    return None


def _early_type(
    raw: str, clean: str, name: str, mne_type: str, ctx: _Context
) -> tuple[str | None, bool]:
    """Rules 1-4 (hints, channels.tsv, reader type, non-neural names); and BIDS 'bad'."""
    bids = _lookup(ctx.bids, [raw, clean, name]) if ctx.bids else None
    bad = bool(bids and bids.bad)
    kind = _hint_type(name, ctx.dataset.channel_types)
    if kind is None and bids is not None:
        kind = bids.type
    if kind is None:
        kind = _mne_type(mne_type)
    if kind is None:
        pattern_kind = name_pattern_type(clean)
        located = ctx.electrodes and ctx.electrodes.find(_electrode_names(raw, clean, name))
        # A contact with a measured position is an electrode, whatever its name says
        # (an sEEG shaft in the anterior cingulate is often labelled ACC1, ACC2 ...).
        if pattern_kind is not None and not (located and located.has_position):
            kind = pattern_kind
        if kind == "acc" and _has_prefix(clean, ctx.long_prefixes):
            kind = None
    return kind, bad


def _late_type(raw: str, clean: str, name: str, ctx: _Context, montage_share: float) -> str:
    """Rules 5-7: electrodes file, the 10-05 montage, the dataset's modality."""
    dataset, source = ctx.dataset, ctx.source
    is_scalp_name = scalp_position_mm(name) is not None
    row = ctx.electrodes.find(_electrode_names(raw, clean, name)) if ctx.electrodes else None
    located = row is not None and row.has_position and source.bids_datatype is None
    intracranial = (
        dataset.modality == "ieeg"
        or source.bids_datatype == "ieeg"
        or (dataset.modality == "auto" and located)
    )
    if is_scalp_name and intracranial and _has_prefix(clean, ctx.shafts):
        is_scalp_name = False
    if row is not None and (
        source.bids_datatype == "ieeg"
        or (source.bids_datatype is None and not is_scalp_name and dataset.modality != "eeg")
    ):
        return _electrode_type(row.kind, row.group, dataset.ieeg_type)
    if is_scalp_name:
        return "eeg"
    if dataset.modality == "eeg":
        return "eeg"
    if dataset.modality == "ieeg":
        return dataset.ieeg_type
    return "eeg" if montage_share > 0.5 else dataset.ieeg_type


def in_file_position_mm(position_m: Sequence[float] | None) -> XYZ | None:
    """A recording's own channel position (metres) in mm; None when unset.

    MNE readers leave unknown positions as zeros or NaN, so only a finite position
    that is not the origin counts.
    """
    if position_m is None or len(position_m) < 3:
        return None
    xyz = tuple(float(v) for v in position_m[:3])
    if not all(math.isfinite(v) for v in xyz) or not any(xyz):
        return None
    return (xyz[0] * 1000.0, xyz[1] * 1000.0, xyz[2] * 1000.0)


def _position(
    kind: str,
    raw: str,
    clean: str,
    name: str,
    ctx: _Context,
    in_file: InFilePosition,
    in_montage: MontageMatch | None = None,
) -> tuple[XYZ, str, str, str]:
    """(xyz_mm, frame, electrode kind, electrode group) for a typed channel.

    Scalp EEG: the montage that ``in_montage`` found its name in (a bipolar pair at
    the midpoint of its two sites), else the 10-05 template.  iEEG: the electrodes
    file's row; where that has no position (or there is no row), the position stored
    in the recording itself, with the recording's frame.
    """
    if kind == "eeg" and in_montage is not None:
        montage = named_montage(in_montage.montage)
        sites = [montage.positions_mm[site] for site in in_montage.sites]
        xyz = sites[0] if len(sites) == 1 else midpoint(sites[0], sites[1])
        return xyz, montage.frame, "", ""
    if kind == "eeg":
        xyz = scalp_position_mm(name)
        return (xyz, SCALP_FRAME, "", "") if xyz else (NAN_XYZ, UNKNOWN_FRAME, "", "")
    if kind not in IEEG_TYPES:
        return NAN_XYZ, UNKNOWN_FRAME, "", ""
    table = ctx.electrodes
    row = table.find(_electrode_names(raw, clean, name)) if table is not None else None
    if table is not None and row is not None and row.has_position:
        return row.xyz_mm, table.frame, row.kind, row.group
    e_kind, e_group = (row.kind, row.group) if row is not None else (in_file.kind, "")
    if in_file.xyz_mm is not None:
        return in_file.xyz_mm, in_file.frame, e_kind, e_group
    return NAN_XYZ, UNKNOWN_FRAME, e_kind, e_group


def _load_context(source: RecordingSource, dataset: DatasetConfig, cleaned: list[str]) -> _Context:
    bids = read_channels_tsv(source.channels_tsv) if source.channels_tsv else {}
    electrodes = None
    if source.electrodes_tsv is not None:
        electrodes = read_electrodes(
            source.electrodes_tsv, source.coordsystem_json, dataset.coord_frame
        )
    return _Context(
        dataset, source, bids, electrodes, _shaft_prefixes(cleaned), _long_prefixes(cleaned)
    )


def describe_channels(
    raw_names: Sequence[str],
    mne_types: Sequence[str],
    source: RecordingSource,
    dataset: DatasetConfig,
    *,
    positions_m: Sequence[Sequence[float]] | None = None,
    positions_frame: str | None = None,
    electrode_kinds: Sequence[str] | None = None,
) -> list[ChannelInfo]:
    """One ChannelInfo per input channel, same order. mne_types are raw.get_channel_types().

    Typing rules, first that applies wins: (1) ``dataset.channel_types`` hints;
    (2) channels.tsv ``type``; (3) a reader's non-``eeg`` type; (4) non-neural name
    patterns; (4b) a name in the dataset's named MNE montage (``dataset.montage``,
    see :func:`dataset_montage_name`) -> eeg; (5) the electrodes file (BIDS ``ieeg``
    folder, or non-BIDS and not a montage name in a dataset not declared ``eeg``);
    (6) a 10-05 montage name -> eeg; (7) ``dataset.modality`` ('auto': eeg when most
    other channels are montage names).
    Where the recording is known to be intracranial, a montage-like contact (``C3``)
    on a shaft that also has non-montage contacts (``C12``) is treated as iEEG.  iEEG
    channels keep their cleaned raw label as name, so a contact ``T3`` stays ``T3``.

    Names in the dataset's montage keep the montage's spelling; scalp EEG among them
    takes the montage's position with its frame (``mne_GSN-HydroCel-129``; see
    :mod:`diver.corpus.coordinates` on why that differs from the 10-05 frame).

    Positions: other scalp EEG takes the 10-05 template; iEEG takes its electrodes-file
    row, else ``positions_m`` -- the position stored in the recording (MNE's
    ``info['chs'][i]['loc'][:3]``, metres; zeros/NaN mean unknown) -- labelled
    ``positions_frame`` (default: ``dataset.coord_frame``).  ``electrode_kinds`` is
    per-channel text from the recording (an NWB group's "ECoG grid") that gives an
    ECoG subtype where no electrodes file does.
    """
    if len(raw_names) != len(mne_types):
        raise ValueError(f"{len(raw_names)} channel names but {len(mne_types)} types")
    for label, values in (("positions_m", positions_m), ("electrode_kinds", electrode_kinds)):
        if values is not None and len(values) != len(raw_names):
            raise ValueError(f"{len(raw_names)} channel names but {len(values)} {label}")
    frame = positions_frame or dataset.coord_frame
    cleaned = [clean_name(r) for r in raw_names]
    in_montage = [dataset_montage_name(r, dataset.montage, source.bids_datatype) for r in raw_names]
    names = [m.name if m else normalise_name(r) for r, m in zip(raw_names, in_montage, strict=True)]
    ctx = _load_context(source, dataset, cleaned)

    early = [
        _early_type(r, c, n, t, ctx)
        for r, c, n, t in zip(raw_names, cleaned, names, mne_types, strict=True)
    ]
    undecided = [i for i, (kind, _) in enumerate(early) if kind is None]
    scalp = {i for i in undecided if in_montage[i] or scalp_position_mm(names[i]) is not None}

    infos: list[ChannelInfo] = []
    kept_names: set[str] = set()
    for i, (raw, clean, name) in enumerate(zip(raw_names, cleaned, names, strict=True)):
        kind, bad = early[i]
        if kind is None and in_montage[i]:
            kind = "eeg"
        if kind is None:
            others = len(undecided) - 1
            share = (len(scalp) - (i in scalp)) / others if others > 0 else 0.0
            kind = _late_type(raw, clean, name, ctx, share)
        if kind not in CHANNEL_TYPES:
            raise ValueError(
                f"channel {raw!r}: type {kind!r} is not one of {sorted(CHANNEL_TYPES)}"
            )
        final_name = clean if kind in IEEG_TYPES else name
        in_file = InFilePosition(
            in_file_position_mm(positions_m[i]) if positions_m is not None else None,
            frame,
            electrode_kinds[i].lower() if electrode_kinds is not None else "",
        )
        xyz, xyz_frame, e_kind, e_group = _position(
            kind, raw, clean, final_name, ctx, in_file, in_montage[i]
        )
        subtype = ""
        if kind == "seeg":
            subtype = "depth"
        elif kind == "ecog":
            subtype = _ecog_subtype(final_name, e_kind, e_group, dataset.ieeg_subtypes)
        reason = ""
        if kind not in NEURAL_TYPES:
            reason = f"non-neural:{kind}"
        elif bad:
            reason = "bids-status:bad"
        elif final_name in kept_names:
            reason = "duplicate name"
        else:
            kept_names.add(final_name)
        infos.append(ChannelInfo(raw, final_name, kind, subtype, xyz, xyz_frame, reason))
    return infos
