# Cheap bookkeeping runs where snakemake runs, never as a cluster job (`localrule: True` here and
# on collect, classify, plot and adaptive_round; per rule, so that it survives a deployment's
# `use rule * from threeregime as ...`); on one machine this changes nothing. prepare_data only
# converts the dataset (seconds) and may need the internet (data.download), which a login node
# has and compute nodes often lack; data.root is read there too, never by a cluster job.
rule prepare_data:
    output:
        DATA,
    log:
        JOB_FILES["prepare_data"][0],
    benchmark:
        JOB_FILES["prepare_data"][1]
    localrule: True
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
        JOB_FILES["dense_train"][0],
    benchmark:
        JOB_FILES["dense_train"][1]
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
        JOB_FILES["rewind"][0],
    benchmark:
        JOB_FILES["rewind"][1]
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
        JOB_FILES["retrain"][0],
    benchmark:
        JOB_FILES["retrain"][1]
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
