"""The JSON Schemas of every file a user writes, shipped as package data, and one validator.

``config.schema.yaml`` (the study config; ``workflow/schemas/`` links to it for
Snakemake's ``validate``), ``task.schema.yaml`` (fine-tuning task files) and
``site.schema.yaml`` (the SLURM site file) are the single source of each file's keys,
descriptions, constraints and defaults.  :func:`validate` checks a parsed file against
one of them, fills the defaults in, and raises an error naming the file and every
failing key::

    data = validate(raw, "task", source="config/tasks/x.yaml", error=TaskError)

``$ref``s between the files resolve through a :mod:`referencing` registry of all of
them, each registered under its ``file://`` URI -- the base Snakemake's ``validate``
gives a schema file too, so a relative ``$ref`` such as
``config.schema.yaml#/$defs/dataset`` means the same file under both.  The task
schema takes its dataset keys from ``config.schema.yaml#/$defs/dataset``; the site
schema takes its size names from ``config.schema.yaml#/$defs/size``.

Defaults are written by the ``properties`` keyword (as Snakemake does), so a property
whose schema is only a ``$ref`` would get none; :func:`load_schema` therefore copies
the ``default`` and ``description`` of the referenced schema beside each ``$ref`` that
has none of its own.  (``config.schema.yaml`` refers only to object and enum
definitions without defaults, so Snakemake, which reads the file as it is, fills the
same defaults; ``tests/test_schemas.py`` checks that.)
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from diver.errors import DiverError

SCHEMA_DIR = Path(__file__).resolve().parent
"""Folder of the shipped ``*.schema.yaml`` files (package data)."""

NOUNS = {"config": "config", "task": "task file", "site": "site file"}
"""What each schema describes, as error messages name it (``invalid task file x.yaml``)."""


class SchemaError(DiverError, ValueError):
    """A file does not match its schema; the message names the file and each key."""


def schema_path(name: str) -> Path:
    """The file of schema ``name`` (``config`` -> ``.../schemas/config.schema.yaml``)."""
    path = SCHEMA_DIR / f"{name}.schema.yaml"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".schema.yaml") for p in _files())
        raise KeyError(f"no schema {name!r}; schemas: {known}")
    return path


def schema_uri(name: str) -> str:
    """The URI schema ``name`` is registered (and its relative ``$ref``s resolved) under."""
    return schema_path(name).as_uri()


def _files() -> list[Path]:
    return sorted(SCHEMA_DIR.glob("*.schema.yaml"))


@functools.cache
def _raw(path: Path) -> dict[str, Any]:
    with path.open() as fh:
        schema = yaml.safe_load(fh)
    schema["$id"] = path.as_uri()
    return schema


@functools.cache
def registry() -> Registry:
    """Every shipped schema file, as written, under its ``file://`` URI."""
    return Registry().with_resources(
        (path.as_uri(), Resource.from_contents(_raw(path), default_specification=DRAFT202012))
        for path in _files()
    )


@functools.cache
def _prepared(name: str) -> dict[str, Any]:
    schema = copy.deepcopy(_raw(schema_path(name)))
    resolver = registry().resolver(base_uri=schema["$id"])

    def inline(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                inline(item)
            return
        if not isinstance(node, dict):
            return
        if isinstance(node.get("$ref"), str):
            resolved = resolver.lookup(node["$ref"])
            target = resolved.contents
            # follow a chain of bare references to the schema that says something
            while isinstance(target, dict) and "$ref" in target and "default" not in target:
                resolved = resolved.resolver.lookup(target["$ref"])
                target = resolved.contents
            if isinstance(target, dict):
                for key in ("default", "description"):
                    if key in target and key not in node:
                        node[key] = copy.deepcopy(target[key])
        for value in node.values():
            inline(value)

    inline(schema)
    return schema


def load_schema(name: str) -> dict[str, Any]:
    """Schema ``name`` as the validator uses it (a fresh copy).

    That is the file's contents with its ``$id`` (its ``file://`` URI) and, beside each
    ``$ref`` without them, the referenced schema's ``default`` and ``description``.
    """
    return copy.deepcopy(_prepared(name))


# A float as YAML 1.2 (and JSON) writes it; PyYAML follows YAML 1.1, whose floats need a
# dot, so ``lr: 1e-3`` arrives as the string "1e-3".
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _wants_number(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    return "number" in ({kinds} if isinstance(kinds, str) else set(kinds or ()))


def _yaml12_number(value: Any, schema: dict[str, Any]) -> Any:
    """``value`` as a float where the schema wants a number and YAML 1.1 left a string
    that YAML 1.2 reads as one (``1e-3``); anything else unchanged (lists of numbers too)."""
    if isinstance(value, str) and _wants_number(schema) and _FLOAT.match(value.strip()):
        return float(value)
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        return [_yaml12_number(v, items) for v in value]
    return value


def _non_finite(value: Any, schema: dict[str, Any]) -> bool:
    return isinstance(value, float) and _wants_number(schema) and not math.isfinite(value)


def fill_defaults(validator_class: type) -> type:
    """A validator class that writes schema defaults into the instance while validating.

    A missing key takes its ``default`` (a copy) when its parent object is validated by
    ``properties`` -- so nested objects whose default is ``{}`` fill in turn.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if not isinstance(sub, dict):
                    continue
                if "default" in sub and key not in instance:
                    instance[key] = json.loads(json.dumps(sub["default"]))
                elif key in instance:
                    instance[key] = value = _yaml12_number(instance[key], sub)
                    if _non_finite(value, sub):
                        # JSON Schema's bounds let NaN through (every comparison is false)
                        yield jsonschema.ValidationError(
                            f"{value!r} is not a finite number", path=[key]
                        )
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


@functools.cache
def validator(name: str) -> Any:
    """A default-filling validator of schema ``name`` whose ``$ref``s resolve in the registry."""
    schema = _prepared(name)
    cls = fill_defaults(jsonschema.validators.validator_for(schema))
    return cls(schema, registry=registry())


def problems(raw: Any, name: str) -> tuple[Any, list[str]]:
    """``raw`` as a plain-typed copy with defaults filled, and one line per problem found.

    Each line is ``key.path: message``; a key not in the schema reads ``unknown keys
    [...]; known: [...]``.
    """
    data = json.loads(json.dumps(raw))  # deep copy, plain types only
    errors = sorted(validator(name).iter_errors(data), key=lambda e: list(e.absolute_path))
    return data, [f"{_key(err)}: {_message(err)}" for err in errors]


def validate(
    raw: Mapping[str, Any],
    name: str,
    *,
    source: str,
    error: type[Exception] = SchemaError,
    noun: str | None = None,
) -> dict[str, Any]:
    """Validate ``raw`` against schema ``name``, fill defaults, and return the result.

    Raises ``error`` (default :class:`SchemaError`) with the message ``invalid {noun}
    {source}:`` and one indented ``key.path: message`` line per problem (``noun`` is
    :data:`NOUNS`'s for ``name`` unless given).  ``validate(raw, "config", source=source,
    error=ConfigError)`` is what ``diver.config.validate_config`` does.
    """
    data, lines = problems(dict(raw), name)
    if lines:
        what = noun or NOUNS.get(name, name)
        raise error(f"invalid {what} {source}:\n" + "\n".join(f"  {line}" for line in lines))
    return data


def _key(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "(top level)"


def _message(err: jsonschema.ValidationError) -> str:
    if err.validator == "additionalProperties" and err.validator_value is False:
        properties = err.schema.get("properties", {}) if isinstance(err.schema, dict) else {}
        patterns = err.schema.get("patternProperties", {}) if isinstance(err.schema, dict) else {}
        if isinstance(err.instance, dict) and not patterns:
            unknown = sorted(str(k) for k in err.instance if k not in properties)
            return f"unknown keys {unknown}; known: {sorted(properties)}"
    return err.message
