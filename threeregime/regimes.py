"""From per-observation metrics to cells, regimes (I / II-A / II-B), robustness and advice.

The paper drew its regime boundaries by hand. Here a cell is Regime I when its mean mc is below
-eps (a loss barrier), otherwise II-A when its mean CKA is below a cut, else II-B. eps is either
fixed or derived from the measured seed-to-seed spread of mc; the CKA cut is either fixed or the
split of the connected cells' CKA values that maximises the between-group variance (Otsu).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from threeregime.config import KNOBS, RegimeConfig

CELL = ["knob", "temperature", "density"]
METRIC_COLUMNS = [
    "test_error",
    "test_error_final",
    "train_loss",
    "train_error",
    "mc",
    "cka_softmax",
    "cka_logits",
    "hessian_top_eigenvalue",
    "hessian_trace",
]
REGIMES = ("I", "II-A", "II-B")


def temperature_order(cells: pd.DataFrame) -> list[float]:
    """Temperatures present, coldest first (the knob decides whether larger is hotter)."""
    knob = cells["knob"].iloc[0]
    return sorted(cells["temperature"].unique(), key=lambda v: KNOBS[knob].hotter * v)


def aggregate_cells(observations: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of every metric per (temperature, density) cell, plus the paper's
    normalised test error (each density column minus its minimum over temperatures)."""
    present = [c for c in METRIC_COLUMNS if c in observations]
    grouped = observations.groupby(CELL, sort=True)[present]
    cells = grouped.mean().add_suffix("_mean")
    cells = cells.join(grouped.std(ddof=1).add_suffix("_std"))
    cells["n"] = grouped.size()
    cells = cells.reset_index()
    column_min = cells.groupby("density")["test_error_mean"].transform("min")
    cells["normalized_test_error"] = cells["test_error_mean"] - column_min
    return cells


@dataclass(frozen=True)
class Thresholds:
    eps: float
    eps_source: str
    cka_cut: float
    cka_cut_source: str


def noise_eps(cells: pd.DataFrame, z: float) -> float | None:
    """z times the standard error of a cell's mean mc, from the median seed-to-seed std."""
    spread = cells.loc[cells["n"] >= 2, "mc_std"].dropna()
    if spread.empty:
        return None
    return float(z * spread.median() / math.sqrt(cells.loc[cells["n"] >= 2, "n"].median()))


def otsu_cut(values: np.ndarray) -> float | None:
    """Midpoint split of 1-D values maximising between-group variance (None if < 2 distinct)."""
    values = np.sort(np.asarray(values, dtype=float))
    if len(np.unique(values)) < 2:
        return None
    best, best_cut = -1.0, None
    for i in range(1, len(values)):
        if values[i] == values[i - 1]:
            continue
        low, high = values[:i], values[i:]
        score = len(low) * len(high) * (low.mean() - high.mean()) ** 2
        if score > best:
            best, best_cut = score, float((values[i - 1] + values[i]) / 2)
    return best_cut


def choose_thresholds(cells: pd.DataFrame, cfg: RegimeConfig) -> Thresholds:
    eps, eps_source = cfg.eps, "fixed (regimes.eps)"
    if cfg.eps_mode == "noise":
        measured = noise_eps(cells, cfg.eps_z)
        if measured is None:
            eps_source = "regimes.eps: no replicate observations to measure the mc noise"
        elif measured > cfg.eps:
            eps, eps_source = measured, f"noise: {cfg.eps_z:g} x standard error of mean mc"
        else:
            eps_source = "regimes.eps: floor above the measured mc noise"
    cut, cut_source = cfg.cka_cut, "fixed (regimes.cka_cut)"
    if cfg.cka_cut_mode == "split":
        connected = cells[cells["mc_mean"] >= -eps]
        split = otsu_cut(connected[f"{cfg.cka_metric}_mean"].to_numpy())
        if split is None:
            cut_source = "regimes.cka_cut: fewer than two distinct connected CKA values"
        else:
            cut, cut_source = split, "split: Otsu threshold on connected cells' CKA"
    return Thresholds(eps, eps_source, cut, cut_source)


def classify(cells: pd.DataFrame, eps: float, cka_cut: float, cka_metric: str) -> pd.Series:
    connected = cells["mc_mean"] >= -eps
    similar = cells[f"{cka_metric}_mean"] >= cka_cut
    regime = np.where(~connected, "I", np.where(similar, "II-B", "II-A"))
    return pd.Series(regime, index=cells.index, name="regime")


def classify_cells(cells: pd.DataFrame, cfg: RegimeConfig) -> tuple[pd.DataFrame, Thresholds]:
    thresholds = choose_thresholds(cells, cfg)
    out = cells.copy()
    out["regime"] = classify(cells, thresholds.eps, thresholds.cka_cut, cfg.cka_metric)
    out["eps"] = thresholds.eps
    out["cka_cut"] = thresholds.cka_cut
    return out, thresholds


def robustness(cells: pd.DataFrame, cfg: RegimeConfig, chosen: Thresholds) -> pd.DataFrame:
    """How many cells change regime when eps and the CKA cut move around the chosen values.

    Default grids scale eps, and the CKA cut's distance from 1, by 0.5x .. 2x.
    """
    factors = (0.5, 0.75, 1.0, 1.5, 2.0)
    eps_grid = cfg.eps_range or tuple(chosen.eps * f for f in factors)
    cut_grid = cfg.cka_cut_range or tuple(float(np.clip(1 - (1 - chosen.cka_cut) * f, 0, 1)) for f in factors)
    reference = classify(cells, chosen.eps, chosen.cka_cut, cfg.cka_metric)
    rows = []
    for eps in sorted(set(eps_grid)):
        for cut in sorted(set(cut_grid)):
            regime = classify(cells, eps, cut, cfg.cka_metric)
            changed = int((regime != reference).sum())
            rows.append(
                {
                    "eps": eps,
                    "cka_cut": cut,
                    "cells_changed": changed,
                    "fraction_changed": changed / len(cells),
                    **{f"n_{r}": int((regime == r).sum()) for r in REGIMES},
                }
            )
    return pd.DataFrame(rows)


ACTIONS = {"I": "raise", "II-A": "lower", "II-B": "keep"}


def knob_action(knob: str, action: str) -> str:
    """'raise temperature' in the knob's own words (e.g. 'fewer epochs')."""
    if action == "keep":
        return "keep"
    larger = (action == "raise") == (KNOBS[knob].hotter > 0)
    words = {
        "epochs": ("more epochs", "fewer epochs"),
        "batch_size": ("larger batch", "smaller batch"),
    }
    return words.get(knob, ("larger rho", "smaller rho"))[0 if larger else 1]


def temperature_advice(regimes: pd.DataFrame) -> pd.DataFrame:
    """Per cell: the regime's advice (I raise, II-A lower, II-B keep) against what test error says.

    The observed direction compares the cell's mean test error with its colder and hotter
    neighbours in the grid: 'raise' if the hotter neighbour is best, 'lower' if the colder one
    is, 'keep' if the cell itself is. Edge cells compare with their one neighbour.
    """
    knob = regimes["knob"].iloc[0]
    order = temperature_order(regimes)
    rows = []
    for density, column in regimes.groupby("density"):
        column = column.set_index("temperature").loc[[t for t in order if t in set(column["temperature"])]]
        temps = list(column.index)
        for i, t in enumerate(temps):
            candidates = {"keep": column.loc[t, "test_error_mean"]}
            if i > 0:
                candidates["lower"] = column.loc[temps[i - 1], "test_error_mean"]
            if i + 1 < len(temps):
                candidates["raise"] = column.loc[temps[i + 1], "test_error_mean"]
            observed = min(candidates, key=candidates.get)
            advised = ACTIONS[column.loc[t, "regime"]]
            rows.append(
                {
                    "knob": knob,
                    "density": density,
                    "temperature": t,
                    "regime": column.loc[t, "regime"],
                    "advice": advised,
                    "advice_knob": knob_action(knob, advised),
                    "observed_best_move": observed,
                    "agree": advised == observed,
                }
            )
    return pd.DataFrame(rows)


def rule_pick(column: pd.DataFrame, eps: float, cka_metric: str) -> float:
    """Training-set-only choice of temperature: the connected cell with the most similar
    retrainings (highest CKA); if none is connected, the one with the smallest barrier."""
    connected = column[column["mc_mean"] >= -eps]
    if not connected.empty:
        return float(connected.loc[connected[f"{cka_metric}_mean"].idxmax(), "temperature"])
    return float(column.loc[column["mc_mean"].idxmax(), "temperature"])


def model_selection(regimes: pd.DataFrame, eps: float, cka_metric: str) -> pd.DataFrame:
    """Per density: best temperature by test error vs the rule's pick, and the pick's rank."""
    rows = []
    for density, column in regimes.groupby("density"):
        column = column.reset_index(drop=True)
        ranks = column["test_error_mean"].rank(method="min").astype(int)
        best = column.loc[column["test_error_mean"].idxmin()]
        picked_t = rule_pick(column, eps, cka_metric)
        picked = column[column["temperature"] == picked_t].index[0]
        rows.append(
            {
                "density": density,
                "best_temperature": float(best["temperature"]),
                "best_test_error": float(best["test_error_mean"]),
                "rule_temperature": picked_t,
                "rule_test_error": float(column.loc[picked, "test_error_mean"]),
                "rule_rank": int(ranks[picked]),
                "candidates": len(column),
                "regret": float(column.loc[picked, "test_error_mean"] - best["test_error_mean"]),
            }
        )
    return pd.DataFrame(rows)
