# Analysis: collect the per-pair metrics, classify the cells, draw the figures. Outputs marked
# with report() make up `snakemake --report results/report.html` (captions: workflow/report/).
TABLES = {
    name: f"{RES}/tables/{name}.html"
    for name in (
        "regimes",
        "advice",
        "advice_cells",
        "selection",
        "robustness",
        "summary",
        "boundaries",
    )
}
COST_PAGE = f"{RES}/tables/cost.html"  # written by collect (threeregime.views.cost), not classify
# The PNG of each figure goes into the report; the other formats (PDF) are plain outputs.
PHASE_PNG, *PHASE_OTHER = FIGURES["phase"]
MAP_PNG, *MAP_OTHER = FIGURES["map"]
CAPTIONS = "../report"
FIGURES_CAT = "1. Figures"  # subcategories: phase diagrams, regime maps, ...
REGIMES_CAT = "2. Regimes"
ADVICE_CAT = "3. Advice and model selection"
DATA_CAT = "4. Data (CSV downloads)"
COST_CAT = "5. Cost"


rule collect:
    input:
        collected_metrics,
    output:
        metrics=report(
            ANALYSIS["metrics"],
            caption=f"{CAPTIONS}/metrics_csv.rst",
            category=DATA_CAT,
            labels={"name": "metrics.csv"},
        ),
        models=report(
            ANALYSIS["models"],
            caption=f"{CAPTIONS}/models_csv.rst",
            category=DATA_CAT,
            labels={"name": "models.csv"},
        ),
        cells=report(
            ANALYSIS["cells"],
            caption=f"{CAPTIONS}/cells_csv.rst",
            category=DATA_CAT,
            labels={"name": "cells.csv"},
        ),
        # every job's measured cost (its benchmark file), and the per-rule summary
        cost=report(
            f"{RES}/cost.csv",
            caption=f"{CAPTIONS}/cost_csv.rst",
            category=DATA_CAT,
            labels={"name": "cost.csv"},
        ),
        cost_html=report(
            COST_PAGE,
            caption=f"{CAPTIONS}/cost.rst",
            category=COST_CAT,
            labels={"name": "cost per rule"},
        ),
    log:
        f"{LOGS}/collect.log",
    benchmark:
        f"{BENCH}-local/collect.tsv",
    localrule: True
    conda:
        ENV
    params:
        # the file list is rebuilt from pattern x grid: thousands of paths exceed bash's
        # argument limit. Under a storage provider the job sees local copies, so the pattern
        # starts where they are (derived from the output there, which keeps it out of the
        # params a shared-filesystem run records).
        pattern=(
            (
                lambda wildcards, output: Path(output.cost).parent.as_posix()
                + METRICS[len(RES) :]
            )
            if STORAGE
            else (lambda wildcards: METRICS)
        ),
        grid=to_json(CFG.metrics_axes()),
        results=lambda wildcards, output: str(Path(output.cost).parent),
    shell:
        "python -m threeregime collect --pattern {params.pattern:q} --grid {params.grid:q}"
        " --models-csv {output.models} --metrics {output.metrics} --cells {output.cells}"
        " --results {params.results} --cost {output.cost} --cost-html {output.cost_html}"
        + COLLECT_FLAGS
        + " > {log} 2>&1"


rule classify:
    input:
        cells=ANALYSIS["cells"],
        metrics=ANALYSIS["metrics"],
    output:
        regimes=report(
            ANALYSIS["regimes"],
            caption=f"{CAPTIONS}/regimes_csv.rst",
            category=DATA_CAT,
            labels={"name": "regimes.csv"},
        ),
        robustness=ANALYSIS["robustness"],
        advice=ANALYSIS["advice"],
        advice_cells=ANALYSIS["advice_cells"],
        selection=ANALYSIS["selection"],
        boundaries=report(
            ANALYSIS["boundaries"],
            caption=f"{CAPTIONS}/boundaries_csv.rst",
            category=DATA_CAT,
            labels={"name": "boundaries.csv"},
        ),
        summary=f"{RES}/summary.json",
        summary_html=report(
            TABLES["summary"],
            caption=f"{CAPTIONS}/summary.rst",
            category=REGIMES_CAT,
            labels={"name": "summary"},
        ),
        regimes_html=report(
            TABLES["regimes"],
            caption=f"{CAPTIONS}/regimes.rst",
            category=REGIMES_CAT,
            labels={"name": "regime of every cell"},
        ),
        boundaries_html=report(
            TABLES["boundaries"],
            caption=f"{CAPTIONS}/boundaries.rst",
            category=REGIMES_CAT,
            labels={"name": "regime boundaries"},
        ),
        robustness_html=report(
            TABLES["robustness"],
            caption=f"{CAPTIONS}/robustness.rst",
            category=REGIMES_CAT,
            labels={"name": "robustness"},
        ),
        advice_html=report(
            TABLES["advice"],
            caption=f"{CAPTIONS}/advice.rst",
            category=ADVICE_CAT,
            labels={"name": "advice per density"},
        ),
        advice_cells_html=report(
            TABLES["advice_cells"],
            caption=f"{CAPTIONS}/advice_cells.rst",
            category=ADVICE_CAT,
            labels={"name": "advice per cell"},
        ),
        selection_html=report(
            TABLES["selection"],
            caption=f"{CAPTIONS}/selection.rst",
            category=ADVICE_CAT,
            labels={"name": "model selection"},
        ),
    log:
        f"{LOGS}/classify.log",
    benchmark:
        f"{BENCH}-local/classify.tsv",
    localrule: True
    conda:
        ENV
    params:
        spec=to_json(CFG.analysis_spec()),
        html_dir=lambda wildcards, output: str(Path(output.regimes_html).parent),
    shell:
        "python -m threeregime classify --spec {params.spec:q} --cells {input.cells}"
        " --regimes {output.regimes} --robustness {output.robustness}"
        " --advice {output.advice} --advice-cells {output.advice_cells}"
        " --selection {output.selection} --boundaries {output.boundaries}"
        " --summary {output.summary}"
        " --html-dir {params.html_dir} --metrics {input.metrics}"
        + CLASSIFY_FLAGS
        + " > {log} 2>&1"


rule plot:
    input:
        regimes=ANALYSIS["regimes"],
        selection=ANALYSIS["selection"],
        boundaries=ANALYSIS["boundaries"],
    output:
        phase_png=report(
            PHASE_PNG,
            caption=f"{CAPTIONS}/phase_diagram.rst",
            category=FIGURES_CAT,
            subcategory="Phase diagrams",
            labels={"name": "phase diagram"},
        ),
        phase_other=PHASE_OTHER,
        map_png=report(
            MAP_PNG,
            caption=f"{CAPTIONS}/regime_map.rst",
            category=FIGURES_CAT,
            subcategory="Regime maps",
            labels={"name": "regime map"},
        ),
        map_other=MAP_OTHER,
    log:
        f"{LOGS}/plot.log",
    benchmark:
        f"{BENCH}-local/plot.tsv",
    localrule: True
    conda:
        ENV
    params:
        spec=to_json(CFG.plot_spec()),
        # the report caption's panel list (threeregime.registry.metrics); a function of the
        # output, so not compared between runs
        panels=lambda wildcards, output: panel_caption(),
    shell:
        "python -m threeregime plot --spec {params.spec:q} --regimes {input.regimes}"
        " --selection {input.selection} --boundaries {input.boundaries}"
        " --phase {output.phase_png} {output.phase_other}"
        " --map {output.map_png} {output.map_other} > {log} 2>&1"


if "esd" in FIGURES:

    rule plot_esd:
        input:
            regimes=ANALYSIS["regimes"],
        output:
            esd_png=report(
                FIGURES["esd"][0],
                caption=f"{CAPTIONS}/hessian_esd.rst",
                category=FIGURES_CAT,
                subcategory="Hessian eigenvalue density",
                labels={"name": "Hessian eigenvalue density"},
            ),
            esd_other=FIGURES["esd"][1:],
        log:
            f"{LOGS}/plot_esd.log",
        benchmark:
            f"{BENCH}-local/plot_esd.tsv",
        conda:
            ENV
        params:
            spec=to_json(CFG.plot_spec()),
        shell:
            "python -m threeregime plot-esd --spec {params.spec:q} --regimes {input.regimes}"
            " --out {output.esd_png} {output.esd_other} > {log} 2>&1"


if "instability" in FIGURES:

    rule plot_instability:
        input:
            regimes=ANALYSIS["regimes"],
        output:
            png=report(
                FIGURES["instability"][0],
                caption=f"{CAPTIONS}/instability.rst",
                category=FIGURES_CAT,
                subcategory="Instability",
                labels={"name": "instability"},
            ),
            other=FIGURES["instability"][1:],
        log:
            f"{LOGS}/plot_instability.log",
        benchmark:
            f"{BENCH}-local/plot_instability.tsv",
        conda:
            ENV
        params:
            spec=to_json(
                CFG.plot_spec() | {"stable_barrier": CFG.regimes.stable_barrier}
            ),
        shell:
            "python -m threeregime plot-instability --spec {params.spec:q} --regimes {input.regimes}"
            " --out {output.png} {output.other} > {log} 2>&1"
