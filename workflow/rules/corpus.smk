# SPEC §1: every configured recording -> QA/QC'd 30 s windows in sharded Parquet.
# One job over all datasets; recordings run in parallel inside it (`threads`), and a
# rerun skips recordings already done, so the job can be resumed after a kill.


rule corpus:
    input:
        parent=parent_run_file(),
        synth=synth_targets(),
    output:
        manifest=results("corpus", "manifest.csv"),
        qc=results("corpus", "qc.csv"),
        channels=results("corpus", "channels.csv"),
    params:
        config=STUDY_CONFIG,
        out=results("corpus"),
        settings=section_hash("corpus"),
    threads: config["corpus"]["jobs"]
    resources:
        mem_mb=corpus_mem_mb,
        runtime=24 * 60,
        **light_resources(),
    log:
        results("logs", "corpus.log"),
    shell:
        "diver corpus --config {params.config} --out {params.out} --jobs {threads} "
        "--parent-run {input.parent} --quiet > {log} 2>&1"
