"""A run's result tables, read from its metrics files (one per retrain pair of a grid cell).

models.csv: one row per retrained model; metrics.csv: one row per pair, its two models' metrics
combined by their registry entries (threeregime.registry.metrics.pair_row); cells.csv: one row per
cell (threeregime.analysis.cells.aggregate_cells). Vector metrics travel as JSON text.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from threeregime.analysis.cells import aggregate_cells, environments_of
from threeregime.config.specs import grid_cells
from threeregime.io.files import REBUILD_ADVICE, CheckpointError, read_json, write_csv
from threeregime.registry.metrics import METRICS, as_cell, pair_row

log = logging.getLogger("threeregime")

KEYS = ["knob", "temperature", "density", "dense_seed"]


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def check_numbers(path: str, record) -> None:
    """Every registered metric in a metrics file is a number (or a list of numbers for a vector
    metric), so that a damaged file is one line naming it and the key, not a pandas traceback."""
    if not isinstance(record, dict):
        return  # read_tables names the wrong shape
    models = record.get("models")
    sources = [("", record)] + [
        (f"models[{i}].", model) for i, model in enumerate(models if isinstance(models, list) else [])
    ]
    for prefix, source in sources:
        if not isinstance(source, dict):
            continue
        for key, value in source.items():
            metric = METRICS.get(key)
            if metric is None:
                continue
            values = value if metric.kind == "vector" and isinstance(value, list) else [value]
            if not all(_is_number(v) for v in values):
                expected = "a list of numbers" if metric.kind == "vector" else "a number"
                raise CheckpointError(
                    f"{path}: {prefix}{key} is {value!r:.60}, expected {expected}; {REBUILD_ADVICE}"
                )


def metrics_paths(pattern: str, axes: dict, plan: str = "") -> list[str]:
    """The metrics file of every cell of the grid ``axes`` (config.metrics_axes), as ``pattern``
    names it; with an adaptive ``plan`` file, of its planned cells (with the dense seeds it added
    to some) and of every other cell whose files all exist (measured by an earlier run with
    another budget or grid: a measured cell is never reported as inferred; the workflow declares
    these files as inputs too)."""
    paths = {}
    for cell in grid_cells(axes):
        paths.setdefault((cell["temperature"], cell["density"]), []).append(pattern.format(**cell))
    if plan:
        found = read_json(plan)
        planned = {tuple(c) for c in found["cells"]}
        paths = {
            cell: files
            for cell, files in paths.items()
            if cell in planned or all(Path(f).is_file() for f in files)
        }
        for key, seeds in found.get("seeds", {}).items():
            temperature, density = key.split("/")
            extra = {"temperature": temperature, "density": density}
            paths[(temperature, density)] += [
                pattern.format(**extra, seed=seed, a=a, b=b) for seed in seeds for a, b in axes["pair"]
            ]
    return [path for files in paths.values() for path in files]


def read_tables(paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(models, metrics) tables of the metrics files, sorted by cell and seeds; a file that is
    not a metrics file of this workflow is an error naming it."""
    from threeregime.compute.environments import environment_label

    rows, models = [], {}
    for path in paths:
        record = read_json(path)
        check_numbers(path, record)
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


def mixed_environments_warning(summary_path: str | Path) -> str | None:
    """The console's warning after a run whose results mix numeric environments (threads,
    device, library versions: docs/troubleshooting.md), or None."""
    path = Path(summary_path)
    if not path.is_file():
        return None
    try:
        summary = read_json(path)
    except CheckpointError:
        return None
    if not summary.get("mixed_environments"):
        return None
    return (
        f"{path.parent} mixes {len(summary['environments'])} numeric environments (threads, "
        f"device or library versions differ between its jobs; see the environment column of its "
        f"tables): {' | '.join(summary['environments'])}"
    )


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
