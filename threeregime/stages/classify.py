"""The classify stage: regimes, robustness, advice and model selection of a run's cells table,
each label's confidence, and on an adaptive grid an inferred label for every cell not measured;
written as CSV tables, summary.json and their HTML views."""

from __future__ import annotations

import logging

import pandas as pd

from threeregime.analysis.adaptive import Grid, with_inferred
from threeregime.analysis.advice import analyse, with_collapsed, without_collapsed
from threeregime.analysis.confidence import add_confidence
from threeregime.config.settings import RegimeConfig
from threeregime.io.files import write_csv, write_json
from threeregime.views.tables import write_html_tables

log = logging.getLogger("threeregime")
TABLES = ("regimes", "robustness", "advice", "advice_cells", "selection")


def classify_run(
    cells: pd.DataFrame, observations: pd.DataFrame | None, cfg: RegimeConfig, grid: Grid | None = None
) -> dict:
    """:func:`threeregime.analysis.advice.analyse` of the cells table, each label's bootstrap
    confidence from the per-pair ``observations`` (None: off; collapsed cells left out), and on
    an adaptive ``grid`` an inferred label for every cell not measured."""
    result = analyse(cells, cfg)
    measured = without_collapsed(observations, result)
    result = with_collapsed(add_confidence(result, measured, cfg, cfg.bootstrap))
    if grid is not None:
        result["regimes"] = with_inferred(result["regimes"], grid)
        sources = result["regimes"]["label_source"].value_counts()
        result["summary"]["label_source"] = {k: int(v) for k, v in sources.items()}
    return result


def classify(
    cells_csv: str, metrics_csv: str, cfg: RegimeConfig, outputs: dict[str, str], summary: str,
    html_dir: str = "", grid: Grid | None = None,
) -> dict:  # fmt: skip
    """The stage's files: ``outputs`` maps each of :data:`TABLES` to its CSV path."""
    cells = pd.read_csv(cells_csv)
    observations = pd.read_csv(metrics_csv) if metrics_csv else None
    result = classify_run(cells, observations, cfg, grid)
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
