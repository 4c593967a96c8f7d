# SPEC §4: the grid's results -> one scaling-law fit per corpus family and patch length.
# `scaling_collect` gathers every cell's metrics.json into runs.csv (a point per read
# epoch where the grid reads one long run at several epochs); each `scaling_fit` fits one
# family and patch (`scaling.form: auto` fits the Chinchilla law when the grid cannot
# determine the data-constrained one, and fit.json says so) and logs the fit and its
# figures to an MLflow child run of the study's parent.


rule scaling_collect:
    input:
        metrics=pretrain_targets(),
    output:
        path(LAYOUT.scaling_runs),
    log:
        log_file("scaling_collect"),
    resources:
        **light_resources(),
    params:
        config=STUDY_CONFIG,
        grid=section_hash("grid"),
    shell:
        "diver scaling collect --config {params.config:q} --metrics {input.metrics:q} "
        "--out {output:q} > {log:q} 2>&1"


rule scaling_fit:
    input:
        parent=parent_run_file(),
        runs=path(LAYOUT.scaling_runs),
    output:
        path(LAYOUT.fit_summary("{family}", "{patch}")),
    log:
        log_file("scaling_fit_{family}_{patch}"),
    threads: 2
    resources:
        **light_resources(),
    params:
        config=STUDY_CONFIG,
        out=scaling_fit_dir,
        form=config["scaling"]["form"],
        bootstrap=config["scaling"]["bootstrap"],
        seed=config["scaling"]["seed"],
    shell:
        "diver scaling fit --runs {input.runs:q} --out {params.out:q} --form {params.form:q} "
        "--where family={wildcards.family:q} --where patch={wildcards.patch:q} "
        "--bootstrap {params.bootstrap:q} --seed {params.seed:q} --jobs {threads} "
        "--config {params.config:q} --parent-run {input.parent:q} > {log:q} 2>&1"
