# SPEC §3: one pretraining run per grid cell (size x data fraction x epochs), each a
# `diver pretrain` call that resumes from its own checkpoints when rerun.


wildcard_constraints:
    size=GRID_SIZES,
    patch=GRID_PATCH,
    fraction=GRID_FRACTIONS,
    epochs=GRID_EPOCHS,


rule pretrain:
    input:
        parent=parent_run_file(),
        manifest=results("corpus", "manifest.csv"),
    output:
        metrics=results("pretrain", "{size}", "{patch}", "f{fraction}_e{epochs}", "metrics.json"),
        model=results("pretrain", "{size}", "{patch}", "f{fraction}_e{epochs}", "model.pt"),
    params:
        config=STUDY_CONFIG,
        corpus=results("corpus"),
        out=cell_dir,
        settings=section_hash("pretrain"),
    threads: 1
    resources:
        mem_mb=4000,
    log:
        results("logs", "pretrain", "{size}_{patch}_f{fraction}_e{epochs}.log"),
    shell:
        "diver pretrain --config {params.config} --corpus {params.corpus} "
        "--size {wildcards.size} --patch {wildcards.patch} --data-fraction {wildcards.fraction} "
        "--epochs {wildcards.epochs} --out {params.out} --parent-run {input.parent} > {log} 2>&1"
