"""Adaptive refinement: measure the cells that decide the regime map, and replicate the labels
that are uncertain; infer the rest.

Most cells of a phase diagram sit deep inside one regime; only cells near a boundary decide the
map, and only uncertain labels need more seeds. With ``adaptive.enabled`` the workflow measures a
coarse sub-grid first (every ``adaptive.step``-th temperature and density, the last of each
always, so the corners are in, and the advice's reference temperature at every coarse density),
classifies it, and in each of ``adaptive.rounds`` rounds makes two moves:

* **cells**: it adds the unmeasured cells whose regime could change the map: *boundary* (its
  nearest measured cells disagree), *edge* (a grid neighbour has a different label), *uncertain*
  (a measured neighbour's label is less probable than ``adaptive.min_confidence``); a new
  density column brings its reference-temperature cell along;
* **replicates**: it adds a dense seed to each measured cell whose label is less probable than
  ``adaptive.min_confidence`` (least probable first), up to ``adaptive.max_seeds`` dense seeds
  per cell.

The budget counts units of work: one dense seed of one cell (its prune, retrain and metrics
jobs). The full grid is cells x ``seeds.dense`` units and ``adaptive.budget`` is the share of it
a run may measure; the coarse sub-grid counts against it. Each round takes boundary cells first,
then replicates, then edge cells, then the neighbours of uncertain labels, while units are left,
and says what it added and why, or why it added nothing. A cell measured once stays measured:
every round's plan holds every measured cell. Every cell never measured gets the label the
majority of its nearest measured cells have (ties: the label with the larger summed
probability, then I, II-A, II-B, collapsed), flagged ``inferred`` in ``regimes.csv`` and drawn hatched.

A round's plan is a pure function of the config and the measured cells' metrics, and a cell's
files do not depend on the round that asked for them, so rerunning, or adding a grid value,
reuses every measured cell and seed the new plan contains.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from threeregime.analysis.cells import CELL, aggregate_cells
from threeregime.analysis.regimes import COLLAPSED, REGIMES, classify_cells
from threeregime.analysis.uncertainty import uncertainty_draws
from threeregime.config.experiment import Cell, Grid
from threeregime.config.settings import AdaptiveConfig, RegimeConfig, fmt_value

LABELS = (*REGIMES, COLLAPSED)  # what a measured cell can be labelled, in tie-break order


def _strength(cells: list[Cell], p_label: dict[Cell, float], regime: str) -> tuple:
    """How strongly nearest cells vote for a regime: count, summed p_label, then REGIMES order."""
    p = sum(p_label[c] for c in cells if np.isfinite(p_label.get(c, np.nan)))
    return len(cells), p, -LABELS.index(regime)


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
        votes = {r: [c for c in nearest if labels[c] == r] for r in LABELS}

        label = max(LABELS, key=lambda r: _strength(votes[r], p_label, r))
        counted = ",".join(f"{r}:{len(votes[r])}" for r in LABELS if votes[r])
        rows.append((*cell, label, "inferred", counted))
    return pd.DataFrame(rows, columns=["temperature", "density", "regime", "label_source", "inferred_from"])


def cell_candidates(
    labels: dict[Cell, str], p_label: dict[Cell, float], grid: Grid, min_confidence: float
) -> dict:
    """The unmeasured cells whose regime could change the map, each with its reason (module
    docstring)."""
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
            reasons[cell] = "uncertain neighbour"
    return reasons


def replicate_candidates(
    p_label: dict[Cell, float], seeds: dict[Cell, list[int]], grid: Grid, adaptive: AdaptiveConfig
) -> list[tuple[Cell, int, str]]:
    """A next dense seed for every measured cell whose label is less probable than the target and
    that has fewer than ``max_seeds`` dense seeds, least probable first: (cell, seed, reason)."""
    out = []
    for cell, p in p_label.items():
        if np.isfinite(p) and p < adaptive.min_confidence and len(seeds[cell]) < adaptive.max_seeds:
            out.append((p, grid.index(cell), cell, max(seeds[cell]) + 1))
    return [(cell, seed, f"p_label {p:.2f}") for p, _, cell, seed in sorted(out)]


MOVE_ORDER = ("boundary", "replicate", "edge", "uncertain neighbour")


def next_moves(
    labels: dict[Cell, str],
    p_label: dict[Cell, float],
    seeds: dict[Cell, list[int]],
    grid: Grid,
    adaptive: AdaptiveConfig,
    base_seeds: list[int],
    units_left: int,
) -> tuple[list, list, str]:
    """What the next round adds, within ``units_left`` units: (cells with their reasons, dense
    seeds with theirs, and why nothing, when nothing fits)."""
    reasons = cell_candidates(labels, p_label, grid, adaptive.min_confidence)
    replicates = replicate_candidates(p_label, seeds, grid, adaptive)
    ranked = [(MOVE_ORDER.index(r), grid.index(c), "cell", c, r) for c, r in reasons.items()]
    ranked += [(MOVE_ORDER.index("replicate"), i, "seed", r, None) for i, r in enumerate(replicates)]
    cells, added_seeds, taken, cheapest = [], [], set(labels), None
    for _, _, kind, item, reason in sorted(ranked, key=lambda x: x[:2]):
        if kind == "seed":
            cost = 1
            if cost <= units_left:
                added_seeds.append(item)
                units_left -= cost
            cheapest = cost if cheapest is None else min(cheapest, cost)
            continue
        bring = [item]
        reference = (grid.reference, item[1])
        if reference not in taken and reference != item:
            bring.append(reference)
        cost = len(bring) * len(base_seeds)
        cheapest = cost if cheapest is None else min(cheapest, cost)
        if cost > units_left or item in taken:
            continue
        for c in bring:
            cells.append((c, reason if c == item else "reference"))
            taken.add(c)
        units_left -= cost
    why = ""
    if not cells and not added_seeds:
        if not ranked:
            why = (
                f"nothing to add: no unmeasured cell lies near a boundary or an uncertain label, and "
                f"every measured label is at least {adaptive.min_confidence:g} probable or has "
                f"{adaptive.max_seeds} dense seeds"
            )
        else:
            why = f"budget spent: the cheapest move needs {cheapest} units, {units_left} are left"
    return cells, added_seeds, why


def measured_labels(observations: pd.DataFrame, cfg: RegimeConfig) -> tuple[dict, dict, dict, dict]:
    """Labels and p_label of the measured cells (keys: canonical strings; a collapsed cell is
    labelled ``collapsed``, without a probability), the dense seeds each was measured with, and
    the thresholds used."""
    cells, thresholds = classify_cells(aggregate_cells(observations), cfg)
    keys = [(fmt_value(t), fmt_value(d)) for t, d in zip(cells["temperature"], cells["density"])]
    labels = dict(zip(keys, cells["regime"]))
    p_label = {k: float("nan") for k in keys}
    collapsed = pd.MultiIndex.from_frame(cells.loc[cells["collapsed"], CELL])
    regime_cells = ~pd.MultiIndex.from_frame(observations[CELL]).isin(collapsed)
    draws = uncertainty_draws(observations[regime_cells], cfg)
    if draws is not None:
        shares = draws.probabilities()
        for (t, d), row in zip(zip(draws.cells["temperature"], draws.cells["density"]), shares):
            k = (fmt_value(t), fmt_value(d))
            p_label[k] = float(row[REGIMES.index(labels[k])])
    by_cell = observations.groupby(CELL)["dense_seed"].agg(lambda s: sorted({int(x) for x in s}))
    seeds = {(fmt_value(t), fmt_value(d)): list(v) for (_, t, d), v in by_cell.items()}
    return labels, p_label, seeds, {"eps": thresholds.eps, "cka_cut": thresholds.cka_cut}


def allowed_units(grid: Grid, base_seeds: list[int], budget: float) -> int:
    """Units of work (one dense seed of one cell) the budget allows: its share of the full
    grid's cells x dense seeds."""
    return math.floor(budget * len(grid.cells()) * len(base_seeds) + 1e-9)


def plan_round(
    round_number: int,
    previous: dict,
    observations: pd.DataFrame,
    grid: Grid,
    cfg: RegimeConfig,
    adaptive: AdaptiveConfig,
    base_seeds: list[int],
) -> dict:
    """The plan of one round (JSON-ready): every cell measured so far with the dense seeds beyond
    ``base_seeds`` it was given, plus what this round adds. ``previous``: the previous round's
    plan ({"cells": ..., "seeds": ...}; the coarse sub-grid for round 1)."""
    labels, p_label, seeds, thresholds = measured_labels(observations, cfg)
    planned = [tuple(c) for c in previous["cells"]]
    missing = sorted(set(planned) - set(labels))
    if missing:
        raise ValueError(f"no metrics for planned cells {missing}")
    allowed = allowed_units(grid, base_seeds, adaptive.budget)
    used = sum(len(v) for v in seeds.values())
    cells, replicates, why = next_moves(labels, p_label, seeds, grid, adaptive, base_seeds, allowed - used)
    extra = {f"{t}/{d}": [s for s in seeds[(t, d)] if s not in base_seeds] for t, d in labels}
    for (t, d), seed, _ in replicates:
        extra[f"{t}/{d}"] = sorted({*extra[f"{t}/{d}"], seed})
    all_cells = sorted({*planned, *labels, *(c for c, _ in cells)}, key=grid.index)
    added_units = len(cells) * len(base_seeds) + len(replicates)
    return {
        "round": round_number,
        "cells": [list(c) for c in all_cells],
        "seeds": {key: value for key, value in sorted(extra.items()) if value},
        "added": [[*c, reason] for c, reason in cells],
        "replicated": [[*c, seed, reason] for c, seed, reason in replicates],
        "why_nothing": why,
        "units": {"allowed": allowed, "used_before": used, "added": added_units},
        "measured_before": len(labels),
        "grid_cells": len(grid.cells()),
        "thresholds": thresholds,
        "labels": {f"{t}/{d}": labels[(t, d)] for t, d in sorted(labels, key=grid.index)},
        "p_label": {f"{t}/{d}": p_label[(t, d)] for t, d in sorted(labels, key=grid.index)},
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
    uncertainty model already called uncertain (p_label below CONFIDENT, or unmeasured)."""
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
