# SPEC §3: lr and weight decay tuned at one size for a short budget, before the grid, per
# family and patch whose config says `from_sweep`.  A local rule like pretrain: each trial
# is one `diver launch -- pretrain` job (here or a submitit SLURM job) that this rule
# waits for; the Optuna journal beside the trials lets a rerun continue the sweep.
# best.yaml is an input of the cells that read it, so a changed sweep reruns only them.


localrules:
    hpsearch,
    hpsearch_transfer,


rule hpsearch:
    input:
        parent=parent_run_file(),
        manifest=path(LAYOUT.corpus_manifest),
    output:
        sweep_best("{family}", "{patch}"),
    log:
        log_file("hpsearch_{family}_{patch}"),
    threads: 1
    params:
        config=STUDY_CONFIG,
        corpus=path(LAYOUT.corpus_dir),
        settings=section_hash("hpsearch"),
        pretrain=section_hash("pretrain"),
        model=section_hash("model"),
        family=family_hash,
    shell:
        "diver hpsearch run --config {params.config:q} --corpus {params.corpus:q} "
        "--family {wildcards.family:q} --patch {wildcards.patch:q} "
        "--parent-run {input.parent:q} > {log:q} 2>&1"


# The muP transfer check (`hpsearch.transfer.enabled`): loss vs lr at three widths, muP
# and standard parametrisation, in the study report.
rule hpsearch_transfer:
    input:
        parent=parent_run_file(),
        manifest=path(LAYOUT.corpus_manifest),
    output:
        TRANSFER_RESULT,
    log:
        log_file("hpsearch_transfer"),
    threads: 1
    params:
        config=STUDY_CONFIG,
        corpus=path(LAYOUT.corpus_dir),
        out=lambda w, output: str(Path(output[0]).parent),
        settings=section_hash("hpsearch"),
        model=section_hash("model"),
    shell:
        "diver hpsearch transfer --config {params.config:q} --corpus {params.corpus:q} "
        "--out {params.out:q} --parent-run {input.parent:q} > {log:q} 2>&1"
