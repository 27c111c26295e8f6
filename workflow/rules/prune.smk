rule prune:
    input:
        unpack(prune_inputs),
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
        source=lambda wc, input: (
            f" --source {input.source}" if "source" in input.keys() else ""
        ),
    shell:
        "python -m threeregime prune --spec {params.spec:q} --dense {input.dense}{params.source} --out {output}"
        " > {log} 2>&1"
