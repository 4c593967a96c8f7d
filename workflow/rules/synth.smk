# A synthetic EEG + iEEG corpus in real file formats (the embedded default's data).


rule synth:
    output:
        results("synth", "synth.json"),
    params:
        out=results("synth"),
        hours=config["synth"]["hours"],
        seed=config["synth"]["seed"],
    log:
        results("logs", "synth.log"),
    shell:
        "diver synth --out {params.out} --hours {params.hours} --seed {params.seed} > {log} 2>&1"
