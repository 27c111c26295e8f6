"""The compare stage: several runs' folders in, their maps under shared thresholds and where
they differ out (threeregime.analysis.compare): ``threeregime compare`` and the workflow's
comparison of the setups of prune.setups (rule compare_setups).

A run folder is what the workflow writes for a run (results/<run_name>) or for one setup
(results/<run_name>/setups/<name>): metrics.csv (the per-pair observations), cells.csv,
regimes.csv (its own labels) and summary.json, whose ``run`` block names the run (run, setup,
knob, model, pruning method) and whose ``regimes`` block holds the rules it was classified by.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from threeregime.analysis.compare import Comparison, RunTables, compare_runs
from threeregime.config.settings import ConfigError, RegimeConfig
from threeregime.config.specs import regime_config_from_spec
from threeregime.io.files import REBUILD_ADVICE, CheckpointError, read_json, write_csv, write_json, write_text
from threeregime.views.tables import html_page

log = logging.getLogger("threeregime")
# What a comparison writes into its folder (the workflow's COMPARISON paths name the same files).
OUTPUTS = {
    "table": "comparison.csv",
    "labels": "comparison_labels.csv",
    "summary": "comparison.json",
    "html": "tables/comparison.html",
    "maps": ["comparison_maps.png", "comparison_maps.pdf"],
    "difference": ["comparison_difference.png", "comparison_difference.pdf"],
}
NEEDED = ("metrics.csv", "cells.csv", "summary.json")


def run_folder(run: str, root: Path = Path("results")) -> Path:
    """A run given on the command line: a folder holding its tables, or a run name under
    ``root`` (results/<run_name>)."""
    path = Path(run)
    if (path / "summary.json").is_file() or path.is_dir():
        return path
    if (root / run).is_dir():
        return root / run
    raise ConfigError(f"{run}: no such run folder (and no {root / run}); give a folder holding metrics.csv")


def read_run(folder: Path) -> RunTables:
    """One run's tables (:data:`NEEDED`, and regimes.csv where present), named by the run its
    summary describes; one line naming the file when one is missing or predates the run block."""
    missing = [name for name in NEEDED if not (folder / name).is_file()]
    if missing:
        raise ConfigError(
            f"{folder}: no {', '.join(missing)}; a run folder holds the tables the workflow writes "
            "(results/<run_name>, or results/<run_name>/setups/<name>): run snakemake for it first"
        )
    summary = read_json(folder / "summary.json")
    description = summary.get("run") if isinstance(summary, dict) else None
    if not isinstance(description, dict) or "regimes" not in summary:
        raise CheckpointError(
            f"{folder / 'summary.json'}: no run description (written before threeregime named its "
            f"runs); run snakemake for this run again (it reruns classify and plot only), or {REBUILD_ADVICE}"
        )
    name = description.get("setup") or description.get("run") or folder.name
    regimes = folder / "regimes.csv"
    return RunTables(
        name=str(name),
        observations=pd.read_csv(folder / "metrics.csv"),
        cells=pd.read_csv(folder / "cells.csv"),
        description=description,
        regimes=pd.read_csv(regimes) if regimes.is_file() else None,
    )


def read_runs(folders: list[Path]) -> tuple[list[RunTables], RegimeConfig]:
    """The runs, named uniquely (a setup by its name when the runs are one run's setups, else
    'run/setup'), and the classification rules of the first (its summary's regimes block)."""
    runs = [read_run(folder) for folder in folders]
    described = [r.description for r in runs]
    one_run = len({d.get("run") for d in described}) == 1 and all(d.get("setup") for d in described)
    if not one_run:
        names = [
            f"{d.get('run', r.name)}/{d['setup']}" if d.get("setup") else str(d.get("run", r.name))
            for d, r in zip(described, runs)
        ]
        if len(set(names)) < len(names):  # the same run name in two places: name them by folder
            names = [str(folder) for folder in folders]
        runs = [RunTables(n, r.observations, r.cells, r.description, r.regimes) for n, r in zip(names, runs)]
    first = read_json(folders[0] / "summary.json")["regimes"]
    return runs, regime_config_from_spec(first)


def comparison_pages(comparison: Comparison) -> str:
    """The HTML page: where the runs differ (every pair's shared cells), then every run's labels."""
    t = comparison.thresholds
    rule = (
        f"Shared thresholds: eps = {t.eps:.4g} ({t.eps_source}), CKA cut = {t.cka_cut:.4g} "
        f"({t.cka_cut_source}), over the pooled cells of {len(comparison.names)} runs."
    )
    return html_page(
        "Regimes compared under shared thresholds",
        [
            (
                "Where the runs differ",
                comparison.differences,
                f"{rule} One row per pair of runs and cell both have; p_differ: the share of draws "
                "of the uncertainty model in which the two labels differ (for differing labels, the "
                "probability the difference is real).",
            ),
            (
                "Every run's labels",
                comparison.labels,
                "regime: under the shared thresholds; own_regime: the run's own classification; "
                "p_*: share of the joint draws giving each regime.",
            ),
        ],
    )


def compare(folders: list[str | Path], out: str | Path, dpi: int = 150) -> Comparison:
    """Compare the runs in ``folders`` and write :data:`OUTPUTS` into ``out``."""
    runs, cfg = read_runs([Path(f) for f in folders])
    comparison = compare_runs(runs, cfg)
    write_comparison(comparison, out, dpi)
    return comparison


def write_comparison(comparison: Comparison, out: str | Path, dpi: int = 150) -> list[Path]:
    """:data:`OUTPUTS` of a comparison, in ``out``; returns their paths."""
    from threeregime.views.compare import draw_comparison

    out = Path(out)
    write_csv(out / OUTPUTS["table"], comparison.differences)
    write_csv(out / OUTPUTS["labels"], comparison.labels)
    write_json(out / OUTPUTS["summary"], comparison.summary)
    write_text(out / OUTPUTS["html"], comparison_pages(comparison))
    draw_comparison(
        comparison,
        [str(out / p) for p in OUTPUTS["maps"]],
        [str(out / p) for p in OUTPUTS["difference"]],
        dpi,
    )
    t = comparison.thresholds
    log.info(
        "shared thresholds: eps %.4g (%s), CKA cut %.4g (%s)",
        t.eps,
        t.eps_source,
        t.cka_cut,
        t.cka_cut_source,
    )
    for pair in comparison.summary["pairs"]:
        log.info(
            "%s vs %s: %d of %d shared cells differ (%d with p >= %.2f)", pair["run_a"],
            pair["run_b"], pair["differing"], pair["common_cells"], pair["differing_confident"],
            comparison.summary["confident_at"],
        )  # fmt: skip
    log.info("wrote %s", out)
    return [out / p for value in OUTPUTS.values() for p in (value if isinstance(value, list) else [value])]
