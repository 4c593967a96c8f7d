# Helpers shared by the rules: paths and targets computed from the validated config.
import hashlib
import json
import os
import re
import shlex
from pathlib import Path

import yaml

from diver.config import config_from_dict, sweep_best_path
from diver.finetune.tasks import load_task
from diver.hpsearch.plan import sweeps
from diver.launch.site import load_site
from diver.study.cells import CELL_PATTERN, find_cell, finetune_cells, grid_cells
from diver.study.layout import StudyLayout

# Every path under results_dir comes from diver.study.layout (the report and the
# scaling commands use the same one), as a string for Snakemake.
LAYOUT = StudyLayout(config["results_dir"])

# The SLURM profile names a site file (cluster_profiles/slurm/site.yaml): the one place
# for partition, account, GPUs and the MLflow server.  Its server replaces the default
# SQLite store, which many jobs on shared storage must not write at once.
SITE = None
if config["launcher"]["backend"] == "slurm":
    if not config["launcher"]["site"]:
        raise ValueError("launcher.backend is slurm but launcher.site names no site file")
    site_path = Path(config["launcher"]["site"])
    if not site_path.is_absolute() and not site_path.exists():
        site_path = Path(workflow.basedir) / site_path  # a profile's path, repo-relative
    config["launcher"]["site"] = str(site_path.resolve())
    SITE = load_site(site_path)
    if SITE.tracking_uri and not config["tracking"]["uri"]:
        config["tracking"]["uri"] = SITE.tracking_uri
STUDY = config_from_dict(config, source="the Snakemake config")


def path(value):
    """A layout path as Snakemake wants it (a string)."""
    return str(value)


def log_file(*parts):
    return path(LAYOUT.log(*parts))


STUDY_CONFIG = path(LAYOUT.study_config)


def write_study_config():
    """Write the validated config (defaults and the site's settings filled in) where the
    `diver` commands read it, with `diver config --write` (which leaves an unchanged file
    untouched).

    Called from the Snakefile's `onstart` handler: once a run has jobs to do, before the
    first starts.  Not at parse time (a dry run, `--list` or a remote job writes nothing)
    and not a rule: a rule would be a job after every config edit, so editing one stage's
    section would make every target "outdated" rather than "Nothing to be done".
    """
    text = yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=True)
    shell("printf '%s' {text:q} | diver config - --write {STUDY_CONFIG:q}")


def section_hash(name):
    """Hash of one config section: a rule's params, so it reruns when (only) that changes."""
    blob = json.dumps(config.get(name), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def parent_run_file():
    return path(LAYOUT.parent_run_id)


def synth_targets():
    return [path(LAYOUT.synth_dir / "manifest.json")] if config["synth"]["enabled"] else []


def corpus_mem_mb(wildcards, threads):
    """Memory for a corpus chunk's job: one block of windows per worker process."""
    return 3000 * threads


# A chunk's name: its dataset's (diver.config.SAFE_NAME) and a number.
CHUNK_PATTERN = r"[A-Za-z0-9._-]+"


def corpus_chunk_targets(wildcards):
    """Every chunk's file, known once the plan checkpoint has run."""
    from diver.corpus.plan import chunk_names  # here: it imports MNE, slow for every parse

    plan = checkpoints.corpus_plan.get().output[0]
    return [path(LAYOUT.corpus_chunk(name)) for name in chunk_names(plan)]


def corpus_targets():
    return [path(LAYOUT.corpus_manifest)]


def _alternatives(values):
    """A wildcard constraint matching exactly ``values`` (regex-escaped)."""
    import re

    return "|".join(re.escape(str(v)) for v in sorted(set(map(str, values))))


# The pretraining grid (SPEC §3) and where each cell's run lives: diver.study.cells names them.
CELLS = grid_cells(STUDY)
CELL_WILDCARDS = {
    name: _alternatives(c.wildcards()[name] for c in CELLS)
    for name in ("family", "patch", "size", "data", "epochs")
}


def cell_of(wildcards):
    return find_cell(STUDY, dict(wildcards))


def cell_dir(wildcards):
    """The run folder of one cell (its checkpoints, logs, job record and outputs)."""
    return path(LAYOUT.cell_dir(cell_of(wildcards).key))


def cell_args(wildcards):
    """The `diver pretrain` flags of one cell."""
    return shlex.join(cell_of(wildcards).pretrain_args())


def family_hash(wildcards):
    """A cell reruns when its family's datasets or optimiser settings change."""
    blob = json.dumps(config["families"][wildcards.family], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --- the hyper-parameter sweep before the grid (hpsearch.smk) ----------------------------

# (family, patch) of every sweep: the grid's pairs whose family says `from_sweep`.
SWEEPS = sweeps(STUDY)


def sweep_best(family, patch):
    """A sweep's best.yaml, which the cells of its family and patch read."""
    return path(sweep_best_path(config["results_dir"], family, patch))


def hpsearch_targets():
    return [sweep_best(family, patch) for family, patch in SWEEPS]


def cell_sweep(wildcards):
    """The cell's sweep result when its family takes lr or weight decay from_sweep: an
    input, so a changed sweep reruns exactly the cells that read it."""
    cell = cell_of(wildcards)
    if STUDY.families[cell.family].uses_sweep(cell.patch):
        return [sweep_best(cell.family, cell.patch)]
    return []


# The muP transfer check's result (diver.hpsearch.transfer writes transfer.json there).
TRANSFER_RESULT = path(Path(config["results_dir"]) / "hpsearch" / "transfer" / "transfer.json")


def transfer_targets():
    """The transfer check's result when `hpsearch.transfer.enabled` (the report shows it)."""
    return [TRANSFER_RESULT] if config["hpsearch"]["transfer"]["enabled"] else []


def hpsearch_report_inputs():
    """What the report's sweep section reads: every sweep's best.yaml and the check."""
    return [*hpsearch_targets(), *transfer_targets()]


def pretrain_targets():
    """Every cell's metrics.json (the scaling fit's input)."""
    return [path(LAYOUT.cell_metrics(c.key)) for c in CELLS]


def light_resources():
    """Partition / account / QoS / constraint of the site for the light rules on SLURM."""
    if SITE is None:
        return {}
    extra = [f"--qos={SITE.qos}"] if SITE.qos else []
    resources = {
        "slurm_partition": SITE.partition,
        "slurm_account": SITE.account,
        "constraint": SITE.constraint,
        "slurm_extra": " ".join(extra) or None,
        **SITE.light_rules,
    }
    return {k: v for k, v in resources.items() if v is not None}


def all_targets():
    return [parent_run_file(), *corpus_targets(), *pretrain_targets()]


# --- fine-tuning (SPEC §5; its rules are in finetune.smk) -------------------------------

FINETUNE = config["finetune"]


def _task_file(path):
    """A task file as given, or relative to the repository (config/tasks/...)."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = Path(workflow.basedir) / path
    return str(path.resolve())


TASK_FILES = {load_task(_task_file(p)).name: _task_file(p) for p in FINETUNE["tasks"]}
FINETUNE_CELLS = finetune_cells(STUDY) if TASK_FILES else []


def synth_task_targets():
    return [path(LAYOUT.synth_task_dir / "manifest.json")] if FINETUNE["synth_task"] else []


def finetune_targets():
    """Every fine-tuning job's metrics.json (the report reads them)."""
    return [
        path(LAYOUT.finetune_metrics(task, mode, cell.key))
        for task in sorted(TASK_FILES)
        for mode in FINETUNE["modes"]
        for cell in FINETUNE_CELLS
    ]


def finetune_flags(wildcards, threads):
    # Torch's default thread count oversubscribes a shared CPU (100x slower steps seen);
    # a local job uses its rule's threads, a SLURM job the CPUs SLURM gave it.
    flags = ["--threads", str(threads)] if config["launcher"]["backend"] == "local" else []
    if FINETUNE["seeds"] is not None:
        flags += ["--seeds", *map(str, FINETUNE["seeds"])]
    if FINETUNE["epochs"] is not None:
        flags += ["--epochs", str(FINETUNE["epochs"])]
    return shlex.join(flags)


# --- scaling laws (SPEC §4; its rules are in scaling.smk) -------------------------------


def scaling_groups():
    """(family, patch) of every fit: the paper fits one law per family and patch (Table 8)."""
    return sorted({(cell.family, cell.patch) for cell in grid_cells(STUDY)})


def scaling_fit_targets():
    return [path(LAYOUT.fit_summary(family, patch)) for family, patch in scaling_groups()]


def scaling_fit_dir(wildcards):
    return path(LAYOUT.fit_dir(wildcards.family, wildcards.patch))
