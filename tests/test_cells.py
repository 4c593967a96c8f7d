"""The study grid: blocks, explicit cells, families, the paper's sparse grid, subjects."""

from __future__ import annotations

from collections import Counter

import pytest

from diver.cli import build_parser
from diver.config import config_from_dict, load_config
from diver.study.cells import Cell, find_cell, grid_cells
from diver.train.cli import pretrain_settings
from tests.conftest import REPO_ROOT


def test_blocks_expand_to_distinct_cells_and_merge_read_epochs() -> None:
    study = config_from_dict(
        {
            "families": {"a": {}, "b": {"modalities": ["eeg"]}},
            "grid": [
                {"family": ["a", "b"], "size": ["debug", "debug-2x"], "epochs": [1, 2]},
                {"family": "a", "size": "debug", "epochs": 2, "read_epochs": [1]},
                {"family": "a", "size": "debug", "epochs": 2, "fraction": 0.5, "subjects": 3},
            ],
        }
    )
    cells = grid_cells(study)
    assert len(cells) == 2 * 2 * 2 + 1
    merged = find_cell(
        study, {"family": "a", "patch": "1s", "size": "debug", "data": "f1.0", "epochs": "2"}
    )
    assert merged.read_epochs == (1,)
    sweep = [c for c in cells if c.subjects is not None]
    assert [c.key for c in sweep] == ["a/1s/debug/s3_f0.5_e2"]


# SPEC §3's values, which config/diver1.yaml's sweep (families: from_sweep) stands in
# for: written as the sweep's best.yaml files, they must reach the cells.
PAPER_OPTIMISERS = {
    ("ieeg", "1s"): (2.30e-3, 2.17e-7),
    ("ieeg", "0.1s"): (4.91e-3, 3.75e-6),
    ("eeg", "1s"): (7.70e-3, 2.14e-7),
}


def _paper_study_file(tmp_path) -> object:
    """config/diver1.yaml with its results under tmp_path, each sweep's best.yaml holding
    the paper's values."""
    import yaml

    from diver.config import read_config_mapping, sweep_best_path

    raw = read_config_mapping(REPO_ROOT / "config" / "diver1.yaml")
    raw["results_dir"] = str(tmp_path / "results")
    for (family, patch), (lr, wd) in PAPER_OPTIMISERS.items():
        best = sweep_best_path(raw["results_dir"], family, patch)
        best.parent.mkdir(parents=True)
        best.write_text(yaml.safe_dump({"lr": lr, "weight_decay": wd}))
    path = tmp_path / "diver1.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_paper_grid_matches_spec_section_3(tmp_path) -> None:
    study = load_config(_paper_study_file(tmp_path))
    cells = grid_cells(study)
    by = Counter((c.family, c.patch) for c in cells if c.subjects is None)
    # iEEG 1 s: 6 sizes x {1,2,4,8} + 4 sizes x {16,32,64}, plus the data-size sweep at
    # Small/2 epochs (7 fractions, one of them the grid's f1.0 cell).
    assert by[("ieeg", "1s")] == 6 * 4 + 4 * 3 + 6
    assert by[("ieeg", "0.1s")] == 6 * 2 + 5 + 3
    assert by[("eeg", "1s")] == 6 * 2
    assert all(c.read_epochs == (2, 4, 8, 16, 32) for c in cells if c.family == "eeg")
    assert sorted(c.subjects for c in cells if c.subjects) == [2, 4, 6, 8, 10, 12, 14, 16]
    assert study.families["ieeg"].optimiser("0.1s", study.pretrain) == (4.91e-3, 3.75e-6)
    assert study.families["eeg"].optimiser("1s", study.pretrain) == (7.70e-3, 2.14e-7)


def test_cell_flags_round_trip_through_diver_pretrain(tmp_path) -> None:
    study_file = _paper_study_file(tmp_path)
    cell = Cell("ieeg", "0.1s", "small", 0.03, 2, subjects=4)
    args = build_parser().parse_args(
        ["pretrain", "--config", str(study_file), "--corpus", "c", "--out", str(tmp_path),
         *cell.pretrain_args()]
    )
    settings, tracking = pretrain_settings(args)
    assert tracking is None
    assert settings.cell == cell.key == "ieeg/0.1s/small/s4_f0.03_e2"
    assert (settings.config.optimiser.lr, settings.config.optimiser.weight_decay) == (
        4.91e-3,
        3.75e-6,
    )
    assert settings.modalities == ("ieeg",) and settings.subjects == 4


def test_unknown_family_flag_names_the_families(tmp_path) -> None:
    args = build_parser().parse_args(
        ["pretrain", "--config", str(REPO_ROOT / "config" / "diver1.yaml"), "--corpus", "c",
         "--out", str(tmp_path), "--size", "debug", "--epochs", "1", "--family", "meg"]
    )
    with pytest.raises(Exception, match="ieeg_eeg"):
        pretrain_settings(args)


def test_finetune_cells_must_be_grid_cells() -> None:
    from diver.config import ConfigError
    from diver.study.cells import finetune_cells

    study = load_config(REPO_ROOT / "config" / "config.yaml")
    assert [c.key for c in finetune_cells(study)] == ["mixed/1s/debug-4x/f1.0_e2"]
    typo = config_from_dict({"finetune": {"cells": ["mixed/1s/debug/f1_e2"]}})
    with pytest.raises(ConfigError, match="not cells of the grid"):
        finetune_cells(typo)
    every = config_from_dict({"finetune": {"cells": ["all"]}})
    assert finetune_cells(every) == grid_cells(every)
