# SPEC §5: downstream evaluation.  Each task file becomes a Parquet task set once
# (`diver task build`); each (pretrained cell x task x mode) is one `diver finetune`
# job, run through `diver launch` like pretraining (here, or a submitit SLURM job),
# reporting the linear STFT and from-scratch baselines beside the pretrained model.

if TASK_FILES:

    wildcard_constraints:
        task="|".join(re.escape(t) for t in TASK_FILES),
        mode="|".join(re.escape(m) for m in FINETUNE["modes"]),

    rule synth_task:
        output:
            path(LAYOUT.synth_task_dir / "manifest.json"),
        log:
            log_file("synth_task"),
        resources:
            **light_resources(),
        params:
            out=path(LAYOUT.synth_task_dir),
            seed=config["synth"]["seed"],
        shell:
            "diver task synth --out {params.out:q} --seed {params.seed:q} > {log:q} 2>&1"

    rule task_build:
        input:
            synth_task_targets(),
            task=lambda w: TASK_FILES[w.task],
        output:
            path(LAYOUT.taskset("{task}")),
        log:
            log_file("task_build_{task}"),
        resources:
            **light_resources(),
        params:
            config=STUDY_CONFIG,
        shell:
            "diver task build --config {params.config:q} --task {input.task:q} --out {output:q} "
            "> {log:q} 2>&1"

    localrules:
        finetune,

    rule finetune:
        input:
            parent=parent_run_file(),
            task=lambda w: TASK_FILES[w.task],
            taskset=path(LAYOUT.taskset("{task}")),
            model=path(LAYOUT.cell_model(CELL_PATTERN)),
        output:
            path(LAYOUT.finetune_metrics("{task}", "{mode}", CELL_PATTERN)),
        log:
            log_file("finetune", "{task}/{mode}/" + CELL_PATTERN),
        threads: 1
        params:
            config=STUDY_CONFIG,
            out=lambda w, output: str(Path(output[0]).parent),
            cell=lambda w: cell_of(w).key,
            name=lambda w: f"ft-{w.task}-{w.mode}-{w.family}-{w.patch}-{w.size}-{w.data}-e{w.epochs}",
            flags=finetune_flags,
        shell:
            "diver launch --config {params.config:q} --out {params.out:q} --size {wildcards.size:q} "
            "--name {params.name:q} -- finetune --config {params.config:q} --task {input.task:q} "
            "--taskset {input.taskset:q} --pretrained {input.model:q} --mode {wildcards.mode:q} "
            "--cell {params.cell:q} {params.flags} --out {params.out:q} "
            "--parent-run {input.parent:q} > {log:q} 2>&1"
