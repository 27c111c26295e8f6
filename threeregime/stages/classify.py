"""The classify stage: regimes, robustness, advice and model selection of a run's cells table,
each label's probability and the regime boundaries with their intervals (from the draws of the
uncertainty model), and on an adaptive grid an inferred label for every cell not measured;
written as CSV tables, summary.json and their HTML views."""

from __future__ import annotations

import logging
from dataclasses import asdict

import pandas as pd

from threeregime.analysis.adaptive import with_inferred
from threeregime.analysis.advice import analyse, with_collapsed, without_collapsed
from threeregime.analysis.boundaries import boundaries
from threeregime.analysis.confidence import add_confidence
from threeregime.analysis.uncertainty import uncertainty_draws
from threeregime.config.experiment import Grid
from threeregime.config.settings import RegimeConfig
from threeregime.io.files import write_csv, write_json
from threeregime.views.tables import write_html_tables

log = logging.getLogger("threeregime")
TABLES = ("regimes", "robustness", "advice", "advice_cells", "selection", "boundaries")


def classify_run(
    cells: pd.DataFrame, observations: pd.DataFrame | None, cfg: RegimeConfig, grid: Grid | None = None
) -> dict:
    """:func:`threeregime.analysis.advice.analyse` of the cells table (eps from the pooled noise
    of the per-pair ``observations``; None: from the cells' own spreads), each label's
    probability and the boundaries from the draws of the uncertainty model (collapsed cells left
    out of both), and on an adaptive ``grid`` an inferred label for every cell not measured."""
    result = analyse(cells, cfg)
    draws = uncertainty_draws(without_collapsed(observations, result), cfg)
    result = with_collapsed(add_confidence(result, draws))
    result["boundaries"] = boundaries(result["regimes"], draws, cfg.cka_metric, cfg.interval)
    thresholds = result["summary"]["thresholds"]
    if "unstable" in thresholds["cka_cut_source"]:
        log.warning("CKA cut: %s", thresholds["cka_cut_source"])
    result["summary"]["boundaries"] = boundary_summary(result["boundaries"])
    if grid is not None:
        result["regimes"] = with_inferred(result["regimes"], grid)
        sources = result["regimes"]["label_source"].value_counts()
        result["summary"]["label_source"] = {k: int(v) for k, v in sources.items()}
    return result


def boundary_summary(table: pd.DataFrame) -> list[str]:
    """Each boundary as a sentence, e.g. 'epochs 160: I below density 0.08 [0.06, 0.11], II
    above'."""

    def value(x, side: str) -> str:
        return f"{side} the grid" if pd.isna(x) else f"{x:.3g}"

    lines = []
    for row in table.itertuples():
        head = f"{row.knob} {row.temperature:g}"
        if row.outside == "below":
            lines.append(f"{head}: {row.high_side} at every density ({row.boundary} below the grid)")
        elif row.outside == "above":
            lines.append(f"{head}: {row.low_side} at every density ({row.boundary} above the grid)")
        elif row.outside:
            lines.append(f"{head}: no {row.boundary} boundary (fewer than two cells to split)")
        else:
            where = f"density {row.density:.3g} [{value(row.low, 'below')}, {value(row.high, 'above')}]"
            lines.append(f"{head}: {row.low_side} below {where}, {row.high_side} above")
    return lines


def classify(
    cells_csv: str, metrics_csv: str, cfg: RegimeConfig, outputs: dict[str, str], summary: str,
    html_dir: str = "", grid: Grid | None = None, description: dict | None = None,
) -> dict:  # fmt: skip
    """The stage's files: ``outputs`` maps each of :data:`TABLES` to its CSV path. The summary
    also records what the run is (``description``: run, setup, knob, model, pruning method) and
    the rules it was classified by, so that the run can be compared with others
    (threeregime.stages.compare)."""
    cells = pd.read_csv(cells_csv)
    observations = pd.read_csv(metrics_csv) if metrics_csv else None
    result = classify_run(cells, observations, cfg, grid)
    if description is not None:
        result["summary"]["run"] = description
    result["summary"]["regimes"] = asdict(cfg)
    for name in TABLES:
        write_csv(outputs[name], result[name])
    write_json(summary, result["summary"])
    if html_dir:
        write_html_tables(result, html_dir)
    found = result["summary"]
    log.info("thresholds: %s", found["thresholds"])
    log.info("regimes: %s", found["regime_counts"])
    log.info("advice: %s", found["advice"])
    log.info("selection: %s", found["selection"])
    return result
