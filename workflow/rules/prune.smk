rule prune:
    input:
        prune_inputs,
    output:
        PRUNED,
    log:
        f"{LOGS}/prune/{CELL}.log",
    benchmark:
        f"{BENCH}/prune/{CELL}.tsv"
    conda:
        ENV
    params:
        spec=lambda wc: to_json(CFG.prune_spec(wc.density)),
    shell:
        "python -m threeregime prune --spec {params.spec:q} --dense {input} --out {output}"
        " > {log} 2>&1"
