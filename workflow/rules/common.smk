# Helpers shared by the rules: paths and targets computed from the validated config.
import hashlib
import json
import os
from pathlib import Path

import yaml

RESULTS = Path(config["results_dir"])


def results(*parts):
    """A path under the study's results folder, as a string for Snakemake."""
    return str(RESULTS.joinpath(*parts))


def write_study_config():
    """Write the validated config (defaults filled) where `diver` commands read it.

    Rewritten only when its content changes, so an unchanged config never makes a
    rule look outdated.
    """
    path = RESULTS / "config" / "study.yaml"
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=True)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return str(path)


STUDY_CONFIG = write_study_config()


def section_hash(name):
    """Hash of one config section: a rule's params, so it reruns when (only) that changes."""
    blob = json.dumps(config.get(name), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parent_run_file():
    return results("tracking", "parent_run_id.txt")


def synth_targets():
    return [results("synth", "manifest.json")] if config["synth"]["enabled"] else []


def corpus_mem_mb(wildcards, threads):
    """Memory for the corpus job: one block of windows per worker process."""
    return 3000 * threads


def corpus_targets():
    return [results("corpus", "manifest.csv")]


def _alternatives(values):
    """A wildcard constraint matching exactly ``values`` (regex-escaped)."""
    import re

    return "|".join(re.escape(str(v)) for v in values)


GRID = config["grid"]
GRID_SIZES = _alternatives(GRID["sizes"])
GRID_PATCH = _alternatives([GRID["patch"]])
GRID_FRACTIONS = _alternatives(GRID["data_fractions"])
GRID_EPOCHS = _alternatives(GRID["epochs"])


def grid_cells():
    """Every (size, patch, fraction, epochs) of the configured grid."""
    return [
        {"size": size, "patch": GRID["patch"], "fraction": fraction, "epochs": epochs}
        for size in GRID["sizes"]
        for fraction in GRID["data_fractions"]
        for epochs in GRID["epochs"]
    ]


def cell_dir(wildcards):
    """The run folder of one cell (its checkpoints, logs and outputs)."""
    return results(
        "pretrain", wildcards.size, wildcards.patch, f"f{wildcards.fraction}_e{wildcards.epochs}"
    )


def pretrain_targets():
    return [
        results("pretrain", c["size"], c["patch"], f"f{c['fraction']}_e{c['epochs']}", "metrics.json")
        for c in grid_cells()
    ]


def all_targets():
    return [parent_run_file(), *corpus_targets(), *pretrain_targets()]
