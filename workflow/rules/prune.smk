rule prune:
    input:
        models=prune_inputs,
        data=prune_data,
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
        PRUNE_COMMAND
