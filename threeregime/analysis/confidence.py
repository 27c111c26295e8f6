"""Each label's probability in the tables: the share of draws of the classification that give it
(threeregime.analysis.uncertainty makes the draws), and what that means for the advice and the
model selection.

Columns added to the regimes table: ``p_I``, ``p_IIA``, ``p_IIB`` (the share of draws giving each
regime), ``p_label`` (the share giving the cell's own label: the probability that label is
right) and ``confidence``: ``confident`` (p >= 0.9: expected to hold on another machine and with
other seeds), ``uncertain`` (>= 0.6), ``coin flip`` below, ``unmeasured`` where the method has
no estimate (no replicate anywhere in the grid), or ``off`` (``regimes.uncertainty: none``). The
advice tables carry ``p_label``, ``confidence`` and a note; the selection table the pick's
``p_label`` and ``rule_pick_p``, the share of draws in which the training-metrics rule picks the
same temperature.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from threeregime.analysis.cells import CELL, temperature_order
from threeregime.analysis.regimes import REGIMES
from threeregime.analysis.uncertainty import SEED, Draws

P_COLUMNS = {"I": "p_I", "II-A": "p_IIA", "II-B": "p_IIB"}
CONFIDENT = 0.9  # a label at least this probable is expected to hold on another machine
COIN_FLIP = 0.6  # below this the label is no better than guessing between two regimes


def confidence_level(p: float) -> str:
    """Words for a label's probability of being right."""
    if not np.isfinite(p):
        return "unmeasured"
    if p >= CONFIDENT:
        return "confident"
    return "uncertain" if p >= COIN_FLIP else "coin flip"


def _pick_positions(cells: pd.DataFrame) -> list[np.ndarray]:
    """Per density (ascending): the cells' row positions, coldest temperature first."""
    rank = {t: i for i, t in enumerate(temperature_order(cells))}
    order = []
    for density in sorted(cells["density"].unique()):
        column = cells.index[cells["density"] == density].to_numpy()
        order.append(column[np.argsort([rank[t] for t in cells.loc[column, "temperature"]], kind="stable")])
    return order


def _rule_picks(mc: np.ndarray, cka: np.ndarray, eps: float, order: list[np.ndarray]) -> np.ndarray:
    """advice.rule_pick on every density column at once (returns row positions)."""
    picks = []
    for rows in order:
        connected = rows[mc[rows] >= -eps]
        if len(connected):
            picks.append(connected[np.argmax(cka[connected])])
        else:
            picks.append(rows[np.argmax(mc[rows])])
    return np.array(picks)


def rule_picks(draws: Draws) -> pd.DataFrame:
    """[draw, density]: the temperature the selection rule picks in each draw."""
    cells = draws.cells.reset_index(drop=True)
    order = _pick_positions(cells)
    temps = cells["temperature"].to_numpy()
    picks = [
        temps[_rule_picks(draws.mc[r], draws.cka[r], draws.eps[r], order)] for r in range(len(draws.eps))
    ]
    return pd.DataFrame(picks, columns=sorted(cells["density"].unique()))


def add_confidence(result: dict, draws: Draws | None) -> dict:
    """Add the draws' probabilities to an :func:`threeregime.analysis.advice.analyse` result: the
    regimes, advice, per-cell advice and selection tables, and the summary."""
    regimes = result["regimes"].drop(columns=[c for c in P_COLUMNS.values() if c in result["regimes"]])
    if draws is not None:
        probabilities = draws.cells.reset_index(drop=True).copy()
        shares = draws.probabilities()
        for j, name in enumerate(REGIMES):
            probabilities[P_COLUMNS[name]] = shares[:, j]
        regimes = regimes.merge(probabilities, on=CELL, how="left", validate="one_to_one")
        own = regimes["regime"].map(lambda r: list(P_COLUMNS).index(r)).to_numpy()
        p = regimes[list(P_COLUMNS.values())].to_numpy()
        regimes["p_label"] = p[np.arange(len(regimes)), own]
        regimes["confidence"] = regimes["p_label"].map(confidence_level)
    else:
        for column in (*P_COLUMNS.values(), "p_label"):
            regimes[column] = np.nan
        regimes["confidence"] = "off"
    result["regimes"] = regimes
    by_cell = regimes.set_index(["density", "temperature"])[["p_label", "confidence"]]
    for name, temperature in (("advice", "reference_temperature"), ("advice_cells", "temperature")):
        table = result[name]
        keys = list(zip(table["density"], table[temperature]))
        table["p_label"] = by_cell["p_label"].reindex(keys).to_numpy()
        table["confidence"] = by_cell["confidence"].reindex(keys).to_numpy()
        table["advice_note"] = [
            advice_note(r, p, c) for r, p, c in zip(table["regime"], table["p_label"], table["confidence"])
        ]
    selection = result["selection"]
    keys = list(zip(selection["density"], selection["rule_temperature"]))
    selection["rule_p_label"] = by_cell["p_label"].reindex(keys).to_numpy()
    selection["rule_confidence"] = by_cell["confidence"].reindex(keys).to_numpy()
    if draws is not None:
        picks = rule_picks(draws)
        same = [float((picks[d] == t).mean()) for d, t in keys]
        measured = np.isfinite(selection["rule_p_label"].to_numpy())
        selection["rule_pick_p"] = np.where(measured, same, np.nan)
    result["summary"]["confidence"] = confidence_summary(regimes, draws)
    return result


def advice_note(regime: str, p: float, confidence: str) -> str:
    """One phrase saying how far the advice can be trusted."""
    if confidence == "off":
        return "confidence not computed (regimes.uncertainty: none)"
    if confidence == "unmeasured":
        return "confidence unmeasured: no cell has a replicate (add dense seeds)"
    share = f"regime {regime} with probability {p:.0%}"
    if confidence == "coin flip":
        return f"coin flip: {share}; this advice is close to a guess"
    if confidence == "uncertain":
        return f"uncertain: {share}"
    return f"confident: {share}"


def confidence_summary(regimes: pd.DataFrame, draws: Draws | None) -> dict:
    """How the probabilities were made, counts of each confidence level, and the mean
    probability of the measured labels."""
    p = regimes["p_label"].dropna()
    return {
        "method": draws.method if draws is not None else "none",
        "draws": int(len(draws.eps)) if draws is not None else 0,
        "seed": SEED,
        "units": draws.units if draws is not None else None,
        "levels": {k: int(v) for k, v in regimes["confidence"].value_counts().sort_index().items()},
        "mean_p_label": float(p.mean()) if len(p) else None,
        "confident_at": CONFIDENT,
        "cells_below_confident": int((p < CONFIDENT).sum()),
    }
