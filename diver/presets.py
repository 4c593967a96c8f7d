"""Per-corpus dataset presets: a corpus's typing and filter defaults, kept in one file.

Each corpus of SPEC §1 (TUEG, HBN, NCHSDB, PEERS, AJILE12, a BIDS iEEG set) needs the
same handful of dataset keys wherever it is used -- its line frequency, how its
subjects are named, which of its channel labels are not brain signals.  A study config
names the corpus's preset instead of repeating them::

    corpus:
      datasets:
        - {name: tueg, preset: tueg, inputs: [data/raw/tueg]}

A preset file holds dataset keys (everything of the schema's ``$defs/dataset`` except
``name``, ``inputs`` and ``preset``: where the recordings are and what the dataset is
called are the study's).  The study config's keys win over the preset's; the result is
validated by the schema like any other dataset entry.

The merge runs on the raw mapping, *before* the schema fills defaults
(:func:`diver.config.validate_config` calls :func:`expand_presets` first): once the
schema has filled ``modality: auto`` into an entry, "given by the study" and "the
default" can no longer be told apart, and the default would silently win over the
preset.  The expanded entry keeps ``preset`` (the name as given) as provenance, so a
config written back out with every key filled (``diver config --write``, as the
workflow does) loads again: an entry that already sets every dataset key takes
nothing from its preset, and its preset file is then not read at all.

Where a preset is found (first match wins):

* a value with a ``/`` or ending in ``.yaml``/``.yml`` is a path to a YAML file of the
  user's own, relative to the config file's folder (the working directory when the
  config has no file, as in Snakemake);
* a name ``NAME`` is ``datasets/NAME.yaml`` beside the config file (a study's own
  presets, which may shadow shipped ones), then the repository's
  ``config/datasets/NAME.yaml`` (:data:`SHIPPED_DIR`, the presets shipped with diver).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from diver import schemas
from diver.errors import ConfigError

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "config" / "datasets"
"""The repository's ``config/datasets``: the presets shipped with diver (found from the
package's own folder, so they are found whatever the working directory)."""

RESERVED = ("name", "inputs", "preset")
"""Keys a preset may not set: the dataset's name and inputs are the study's, and a
preset naming another preset would make the merge order a puzzle."""

_SUFFIXES = (".yaml", ".yml")


def is_path(value: str) -> bool:
    """Whether a ``preset`` value is a path to a file rather than a preset name."""
    return "/" in value or "\\" in value or value.lower().endswith(_SUFFIXES)


def preset_dirs(base_dir: Path | None) -> list[Path]:
    """Folders searched for preset names, in order (see the module docstring)."""
    dirs = [] if base_dir is None else [Path(base_dir) / "datasets"]
    if SHIPPED_DIR not in [d.resolve() for d in dirs if d.exists()]:
        dirs.append(SHIPPED_DIR)
    return dirs


def available_presets(base_dir: Path | None = None) -> dict[str, Path]:
    """Preset name -> file, over :func:`preset_dirs` (an earlier folder shadows a later)."""
    found: dict[str, Path] = {}
    for folder in preset_dirs(base_dir):
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in _SUFFIXES and path.is_file():
                    found.setdefault(path.stem, path)
    return found


def preset_summary(path: Path) -> str:
    """The first line of a preset file's opening comment (what corpus it is for)."""
    for line in Path(path).read_text().splitlines():
        text = line.strip()
        if text.startswith("#") and text.lstrip("#").strip():
            return text.lstrip("#").strip()
        if text and not text.startswith("#"):
            break
    return ""


def resolve_preset(value: str, *, dataset: str, base_dir: Path | None = None) -> Path:
    """The file of preset ``value`` for ``dataset``; a ConfigError naming both (and the
    presets there are) when there is none."""
    if is_path(value):
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = (Path(base_dir) if base_dir is not None else Path.cwd()) / path
        if path.is_file():
            return path
        raise ConfigError(
            f"dataset {dataset!r}: preset file {value!r} not found (looked at {path})"
        )
    known = available_presets(base_dir)
    if value in known:
        return known[value]
    folders = ", ".join(str(d) for d in preset_dirs(base_dir))
    raise ConfigError(
        f"dataset {dataset!r}: unknown preset {value!r}; available presets: "
        f"{', '.join(sorted(known)) or 'none'} (in {folders}), or give a path to a YAML file"
    )


def _dataset_schema() -> dict[str, Any]:
    return schemas.load_schema("config")["$defs"]["dataset"]


def settable_keys() -> list[str]:
    """The dataset keys a preset may set (the schema's, minus :data:`RESERVED`)."""
    return [k for k in _dataset_schema()["properties"] if k not in RESERVED]


def load_preset(path: Path) -> dict[str, Any]:
    """A preset file's keys, checked against the dataset schema on their own, so that a
    mistake is reported against the preset file (not against each config using it)."""
    try:
        with Path(path).open() as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError(f"preset {path}: cannot be read ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {path} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid preset {path}: the top level must be a mapping of dataset keys")
    reserved = [k for k in RESERVED if k in data]
    if reserved:
        raise ConfigError(
            f"invalid preset {path}: {reserved} may not be set in a preset (a dataset's name "
            "and inputs come from the study config, and presets do not nest)"
        )
    # Validated as a whole dataset entry of a config (placeholder name and inputs, so
    # the schema's own validator reads numbers as the config's would), each problem
    # reported under the preset's own key.
    entry = {**data, "name": "preset", "inputs": ["-"]}
    _, lines = schemas.problems({"corpus": {"datasets": [entry]}}, "config")
    if lines:
        prefix = "corpus.datasets.0"
        shown = [
            "(top level)" + line[len(prefix) :]
            if line.startswith(prefix + ":")
            else line.removeprefix(prefix + ".")
            for line in lines
        ]
        raise ConfigError(f"invalid preset {path}:\n" + "\n".join(f"  {x}" for x in shown))
    return data


def expand_presets(
    raw: Mapping[str, Any], *, source: str = "<config>", base_dir: Path | None = None
) -> dict[str, Any]:
    """``raw`` (a study config's mapping, not yet validated) with every dataset entry that
    names a ``preset`` merged over that preset's keys: ``{**preset, **entry}``.

    The study's keys replace the preset's whole (a ``channel_types`` given in the study
    replaces the preset's hints; copy them to extend them).  Anything malformed
    (``corpus`` not a mapping, an entry not a mapping, a ``preset`` that is not a
    string) is left as it is for the schema to report.  ``raw`` is not modified.
    Errors (unknown preset, a bad preset file) are ConfigErrors naming ``source``, the
    entry, and the preset.
    """
    corpus = raw.get("corpus") if isinstance(raw, Mapping) else None
    datasets = corpus.get("datasets") if isinstance(corpus, Mapping) else None
    if not isinstance(datasets, list) or not any(_names_preset(e) for e in datasets):
        return dict(raw)
    settable = set(settable_keys())
    expanded = []
    for index, entry in enumerate(datasets):
        if not _names_preset(entry) or settable <= set(entry):
            expanded.append(entry)  # no preset, or every key set already: nothing to take
            continue
        name = entry.get("name", f"corpus.datasets.{index}")
        try:
            path = resolve_preset(entry["preset"], dataset=str(name), base_dir=base_dir)
            preset = load_preset(path)
        except ConfigError as exc:
            raise ConfigError(f"invalid config {source}: corpus.datasets.{index}: {exc}") from exc
        expanded.append({**copy.deepcopy(preset), **entry})
    return {**raw, "corpus": {**corpus, "datasets": expanded}}


def _names_preset(entry: Any) -> bool:
    return isinstance(entry, Mapping) and isinstance(entry.get("preset"), str)
