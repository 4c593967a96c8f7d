# SPEC §3: one pretraining run per grid cell (family x patch x size x data x epochs).
# A local rule: `diver launch` runs `diver pretrain` here or submits it to SLURM with
# submitit and waits (never Snakemake's SLURM executor around a submitit job).  The cell
# resumes from its own checkpoints when rerun, and a restarted Snakemake re-attaches to
# a job still running.


wildcard_constraints:
    **CELL_WILDCARDS,


localrules:
    pretrain,


rule pretrain:
    input:
        parent=parent_run_file(),
        manifest=path(LAYOUT.corpus_manifest),
        sweep=cell_sweep,
    output:
        metrics=path(LAYOUT.cell_metrics(CELL_PATTERN)),
        model=path(LAYOUT.cell_model(CELL_PATTERN)),
    log:
        log_file("pretrain", CELL_PATTERN),
    threads: 1
    resources:
        mem_mb=4000,
    params:
        config=STUDY_CONFIG,
        corpus=path(LAYOUT.corpus_dir),
        out=cell_dir,
        cell_flags=cell_args,
        name=lambda w: f"diver-{w.family}-{w.patch}-{w.size}-{w.data}-e{w.epochs}",
        settings=section_hash("pretrain"),
        model=section_hash("model"),
        family=family_hash,
    shell:
        "diver launch --config {params.config:q} --out {params.out:q} --size {wildcards.size:q} "
        "--name {params.name:q} -- pretrain --config {params.config:q} --corpus {params.corpus:q} "
        "{params.cell_flags} --out {params.out:q} --parent-run {input.parent:q} --supersede "
        "> {log:q} 2>&1"
