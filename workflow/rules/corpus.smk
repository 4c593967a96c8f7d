# SPEC §1: every configured recording -> QA/QC'd 30 s windows in sharded Parquet.
# One job over all datasets; recordings run in parallel inside it (`threads`), and a
# rerun skips recordings already done, so the job can be resumed after a kill.  The DAG
# owns results/corpus, so the rule prunes (--prune) the files of recordings dropped from a
# dataset's inputs (each removal logged); other folders' datasets are never touched.


rule corpus:
    input:
        parent=parent_run_file(),
        synth=synth_targets(),
    output:
        manifest=path(LAYOUT.corpus_manifest),
        qc=path(LAYOUT.corpus_qc),
        channels=path(LAYOUT.corpus_channels),
    log:
        log_file("corpus"),
    threads: config["corpus"]["jobs"]
    resources:
        **light_resources(),
        mem_mb=corpus_mem_mb,
        runtime=24 * 60,
    params:
        config=STUDY_CONFIG,
        out=path(LAYOUT.corpus_dir),
        settings=section_hash("corpus"),
    shell:
        "diver corpus --config {params.config:q} --out {params.out:q} --jobs {threads} --prune "
        "--parent-run {input.parent:q} --quiet > {log:q} 2>&1"
