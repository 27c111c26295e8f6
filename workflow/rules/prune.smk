rule prune:
    input:
        prune_inputs,
    output:
        PRUNED,
    log:
        JOB_FILES["prune"][0],
    benchmark:
        JOB_FILES["prune"][1]
    conda:
        ENV
    params:
        spec=lambda wc: to_json(CFG.prune_spec(wc.density)),
    shell:
        "python -m threeregime prune --spec {params.spec:q} --dense {input} --out {output}"
        " > {log} 2>&1"
