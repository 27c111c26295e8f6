"""Cells to regimes (I / II-A / II-B): the two thresholds, the classification, its robustness
to the thresholds, and the lottery-ticket verdicts of each cell.

The paper drew its regime boundaries by hand. Here every (temperature, density) cell is
classified by two explicit rules applied to the cell's means over seeds:

1. **Regime I** (poorly connected) when the mean mc is below ``-eps``: a loss barrier between two
   retrainings of the same pruned model.
2. Otherwise the cell is connected, and it is **II-A** when its mean CKA is below ``cka_cut``
   (the two retrainings' outputs are relatively dissimilar), else **II-B**.

``eps`` (``regimes.eps_mode``):

* ``fixed``: ``regimes.eps``.
* ``noise``: ``eps_z`` times the standard error of a cell's mean mc, where the standard error is
  the median over cells of (seed-to-seed std of mc) / sqrt(observations per cell); observations
  are dense seeds x retrain pairs. ``regimes.eps`` is a floor: the larger of the two is used.
  Without replicates (one observation per cell) nothing can be measured and the floor is used;
  the summary says so. Retrain pairs that share a seed are not independent, so with pairs the
  standard error is optimistic; raise ``eps_z`` if that matters.

``cka_cut`` (``regimes.cka_cut_mode``):

* ``fixed``: ``regimes.cka_cut``.
* ``split``: Otsu's rule on the connected cells' mean CKA: the cut between two consecutive sorted
  values (at their midpoint) that maximises the between-group variance. It always yields two
  non-empty groups, so the summary also reports the *separation* (between-group over total
  variance, 0..1): near 1 the connected cells form two clear clusters, near 0 the split is
  arbitrary. Fewer than two distinct connected values fall back to ``regimes.cka_cut``.

A **collapsed** cell (its retrained models no better than chance, or no mc or CKA:
threeregime.analysis.cells.collapsed_cells) gets the label ``collapsed`` instead of a regime,
and takes no part in the thresholds, the robustness sweep, the advice or the model selection.

Robustness: the classification is repeated over a grid of eps and CKA cut values (config ranges,
or by default eps x 0.5 .. 2 and the cut's distance from 1 x 0.5 .. 2) and the table counts the
cells that change regime; every cell also gets a *stability*, the fraction of the grid that keeps
its regime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from threeregime.analysis.cells import collapsed_cells
from threeregime.config.settings import RegimeConfig

REGIMES = ("I", "II-A", "II-B")
COLLAPSED = "collapsed"  # the label of a collapsed cell, in place of a regime
ROBUSTNESS_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


# ----------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class Thresholds:
    """The two cuts actually used, where they came from, and what was measured."""

    eps: float
    eps_source: str
    cka_cut: float
    cka_cut_source: str
    eps_measured: float | None = None
    replicates: float = 1.0
    cka_split_separation: float | None = None


def noise_eps(cells: pd.DataFrame, z: float) -> float | None:
    """z times the standard error of a cell's mean mc, from the median seed-to-seed std.

    Only cells with at least two observations count; None if there are none.
    """
    replicated = cells[cells["n"] >= 2]
    spread = replicated["mc_std"].dropna()
    if spread.empty:
        return None
    return float(z * spread.median() / math.sqrt(replicated["n"].median()))


def otsu_split(values) -> tuple[float, float] | None:
    """(cut, separation) of the two-group split of 1-D values with the largest between-group
    variance; the cut is the midpoint of the two values it falls between, separation is the
    between-group variance over the total variance. None with fewer than two distinct values.
    Among equally good splits the lowest cut wins."""
    values = np.sort(np.asarray(values, dtype=float))
    values = values[np.isfinite(values)]
    if len(np.unique(values)) < 2:
        return None
    best, best_cut = -1.0, None
    for i in range(1, len(values)):
        if values[i] == values[i - 1]:
            continue
        low, high = values[:i], values[i:]
        score = len(low) * len(high) * (low.mean() - high.mean()) ** 2
        if score > best * (1 + 1e-12):
            best, best_cut = score, float((values[i - 1] + values[i]) / 2)
    total = len(values) ** 2 * values.var()
    return best_cut, float(best / total)


def choose_thresholds(
    cells: pd.DataFrame, cfg: RegimeConfig, standard_error: float | None = None
) -> Thresholds:
    """eps, then the CKA cut on the cells that eps leaves connected (see the module docstring).
    ``standard_error``: the standard error of a cell's mean mc from the pooled noise model
    (threeregime.analysis.uncertainty); None: from the cells table's own spreads."""
    eps, eps_source, measured = cfg.eps, "fixed (regimes.eps)", None
    if cfg.eps_mode == "noise":
        measured = noise_eps(cells, cfg.eps_z) if standard_error is None else cfg.eps_z * standard_error
        if measured is None:
            eps_source = (
                "floor regimes.eps: one observation per cell, so the mc noise cannot be "
                "measured (add dense seeds or retrain seeds)"
            )
        elif measured > cfg.eps:
            eps = measured
            eps_source = f"noise: {cfg.eps_z:g} x standard error of a cell's mean mc"
        else:
            eps_source = "floor regimes.eps: larger than the measured mc noise"
    cut, cut_source, separation = cfg.cka_cut, "fixed (regimes.cka_cut)", None
    if cfg.cka_cut_mode == "split":
        connected = cells[cells["mc_mean"] >= -eps]
        split = otsu_split(connected[f"{cfg.cka_metric}_mean"].to_numpy())
        if len(connected) < cfg.cka_split_min_cells:
            split = None
            cut_source = (
                f"fixed regimes.cka_cut: a split of {len(connected)} connected cells would be unstable "
                f"(fewer than regimes.cka_split_min_cells = {cfg.cka_split_min_cells})"
            )
        elif split is None:
            cut_source = "fixed regimes.cka_cut: fewer than two distinct connected CKA values"
        else:
            cut, separation = split
            cut_source = f"split: Otsu threshold on {len(connected)} connected cells' CKA"
    replicates = float(cells["n"].median()) if "n" in cells else 1.0
    return Thresholds(eps, eps_source, cut, cut_source, measured, replicates, separation)


# ----------------------------------------------------------------------------- classification
def classify(cells: pd.DataFrame, eps: float, cka_cut: float, cka_metric: str) -> pd.Series:
    """I if mean mc < -eps, else II-A if mean CKA < cka_cut, else II-B."""
    connected = cells["mc_mean"] >= -eps
    similar = cells[f"{cka_metric}_mean"] >= cka_cut
    regime = np.where(~connected, "I", np.where(similar, "II-B", "II-A"))
    return pd.Series(regime, index=cells.index, name="regime")


def robustness_grid(cfg: RegimeConfig, chosen: Thresholds) -> tuple[list[float], list[float]]:
    """The eps and CKA-cut values the robustness check sweeps (the chosen ones included)."""
    eps_grid = cfg.eps_range or tuple(chosen.eps * f for f in ROBUSTNESS_FACTORS)
    cut_grid = cfg.cka_cut_range or tuple(
        float(np.clip(1 - (1 - chosen.cka_cut) * f, 0, 1)) for f in ROBUSTNESS_FACTORS
    )
    return sorted({*eps_grid, chosen.eps}), sorted({*cut_grid, chosen.cka_cut})


def _sweep(cells: pd.DataFrame, cfg: RegimeConfig, chosen: Thresholds):
    eps_grid, cut_grid = robustness_grid(cfg, chosen)
    for eps in eps_grid:
        for cut in cut_grid:
            yield eps, cut, classify(cells, eps, cut, cfg.cka_metric)


def robustness(cells: pd.DataFrame, cfg: RegimeConfig, chosen: Thresholds) -> pd.DataFrame:
    """One row per (eps, CKA cut) of the sweep: cells that change regime, and regime counts."""
    reference = classify(cells, chosen.eps, chosen.cka_cut, cfg.cka_metric)
    rows = []
    for eps, cut, regime in _sweep(cells, cfg, chosen):
        changed = int((regime != reference).sum())
        rows.append(
            {
                "eps": eps,
                "cka_cut": cut,
                "chosen": bool(eps == chosen.eps and cut == chosen.cka_cut),
                "cells_changed": changed,
                "fraction_changed": changed / max(len(cells), 1),
                **{f"n_{r}": int((regime == r).sum()) for r in REGIMES},
            }
        )
    return pd.DataFrame(rows)


def cell_stability(cells: pd.DataFrame, cfg: RegimeConfig, chosen: Thresholds) -> pd.Series:
    """Per cell: the fraction of the robustness sweep that keeps the chosen regime."""
    reference = classify(cells, chosen.eps, chosen.cka_cut, cfg.cka_metric)
    same = [regime == reference for _, _, regime in _sweep(cells, cfg, chosen)]
    return pd.concat(same, axis=1).mean(axis=1).rename("stability")


def classify_cells(cells: pd.DataFrame, cfg: RegimeConfig) -> tuple[pd.DataFrame, Thresholds]:
    """The cells with ``regime`` (``collapsed`` for a collapsed cell), ``collapsed``, the
    thresholds used (from the other cells), and each cell's ``stability``."""
    collapsed = collapsed_cells(cells)
    measured = cells[~collapsed]
    thresholds = choose_thresholds(measured, cfg)
    out = cells.copy()
    out["collapsed"] = collapsed
    regime = classify(cells, thresholds.eps, thresholds.cka_cut, cfg.cka_metric)
    out["regime"] = regime.where(~collapsed, COLLAPSED)
    out["eps"] = thresholds.eps
    out["cka_cut"] = thresholds.cka_cut
    out["stability"] = cell_stability(measured, cfg, thresholds).reindex(cells.index)
    return ticket_criteria(out, cfg), thresholds


def measured_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """The cells that are not collapsed (those the thresholds and the robustness sweep see)."""
    return cells[~collapsed_cells(cells)]


def _verdict(cells: pd.DataFrame, columns: list[str], test) -> pd.Series:
    """``test(cells)`` as True/False where every one of ``columns`` is known, empty where one
    is missing or NaN."""
    if not set(columns) <= set(cells):
        return pd.Series([None] * len(cells), index=cells.index, dtype=object)
    known = cells[columns].notna().all(axis=1)
    return test(cells).astype(object).where(known, None)


def count_true(verdicts: pd.Series) -> int | None:
    """Cells with a True verdict; None when no cell has a verdict."""
    known = verdicts.dropna()
    return None if known.empty else int(known.astype(bool).sum())


def ticket_criteria(cells: pd.DataFrame, cfg: RegimeConfig) -> pd.DataFrame:
    """The lottery-ticket literature's two yes/no verdicts per cell, next to the paper's mc.

    ``stable`` (Frankle et al. 2020's instability analysis): the mean error barrier between the
    two retrainings is below ``stable_barrier`` (they use 2%). ``matching``: the sparse models'
    test error is at most the dense model's plus ``matching_tolerance``; empty when the metrics
    files predate the dense test error."""
    out = cells.copy()
    out["stable"] = _verdict(out, ["barrier_mean"], lambda c: c["barrier_mean"] < cfg.stable_barrier)
    sparse, dense = "test_error_mean", "dense_test_error_mean"
    out["matching"] = _verdict(out, [sparse, dense], lambda c: c[sparse] <= c[dense] + cfg.matching_tolerance)
    return out
