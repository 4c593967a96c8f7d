"""Electrode positions in millimetres: the standard 10-05 montage and electrodes TSVs.

The model's position embedding (SPEC §2) encodes x, y, z in mm, so every source of
positions is converted to mm here, once:

* Scalp EEG: MNE's ``standard_1005`` template (shipped as ``colin27_1005`` since MNE
  1.13, which deprecates the old name; the positions are identical).  MNE stores it in
  metres in the template head's MRI space, which MNE's documentation describes as
  fsaverage's MRI coordinates (same as MNI); we label the frame ``mne_standard_1005``.
* iEEG: a BIDS ``*_electrodes.tsv`` (or ``x_electrodes.tsv`` beside a non-BIDS
  ``x.edf``).  Its units come from the ``*_coordsystem.json``
  (``iEEGCoordinateUnits`` / ``EEGCoordinateUnits``), or are inferred from the values
  when the JSON is missing or says something else (see :func:`infer_units`).
* Scalp EEG of a dataset that names an MNE montage (``DatasetConfig.montage``, e.g.
  ``GSN-HydroCel-129`` or ``biosemi128``): that montage's positions for the names it
  holds (:func:`named_montage_position_mm`), the 10-05 template for the rest.

Whether montage and 10-05 positions can be mixed in one model: only when MNE ships the
montage in the template's space. MNE's 10-05 template (and the other ``colin27_*``,
``mgh*`` and ``artinis-*`` montages) report ``coord_frame == 'mri'``: the template
head's MRI space, MNI-like, origin near the anterior commissure. The EGI
(``GSN-HydroCel-*``, ``EGI_256``) and BioSemi montages report ``'unknown'``: cap layouts
scaled to a head of radius ~95 mm (MNE's default ``head_size``) centred on their own
origin, which is not MNI's (it sits some 1-3 cm behind and up to 1 cm above it, judging
by the sites below). Same site, different numbers: EGI's vertex ``Cz`` is at (0, 0, 96)
mm, the 10-05 ``Cz`` at (0, -9, 100), 10 mm apart; the GSN electrodes nearest ten 10-20
sites (``E11`` ~ Fz at (0, 86, 55) against (0, 58, 67), ``E36`` ~ C3, ``E75`` ~ Oz ...)
are 7-30 mm from the template's; and aligning the GSN montage's own fiducials with the
template's (MNE's head frame) leaves 12-33 mm. So positions from such a montage are
*not* mixed silently: they are labelled with their own frame, ``mne_<montage>``
(:func:`named_montage_frame`), and a recording or corpus mixing them with 10-05
positions shows it in ``coord_frame`` (``mne_GSN-HydroCel-129+mne_standard_1005``). The
model itself reads only the mm values, so a corpus pooling EGI/BioSemi datasets with
10-05 ones feeds it positions from two spaces, up to ~3 cm apart: removing that needs a
registration of each cap onto the template, which is not done here.
Montages MNE ships in the template's ``'mri'`` space share :data:`SCALP_FRAME`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import mne

log = logging.getLogger(__name__)

SCALP_FRAME = "mne_standard_1005"
UNKNOWN_FRAME = "unknown"
NAN_XYZ: tuple[float, float, float] = (math.nan, math.nan, math.nan)

UNIT_TO_MM = {"m": 1000.0, "cm": 10.0, "mm": 1.0}
_MISSING = frozenset({"", "n/a", "na", "nan", "none"})
_UNIT_KEYS = ("iEEGCoordinateUnits", "EEGCoordinateUnits")
_FRAME_KEYS = ("iEEGCoordinateSystem", "EEGCoordinateSystem")
_SPACE_ENTITY = re.compile(r"(?:^|_)space-([A-Za-z0-9]+)(?:_|$)")

XYZ = tuple[float, float, float]


@lru_cache(maxsize=1)
def _montage_mm() -> dict[str, XYZ]:
    """Template positions (mm) keyed by the montage's own spelling; read once per process."""
    builtin = mne.channels.get_builtin_montages()
    kind = "colin27_1005" if "colin27_1005" in builtin else "standard_1005"
    positions = mne.channels.make_standard_montage(kind).get_positions()["ch_pos"]
    return {
        name: (float(xyz[0]) * 1000.0, float(xyz[1]) * 1000.0, float(xyz[2]) * 1000.0)
        for name, xyz in positions.items()
    }


@lru_cache(maxsize=1)
def _montage_spellings() -> dict[str, str]:
    return {name.casefold(): name for name in _montage_mm()}


def montage_spelling(name: str) -> str | None:
    """The montage's spelling of ``name`` (matched case-insensitively), or None.

    EDF headers shout (``FP1``, ``CZ``) while the montage writes ``Fp1``/``Cz``; one
    spelling per site keeps names comparable across datasets.
    """
    return _montage_spellings().get(name.strip().casefold())


def montage_position_mm(name: str) -> XYZ | None:
    """Template position of a montage name in mm, or None when it is not one."""
    spelling = montage_spelling(name)
    return None if spelling is None else _montage_mm()[spelling]


# --- a dataset's named MNE montage (DatasetConfig.montage) ------------------------------

TEMPLATE_SPACE = "mri"
"""MNE's ``coord_frame`` of the 10-05 template: montages in it share :data:`SCALP_FRAME`."""

_GSN_REFERENCE_ALIASES = ("VREF",)
"""Other labels of the GSN vertex reference (the montage's ``Cz``): MNE's MFF reader
calls it ``VREF``, and exports to other formats number it one past the last
electrode (``E129`` of a 128-electrode net); see :func:`_montage_aliases`."""


@dataclass(frozen=True)
class NamedMontage:
    """One MNE built-in montage as diver uses it: positions in mm, spellings, frame."""

    kind: str
    positions_mm: Mapping[str, XYZ]  # keyed by the montage's own spelling
    spellings: Mapping[str, str]  # casefolded name (or alias) -> montage spelling
    frame: str


def _montage_aliases(kind: str, names: Sequence[str]) -> dict[str, str]:
    """Labels recordings use for a montage channel that the montage spells otherwise.

    Only the EGI vertex reference so far: the ``GSN-HydroCel-*`` montages that hold
    ``E1..En`` and ``Cz`` (the reference) also answer to ``VREF`` and ``E{n+1}``.
    """
    if not kind.startswith("GSN-HydroCel") or "Cz" not in names:
        return {}
    numbered = [int(n[1:]) for n in names if re.fullmatch(r"E\d+", n)]
    aliases = {alias: "Cz" for alias in _GSN_REFERENCE_ALIASES}
    if numbered:
        aliases[f"E{max(numbered) + 1}"] = "Cz"
    return aliases


def named_montage_frame(kind: str, mne_frame: str) -> str:
    """The frame label of montage ``kind``'s positions (see the module docstring)."""
    return SCALP_FRAME if mne_frame == TEMPLATE_SPACE else f"mne_{kind}"


@cache
def named_montage(kind: str) -> NamedMontage:
    """MNE's built-in montage ``kind`` in mm, read once per process and montage.

    ``kind`` must be one of :func:`mne.channels.get_builtin_montages` (the config
    checks that).  The spherical montages come at MNE's default head radius (95 mm),
    as ``make_standard_montage`` gives them.
    """
    montage = mne.channels.make_standard_montage(kind).get_positions()
    positions = {
        name: (float(xyz[0]) * 1000.0, float(xyz[1]) * 1000.0, float(xyz[2]) * 1000.0)
        for name, xyz in montage["ch_pos"].items()
    }
    spellings = {
        alias.casefold(): target
        for alias, target in _montage_aliases(kind, list(positions)).items()
    }
    spellings.update({name.casefold(): name for name in positions})  # real names win
    frame = named_montage_frame(kind, str(montage["coord_frame"]))
    return NamedMontage(kind, positions, spellings, frame)


def named_montage_spelling(kind: str, name: str) -> str | None:
    """Montage ``kind``'s spelling of channel ``name`` (case-insensitive), or None."""
    return named_montage(kind).spellings.get(name.strip().casefold())


def named_montage_position_mm(kind: str, name: str) -> XYZ | None:
    """Position (mm) of ``name`` in montage ``kind``, or None when it is not one of its."""
    spelling = named_montage_spelling(kind, name)
    return None if spelling is None else named_montage(kind).positions_mm[spelling]


def midpoint(a: Sequence[float], b: Sequence[float]) -> XYZ:
    """Midpoint of two positions: where a bipolar derivation's signal is attributed."""
    return ((a[0] + b[0]) / 2.0, (a[1] + b[1]) / 2.0, (a[2] + b[2]) / 2.0)


def infer_units(values: Iterable[float]) -> str:
    """Guess 'm', 'cm' or 'mm' from the largest absolute finite coordinate.

    Electrodes sit on or in a head whose radius is about 0.1 m = 10 cm = 100 mm, and a
    whole montage or implant spans several centimetres from the origin.  So the largest
    |coordinate| is at most ~0.3 in metres (even in scanner frames not centred on the
    head), at most ~20 in centimetres, and above 20 in millimetres for any realistic
    set of contacts.  Hence: max <= 1 -> 'm', max <= 20 -> 'cm', otherwise 'mm'.  A
    table without a single finite value is called 'mm' (nothing to convert anyway).
    """
    finite = [abs(v) for v in values if math.isfinite(v)]
    if not finite:
        return "mm"
    largest = max(finite)
    if largest <= 1.0:
        return "m"
    if largest <= 20.0:
        return "cm"
    return "mm"


@dataclass(frozen=True)
class CoordSystem:
    """What a ``*_coordsystem.json`` says about its electrodes (None where silent)."""

    units: str | None
    frame: str | None


def read_coordsystem(path: Path | None) -> CoordSystem:
    """Units (normalised to 'm'/'cm'/'mm' or None) and frame from a coordsystem JSON."""
    if path is None:
        return CoordSystem(None, None)
    with Path(path).open(encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a coordsystem JSON must hold an object")
    units = None
    for key in _UNIT_KEYS:
        value = str(data.get(key, "")).strip().lower()
        if value in UNIT_TO_MM:
            units = value
            break
    frame = None
    for key in _FRAME_KEYS:
        value = str(data.get(key, "")).strip()
        if value and value.lower() not in _MISSING:
            frame = value
            break
    return CoordSystem(units, frame)


@dataclass(frozen=True)
class Electrode:
    """One row of an electrodes TSV, position already in mm (NaN where 'n/a')."""

    name: str
    xyz_mm: XYZ
    kind: str  # the `type` column, lower case ('' when absent): depth, grid, strip, ...
    group: str  # the `group` column, lower case ('' when absent)

    @property
    def has_position(self) -> bool:
        return all(math.isfinite(v) for v in self.xyz_mm)


@dataclass(frozen=True)
class ElectrodeTable:
    """A whole electrodes file: where it came from, its frame, units, and rows by name."""

    path: Path
    frame: str
    units: str
    units_inferred: bool
    electrodes: Mapping[str, Electrode]

    def find(self, names: Iterable[str]) -> Electrode | None:
        """First row matching one of ``names``: exact spelling, then case-insensitive.

        EDF labels and TSV names are written by different tools, so the caller offers
        several spellings of one channel (raw, cleaned, normalised).
        """
        candidates = [n for n in names if n]
        for name in candidates:
            if name in self.electrodes:
                return self.electrodes[name]
        folded = {key.casefold(): row for key, row in self.electrodes.items()}
        for name in candidates:
            row = folded.get(name.casefold())
            if row is not None:
                return row
        return None


def _number(text: str | None) -> float:
    if text is None or text.strip().lower() in _MISSING:
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def _cell(row: Mapping[str, str | None], key: str) -> str:
    value = (row.get(key) or "").strip()
    return "" if value.lower() in _MISSING else value


def read_electrodes(
    path: Path, coordsystem_json: Path | None = None, default_frame: str = UNKNOWN_FRAME
) -> ElectrodeTable:
    """Read an electrodes TSV into mm.

    Units: the coordsystem JSON's, else :func:`infer_units` (logged, since a wrong
    guess scales a whole implant by 10x).  Frame: the JSON's, else the BIDS ``space-``
    entity of the file name (BIDS makes both name the same space), else
    ``default_frame`` (the dataset's ``coord_frame``).  Raises ValueError when the
    file lacks a name, x, y or z column: silently positionless contacts would hide a
    broken sidecar.
    """
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [col for col in ("name", "x", "y", "z") if col not in header]
        if missing:
            raise ValueError(f"{path}: electrodes TSV lacks column(s) {missing}")
        rows = [{(k or "").strip().lower(): v for k, v in row.items()} for row in reader]
    raw = [
        (
            (row.get("name") or "").strip(),
            (_number(row.get("x")), _number(row.get("y")), _number(row.get("z"))),
            _cell(row, "type").lower(),
            _cell(row, "group").lower(),
        )
        for row in rows
        if (row.get("name") or "").strip()
    ]
    system = read_coordsystem(coordsystem_json)
    units, inferred = system.units, False
    if units is None:
        units, inferred = infer_units(v for _, xyz, _, _ in raw for v in xyz), True
        log.warning("%s: coordinate units not declared; inferred %r from the values", path, units)
    scale = UNIT_TO_MM[units]
    space = _SPACE_ENTITY.search(path.name)
    frame = system.frame or (space.group(1) if space else None) or default_frame
    electrodes: dict[str, Electrode] = {}
    for name, xyz, kind, group in raw:
        if name in electrodes:
            log.warning("%s: electrode %r listed twice; keeping the first row", path, name)
            continue
        mm = (xyz[0] * scale, xyz[1] * scale, xyz[2] * scale)
        electrodes[name] = Electrode(name, mm, kind, group)
    return ElectrodeTable(path, frame, units, inferred, electrodes)
