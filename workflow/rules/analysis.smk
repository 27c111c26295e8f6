rule collect:
    input:
        all_metrics(),
    output:
        metrics=ANALYSIS["metrics"],
        models=ANALYSIS["models"],
        cells=ANALYSIS["cells"],
    log:
        f"{LOGS}/collect.log",
    conda:
        ENV
    shell:
        "python -m threeregime collect {input}"
        " --models-csv {output.models} --metrics {output.metrics} --cells {output.cells}"
        " > {log} 2>&1"


rule classify:
    input:
        cells=ANALYSIS["cells"],
    output:
        regimes=ANALYSIS["regimes"],
        robustness=ANALYSIS["robustness"],
        advice=ANALYSIS["advice"],
        selection=ANALYSIS["selection"],
        summary=f"{RES}/summary.json",
    log:
        f"{LOGS}/classify.log",
    conda:
        ENV
    params:
        spec=to_json(CFG.analysis_spec()),
    shell:
        "python -m threeregime classify --spec {params.spec:q} --cells {input.cells}"
        " --regimes {output.regimes} --robustness {output.robustness}"
        " --advice {output.advice} --selection {output.selection}"
        " --summary {output.summary} > {log} 2>&1"


rule plot:
    input:
        regimes=ANALYSIS["regimes"],
    output:
        phase=FIGURES["phase"],
        map=FIGURES["map"],
    log:
        f"{LOGS}/plot.log",
    conda:
        ENV
    params:
        spec=to_json(CFG.plot_spec()),
    shell:
        "python -m threeregime plot --spec {params.spec:q} --regimes {input.regimes}"
        " --phase {output.phase} --map {output.map} > {log} 2>&1"
