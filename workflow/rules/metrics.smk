rule metrics:
    input:
        **METRICS_JOB["inputs"],
        data=DATA,
    output:
        METRICS_JOB["outputs"],
    log:
        JOB_FILES["metrics"][0],
    benchmark:
        JOB_FILES["metrics"][1]
    conda:
        ENV
    threads: CFG.runtime.threads
    resources:
        gpu=GPUS_PER_JOB,
    params:
        **METRICS_JOB["params"],
        spec=to_json(CFG.metrics_spec()),
    shell:
        METRICS_JOB["command"]
