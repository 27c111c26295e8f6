"""From per-observation metrics to cells, regimes (I / II-A / II-B), robustness, advice and
model selection.

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

Robustness: the classification is repeated over a grid of eps and CKA cut values (config ranges,
or by default eps x 0.5 .. 2 and the cut's distance from 1 x 0.5 .. 2) and the table counts the
cells that change regime; every cell also gets a *stability*, the fraction of the grid that keeps
its regime.

Advice (the paper's first use case). From a reference dense model (the temperature you would
train anyway), the regime of the pruned cell says: Regime I -> raise the temperature, II-A ->
lower it, II-B -> keep it. It uses training-set metrics only. It is checked against test error:
the best temperature of the density column gives the observed move (raise / lower / keep, with
differences up to ``advice_tol`` counting as ties). Model selection (the second use case): per
density, pick the dense model among the temperature grid from training metrics only (the
connected cell with the most similar retrainings, i.e. highest CKA; if none is connected, the
smallest barrier) and report its test-error rank, next to two baselines (the reference model
and the lowest sparse training loss).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from threeregime.config import RegimeConfig
from threeregime.knobs import KNOBS
from threeregime.metric_registry import as_cell, combine, observed, parse_vector

CELL = ["knob", "temperature", "density"]
REGIMES = ("I", "II-A", "II-B")
ACTIONS = {"I": "raise", "II-A": "lower", "II-B": "keep"}
ROBUSTNESS_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)


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
    return cells


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


def choose_thresholds(cells: pd.DataFrame, cfg: RegimeConfig) -> Thresholds:
    """eps, then the CKA cut on the cells that eps leaves connected (see the module docstring)."""
    eps, eps_source, measured = cfg.eps, "fixed (regimes.eps)", None
    if cfg.eps_mode == "noise":
        measured = noise_eps(cells, cfg.eps_z)
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
        if split is None:
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
                "fraction_changed": changed / len(cells),
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
    """The cells with ``regime``, the thresholds used, and each cell's ``stability``."""
    thresholds = choose_thresholds(cells, cfg)
    out = cells.copy()
    out["regime"] = classify(cells, thresholds.eps, thresholds.cka_cut, cfg.cka_metric)
    out["eps"] = thresholds.eps
    out["cka_cut"] = thresholds.cka_cut
    out["stability"] = cell_stability(cells, cfg, thresholds)
    return ticket_criteria(out, cfg), thresholds


def _verdict(cells: pd.DataFrame, columns: list[str], test) -> pd.Series:
    """``test(cells)`` as True/False where every one of ``columns`` is known, empty where one
    is missing or NaN."""
    if not set(columns) <= set(cells):
        return pd.Series([None] * len(cells), index=cells.index, dtype=object)
    known = cells[columns].notna().all(axis=1)
    return test(cells).astype(object).where(known, None)


def _count(verdicts: pd.Series) -> int | None:
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


# ----------------------------------------------------------------------------- advice
def knob_action(knob: str, action: str) -> str:
    """'raise temperature' in the knob's own words (e.g. 'fewer epochs')."""
    if action == "keep":
        return "keep"
    entry = KNOBS[knob]
    return entry.advice(larger=(action == "raise") == (entry.hotter > 0))


def _column(regimes: pd.DataFrame, density: float) -> pd.DataFrame:
    """One density column indexed by temperature, coldest first."""
    column = regimes[regimes["density"] == density].set_index("temperature")
    return column.loc[[t for t in temperature_order(regimes) if t in column.index]]


def _advise(column: pd.DataFrame, reference: float, tol: float) -> dict:
    """The regime rule's advice at ``reference`` and its check against test error."""
    temps = list(column.index)
    i = temps.index(reference)
    error = column["test_error_mean"]
    regime = column.loc[reference, "regime"]
    advice = ACTIONS[regime]
    best_t = float(error.idxmin())
    ref_error, best_error = float(error[reference]), float(error.min())
    if ref_error - best_error <= tol:
        best_move = "keep"
    else:
        best_move = "raise" if temps.index(best_t) > i else "lower"
    step = {"raise": i + 1, "lower": i - 1, "keep": i}[advice]
    checkable = 0 <= step < len(temps)
    row = {
        "reference_temperature": float(reference),
        "regime": regime,
        "stability": float(column.loc[reference, "stability"]) if "stability" in column else None,
        "advice": advice,
        "next_temperature": float(temps[step]) if checkable else None,
        "best_temperature": best_t,
        "reference_test_error": ref_error,
        "best_test_error": best_error,
        "best_move": best_move,
        "checkable": checkable,
        "agree": (advice == best_move) if checkable else None,
    }
    if not checkable:
        row["step_improves"] = None
    elif advice == "keep":
        neighbours = [error[temps[j]] for j in (i - 1, i + 1) if 0 <= j < len(temps)]
        row["step_improves"] = all(ref_error - e <= tol for e in neighbours)
    else:
        row["step_improves"] = bool(ref_error - error[temps[step]] > tol)
    return row


def temperature_advice(regimes: pd.DataFrame, reference: float, tol: float = 0.0) -> pd.DataFrame:
    """Per density: raise / lower / keep the temperature of the reference dense model.

    Columns: ``advice`` (from the reference cell's regime only: I raise, II-A lower, II-B keep),
    ``advice_knob`` (in the knob's words), ``next_temperature`` (one grid step that way),
    ``best_temperature`` (lowest mean test error of the column), ``best_move`` (the move from the
    reference to it; ``keep`` when the reference is within ``tol`` of the best), ``agree``
    (advice == best_move; empty when the advised step leaves the grid, ``checkable`` False), and
    ``step_improves`` (one step in the advised direction lowers test error by more than ``tol``;
    for ``keep``: no neighbour is better by more than ``tol``).
    """
    knob = regimes["knob"].iloc[0]
    rows = []
    for density in sorted(regimes["density"].unique()):
        column = _column(regimes, density)
        if reference not in column.index:
            raise ValueError(f"reference temperature {reference} missing at density {density}")
        row = _advise(column, reference, tol)
        rows.append(
            {
                "knob": knob,
                "density": density,
                **row,
                "advice_knob": knob_action(knob, row["advice"]),
                "best_move_knob": knob_action(knob, row["best_move"]),
            }
        )
    return pd.DataFrame(rows)


def cell_advice(regimes: pd.DataFrame, tol: float = 0.0) -> pd.DataFrame:
    """The same advice and check with every cell of the grid in turn as the reference."""
    knob = regimes["knob"].iloc[0]
    rows = []
    for density in sorted(regimes["density"].unique()):
        column = _column(regimes, density)
        for t in column.index:
            row = _advise(column, t, tol)
            row["temperature"] = row.pop("reference_temperature")
            rows.append(
                {"knob": knob, "density": density, **row, "advice_knob": knob_action(knob, row["advice"])}
            )
    return pd.DataFrame(rows)


def agreement(advice: pd.DataFrame) -> dict:
    """How often the checkable advice agreed with test error (overall and one step ahead)."""
    checkable = advice[advice["checkable"].astype(bool)]
    n = len(checkable)
    return {
        "checkable": n,
        "total": len(advice),
        "agree": int(checkable["agree"].astype(bool).sum()),
        "agreement": float(checkable["agree"].astype(bool).mean()) if n else None,
        "step_improves": float(checkable["step_improves"].astype(bool).mean()) if n else None,
    }


# ----------------------------------------------------------------------------- model selection
def rule_pick(column: pd.DataFrame, eps: float, cka_metric: str) -> float:
    """Training-set-only choice of temperature in one density column (indexed by temperature):
    the connected cell with the most similar retrainings (highest CKA, so a II-B cell whenever
    there is one); if no cell is connected, the one with the smallest barrier (highest mc).
    Ties go to the first row."""
    connected = column[column["mc_mean"] >= -eps]
    if not connected.empty:
        return float(connected[f"{cka_metric}_mean"].idxmax())
    return float(column["mc_mean"].idxmax())


def model_selection(
    regimes: pd.DataFrame, eps: float, cka_metric: str, reference: float | None = None
) -> pd.DataFrame:
    """Per density: the dense model (temperature) the regime rule picks from training metrics,
    its test-error rank among the grid (1 = best) and regret, next to the best temperature and
    two training-only baselines: the reference model and the lowest sparse training loss."""
    rows = []
    for density in sorted(regimes["density"].unique()):
        column = _column(regimes, density)  # rows indexed by temperature
        ranks = column["test_error_mean"].rank(method="min").astype(int)
        best = column["test_error_mean"].idxmin()
        picked = rule_pick(column, eps, cka_metric)
        row = {
            "density": density,
            "best_temperature": float(best),
            "best_test_error": float(column.loc[best, "test_error_mean"]),
            "rule_temperature": picked,
            "rule_regime": column.loc[picked, "regime"],
            "rule_test_error": float(column.loc[picked, "test_error_mean"]),
            "rule_rank": int(ranks[picked]),
            "regret": float(column.loc[picked, "test_error_mean"] - column.loc[best, "test_error_mean"]),
            "candidates": len(column),
        }
        if "train_loss_mean" in column:
            low_loss = column["train_loss_mean"].idxmin()
            row["train_loss_temperature"] = float(low_loss)
            row["train_loss_rank"] = int(ranks[low_loss])
        if reference is not None:
            row["reference_temperature"] = float(reference)
            row["reference_rank"] = int(ranks[float(reference)])
        rows.append(row)
    return pd.DataFrame(rows)


def selection_summary(selection: pd.DataFrame) -> dict:
    """Mean test-error rank and top-1 rate of each way of choosing the dense model."""
    out = {}
    for method in ("rule", "reference", "train_loss"):
        if f"{method}_rank" in selection:
            ranks = selection[f"{method}_rank"]
            out[method] = {"mean_rank": float(ranks.mean()), "top1": float((ranks == 1).mean())}
    out["candidates"] = int(selection["candidates"].max())
    out["mean_regret"] = float(selection["regret"].mean())
    return out


# ----------------------------------------------------------------------------- everything
def environments_of(cells: pd.DataFrame) -> list[str]:
    """The distinct numeric environments the cells were computed in (threeregime.runtime)."""
    if "environment" not in cells:
        return []
    return sorted({e for joined in cells["environment"].dropna() for e in str(joined).split("; ")})


def analyse(cells: pd.DataFrame, cfg: RegimeConfig) -> dict:
    """Classification, robustness, advice and selection of one cells table, plus a summary."""
    regimes, thresholds = classify_cells(cells, cfg)
    robust = robustness(cells, cfg, thresholds)
    reference = cfg.reference_temperature
    if reference is None:
        reference = temperature_order(cells)[0]
    advice = temperature_advice(regimes, float(reference), cfg.advice_tol)
    per_cell = cell_advice(regimes, cfg.advice_tol)
    selection = model_selection(regimes, thresholds.eps, cfg.cka_metric, float(reference))
    off_chosen = robust[~robust["chosen"]]
    environments = environments_of(cells)
    summary = {
        "cells": len(regimes),
        "environments": environments,
        "mixed_environments": len(environments) > 1,
        "thresholds": asdict(thresholds),
        "cka_metric": cfg.cka_metric,
        "regime_counts": {r: int((regimes["regime"] == r).sum()) for r in REGIMES},
        "robustness": {
            "settings": len(robust),
            "max_cells_changed": int(off_chosen["cells_changed"].max()) if len(off_chosen) else 0,
            "max_fraction_changed": float(robust["fraction_changed"].max()),
            "cells_stable_everywhere": int((regimes["stability"] == 1).sum()),
            "mean_stability": float(regimes["stability"].mean()),
        },
        "advice": {
            "reference_temperature": float(reference),
            "tolerance": cfg.advice_tol,
            "per_density": agreement(advice),
            "per_cell": agreement(per_cell),
        },
        "selection": selection_summary(selection),
        "tickets": {
            "stable_barrier": cfg.stable_barrier,
            "stable_cells": _count(regimes["stable"]),
            "matching_tolerance": cfg.matching_tolerance,
            "matching_cells": _count(regimes["matching"]),
        },
    }
    return {
        "regimes": regimes,
        "thresholds": thresholds,
        "robustness": robust,
        "advice": advice,
        "advice_cells": per_cell,
        "selection": selection,
        "summary": summary,
    }
