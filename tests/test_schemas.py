"""The shipped schemas (diver/schemas) and what they must agree with.

Each schema is the single source of its file's keys and defaults, but the frozen
dataclasses the files are read into declare defaults too (so code can build them
without a file); these tests tie the two together, key by key, and tie the schema's
size list to the size registry.  They also check that ``$ref``s resolve, under the
loader and under Snakemake's ``validate`` (which reads ``workflow/schemas/``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from diver import config as cfg
from diver.finetune import tasks
from diver.launch import site as site_module
from diver.model.config import SIZES
from diver.presets import expand_presets
from diver.schemas import SchemaError, load_schema, registry, schema_uri, validate
from tests.conftest import REPO_ROOT

SCHEMAS = ("config", "task", "site")
CONFIGS = sorted((REPO_ROOT / "config").glob("*.yaml"))
TASK = {"name": "t", "recordings": ["x.edf"], "labels": {"T1": "a", "T2": "b"}}

# Keys whose schema default and dataclass default differ on purpose, with the reason.
NULL_BY_MODALITY = "schema null means 'by modality'; the dataclass holds the resolved value"
EXCEPTIONS = {
    (tasks.TaskPreprocessing, "laplacian"): NULL_BY_MODALITY,
    (tasks.TaskPreprocessing, "highpass"): NULL_BY_MODALITY,
}


def _plain(value: Any) -> Any:
    """Dataclasses, tuples and mappings as the plain JSON types a validated file holds."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _check_section(cls: type, properties: Mapping[str, Any], filled: Mapping[str, Any]) -> None:
    """Every schema key of a section is a field of ``cls``, and every field default equals
    the value the schema fills in (``filled``: the section validated from nothing)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(properties) <= set(fields), (
        f"{cls.__name__} has no field for schema keys {sorted(set(properties) - set(fields))}"
    )
    mismatched = {}
    for key in properties:
        default = _field_default(fields[key])
        if default is dataclasses.MISSING or (cls, key) in EXCEPTIONS:
            continue  # the dataclass requires it (the schema always fills it) / on purpose
        if _plain(default) != filled[key]:
            mismatched[key] = {"schema": filled[key], cls.__name__: _plain(default)}
    assert not mismatched, f"{cls.__name__} defaults differ from the schema's: {mismatched}"


# --------------------------------------------------------------------------------------
# the study config schema vs the dataclasses of diver/config.py


def _config_filled(raw: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return validate(raw or {}, "config", source="<defaults>")


@pytest.mark.parametrize(
    ("section", "cls"),
    [
        ("synth", cfg.SynthConfig),
        ("corpus", cfg.CorpusConfig),
        ("tracking", cfg.TrackingConfig),
        ("launcher", cfg.LauncherConfig),
        ("finetune", cfg.FinetuneConfig),
        ("scaling", cfg.ScalingConfig),
        # ("pretrain", cfg.PretrainConfig): see test_pretrain_section_defaults_match_...
    ],
)
def test_config_section_defaults_match_the_dataclass(section: str, cls: type) -> None:
    properties = load_schema("config")["properties"][section]["properties"]
    _check_section(cls, properties, _config_filled()[section])


def test_pretrain_section_defaults_match_pretrain_config() -> None:
    """The flat ``pretrain`` section against the component configs that own its keys."""
    properties = load_schema("config")["properties"]["pretrain"]["properties"]
    filled = _config_filled()["pretrain"]
    owners = cfg.PretrainConfig.keys()  # flat key -> (component, operational)
    assert set(properties) == set(owners)
    for component in {owner for owner, _ in owners.values()}:
        cls = type(getattr(cfg.PretrainConfig(), component))
        mine = {k: v for k, v in properties.items() if owners[k][0] == component}
        _check_section(cls, mine, filled)
    assert cfg.PretrainConfig.from_flat(filled) == cfg.PretrainConfig()


def test_config_nested_defaults_match_the_dataclasses() -> None:
    schema = load_schema("config")
    props = schema["properties"]
    filled = _config_filled()
    # the top level (StudyConfig) and corpus.qc (QCConfig)
    top = {k: v for k, v in props.items() if k not in ("pretrain", "model", "grid")}
    _check_section(cfg.StudyConfig, top, filled)
    _check_section(
        cfg.QCConfig, props["corpus"]["properties"]["qc"]["properties"], filled["corpus"]["qc"]
    )
    # a corpus dataset (DatasetConfig), from $defs/dataset
    one = _config_filled({"corpus": {"datasets": [{"name": "a", "inputs": ["x"]}]}})
    _check_section(
        cfg.DatasetConfig, schema["$defs"]["dataset"]["properties"], one["corpus"]["datasets"][0]
    )
    # a family (FamilyConfig): the default family, and one written as {}
    family = props["families"]["additionalProperties"]["properties"]
    _check_section(cfg.FamilyConfig, family, filled["families"]["mixed"])
    _check_section(
        cfg.FamilyConfig, family, _config_filled({"families": {"x": {}}})["families"]["x"]
    )


def test_config_grid_defaults_match_grid_block() -> None:
    """A grid value is one value or a list; GridBlock holds tuples (one value -> 1-tuple)."""
    props = load_schema("config")["properties"]["grid"]
    filled = _config_filled()

    def as_block(block: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: v if k == "read_epochs" or isinstance(v, list) else [v] for k, v in block.items()
        }

    fields = {f.name: f for f in dataclasses.fields(cfg.GridBlock)}
    assert set(props["items"]["properties"]) == set(fields)
    one = _config_filled({"grid": [{"family": "mixed", "size": "debug", "epochs": 1}]})["grid"][0]
    _check_section(cfg.GridBlock, props["items"]["properties"], as_block(one))
    study_grid = _field_default(
        next(f for f in dataclasses.fields(cfg.StudyConfig) if f.name == "grid")
    )
    assert [as_block(b) for b in filled["grid"]] == _plain(study_grid)


def test_model_section_default_of_study_config() -> None:
    """``StudyConfig().model`` is ``{}`` - every option at the model's default, which the
    schema's defaults equal (tests/test_config.py ties them to MODEL_OPTIONS); a
    validated config lists them all."""
    from diver.model.config import MODEL_OPTIONS

    model = _config_filled()["model"]
    assert cfg.StudyConfig().model == {}
    assert model == {k: allowed[0] for k, allowed in MODEL_OPTIONS.items()}


def test_schema_sizes_are_the_size_registry() -> None:
    schema = load_schema("config")
    assert schema["$defs"]["size"]["enum"] == list(SIZES)
    grid_size = schema["properties"]["grid"]["items"]["properties"]["size"]["oneOf"]
    assert grid_size[0]["$ref"] == "#/$defs/size"
    assert grid_size[1]["items"]["$ref"] == "#/$defs/size"
    # the site file's size names are the same list, by reference
    site_sizes = load_schema("site")["properties"]["sizes"]["propertyNames"]["$ref"]
    resolved = registry().resolver(base_uri=schema_uri("site")).lookup(site_sizes).contents
    assert resolved["enum"] == list(SIZES)


# --------------------------------------------------------------------------------------
# the task schema vs diver/finetune/tasks.py


def test_task_defaults_match_the_dataclasses() -> None:
    props = load_schema("task")["properties"]
    filled = validate(TASK, "task", source="<task>")
    _check_section(tasks.TaskConfig, props, filled)
    _check_section(tasks.SplitConfig, props["split"]["properties"], filled["split"])
    _check_section(
        tasks.TaskPreprocessing, props["preprocessing"]["properties"], filled["preprocessing"]
    )
    assert set(props["preprocessing"]["properties"]) == {
        f.name for f in dataclasses.fields(tasks.TaskPreprocessing)
    }
    assert sorted(tasks.DEFAULT_HIGHPASS) == sorted(props["modality"]["enum"])


def test_task_preprocessing_is_the_corpus_dataset_definition() -> None:
    """The preprocessing keys a task shares with a corpus dataset are $refs to it, so the
    two cannot drift; a task's dataset (TaskConfig.dataset) gets the same values."""
    props = load_schema("task")["properties"]
    dataset = load_schema("config")["$defs"]["dataset"]["properties"]
    shared = {k: v for k, v in props["preprocessing"]["properties"].items() if "$ref" in v}
    assert set(shared) == {
        "line_freq",
        "notch_harmonics",
        "ieeg_type",
        "channel_types",
        "ieeg_subtypes",
        "coord_frame",
        "units",
    }
    for key, sub in {**shared, "subject_pattern": props["subject_pattern"]}.items():
        assert sub["$ref"] == f"config.schema.yaml#/$defs/dataset/properties/{key}"
        assert sub["default"] == dataset[key]["default"]
    task = tasks.task_from_dict(TASK)
    corpus = cfg.DatasetConfig(name="t", inputs=("x",), modality="eeg", highpass=0.3)
    assert task.dataset(("x",)) == corpus
    with pytest.raises(tasks.TaskError, match=r"preprocessing.channel_types.X: 'brain' is not"):
        tasks.task_from_dict({**TASK, "preprocessing": {"channel_types": {"X": "brain"}}})


# --------------------------------------------------------------------------------------
# the site schema vs diver/launch/site.py


def test_site_defaults_match_the_dataclasses() -> None:
    schema = load_schema("site")
    filled = validate({}, "site", source="<site>")
    _check_section(site_module.Site, schema["properties"], filled)
    resources = {f.name for f in dataclasses.fields(site_module.Resources)}
    assert set(schema["$defs"]["resources"]["properties"]) == resources
    assert filled["default"] == _plain(site_module.Resources())


def test_site_sizes_inherit_the_site_default_not_the_schema(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "default: {mem_gb: 3, cpus_per_task: 2}\nsizes:\n  tiny: {nodes: 2}\n"
        "  small: {mem_gb: 1.0e3}\n",
    )
    site = site_module.load_site(path)
    assert site.resources("tiny") == site_module.Resources(nodes=2, mem_gb=3, cpus_per_task=2)
    assert site.resources("small").mem_gb == 1000.0  # YAML 1.1's string `1.0e3` a number
    assert site.resources("base") == site.default
    empty = site_module.load_site(_write(tmp_path, "sizes:\nlight_rules:\n"))
    assert empty == site_module.Site()


def _write(folder: Path, text: str) -> Path:
    path = folder / "site.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------
# the schemas themselves and the loader


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_key_has_a_description_and_a_default(name: str) -> None:
    """Every key: a description, and a default unless required; ``$ref``s carry their
    target's.  Site resources have none on purpose (they are inherited)."""
    schema = load_schema(name)
    no_defaults = {"site": "$defs.resources"}

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for key, sub in node.get("properties", {}).items():
            where = f"{path}.{key}".lstrip(".")
            assert sub.get("description"), f"{name}: {where} has no description"
            if not (key in node.get("required", []) or path == no_defaults.get(name)):
                assert "default" in sub, f"{name}: {where} has no default"
            walk(sub, where)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path + "[]")
        for key, sub in node.get("$defs", {}).items():
            walk(sub, f"$defs.{key}")

    walk(schema, "")


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_ref_resolves(name: str) -> None:
    resolver = registry().resolver(base_uri=schema_uri(name))
    refs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.append(node["$ref"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(load_schema(name))
    assert refs
    for ref in refs:
        assert isinstance(resolver.lookup(ref).contents, dict), ref


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_snakemake_validates_configs_as_the_loader_does(path: Path) -> None:
    """Snakemake validates with workflow/schemas/config.schema.yaml (a link to the package
    file): its $refs resolve there and it fills the same defaults."""
    from snakemake.utils import validate as snakemake_validate

    raw = yaml.safe_load(path.read_text()) or {}
    theirs = copy.deepcopy(raw)
    snakemake_validate(theirs, str(REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    ours = validate(raw, "config", source=str(path))
    assert _plain(theirs) == ours
    # the drop-in for config.py, which first expands dataset presets (config/datasets)
    expanded = validate(expand_presets(raw, base_dir=path.parent), "config", source=str(path))
    assert expanded == cfg.validate_config(raw, source=str(path))


def test_snakemake_rejects_what_the_loader_rejects() -> None:
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as snakemake_validate

    bad = {"corpus": {"datasets": [{"name": "a", "inputs": ["x"], "line_freq": 55}]}}
    with pytest.raises(WorkflowError, match="55 is not one of"):
        snakemake_validate(
            copy.deepcopy(bad), str(REPO_ROOT / "workflow/schemas/config.schema.yaml")
        )
    with pytest.raises(SchemaError, match=r"corpus.datasets.0.line_freq: 55 is not one of"):
        validate(bad, "config", source="bad.yaml")


def test_errors_name_the_source_and_every_key() -> None:
    raw = {
        "studdy": 1,
        "corpus": {"sfreq": "fast"},
        "grid": [{"family": "m", "size": "huge", "epochs": 0}],
    }
    with pytest.raises(SchemaError) as info:
        validate(raw, "config", source="my.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid config my.yaml:"
    assert lines[1].startswith("  (top level): unknown keys ['studdy']; known: ['corpus', ")
    assert {line.split(":")[0].strip() for line in lines[1:]} == {
        "(top level)",
        "corpus.sfreq",
        "grid.0.size",
        "grid.0.epochs",
    }
    with pytest.raises(ValueError, match=r"invalid task file t\.yaml:\n  split\.folds: 0 is less"):
        validate({**TASK, "split": {"folds": 0}}, "task", source="t.yaml", error=ValueError)
    with pytest.raises(KeyError, match="no schema 'nope'"):
        load_schema("nope")


def test_validate_fills_copies_and_leaves_the_input_alone() -> None:
    raw = {"corpus": {"datasets": [{"name": "a", "inputs": ["x"]}]}}
    before = copy.deepcopy(raw)
    a = validate(raw, "config", source="a")
    b = validate(raw, "config", source="b")
    assert raw == before and a == b
    a["corpus"]["datasets"][0]["channel_types"]["X"] = "eeg"
    assert b["corpus"]["datasets"][0]["channel_types"] == {}
    assert validate({}, "config", source="c")["families"] == {"mixed": _plain(cfg.FamilyConfig())}
