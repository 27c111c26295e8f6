rule prune:
    input:
        models=prune_inputs,
        data=prune_data,
    output:
        PRUNE_JOB["outputs"],
    log:
        JOB_FILES["prune"][0],
    benchmark:
        JOB_FILES["prune"][1]
    conda:
        ENV
    params:
        spec=PRUNE_JOB["spec"],
        data=prune_data_flag,
    shell:
        PRUNE_COMMAND
