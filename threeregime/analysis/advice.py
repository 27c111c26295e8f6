"""The regimes put to use: advice per density and per cell, model selection, and the analysis
of one cells table (:func:`analyse`).

Advice (the paper's first use case). From a reference dense model (the temperature you would
train anyway), the regime of the pruned cell says: Regime I -> raise the temperature, II-A ->
lower it, II-B -> keep it. It uses training-set metrics only. It is checked against test error:
the best temperature of the density column gives the observed move (raise / lower / keep, with
differences up to ``advice_tol`` counting as ties). Model selection (the second use case): per
density, pick the dense model among the temperature grid from training metrics only (the
connected cell with the most similar retrainings, i.e. highest CKA; if none is connected, the
smallest barrier) and report its test-error rank, next to two baselines (the reference model
and the lowest sparse training loss).

Collapsed cells (threeregime.analysis.cells.collapsed_cells) are set aside: no advice from one
(``advice`` ``none``), never the selection's pick, no part in the thresholds, and outside the
label probabilities (:func:`without_collapsed`); :func:`with_collapsed` puts them back into the
regimes table, labelled ``collapsed``.
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from threeregime.analysis.cells import CELL, collapsed_cells, environments_of, temperature_order
from threeregime.analysis.regimes import (
    COLLAPSED,
    REGIMES,
    classify_cells,
    count_true,
    measured_cells,
    robustness,
)
from threeregime.config.settings import RegimeConfig
from threeregime.registry.knobs import KNOBS

ACTIONS = {"I": "raise", "II-A": "lower", "II-B": "keep"}


# ----------------------------------------------------------------------------- advice
def knob_action(knob: str, action: str) -> str:
    """'raise temperature' in the knob's own words (e.g. 'fewer epochs')."""
    if action in ("keep", "none"):
        return action
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
    advice = ACTIONS.get(regime, "none")  # a collapsed cell advises nothing
    best_t = float(error.idxmin())
    ref_error, best_error = float(error[reference]), float(error.min())
    if ref_error - best_error <= tol:
        best_move = "keep"
    else:
        best_move = "raise" if temps.index(best_t) > i else "lower"
    step = {"raise": i + 1, "lower": i - 1, "keep": i}.get(advice, -1)
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
    Ties go to the first row. Collapsed cells are never picked; None when every cell is."""
    column = column[~collapsed_cells(column)]
    if column.empty:
        return None
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
            "rule_regime": COLLAPSED,  # no pick: every cell of the column collapsed
            "rule_test_error": None,
            "rule_rank": None,
            "regret": None,
            "candidates": len(column),
        }
        if picked is not None:
            row |= {
                "rule_regime": column.loc[picked, "regime"],
                "rule_test_error": float(column.loc[picked, "test_error_mean"]),
                "rule_rank": int(ranks[picked]),
                "regret": float(column.loc[picked, "test_error_mean"] - column.loc[best, "test_error_mean"]),
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
            ranks = selection[f"{method}_rank"].dropna()
            out[method] = {"mean_rank": float(ranks.mean()), "top1": float((ranks == 1).mean())}
    out["candidates"] = int(selection["candidates"].max())
    out["mean_regret"] = float(selection["regret"].astype(float).mean())
    return out


def _mean(values: pd.Series) -> float | None:
    """The mean of the known values; None when there are none (every cell collapsed)."""
    return float(values.mean()) if values.notna().any() else None


def analyse(cells: pd.DataFrame, cfg: RegimeConfig) -> dict:
    """Classification, robustness, advice and selection of one cells table, plus a summary.
    The regimes table holds the measured cells; the collapsed ones wait in ``collapsed`` (the
    probabilities of threeregime.analysis.uncertainty label regimes only) for :func:`with_collapsed`."""
    regimes, thresholds = classify_cells(cells, cfg)
    robust = robustness(measured_cells(cells), cfg, thresholds)
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
            "mean_stability": _mean(regimes["stability"]),
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
            "stable_cells": count_true(regimes["stable"]),
            "matching_tolerance": cfg.matching_tolerance,
            "matching_cells": count_true(regimes["matching"]),
        },
    }
    picked = selection["rule_temperature"].notna()
    collapsed = regimes[regimes["collapsed"]]
    if len(collapsed):  # only then: a run without collapsed cells keeps its summary
        summary["regime_counts"][COLLAPSED] = len(collapsed)
        cells_of = collapsed[["temperature", "density"]].itertuples(index=False)
        summary["collapsed_cells"] = [{"temperature": float(t), "density": float(d)} for t, d in cells_of]
    return {
        "regimes": regimes[~regimes["collapsed"]].copy(),
        "thresholds": thresholds,
        "robustness": robust,
        "advice": advice,
        "advice_cells": per_cell,
        "selection": selection[picked].copy(),
        "summary": summary,
        # set aside for the label probabilities: collapsed cells, and densities without a pick
        "collapsed": {"regimes": collapsed, "selection": selection[~picked]},
    }


def without_collapsed(observations: pd.DataFrame | None, result: dict) -> pd.DataFrame | None:
    """The per-pair observations of the cells :func:`analyse` did not set aside as collapsed
    (the uncertainty model's input; None when every cell collapsed: nothing to draw)."""
    collapsed = result["collapsed"]["regimes"]
    if observations is None or collapsed.empty:
        return observations
    if result["regimes"].empty:
        return None
    keys = pd.MultiIndex.from_frame(collapsed[CELL])
    return observations[~pd.MultiIndex.from_frame(observations[CELL]).isin(keys)]


def with_collapsed(result: dict) -> dict:
    """The collapsed cells back in the regimes table after the label probabilities (regime and
    ``confidence`` ``collapsed``, no probabilities), in the cells table's order, the densities
    without a pick back in the selection, and the advice rows collapsed cells give marked."""
    collapsed = result.pop("collapsed")
    if collapsed["regimes"].empty:
        return result
    regimes = pd.concat([result["regimes"], collapsed["regimes"].assign(confidence=COLLAPSED)])
    result["regimes"] = regimes.sort_values(CELL, kind="stable").reset_index(drop=True)
    selection = pd.concat([result["selection"], collapsed["selection"]])
    result["selection"] = selection.sort_values("density", kind="stable").reset_index(drop=True)
    note = f"{COLLAPSED}: test error at chance or no mc / CKA; no regime, no advice"
    for name in ("advice", "advice_cells"):
        table = result[name]
        if "confidence" in table:
            rows = table["regime"] == COLLAPSED
            table.loc[rows, "confidence"] = COLLAPSED
            table.loc[rows, "advice_note"] = note
    return result
