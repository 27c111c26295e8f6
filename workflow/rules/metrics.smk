rule metrics:
    input:
        data=DATA,
        a=RETRAINED.replace("{rseed}", "{a}"),
        b=RETRAINED.replace("{rseed}", "{b}"),
    output:
        METRICS,
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
        spec=to_json(CFG.metrics_spec()),
        labels=labels,
    shell:
        "python -m threeregime metrics --spec {params.spec:q} --data {input.data}"
        " --a {input.a} --b {input.b} {params.labels} --out {output}"
        " --threads {threads} > {log} 2>&1"
