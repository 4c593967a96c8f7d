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
            results("synth_task", "manifest.json"),
        params:
            out=results("synth_task"),
            seed=config["synth"]["seed"],
        resources:
            **light_resources(),
        log:
            results("logs", "synth_task.log"),
        shell:
            "diver task synth --out {params.out} --seed {params.seed} > {log} 2>&1"

    rule task_build:
        input:
            synth_task_targets(),
            task=lambda w: TASK_FILES[w.task],
        output:
            results("tasks", "{task}.parquet"),
        params:
            config=STUDY_CONFIG,
        resources:
            **light_resources(),
        log:
            results("logs", "task_build_{task}.log"),
        shell:
            "diver task build --config {params.config} --task {input.task} --out {output} "
            "> {log} 2>&1"

    localrules:
        finetune,

    rule finetune:
        input:
            parent=parent_run_file(),
            task=lambda w: TASK_FILES[w.task],
            taskset=results("tasks", "{task}.parquet"),
            model=results("pretrain", "{family}", "{patch}", "{size}", "{data}_e{epochs}", "model.pt"),
        output:
            results(
                "finetune", "{task}", "{mode}", "{family}", "{patch}", "{size}", "{data}_e{epochs}",
                "metrics.json",
            ),
        params:
            config=STUDY_CONFIG,
            out=lambda w, output: str(Path(output[0]).parent),
            cell=lambda w: cell_of(w).key,
            name=lambda w: f"ft-{w.task}-{w.mode}-{w.family}-{w.patch}-{w.size}-{w.data}-e{w.epochs}",
            flags=finetune_flags,
        threads: 1
        log:
            results("logs", "finetune", "{task}_{mode}_{family}_{patch}_{size}_{data}_e{epochs}.log"),
        shell:
            "diver launch --config {params.config} --out {params.out} --size {wildcards.size} "
            "--name {params.name} -- finetune --config {params.config} --task {input.task} "
            "--taskset {input.taskset} --pretrained {input.model} --mode {wildcards.mode} "
            "--cell {params.cell} {params.flags} --out {params.out} "
            "--parent-run {input.parent} > {log} 2>&1"
