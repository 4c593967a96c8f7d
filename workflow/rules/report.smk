# The study report (results/report/index.html): corpus manifest and QA/QC, the grid, loss
# curves, each fitted law beside the paper's Table 8, loss vs compute with the frontier,
# fitted vs observed, and fine-tuning results with baselines.  One self-contained file,
# the final target of the DAG; also stored in an MLflow child run.


rule report:
    input:
        parent=parent_run_file(),
        manifest=path(LAYOUT.corpus_manifest),
        qc=path(LAYOUT.corpus_qc),
        channels=path(LAYOUT.corpus_channels),
        runs=path(LAYOUT.scaling_runs),
        fits=scaling_fit_targets(),
        finetune=finetune_targets(),
        hpsearch=hpsearch_report_inputs(),
    output:
        path(LAYOUT.report),
    log:
        log_file("report"),
    resources:
        **light_resources(),
    params:
        config=STUDY_CONFIG,
        corpus=path(LAYOUT.corpus_dir),
    shell:
        "diver report --config {params.config:q} --corpus {params.corpus:q} --runs {input.runs:q} "
        "--fits {input.fits:q} --finetune {input.finetune:q} --parent-run {input.parent:q} "
        "--out {output:q} > {log:q} 2>&1"
