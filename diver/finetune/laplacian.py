"""Laplacian re-referencing for iEEG fine-tuning (SPEC §5, as Neuroprobe / BrainBERT).

Each contact becomes itself minus the mean of its neighbours,
``y_i = x_i - mean_{j in N(i)} x_j``, computed from the original signals (a matrix
``L = I - A`` applied once).  That removes what neighbouring contacts share (the
reference, volume-conducted activity) and keeps the local field.  Neighbours:

* **sEEG depth shafts** (type ``seeg`` or subtype ``depth``): contacts are named
  ``<shaft><number>`` (``LA3``, ``L'12``); the neighbours of ``LA3`` are ``LA2`` and
  ``LA4`` when present, i.e. the adjacent contacts on the same shaft.  Contacts whose
  name has no trailing number have none.
* **ECoG grids and strips** (type ``ecog``): contacts are grouped by name prefix
  (``G12`` -> ``G``).  With coordinates for the whole group, the neighbours are the
  group's contacts within 1.25 x the group's contact spacing (the median distance to
  the nearest contact): the 4-neighbourhood on a regular grid (diagonals are 1.41 x the
  spacing) and the two adjacent contacts on a strip.  Without coordinates the name
  numbers decide (``G11``, ``G13`` for ``G12``), which is right for strips and for
  grids away from row ends; a warning says so.
* **Scalp EEG** (only when a task asks for it): the four nearest electrodes by 10-05
  position (Hjorth's local average reference).

A contact with no neighbour (a lone contact, a shaft with one good contact) is left
as it is, and counted, so a caller can report it; dropping it would silently change
the channel set of a benchmark.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

GRID_NEIGHBOUR_FACTOR = 1.25
SCALP_NEIGHBOURS = 4
_NUMBERED = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True)
class Laplacian:
    """Neighbour lists and the re-referencing matrix for one channel layout."""

    neighbours: tuple[tuple[int, ...], ...]
    matrix: np.ndarray  # (C, C): y = matrix @ x

    @property
    def isolated(self) -> tuple[int, ...]:
        """Channels with no neighbour (left unreferenced)."""
        return tuple(i for i, n in enumerate(self.neighbours) if not n)

    def apply(self, signal: np.ndarray) -> np.ndarray:
        """Re-reference ``signal`` of shape (C, T) (or (..., C, T))."""
        return np.einsum("ij,...jt->...it", self.matrix, signal).astype(signal.dtype, copy=False)


def _split_name(name: str) -> tuple[str, int] | None:
    match = _NUMBERED.match(name.strip())
    if not match or not match.group(1):
        return None
    return match.group(1).casefold(), int(match.group(2))


def _by_number(indices: Sequence[int], names: Sequence[str]) -> dict[int, tuple[int, ...]]:
    """Adjacent numbers on the same prefix: contacts n - 1 and n + 1."""
    where: dict[tuple[str, int], int] = {}
    for i in indices:
        parsed = _split_name(names[i])
        if parsed is not None:
            where.setdefault(parsed, i)
    out: dict[int, tuple[int, ...]] = {}
    for i in indices:
        parsed = _split_name(names[i])
        if parsed is None:
            out[i] = ()
            continue
        prefix, number = parsed
        out[i] = tuple(
            where[(prefix, k)]
            for k in (number - 1, number + 1)
            if (prefix, k) in where and where[(prefix, k)] != i
        )
    return out


def _by_distance(indices: Sequence[int], coords: np.ndarray) -> dict[int, tuple[int, ...]]:
    """Contacts within GRID_NEIGHBOUR_FACTOR x the group's contact spacing."""
    xyz = coords[list(indices)]
    dist = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    spacing = float(np.median(dist.min(axis=1)))
    out: dict[int, tuple[int, ...]] = {}
    for a, i in enumerate(indices):
        close = np.flatnonzero(dist[a] <= GRID_NEIGHBOUR_FACTOR * spacing)
        out[i] = tuple(int(indices[b]) for b in close)
    return out


def _nearest(indices: Sequence[int], coords: np.ndarray, k: int) -> dict[int, tuple[int, ...]]:
    xyz = coords[list(indices)]
    dist = np.linalg.norm(xyz[:, None, :] - xyz[None, :, :], axis=-1)
    np.fill_diagonal(dist, np.inf)
    order = np.argsort(dist, axis=1)[:, : min(k, len(indices) - 1)]
    return {i: tuple(sorted(int(indices[b]) for b in order[a])) for a, i in enumerate(indices)}


def neighbours(
    names: Sequence[str],
    types: Sequence[str],
    subtypes: Sequence[str],
    coords_mm: np.ndarray,
) -> tuple[tuple[int, ...], ...]:
    """Neighbour indices of every channel (see the module docstring for the rules)."""
    n = len(names)
    if not (len(types) == len(subtypes) == n) or np.shape(coords_mm) != (n, 3):
        raise ValueError(
            f"{n} names need as many types, subtypes and (n, 3) coordinates; got "
            f"{len(types)}, {len(subtypes)}, {np.shape(coords_mm)}"
        )
    coords = np.asarray(coords_mm, dtype=np.float64)
    known = np.isfinite(coords).all(axis=1)
    found: dict[int, tuple[int, ...]] = {}
    depth = [i for i in range(n) if types[i] == "seeg" or subtypes[i] == "depth"]
    found.update(_by_number(depth, names))
    ecog = [i for i in range(n) if types[i] == "ecog" and i not in found]
    groups: dict[str, list[int]] = {}
    for i in ecog:
        parsed = _split_name(names[i])
        groups.setdefault(parsed[0] if parsed else f"#{i}", []).append(i)
    for prefix, members in groups.items():
        if len(members) >= 2 and known[members].all():
            found.update(_by_distance(members, coords))
        else:
            if len(members) >= 2:
                log.warning(
                    "ECoG group %r lacks coordinates: neighbours from contact numbers", prefix
                )
            found.update(_by_number(members, names))
    scalp = [i for i in range(n) if types[i] == "eeg" and known[i]]
    if len(scalp) >= 2:
        found.update(_nearest(scalp, coords, SCALP_NEIGHBOURS))
    return tuple(found.get(i, ()) for i in range(n))


def laplacian(
    names: Sequence[str],
    types: Sequence[str],
    subtypes: Sequence[str],
    coords_mm: np.ndarray,
) -> Laplacian:
    """The :class:`Laplacian` of a channel layout."""
    lists = neighbours(names, types, subtypes, coords_mm)
    n = len(names)
    matrix = np.eye(n)
    for i, js in enumerate(lists):
        for j in js:
            matrix[i, j] -= 1.0 / len(js)
    return Laplacian(neighbours=lists, matrix=matrix)
