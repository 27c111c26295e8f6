rule prune:
    input:
        models=prune_inputs,
        data=prune_data,
    output:
        PRUNED,
    log:
        JOB_FILES["prune"][0],
    benchmark:
        JOB_FILES["prune"][1]
    conda:
        ENV
    params:
        spec=lambda wc: to_json(cfg_of(wc).prune_spec(wc.density)),
        data=prune_data_flag,
    shell:
        PRUNE_COMMAND
