"""Typed result files (diver.study.artifacts): round trips, tolerance of unknown keys,
and errors that name the file and the problem."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from diver.errors import DiverError
from diver.study.artifacts import ArtifactError, FitSummary, PretrainMetrics
from diver.study.cells import cell_key
from tests.grid_files import cell_metrics, write_cell

FITTED = {
    "form": "chinchilla",
    "A": 406.4,
    "B": 410.7,
    "E": 1.69,
    "alpha": 0.34,
    "beta": 0.28,
    "ci": {"A": [300.0, 500.0], "E": [None, None]},
    "ci_level": 0.95,
    "r2_linear": 0.99,
    "r2_log": 0.98,
    "loo_rmse_log": None,
    "loo_mape": 0.01,
    "n_points": 12,
    "bootstrap": 100,
    "bootstrap_failed": 0,
    "seed": 0,
    "objective": 1e-4,
    "converged": True,
    "n_starts": 33,
    "huber_delta": 1e-3,
    "log_params": {"a": 6.0, "b": 6.0, "e": 0.52, "alpha": 0.34, "beta": 0.28},
    "status": "fitted",
    "form_requested": "auto",
    "form_reason": "Chinchilla law fitted instead",
    "design": {"points": 12, "sizes": 3},
    "selection": {"family": "mixed"},
    "excluded": {},
    "at_bound": ["E"],
    "runs": "runs.csv",
    "files": {"bootstrap": "bootstrap.csv", "frontier": "frontier.csv", "figures": ["a.png"]},
    "compute": "C = 6 N D",
}


def test_pretrain_metrics_round_trip_and_cell(tmp_path: Path) -> None:
    data = cell_metrics("debug", 0.5, 2, subjects=4)
    data["val_loss_mask"] = 0.1  # a per-part loss: kept, not known by name
    path = write_cell(tmp_path / "cell", data)
    metrics = PretrainMetrics.from_json(path)
    assert metrics.n_params == data["n_params"] and metrics.epochs == 2
    assert metrics.extra == {"val_loss_mask": 0.1}
    assert metrics.loss_at_epochs()[2] == data["val_loss"]
    assert metrics.cell == cell_key("mixed", "1s", "debug", 0.5, 2, 4)
    for key, value in data.items():
        assert metrics.to_dict()[key] == value
    out = tmp_path / "again.json"
    metrics.write(out)
    assert PretrainMetrics.from_json(out) == metrics
    assert not list(tmp_path.glob("*.tmp-*"))


def test_pretrain_metrics_keeps_a_diverged_loss(tmp_path: Path) -> None:
    data = {**cell_metrics("debug", 1.0, 1), "val_loss": math.nan}
    metrics = PretrainMetrics.from_dict(data)
    metrics.write(tmp_path / "metrics.json")
    assert math.isnan(PretrainMetrics.from_json(tmp_path / "metrics.json").val_loss)


def test_pretrain_metrics_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    with pytest.raises(ArtifactError, match="no such metrics file"):
        PretrainMetrics.from_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(ArtifactError, match="expected a JSON object"):
        PretrainMetrics.from_json(path)
    data = cell_metrics("debug", 1.0, 1)
    del data["n_params"]
    path.write_text(json.dumps(data))
    with pytest.raises(DiverError, match=rf"{path}: missing key\(s\) \['n_params'\]"):
        PretrainMetrics.from_json(path)
    path.write_text(json.dumps({**cell_metrics("debug", 1.0, 1), "tokens": "many"}))
    with pytest.raises(ArtifactError, match="'tokens' is 'many', not a number"):
        PretrainMetrics.from_json(path)
    path.write_text(json.dumps({**cell_metrics("debug", 1.0, 1), "val_by_epoch": [{"x": 1}]}))
    with pytest.raises(ArtifactError, match="malformed val_by_epoch"):
        PretrainMetrics.from_json(path, source="mlflow:abc")
    without_family = {k: v for k, v in cell_metrics("debug", 1.0, 1).items() if k != "family"}
    with pytest.raises(ArtifactError, match="no 'family'"):
        _ = PretrainMetrics.from_dict(without_family).cell


def test_fit_summary_round_trip(tmp_path: Path) -> None:
    summary = FitSummary.from_dict({**FITTED, "future_key": [1]})
    assert summary.fitted and summary.params["E"] == 1.69
    assert summary.interval("A") == (300.0, 500.0) and summary.interval("E") is None
    assert summary.selection_label == "family=mixed" and summary.at_bound == ("E",)
    assert summary.to_dict() == {**FITTED, "future_key": [1]}
    assert list(summary.to_dict())[:7] == ["form", "A", "B", "E", "alpha", "beta", "ci"]
    path = tmp_path / "fit.json"
    summary.write(path)
    assert FitSummary.from_json(path) == summary

    skipped = {
        "status": "skipped",
        "form": None,
        "form_requested": "auto",
        "form_reason": "no law fitted: 4 points < 10",
        "design": {"points": 4},
        "n_points": 4,
        "selection": {},
        "excluded": {"subject_sweep": 2},
        "runs": "runs.csv",
        "files": {"bootstrap": None, "frontier": None, "figures": []},
    }
    back = FitSummary.from_dict(skipped)
    assert not back.fitted and back.selection_label == "all"
    assert back.to_dict() == skipped


def test_fit_summary_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fit.json"
    with pytest.raises(ArtifactError, match=f"{path}: no such fit file"):
        FitSummary.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ArtifactError, match="not a readable fit file"):
        FitSummary.from_json(path)
    for data, message in [
        ({"A": 1.0}, "no 'form'"),
        ({"form": "cubic"}, "'form' must be one of"),
        ({"form": "data-constrained", "A": 1.0}, r"parameters missing: \['B'"),
        ({**FITTED, "ci": {"A": [1.0]}}, r"'ci' of 'A'"),
        ({**FITTED, "n_points": "twelve"}, "'n_points' is 'twelve', not a number"),
    ]:
        path.write_text(json.dumps(data))
        with pytest.raises(ArtifactError, match=message) as info:
            FitSummary.from_json(path)
        assert str(path) in str(info.value)
