# A synthetic EEG + iEEG corpus in real file formats (the embedded default's data).
# `diver synth` writes manifest.json last: its presence means the corpus is complete.


rule synth:
    output:
        path(LAYOUT.synth_dir / "manifest.json"),
    log:
        log_file("synth"),
    params:
        out=path(LAYOUT.synth_dir),
        hours=config["synth"]["hours"],
        seed=config["synth"]["seed"],
    shell:
        "diver synth --out {params.out:q} --hours {params.hours:q} --seed {params.seed:q} > {log:q} 2>&1"
