rule prepare_data:
    output:
        DATA,
    log:
        f"{LOGS}/prepare_data.log",
    benchmark:
        f"{BENCH}/prepare_data.tsv"
    conda:
        ENV
    params:
        spec=to_json(CFG.data_spec()),
    shell:
        "python -m threeregime prepare-data --spec {params.spec:q} --out {output} > {log} 2>&1"


rule dense_train:
    input:
        data=DATA,
        init=dense_init,
    output:
        DENSE,
    log:
        f"{LOGS}/dense/{KNOB}-{{temperature}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/dense_train/{KNOB}-{{temperature}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: CFG.runtime.threads
    resources:
        gpu=GPUS_PER_JOB,
    params:
        spec=lambda wc: to_json(CFG.dense_spec(wc.temperature, wc.seed)),
    shell:
        "python -m threeregime dense --spec {params.spec:q} --data {input.data}"
        " --init '{input.init}' --out {output}"
        " --threads {threads} > {log} 2>&1"


rule retrain:
    input:
        data=DATA,
        pruned=RETRAIN_JOB["pruned"],
    output:
        RETRAIN_JOB["outputs"],
    log:
        RETRAIN_JOB["log"],
    benchmark:
        RETRAIN_JOB["benchmark"]
    conda:
        ENV
    threads: CFG.runtime.threads
    resources:
        gpu=GPUS_PER_JOB,
    params:
        spec=to_json(CFG.retrain_spec()),
        runs=retrain_runs,
    shell:
        "python -m threeregime retrain --spec {params.spec:q} --data {input.data} {params.runs}"
        " --threads {threads} > {log} 2>&1"
