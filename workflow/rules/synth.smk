# A synthetic EEG + iEEG corpus in real file formats (the embedded default's data).
# `diver synth` writes manifest.json last: its presence means the corpus is complete.


rule synth:
    output:
        results("synth", "manifest.json"),
    params:
        out=results("synth"),
        hours=config["synth"]["hours"],
        seed=config["synth"]["seed"],
    log:
        results("logs", "synth.log"),
    shell:
        "diver synth --out {params.out} --hours {params.hours} --seed {params.seed} > {log} 2>&1"
