# Analysis: collect the per-pair metrics, classify the cells, draw the figures. Outputs marked
# with report() make up `snakemake --report results/report.html` (captions: workflow/report/).
TABLES = {
    name: f"{RES}/{ANALYSIS_DIR}tables/{name}.html"
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
COST_PAGE = f"{RES}/{ANALYSIS_DIR}tables/cost.html"  # written by collect (threeregime.views.cost), not classify
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
            f"{RES}/{ANALYSIS_DIR}cost.csv",
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
        f"{LOGS}/{ANALYSIS_DIR}collect.log",
    benchmark:
        f"{BENCH}-local/{ANALYSIS_DIR}collect.tsv"
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
                lambda wildcards, output: run_folder(output.cost).as_posix()
                + in_setup(METRICS, wildcards.get("setup", ""))[len(RES) :]
            )
            if STORAGE
            else (lambda wildcards: in_setup(METRICS, wildcards.get("setup", "")))
        ),
        grid=lambda wildcards: to_json(cfg_of(wildcards).metrics_axes()),
        results=lambda wildcards, output: str(run_folder(output.cost)),
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
        summary=SUMMARY,
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
        f"{LOGS}/{ANALYSIS_DIR}classify.log",
    benchmark:
        f"{BENCH}-local/{ANALYSIS_DIR}classify.tsv"
    localrule: True
    conda:
        ENV
    params:
        spec=lambda wildcards: to_json(cfg_of(wildcards).analysis_spec()),
        html_dir=lambda wildcards, output: str(Path(output.regimes_html).parent),
        # what the figures' titles and the summary name (run, setup, knob, model, method): a
        # function of the output, so not compared between runs (a title reruns nothing)
        describe=describe,
    shell:
        "python -m threeregime classify --spec {params.spec:q} --cells {input.cells}"
        " --regimes {output.regimes} --robustness {output.robustness}"
        " --advice {output.advice} --advice-cells {output.advice_cells}"
        " --selection {output.selection} --boundaries {output.boundaries}"
        " --summary {output.summary}"
        " --html-dir {params.html_dir} --metrics {input.metrics} --describe {params.describe:q}"
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
        f"{LOGS}/{ANALYSIS_DIR}plot.log",
    benchmark:
        f"{BENCH}-local/{ANALYSIS_DIR}plot.tsv"
    localrule: True
    conda:
        ENV
    params:
        spec=lambda wildcards: to_json(cfg_of(wildcards).plot_spec()),
        # the report caption's panel list (threeregime.registry.metrics); a function of the
        # output, so not compared between runs
        panels=lambda wildcards, output: panel_caption(),
        # what the figures' titles and the summary name (run, setup, knob, model, method): a
        # function of the output, so not compared between runs (a title reruns nothing)
        describe=describe,
    shell:
        "python -m threeregime plot --spec {params.spec:q} --regimes {input.regimes}"
        " --selection {input.selection} --boundaries {input.boundaries}"
        " --phase {output.phase_png} {output.phase_other}"
        " --map {output.map_png} {output.map_other} --describe {params.describe:q} > {log} 2>&1"


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
            f"{LOGS}/{ANALYSIS_DIR}plot_esd.log",
        benchmark:
            f"{BENCH}-local/{ANALYSIS_DIR}plot_esd.tsv"
        conda:
            ENV
        params:
            spec=lambda wildcards: to_json(cfg_of(wildcards).plot_spec()),
            describe=describe,
        shell:
            "python -m threeregime plot-esd --spec {params.spec:q} --regimes {input.regimes}"
            " --out {output.esd_png} {output.esd_other} --describe {params.describe:q} > {log} 2>&1"


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
            f"{LOGS}/{ANALYSIS_DIR}plot_instability.log",
        benchmark:
            f"{BENCH}-local/{ANALYSIS_DIR}plot_instability.tsv"
        conda:
            ENV
        params:
            spec=lambda wildcards: to_json(
                cfg_of(wildcards).plot_spec()
                | {"stable_barrier": CFG.regimes.stable_barrier}
            ),
            describe=describe,
        shell:
            "python -m threeregime plot-instability --spec {params.spec:q} --regimes {input.regimes}"
            " --out {output.png} {output.other} --describe {params.describe:q} > {log} 2>&1"


if COMPARE_SETUPS:

    # The method axis: every setup's map side by side and where they differ, under thresholds
    # shared by all setups (threeregime.analysis.compare); the same as `threeregime compare` on
    # the setups' folders.
    rule compare_setups:
        input:
            tables=expand(
                [ANALYSIS["metrics"], ANALYSIS["cells"], ANALYSIS["regimes"], SUMMARY],
                setup=SETUPS,
            ),
        output:
            table=report(
                COMPARISON["table"],
                caption=f"{CAPTIONS}/comparison_csv.rst",
                category=DATA_CAT,
                labels={"name": "comparison.csv"},
            ),
            labels=COMPARISON["labels"],
            summary=COMPARISON["summary"],
            html=report(
                COMPARISON["html"],
                caption=f"{CAPTIONS}/comparison.rst",
                category=REGIMES_CAT,
                labels={"name": "where the setups differ"},
            ),
            maps_png=report(
                COMPARISON["maps"][0],
                caption=f"{CAPTIONS}/comparison_maps.rst",
                category=FIGURES_CAT,
                subcategory="Setups compared",
                labels={"name": "regime maps of the setups"},
            ),
            maps_other=COMPARISON["maps"][1:],
            difference_png=report(
                COMPARISON["difference"][0],
                caption=f"{CAPTIONS}/comparison_difference.rst",
                category=FIGURES_CAT,
                subcategory="Setups compared",
                labels={"name": "difference map of the setups"},
            ),
            difference_other=COMPARISON["difference"][1:],
        log:
            f"{LOGS}/setups/compare.log",
        benchmark:
            f"{BENCH}-local/setups/compare_setups.tsv"
        localrule: True
        conda:
            ENV
        params:
            # each setup's folder and the comparison's, from the paths of the files (their local
            # copies under a storage provider); functions of them, so not compared between runs
            runs=lambda wildcards, input: " ".join(
                shlex.quote(str(Path(path).parent))
                for path in input.tables[: len(SETUPS)]
            ),
            out=lambda wildcards, output: str(Path(output.summary).parent),
        shell:
            "python -m threeregime compare {params.runs} --out {params.out:q} > {log} 2>&1"
