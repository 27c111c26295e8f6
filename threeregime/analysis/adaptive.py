"""Adaptive refinement: measure the cells that decide the regime map, infer the rest.

Most cells of a phase diagram sit deep inside one regime; only cells near a boundary decide the
map. With ``adaptive.enabled`` the workflow measures a coarse sub-grid first (every
``adaptive.step``-th temperature and density, the last of each always, so the corners are in,
and the advice's reference temperature at every coarse density), classifies it, and in each of
``adaptive.rounds`` rounds adds only the unmeasured cells whose regime could change the map:

1. *boundary*: its nearest measured cells disagree (it lies between two regimes);
2. *edge*: a grid neighbour (up, down, left, right) has a different measured or inferred label;
3. *uncertain*: a measured neighbour's label has bootstrap probability below
   ``adaptive.min_confidence``.

Candidates are taken in that order (then coldest first, densities ascending) until the grid
share ``adaptive.budget`` is measured. A new density column brings its reference-temperature
cell along, so the advice can start from it. Every cell never measured gets the label the
majority of its nearest measured cells have (ties: the label with the larger summed
probability, then I, II-A, II-B), flagged ``inferred`` in ``regimes.csv`` and drawn hatched.

A round's plan is a pure function of the config and the measured cells' metrics, and a cell's
files do not depend on the round that asked for it, so rerunning, or adding a grid value, reuses
every measured cell the new plan contains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from threeregime.analysis.cells import CELL, aggregate_cells
from threeregime.analysis.confidence import P_COLUMNS, bootstrap
from threeregime.analysis.regimes import REGIMES, choose_thresholds, classify
from threeregime.config.settings import RegimeConfig, fmt_value

Cell = tuple[str, str]  # (temperature, density) as canonical grid strings


@dataclass(frozen=True)
class Grid:
    """The full grid (temperatures coldest first, densities ascending) and the advice's
    reference temperature, all canonical strings."""

    temperatures: tuple[str, ...]
    densities: tuple[str, ...]
    reference: str

    def cells(self) -> list[Cell]:
        return [(t, d) for t in self.temperatures for d in self.densities]

    def index(self, cell: Cell) -> tuple[int, int]:
        return self.temperatures.index(cell[0]), self.densities.index(cell[1])


def _every(n: int, step: int) -> list[int]:
    """Indices 0, step, 2 step, ... and always the last one."""
    return sorted({*range(0, n, step), n - 1})


def coarse_cells(grid: Grid, step: int) -> list[Cell]:
    """The first round: every ``step``-th temperature and density (corners included) and the
    reference temperature at each of those densities."""
    temps = {grid.temperatures[i] for i in _every(len(grid.temperatures), step)} | {grid.reference}
    dens = [grid.densities[j] for j in _every(len(grid.densities), step)]
    return [(t, d) for t in grid.temperatures for d in dens if t in temps]


def _strength(cells: list[Cell], p_label: dict[Cell, float], regime: str) -> tuple:
    """How strongly nearest cells vote for a regime: count, summed p_label, then REGIMES order."""
    p = sum(p_label[c] for c in cells if np.isfinite(p_label.get(c, np.nan)))
    return len(cells), p, -REGIMES.index(regime)


def infer_labels(labels: dict[Cell, str], p_label: dict[Cell, float], grid: Grid) -> pd.DataFrame:
    """Every grid cell with its label: measured ones as given, the others by majority of their
    nearest measured cells (index distance |dt| + |dd|). Columns: temperature, density, regime,
    label_source (measured / inferred), inferred_from (the nearest labels counted)."""
    measured = [(grid.index(c), c) for c in labels]
    rows = []
    for cell in grid.cells():
        if cell in labels:
            rows.append((*cell, labels[cell], "measured", ""))
            continue
        i, j = grid.index(cell)
        distance = {c: abs(i - a) + abs(j - b) for (a, b), c in measured}
        nearest = [c for c, dist in distance.items() if dist == min(distance.values())]
        votes = {r: [c for c in nearest if labels[c] == r] for r in REGIMES}

        label = max(REGIMES, key=lambda r: _strength(votes[r], p_label, r))
        counted = ",".join(f"{r}:{len(votes[r])}" for r in REGIMES if votes[r])
        rows.append((*cell, label, "inferred", counted))
    return pd.DataFrame(rows, columns=["temperature", "density", "regime", "label_source", "inferred_from"])


def next_cells(
    labels: dict[Cell, str], p_label: dict[Cell, float], grid: Grid, budget: float, min_confidence: float
) -> list[tuple[Cell, str]]:
    """The cells the next round adds, each with its reason (see the module docstring)."""
    full = infer_labels(labels, p_label, grid)
    label_of = {(t, d): r for t, d, r in zip(full["temperature"], full["density"], full["regime"])}
    sources = dict(zip(zip(full["temperature"], full["density"]), full["inferred_from"]))
    nt, nd = len(grid.temperatures), len(grid.densities)

    def neighbours(cell):
        i, j = grid.index(cell)
        for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)):
            if 0 <= a < nt and 0 <= b < nd:
                yield grid.temperatures[a], grid.densities[b]

    reasons = {}
    for cell in grid.cells():
        if cell in labels:
            continue
        if sources[cell].count(":") > 1:
            reasons[cell] = "boundary"
        elif any(label_of[n] != label_of[cell] for n in neighbours(cell)):
            reasons[cell] = "edge"
        elif any(n in labels and p_label.get(n, 1.0) < min_confidence for n in neighbours(cell)):
            reasons[cell] = "uncertain"
    order = {"boundary": 0, "edge": 1, "uncertain": 2}
    ranked = sorted(reasons, key=lambda c: (order[reasons[c]], grid.index(c)))
    allowed = math.floor(budget * nt * nd + 1e-9)
    chosen, taken = [], set(labels)
    for cell in ranked:
        bring = [cell]
        reference = (grid.reference, cell[1])
        if reference not in taken and reference != cell:
            bring.append(reference)
        if len(taken) + len(bring) > allowed:
            continue
        for c in bring:
            chosen.append((c, reasons.get(c, "reference")))
            taken.add(c)
    return chosen


def measured_labels(observations: pd.DataFrame, cfg: RegimeConfig) -> tuple[dict, dict, dict]:
    """Labels and bootstrap p_label of the measured cells (keys: canonical strings), and the
    thresholds used."""
    cells = aggregate_cells(observations)
    thresholds = choose_thresholds(cells, cfg)
    regime = classify(cells, thresholds.eps, thresholds.cka_cut, cfg.cka_metric)
    keys = [(fmt_value(t), fmt_value(d)) for t, d in zip(cells["temperature"], cells["density"])]
    labels = dict(zip(keys, regime))
    p_label = {k: float("nan") for k in keys}
    if cfg.bootstrap > 0:
        probs, _ = bootstrap(observations, cfg, cfg.bootstrap)
        for (t, d), row in zip(zip(probs["temperature"], probs["density"]), probs.itertuples()):
            k = (fmt_value(t), fmt_value(d))
            p_label[k] = float(getattr(row, P_COLUMNS[labels[k]]))
    return labels, p_label, {"eps": thresholds.eps, "cka_cut": thresholds.cka_cut}


def plan_round(
    round_number: int,
    previous: list[Cell],
    observations: pd.DataFrame,
    grid: Grid,
    cfg: RegimeConfig,
    budget: float,
    min_confidence: float,
) -> dict:
    """The plan of one round: the cells measured so far, plus those it adds (JSON-ready)."""
    labels, p_label, thresholds = measured_labels(observations, cfg)
    missing = sorted(set(previous) - set(labels))
    if missing:
        raise ValueError(f"no metrics for planned cells {missing}")
    added = next_cells(labels, p_label, grid, budget, min_confidence)
    cells = sorted({*previous, *(c for c, _ in added)}, key=grid.index)
    return {
        "round": round_number,
        "cells": [list(c) for c in cells],
        "added": [[*c, reason] for c, reason in added],
        "measured_before": len(previous),
        "grid_cells": len(grid.cells()),
        "thresholds": thresholds,
        "labels": {f"{t}/{d}": labels[(t, d)] for t, d in sorted(labels, key=grid.index)},
    }


def with_inferred(regimes: pd.DataFrame, grid: Grid) -> pd.DataFrame:
    """The regimes table of the measured cells, plus one row per unmeasured grid cell carrying
    its inferred label (metrics empty); ``label_source`` says which is which."""
    keys = [(fmt_value(t), fmt_value(d)) for t, d in zip(regimes["temperature"], regimes["density"])]
    labels = dict(zip(keys, regimes["regime"]))
    unknown = sorted(set(labels) - set(grid.cells()))
    if unknown:
        raise ValueError(f"cells {unknown} are not on the configured grid")
    p = regimes["p_label"] if "p_label" in regimes else pd.Series(np.nan, index=regimes.index)
    full = infer_labels(labels, dict(zip(keys, p)), grid)
    inferred = full[full["label_source"] == "inferred"].copy()
    inferred["temperature"] = inferred["temperature"].astype(float)
    inferred["density"] = inferred["density"].astype(float)
    inferred["knob"] = regimes["knob"].iloc[0]
    for column in ("eps", "cka_cut"):
        if column in regimes:
            inferred[column] = regimes[column].iloc[0]
    if "confidence" in regimes:
        inferred["confidence"] = "inferred"
    out = regimes.copy()
    out["label_source"], out["inferred_from"] = "measured", ""
    out = pd.concat([out, inferred], ignore_index=True)
    return out.sort_values(CELL[1:]).reset_index(drop=True)


def compare_maps(full: pd.DataFrame, adaptive: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """An adaptive regimes table against the full grid's: per cell both labels, whether the
    adaptive label was measured or inferred, and the full grid's own confidence there; and the
    agreement overall, on measured and on inferred cells, with the disagreements the full grid's
    bootstrap already called uncertain (p_label below CONFIDENT, or unmeasured)."""
    from threeregime.analysis.confidence import CONFIDENT

    keep = ["temperature", "density", "regime", "p_label", "confidence"]
    base = full[[c for c in keep if c in full]].rename(columns={"regime": "full_regime"})
    base = base.rename(columns={"p_label": "full_p_label", "confidence": "full_confidence"})
    other = adaptive[["temperature", "density", "regime", "label_source"]]
    merged = base.merge(other.rename(columns={"regime": "adaptive_regime"}), on=["temperature", "density"],
                        how="outer", validate="one_to_one", indicator=True)  # fmt: skip
    if (merged["_merge"] != "both").any():
        raise ValueError("the full and adaptive tables cover different grids")
    merged = merged.drop(columns="_merge")
    merged["agree"] = merged["full_regime"] == merged["adaptive_regime"]
    p = merged.get("full_p_label", pd.Series(np.nan, index=merged.index))
    merged["full_uncertain"] = ~(p >= CONFIDENT)  # NaN (unmeasured) counts as uncertain

    def share(rows):
        return float(rows["agree"].mean()) if len(rows) else None

    disagree = merged[~merged["agree"]]
    summary = {
        "cells": len(merged),
        "agreement": share(merged),
        "agreement_measured": share(merged[merged["label_source"] == "measured"]),
        "agreement_inferred": share(merged[merged["label_source"] == "inferred"]),
        "measured": int((merged["label_source"] == "measured").sum()),
        "disagreements": len(disagree),
        "disagreements_uncertain_in_full": int(disagree["full_uncertain"].sum()),
    }
    return merged, summary
