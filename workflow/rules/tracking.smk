# The study's MLflow experiment and parent run, created once before any other job.
# Its params are only what identifies the parent (study, store), so editing any other
# part of the config never reruns it; the command itself is idempotent as well.


localrules:
    track_init,


rule track_init:
    output:
        parent_run_file(),
    log:
        log_file("track_init"),
    params:
        config=STUDY_CONFIG,
        study=config["study"],
        tracking=config["tracking"],
    shell:
        "diver track init --config {params.config:q} --out {output:q} > {log:q} 2>&1"
