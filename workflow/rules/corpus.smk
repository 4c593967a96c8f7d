# SPEC §1: every configured recording -> QA/QC'd 30 s windows in sharded Parquet, spread
# over jobs (issue 14).  A checkpoint plans the stage once the recordings exist (the
# default synthesises them): every dataset's recordings in chunks of about
# corpus.chunk_hours recording-hours.  Each chunk is one job (one SLURM job on a
# cluster) writing only its recordings' shards and receipts; a killed chunk reruns alone,
# skipping the recordings it had finished.  The light merge writes the tables and logs
# the stage to MLflow.  The DAG owns results/corpus, so the merge prunes (--prune) the
# files of recordings not in the plan and the shards of copies of a recording kept once
# (each removal logged); other folders' datasets are never touched.


wildcard_constraints:
    chunk=CHUNK_PATTERN,


checkpoint corpus_plan:
    input:
        synth=synth_targets(),
    output:
        path(LAYOUT.corpus_plan),
    log:
        log_file("corpus", "plan"),
    resources:
        **light_resources(),
    params:
        config=STUDY_CONFIG,
        settings=section_hash("corpus"),
    shell:
        "diver corpus plan --config {params.config:q} --plan {output:q} > {log:q} 2>&1"


rule corpus_chunk:
    input:
        plan=path(LAYOUT.corpus_plan),
    output:
        path(LAYOUT.corpus_chunk("{chunk}")),
    log:
        log_file("corpus", "{chunk}"),
    threads: config["corpus"]["jobs"]
    resources:
        **light_resources(),
        mem_mb=corpus_mem_mb,
        runtime=24 * 60,
    params:
        out=path(LAYOUT.corpus_dir),
    shell:
        "diver corpus chunk --plan {input.plan:q} --chunk {wildcards.chunk:q} "
        "--out {params.out:q} --jobs {threads} --done {output:q} --quiet > {log:q} 2>&1"


rule corpus:
    input:
        parent=parent_run_file(),
        plan=path(LAYOUT.corpus_plan),
        chunks=corpus_chunk_targets,
    output:
        manifest=path(LAYOUT.corpus_manifest),
        qc=path(LAYOUT.corpus_qc),
        channels=path(LAYOUT.corpus_channels),
    log:
        log_file("corpus"),
    resources:
        **light_resources(),
    params:
        config=STUDY_CONFIG,
        out=path(LAYOUT.corpus_dir),
    shell:
        "diver corpus merge --config {params.config:q} --plan {input.plan:q} "
        "--out {params.out:q} --prune --parent-run {input.parent:q} > {log:q} 2>&1"
