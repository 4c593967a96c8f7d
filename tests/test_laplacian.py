"""Laplacian re-referencing (SPEC §5): neighbours from names and positions, and the
re-referenced signal, on made-up layouts and on a real sEEG implant."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diver.config import DatasetConfig
from diver.corpus.channels import describe_channels
from diver.corpus.discovery import discover_recordings
from diver.corpus.recording import in_file_positions, read_raw
from diver.finetune.laplacian import laplacian, neighbours

NAN3 = [math.nan] * 3


def _named(names: list[str], kind: str = "seeg", coords: np.ndarray | None = None) -> tuple:
    n = len(names)
    subtype = "depth" if kind == "seeg" else ""
    xyz = np.full((n, 3), math.nan) if coords is None else coords
    return neighbours(names, [kind] * n, [subtype] * n, xyz)


def test_seeg_neighbours_are_adjacent_contacts_on_the_same_shaft() -> None:
    names = ["LA1", "LA2", "LA3", "LA5", "LB1", "LB2", "L'10", "L'9", "X"]
    got = dict(zip(names, _named(names), strict=True))
    assert got["LA1"] == (1,)  # LA2
    assert got["LA2"] == (0, 2)  # LA1, LA3
    assert got["LA3"] == (1,)  # LA4 missing
    assert got["LA5"] == ()  # neither LA4 nor LA6: isolated
    assert got["LB1"] == (5,) and got["LB2"] == (4,)  # another shaft, never LA's
    assert got["L'10"] == (7,) and got["L'9"] == (6,)  # primed shafts, any order
    assert got["X"] == ()


def _grid(rows: int, cols: int, spacing: float = 10.0) -> np.ndarray:
    """A grid on a gently curved surface (real grids follow the cortex)."""
    pts = []
    for r in range(rows):
        for c in range(cols):
            x, y = c * spacing, r * spacing
            pts.append((x, y, 0.002 * (x**2 + y**2)))
    return np.array(pts)


def test_ecog_grid_neighbours_from_positions_are_the_four_adjacent() -> None:
    names = [f"G{i + 1}" for i in range(16)] + ["S1", "S2", "S3", "S4"]
    strip = np.array([[60.0 + 10 * k, 0.0, 0.0] for k in range(4)])
    coords = np.vstack([_grid(4, 4), strip])
    got = _named(names, "ecog", coords)
    assert got[5] == (1, 4, 6, 9)  # G6 -> G2, G5, G7, G10 (no diagonals)
    assert got[0] == (1, 4)  # corner G1 -> G2, G5
    assert got[3] == (2, 7)  # G4 -> G3, G8: not G5, which follows it in number
    assert got[16] == (17,) and got[17] == (16, 18)  # the strip is its own group
    # Without positions, contact numbers decide (right for strips, not across rows).
    no_xyz = _named(names, "ecog")
    assert no_xyz[3] == (2, 4) and no_xyz[17] == (16, 18)


def test_rereferenced_signal_is_contact_minus_neighbour_mean() -> None:
    names = ["A1", "A2", "A3", "A4", "B1"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 300))
    lap = laplacian(names, ["seeg"] * 5, ["depth"] * 5, np.full((5, 3), math.nan))
    y = lap.apply(x)
    assert np.allclose(y[0], x[0] - x[1])
    assert np.allclose(y[1], x[1] - (x[0] + x[2]) / 2)
    assert np.allclose(y[3], x[3] - x[2])
    assert np.allclose(y[4], x[4]) and lap.isolated == (4,)  # B1 alone: unchanged
    # A signal shared by the whole shaft (reference, far field) cancels; a local one stays.
    shared = np.sin(np.linspace(0, 20, 300))
    local = np.zeros((5, 300))
    local[1] = np.cos(np.linspace(0, 50, 300))
    out = lap.apply(x + shared + local)
    assert np.allclose(out[:4], (y + lap.apply(local))[:4])
    assert np.allclose(lap.apply(local)[1], local[1])
    # Batched trials (T, C, S) are re-referenced trial by trial.
    assert np.allclose(lap.apply(np.stack([x, 2 * x]))[1], 2 * y)


def test_scalp_laplacian_uses_the_nearest_electrodes() -> None:
    names = ["C3", "Cz", "C4", "Fz", "Pz", "T7"]
    coords = np.array(
        [[-50, 0, 50], [0, 0, 80], [50, 0, 50], [0, 50, 60], [0, -50, 60], [-80, 0, 0]], float
    )
    got = neighbours(names, ["eeg"] * 6, [""] * 6, coords)
    assert all(len(n) == 4 for n in got)
    assert 5 not in got[1]  # Cz's four nearest do not include T7


def test_real_seeg_implant_neighbours_lie_next_to_each_other(shared_data: Path) -> None:
    """sample_seeg.edf: 88 contacts on six shafts (L', N', F', O', G', X'); the rule
    only reads names, and the electrodes file confirms they are physical neighbours."""
    folder = shared_data / "seeg_mne_misc"
    dataset = DatasetConfig(name="seeg", inputs=(str(folder),), modality="ieeg")
    (source,) = discover_recordings(dataset)
    raw = read_raw(source.path)
    positions, frame = in_file_positions(raw, dataset)
    infos = [
        ch
        for ch in describe_channels(
            raw.ch_names, raw.get_channel_types(), source, dataset,
            positions_m=positions, positions_frame=frame,
        )
        if ch.neural
    ]  # fmt: skip
    assert len(infos) == 88 and {ch.type for ch in infos} == {"seeg"}
    names = [ch.name for ch in infos]
    coords = np.array([ch.xyz_mm for ch in infos])
    got = neighbours(names, [c.type for c in infos], [c.subtype for c in infos], coords)
    by_name = dict(zip(names, got, strict=True))
    assert sorted(names[j] for j in by_name["L'8"]) == ["L'7", "L'9"]  # L'9 is listed later
    assert [names[j] for j in by_name["X'1"]] == ["X'2"]
    assert all(1 <= len(n) <= 2 for n in got)
    distances = [np.linalg.norm(coords[i] - coords[j]) for i, js in enumerate(got) for j in js]
    assert max(distances) < 10.0  # mm: every neighbour is the next contact on its shaft
