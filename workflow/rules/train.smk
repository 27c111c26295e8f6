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
        f"{LOGS}/dense/{DENSE_RUN}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/dense_train/{DENSE_RUN}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: CFG.runtime.threads
    resources:
        gpu=GPUS_PER_JOB,
    params:
        spec=lambda wc: to_json(CFG.dense_spec(wc.get("temperature"), wc.seed)),
    shell:
        "python -m threeregime dense --spec {params.spec:q} --data {input.data}"
        " --init '{input.init}' --out {output}"
        " --threads {threads} > {log} 2>&1"


rule rewind:
    input:
        data=DATA,
    output:
        REWIND,
    log:
        f"{LOGS}/rewind/{KNOB}-{{temperature}}/seed{{seed}}.log",
    benchmark:
        f"{BENCH}/rewind/{KNOB}-{{temperature}}/seed{{seed}}.tsv"
    conda:
        ENV
    threads: CFG.runtime.threads
    resources:
        gpu=GPUS_PER_JOB,
    params:
        spec=lambda wc: to_json(CFG.rewind_spec(wc.temperature, wc.seed)),
    shell:
        "python -m threeregime rewind --spec {params.spec:q} --data {input.data}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule retrain:
    input:
        data=DATA,
        pruned=RETRAIN_JOB["pruned"],
        rewind=retrain_rewind,
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
        spec=lambda wc: to_json(CFG.retrain_spec(wc.temperature)),
        runs=retrain_runs,
    shell:
        "python -m threeregime retrain --spec {params.spec:q} --data {input.data} {params.runs}"
        " --threads {threads} > {log} 2>&1"
