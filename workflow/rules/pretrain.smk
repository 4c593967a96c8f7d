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
        manifest=results("corpus", "manifest.csv"),
    output:
        metrics=results("pretrain", "{family}", "{patch}", "{size}", "{data}_e{epochs}", "metrics.json"),
        model=results("pretrain", "{family}", "{patch}", "{size}", "{data}_e{epochs}", "model.pt"),
    params:
        config=STUDY_CONFIG,
        corpus=results("corpus"),
        out=cell_dir,
        cell=cell_args,
        name=lambda w: f"diver-{w.family}-{w.patch}-{w.size}-{w.data}-e{w.epochs}",
        settings=section_hash("pretrain"),
        model=section_hash("model"),
        family=family_hash,
    threads: 1
    resources:
        mem_mb=4000,
    log:
        results("logs", "pretrain", "{family}_{patch}_{size}_{data}_e{epochs}.log"),
    shell:
        "diver launch --config {params.config} --out {params.out} --size {wildcards.size} "
        "--name {params.name} -- pretrain --config {params.config} --corpus {params.corpus} "
        "{params.cell} --out {params.out} --parent-run {input.parent} > {log} 2>&1"
