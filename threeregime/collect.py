"""A run's result tables, read from its metrics files (one per retrain pair of a grid cell).

models.csv: one row per retrained model; metrics.csv: one row per pair, its two models' metrics
combined by their registry entries (threeregime.metric_registry.pair_row); cells.csv: one row per
cell (threeregime.regimes.aggregate_cells). Vector metrics travel as JSON text.
"""

from __future__ import annotations

import logging

import pandas as pd

from threeregime.config import grid_cells
from threeregime.io import REBUILD_ADVICE, CheckpointError, read_json, write_csv
from threeregime.metric_registry import as_cell, pair_row
from threeregime.regimes import aggregate_cells, environments_of

log = logging.getLogger("threeregime")

KEYS = ["knob", "temperature", "density", "dense_seed"]


def metrics_paths(pattern: str, axes: dict, plan: str = "") -> list[str]:
    """The metrics file of every cell of the grid ``axes`` (config.metrics_axes), as ``pattern``
    names it; with an adaptive ``plan`` file, of its planned cells only (the rest were not
    measured)."""
    cells = grid_cells(axes)
    if plan:
        planned = {tuple(c) for c in read_json(plan)["cells"]}
        cells = [c for c in cells if (c["temperature"], c["density"]) in planned]
    return [pattern.format(**cell) for cell in cells]


def read_tables(paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(models, metrics) tables of the metrics files, sorted by cell and seeds; a file that is
    not a metrics file of this workflow is an error naming it."""
    from threeregime.runtime import environment_label

    rows, models = [], {}
    for path in paths:
        record = read_json(path)
        try:
            pair_models = record.pop("models")
            cell = {k: record[k] for k in KEYS}
            environment = "; ".join(environment_label(e) for e in record.pop("environments", []))
            for model in pair_models:
                models[(*cell.values(), model["retrain_seed"])] = cell | {
                    k: as_cell(v) for k, v in model.items()
                }
            pair = {k: as_cell(v) for k, v in record.items() if not k.startswith("lmc_") and k != "seconds"}
            rows.append(pair | pair_row(pair_models) | {"environment": environment or "unrecorded"})
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: not a metrics file of this workflow ({type(exc).__name__}: {exc}); {REBUILD_ADVICE}"
            ) from None
    metrics = pd.DataFrame(rows).sort_values(KEYS + ["seed_a", "seed_b"]).reset_index(drop=True)
    models_table = pd.DataFrame(list(models.values())).sort_values(KEYS + ["retrain_seed"])
    return models_table.reset_index(drop=True), metrics


def collect(paths: list[str], models_csv: str, metrics_csv: str, cells_csv: str) -> None:
    """Write the three tables of the metrics files; warn when they mix numeric environments."""
    models_table, metrics = read_tables(paths)
    write_csv(models_csv, models_table)
    write_csv(metrics_csv, metrics)
    write_csv(cells_csv, aggregate_cells(metrics))
    log.info("collected %d models and %d pairs into %s", len(models_table), len(metrics), metrics_csv)
    environments = environments_of(metrics)
    if len(environments) > 1:
        log.warning(
            "the table mixes %d numeric environments (see its environment column): %s",
            len(environments), " | ".join(environments),
        )  # fmt: skip
