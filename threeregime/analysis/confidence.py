"""How sure each regime label is: a bootstrap over dense seeds and retrain seeds.

A cell's label comes from means over its observations (one per dense seed x retrain pair) and
from two thresholds derived from the whole grid. The bootstrap redraws the observations and
repeats the whole classification, thresholds included, so both sources of doubt count.

What is resampled, and why:

* **Dense seeds, once per resample for the whole grid** (outer level). One dense seed is one
  training run that every cell of its temperature row (for the epochs knob: of the whole grid)
  is pruned from, so cells are correlated through it; drawing the seeds jointly keeps that.
* **Retrain seeds, within each (cell, dense seed)** (inner level). The pairs of one cell are not
  independent: with retrain seeds 1, 2, 3 the pairs (1,2), (1,3), (2,3) share seeds. The
  independent units are the retrain seeds, so those are drawn with replacement (conditioned on
  at least two distinct seeds, the least that makes a pair) and every pair of two distinct drawn
  seeds counts with the product of their multiplicities. With two retrain seeds this always
  redraws the one pair: a single pair carries no within-seed spread.

A cell with one dense seed and at most one pair per dense seed has nothing to resample: its
probabilities are NaN and its ``confidence`` is ``unmeasured`` (no fake certainty from the
thresholds' wobble alone). The bootstrap seed is fixed, so results are deterministic.

Columns added to the regimes table: ``p_I``, ``p_IIA``, ``p_IIB`` (share of resamples giving each
regime), ``p_label`` (the share giving the cell's own label: the probability that label is right)
and ``confidence`` (``confident`` >= 0.8, ``uncertain`` >= 0.6, ``coin flip`` below, ``unmeasured``,
or ``off`` when ``regimes.bootstrap`` is 0). The advice tables carry ``p_label``, ``confidence``
and a note; the selection table the pick's ``p_label`` and ``rule_pick_p``, the share of resamples
in which the training-metrics rule picks the same temperature.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from threeregime.analysis.cells import CELL, temperature_order
from threeregime.analysis.regimes import REGIMES, choose_thresholds, classify
from threeregime.config.settings import RegimeConfig

BOOTSTRAP_SEED = 20230  # fixed: the probabilities are part of the results
P_COLUMNS = {"I": "p_I", "II-A": "p_IIA", "II-B": "p_IIB"}
CONFIDENT = 0.8  # below this a label is drawn as uncertain
COIN_FLIP = 0.6  # below this the label is no better than guessing between two regimes
PAIR_KEYS = ["dense_seed", "seed_a", "seed_b"]


def confidence_level(p: float) -> str:
    """Words for a label's probability of being right."""
    if not np.isfinite(p):
        return "unmeasured"
    if p >= CONFIDENT:
        return "confident"
    return "uncertain" if p >= COIN_FLIP else "coin flip"


class _Design:
    """The observations as arrays, indexed once: cell of each row, and the resampling groups."""

    def __init__(self, observations: pd.DataFrame, cka_metric: str):
        missing = [c for c in CELL + PAIR_KEYS + ["mc", cka_metric] if c not in observations]
        if missing:
            raise ValueError(f"metrics table lacks columns {missing} needed by the bootstrap")
        obs = observations.sort_values(CELL + PAIR_KEYS).reset_index(drop=True)
        grouped = obs.groupby(CELL, sort=True)
        self.cells = grouped.size().rename("n").reset_index()
        self.cell_of = grouped.ngroup().to_numpy()
        self.mc = obs["mc"].to_numpy(float)
        self.cka = obs[cka_metric].to_numpy(float)
        self.cka_metric = cka_metric
        self.dense_seeds = sorted(obs["dense_seed"].unique())
        dense_index = {s: i for i, s in enumerate(self.dense_seeds)}
        self.groups = []  # (rows, dense index, retrain seeds, row seed positions a, b)
        for (_, dense), rows in obs.groupby([self.cell_of, "dense_seed"], sort=True):
            seeds = sorted(set(rows["seed_a"]) | set(rows["seed_b"]))
            position = {s: i for i, s in enumerate(seeds)}
            a = rows["seed_a"].map(position).to_numpy()
            b = rows["seed_b"].map(position).to_numpy()
            self.groups.append((rows.index.to_numpy(), dense_index[dense], len(seeds), a, b))
        units = pd.DataFrame(
            [(self.cell_of[g[0][0]], len(g[0])) for g in self.groups], columns=["cell", "pairs"]
        )
        per_cell = units.groupby("cell").agg(dense=("pairs", "size"), pairs=("pairs", "max"))
        # resampling changes nothing without two dense seeds or two pairs in one dense seed
        self.measured = ((per_cell["dense"] >= 2) | (per_cell["pairs"] >= 2)).to_numpy()

    def weights(self, rng: np.random.Generator) -> np.ndarray:
        """Row weights of one resample (see the module docstring)."""
        dense = np.bincount(rng.integers(0, len(self.dense_seeds), len(self.dense_seeds)),
                            minlength=len(self.dense_seeds))  # fmt: skip
        w = np.zeros(len(self.mc))
        for rows, d, k, a, b in self.groups:
            if dense[d] == 0:
                continue
            counts = np.ones(k)
            if k > 2:
                while True:
                    counts = np.bincount(rng.integers(0, k, k), minlength=k)
                    if (counts > 0).sum() >= 2:
                        break
            w[rows] = dense[d] * counts[a] * counts[b]
        return w

    def table(self, w: np.ndarray) -> pd.DataFrame:
        """The cells table of one resample: weighted means, mc spread, the original n."""
        total = np.bincount(self.cell_of, weights=w, minlength=len(self.cells))
        empty = total == 0  # a cell whose dense seeds were all left out keeps its own rows
        if empty.any():
            w = np.where(empty[self.cell_of], 1.0, w)
            total = np.bincount(self.cell_of, weights=w, minlength=len(self.cells))
        out = self.cells.copy()
        mc = np.bincount(self.cell_of, weights=w * self.mc, minlength=len(out)) / total
        out["mc_mean"] = mc
        out[f"{self.cka_metric}_mean"] = (
            np.bincount(self.cell_of, weights=w * self.cka, minlength=len(out)) / total
        )
        square = np.bincount(self.cell_of, weights=w * (self.mc - mc[self.cell_of]) ** 2, minlength=len(out))
        with np.errstate(invalid="ignore", divide="ignore"):
            out["mc_std"] = np.where(total > 1, np.sqrt(square / (total - 1)), np.nan)
        return out


def _pick_positions(cells: pd.DataFrame) -> list[np.ndarray]:
    """Per density (ascending): the cells' row positions, coldest temperature first."""
    rank = {t: i for i, t in enumerate(temperature_order(cells))}
    order = []
    for density in sorted(cells["density"].unique()):
        column = cells.index[cells["density"] == density].to_numpy()
        order.append(column[np.argsort([rank[t] for t in cells.loc[column, "temperature"]], kind="stable")])
    return order


def _rule_picks(mc: np.ndarray, cka: np.ndarray, eps: float, order: list[np.ndarray]) -> np.ndarray:
    """regimes.rule_pick on every density column at once (returns row positions)."""
    picks = []
    for rows in order:
        connected = rows[mc[rows] >= -eps]
        if len(connected):
            picks.append(connected[np.argmax(cka[connected])])
        else:
            picks.append(rows[np.argmax(mc[rows])])
    return np.array(picks)


def bootstrap(observations: pd.DataFrame, cfg: RegimeConfig, resamples: int, seed: int = BOOTSTRAP_SEED):
    """Per cell the share of ``resamples`` giving each regime (NaN where unmeasured), and per
    density the temperature the selection rule picks in each resample.

    Returns (cells table with p_I, p_IIA, p_IIB; picks [resample, density] as temperatures).
    """
    design = _Design(observations, cfg.cka_metric)
    rng = np.random.default_rng(seed)
    counts = np.zeros((len(design.cells), len(REGIMES)))
    order = _pick_positions(design.cells)
    temps = design.cells["temperature"].to_numpy()
    picks = np.empty((resamples, len(order)))
    for i in range(resamples):
        table = design.table(design.weights(rng))
        thresholds = choose_thresholds(table, cfg)
        regime = classify(table, thresholds.eps, thresholds.cka_cut, cfg.cka_metric).to_numpy()
        for j, name in enumerate(REGIMES):
            counts[:, j] += regime == name
        picks[i] = temps[_rule_picks(table["mc_mean"].to_numpy(), table[f"{cfg.cka_metric}_mean"].to_numpy(),
                                     thresholds.eps, order)]  # fmt: skip
    out = design.cells[CELL].copy()
    for j, name in enumerate(REGIMES):
        out[P_COLUMNS[name]] = np.where(design.measured, counts[:, j] / max(resamples, 1), np.nan)
    return out, pd.DataFrame(picks, columns=sorted(design.cells["density"].unique()))


def add_confidence(
    result: dict, observations: pd.DataFrame | None, cfg: RegimeConfig, resamples: int
) -> dict:
    """Add the bootstrap's probabilities to an :func:`threeregime.analysis.advice.analyse` result: the
    regimes, advice, per-cell advice and selection tables, and the summary."""
    regimes = result["regimes"]
    if resamples > 0 and observations is not None:
        probabilities, picks = bootstrap(observations, cfg, resamples)
        regimes = regimes.drop(columns=[c for c in P_COLUMNS.values() if c in regimes])
        regimes = regimes.merge(probabilities, on=CELL, how="left", validate="one_to_one")
        label = regimes["regime"].map(P_COLUMNS)
        p = regimes[list(P_COLUMNS.values())].to_numpy()
        regimes["p_label"] = p[np.arange(len(regimes)), [list(P_COLUMNS.values()).index(c) for c in label]]
        regimes["confidence"] = regimes["p_label"].map(confidence_level)
    else:
        for column in (*P_COLUMNS.values(), "p_label"):
            regimes[column] = np.nan
        regimes["confidence"] = "off"
        picks = None
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
    if picks is not None:
        same = [float((picks[d] == t).mean()) for d, t in keys]
        measured = np.isfinite(selection["rule_p_label"].to_numpy())
        selection["rule_pick_p"] = np.where(measured, same, np.nan)
    result["summary"]["confidence"] = confidence_summary(regimes, resamples)
    return result


def advice_note(regime: str, p: float, confidence: str) -> str:
    """One phrase saying how far the advice can be trusted."""
    if confidence == "off":
        return "confidence not computed (regimes.bootstrap = 0)"
    if confidence == "unmeasured":
        return "confidence unmeasured: one observation per cell (add dense or retrain seeds)"
    share = f"regime {regime} in {p:.0%} of bootstrap resamples"
    if confidence == "coin flip":
        return f"coin flip: {share}; this advice is close to a guess"
    if confidence == "uncertain":
        return f"uncertain: {share}"
    return f"confident: {share}"


def confidence_summary(regimes: pd.DataFrame, resamples: int) -> dict:
    """Counts of each confidence level and the mean probability of the measured labels."""
    p = regimes["p_label"].dropna()
    return {
        "resamples": int(resamples),
        "seed": BOOTSTRAP_SEED,
        "resampled": "dense seeds (whole grid), then retrain seeds within each cell and dense seed",
        "levels": {k: int(v) for k, v in regimes["confidence"].value_counts().sort_index().items()},
        "mean_p_label": float(p.mean()) if len(p) else None,
        "cells_below_confident": int((p < CONFIDENT).sum()),
    }
