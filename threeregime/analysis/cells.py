"""Per-pair metrics to cells: one row per (temperature, density) cell with the mean, spread and
count of every registered metric, ordered coldest to hottest whatever the knob."""

from __future__ import annotations

import pandas as pd

from threeregime.registry.knobs import KNOBS
from threeregime.registry.metrics import as_cell, combine, observed, parse_vector

CELL = ["knob", "temperature", "density"]
# A cell is collapsed when its retrained models are no better than chance: mean test error within
# this margin of chance (1 - 1/classes), or no mc or CKA (NaN: constant or non-finite outputs).
COLLAPSE_MARGIN = 0.02


def temperature_order(cells: pd.DataFrame) -> list[float]:
    """Temperatures present, coldest first (the knob decides whether larger is hotter)."""
    knob = cells["knob"].iloc[0]
    return sorted(cells["temperature"].unique(), key=lambda v: KNOBS[knob].hotter * v)


def aggregate_cells(observations: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of every scalar metric per (temperature, density) cell, the paper's
    normalised test error (each density column minus its minimum over temperatures), and every
    registered vector metric combined by its entry's rule (JSON text, ``<name>_mean``)."""
    present = [c for c in observed("scalar") if c in observations]  # in registry order
    grouped = observations.groupby(CELL, sort=True)[present]
    cells = grouped.mean().add_suffix("_mean")
    cells = cells.join(grouped.std(ddof=1).add_suffix("_std"))
    cells["n"] = grouped.size()
    if "environment" in observations:  # numeric environments of the cell's results (collect)
        joined = lambda values: "; ".join(sorted({e for v in values for e in str(v).split("; ")}))  # noqa: E731
        cells["environment"] = observations.groupby(CELL, sort=True)["environment"].agg(joined)
    cells = cells.reset_index()
    column_min = cells.groupby("density")["test_error_mean"].transform("min")
    cells["normalized_test_error"] = cells["test_error_mean"] - column_min
    for name in [c for c in observed("vector") if c in observations]:
        column = observations.groupby(CELL, sort=True)[name].agg(
            lambda texts, name=name: as_cell(combine(name, [parse_vector(t) for t in texts]))
        )
        cells[f"{name}_mean"] = column.to_numpy()
    if "chance_error" in observations:  # written by the metrics job from the number of classes
        cells["chance_error"] = observations.groupby(CELL, sort=True)["chance_error"].max().to_numpy()
    cells["collapsed"] = collapsed_cells(cells)
    return cells


def collapsed_cells(cells: pd.DataFrame) -> pd.Series:
    """Per cell: whether its retrained models collapsed (:data:`COLLAPSE_MARGIN`): the
    ``collapsed`` column when the table has one, else derived from its means. Such cells get no
    regime and take no part in thresholds, advice or model selection (threeregime.analysis)."""
    if "collapsed" in cells:
        return cells["collapsed"].astype(bool)
    missing = pd.Series(False, index=cells.index)
    for column in ("mc_mean", "cka_softmax_mean", "cka_logits_mean"):
        if column in cells:
            missing |= cells[column].isna()
    if "chance_error" in cells and "test_error_mean" in cells:
        missing |= cells["test_error_mean"] >= cells["chance_error"] - COLLAPSE_MARGIN
    return missing.rename("collapsed")


def environments_of(cells: pd.DataFrame) -> list[str]:
    """The distinct numeric environments the cells were computed in (threeregime.compute.runtime)."""
    if "environment" not in cells:
        return []
    return sorted({e for joined in cells["environment"].dropna() for e in str(joined).split("; ")})
