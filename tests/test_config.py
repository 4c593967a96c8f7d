"""Config files validate against the schema, defaults fill in, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diver.config import ConfigError, config_from_dict, load_config
from diver.schemas import load_schema
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("name", ["config.yaml", "diver1.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    study = load_config(REPO_ROOT / "config" / name)
    assert study.corpus.sfreq == 500
    assert study.corpus.window_samples == 15000
    assert study.corpus.datasets


def test_defaults_fill_every_key() -> None:
    study = config_from_dict({})
    assert study.study == "diver-default"
    assert study.corpus.qc.max_clipped_fraction == 0.0333
    assert study.corpus.qc.eeg_scale_uv == 100
    assert study.corpus.qc.ieeg_scale_uv == 200
    assert study.tracking_uri().startswith("sqlite:////")
    assert study.experiment_name() == "diver-default"


def test_every_schema_key_has_description_and_default() -> None:
    def walk(node: dict, path: str) -> None:
        for key, sub in node.get("properties", {}).items():
            where = f"{path}.{key}" if path else key
            assert "description" in sub, f"{where} has no description"
            is_required = key in node.get("required", [])
            assert "default" in sub or is_required, f"{where} has no default"
            walk(sub, where)
        items = node.get("items")
        if isinstance(items, dict):
            walk(items, path + "[]")

    walk(load_schema("config"), "")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"corpus": {"qc": {"max_clipped_fraction": 2}}}, "corpus.qc.max_clipped_fraction"),
        ({"corpus": {"sfreq": "fast"}}, "corpus.sfreq"),
        ({"corpus": {"datasets": [{"name": "x"}]}}, "corpus.datasets.0"),
        ({"grid": [{"family": "mixed", "size": "huge", "epochs": 1}]}, "grid.0.size"),
        ({"grid": [{"family": "nope", "size": "debug", "epochs": 1}]}, "grid.0.family"),
        ({"grid": [{"family": "mixed", "size": "debug", "epochs": 2, "read_epochs": [4]}]},
         "grid.0.read_epochs"),
        ({"families": {"ieeg": {"modalities": ["meg"]}}}, "families.ieeg.modalities.0"),
        ({"studdy": "typo"}, "(top level)"),
        ({"model": {"stcpe_fold": "median"}}, "model.stcpe_fold"),
        ({"model": {"heads": 3}}, "model"),
        (
            {"corpus": {"datasets": [{"name": "a", "inputs": ["p"], "line_freq": 55}]}},
            "corpus.datasets.0.line_freq",
        ),
    ],
)
def test_invalid_config_names_the_key(raw: dict, key: str, tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert key in str(info.value)


def test_model_section_defaults_to_the_authors_code_and_reaches_each_cell() -> None:
    from dataclasses import asdict

    from diver.model.config import MODEL_OPTIONS, ModelConfig
    from diver.study.settings import PretrainSettings

    study = config_from_dict({})
    assert set(study.model) == set(MODEL_OPTIONS)
    # the schema's choices are the model's (defaults: the code's, listed first)
    schema = load_schema("config")["properties"]["model"]["properties"]
    assert {k: tuple(v["enum"]) for k, v in schema.items()} == MODEL_OPTIONS
    assert {k: v["default"] for k, v in schema.items()} == {
        k: allowed[0] for k, allowed in MODEL_OPTIONS.items()
    }
    code = ModelConfig(d_model=64)
    assert study.model == {k: asdict(code)[k] for k in MODEL_OPTIONS}

    paper = config_from_dict({"model": {"stcpe_fold": "sum", "stft_set": "paper"}})
    cell = dict(corpus="c", out="o", size="debug", patch="1s", data_fraction=1.0, epochs=1)
    default = PretrainSettings(**cell, model_options=study.model)
    changed = PretrainSettings(**cell, model_options=paper.model)
    assert changed.model_config().stcpe_fold == "sum"
    assert changed.model_config().stft_set == "paper"
    assert default.model_config() == PretrainSettings(**cell).model_config()
    assert changed.identity() != default.identity()  # a resume refuses the other model
    with pytest.raises(ConfigError, match="unknown model options"):
        PretrainSettings(**cell, model_options={"depth": "3"})


def test_duplicate_dataset_names_rejected() -> None:
    ds = {"name": "a", "inputs": ["x"]}
    with pytest.raises(ConfigError, match="duplicate"):
        config_from_dict({"corpus": {"datasets": [ds, ds]}})


def test_results_dir_placeholder_in_inputs() -> None:
    study = config_from_dict(
        {
            "results_dir": "out",
            "corpus": {"datasets": [{"name": "a", "inputs": ["{results_dir}/x"]}]},
        }
    )
    assert study.corpus.datasets[0].inputs == ("out/x",)


def test_fingerprint_ignores_parallelism_only() -> None:
    a = config_from_dict({"corpus": {"jobs": 1}}).corpus
    b = config_from_dict({"corpus": {"jobs": 8, "strict": True}}).corpus
    c = config_from_dict({"corpus": {"signal_dtype": "float32"}}).corpus
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


def test_pretrain_components_own_the_schemas_flat_keys_once() -> None:
    """Each flat ``pretrain`` key of the schema belongs to exactly one component config,
    and flattening gives back the mapping the config was built from."""
    from dataclasses import fields

    from diver.config import PretrainConfig

    schema = load_schema("config")["properties"]["pretrain"]["properties"]
    per_component = [
        f.name for c in fields(PretrainConfig) for f in fields(c.default_factory())
    ]
    assert len(per_component) == len(set(per_component))
    assert set(per_component) == set(schema) == set(PretrainConfig.keys())
    defaults = {k: v["default"] for k, v in schema.items()}
    flat = PretrainConfig.from_flat(defaults).flat()
    assert {**flat, "betas": list(flat["betas"])} == defaults
    assert config_from_dict({"pretrain": {"lr": 0.5}}).pretrain.optimiser.lr == 0.5
    # Cadence, logging, timeouts, recomputation and compilation do not change a run's result.
    operational = {k for k, (_, op) in PretrainConfig.keys().items() if op}
    assert operational == {
        "checkpoint_every", "keep_checkpoints", "val_every", "log_every", "dist_timeout_s",
        "activation_checkpointing", "compile", "compile_backend",
    }
    assert set(PretrainConfig().identity()) == set(schema) - operational


def test_yaml12_floats_are_numbers(tmp_path: Path) -> None:
    """``lr: 1e-3`` is a number (YAML 1.2); PyYAML's YAML 1.1 leaves the string "1e-3"."""
    path = tmp_path / "study.yaml"
    path.write_text("pretrain:\n  lr: 1e-3\n  weight_decay: 5E-2\nscaling:\n  bootstrap: 10\n")
    study = load_config(path)
    assert study.pretrain.optimiser.lr == 1e-3 and study.pretrain.optimiser.weight_decay == 0.05
    path.write_text("study: 1e-3x\npretrain:\n  lr: fast\n")
    with pytest.raises(ConfigError, match="lr"):
        load_config(path)
