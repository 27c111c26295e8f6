"""Where the regime changes along density, at each temperature, with an interval: the number a
paper quotes ("Regime I below density 0.08 [0.06, 0.11] at 160 epochs").

Two boundaries per temperature row: ``I|II`` (between the poorly connected cells and the others)
and ``II-A|II-B`` (among the connected cells). Each is the density that best cuts the row's
labels in two along density: one class on the low-density side, the other on the high side, at
the cut with the fewest cells on the wrong side (the orientation, which class lies low, is the
one that fits the row's own labels best). Between the two cells around the cut the density is
refined by interpolating the rule's margin linearly in log density (mc + eps for I|II, CKA - cut
for II-A|II-B) to where it crosses zero; where the margins do not cross, the geometric midpoint.

The point estimate comes from the cell means and the thresholds used; the interval from the
same boundary in every draw of the uncertainty model (threeregime.analysis.uncertainty): its
central ``regimes.interval`` share. A boundary can lie outside the grid (the whole row in one
class): then its density is empty and ``outside`` says on which side, and ``p_inside`` is the
share of draws with the boundary inside the grid. An interval end beyond the grid is empty too.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from threeregime.analysis.regimes import REGIMES
from threeregime.analysis.uncertainty import Draws

REGIME_I, REGIME_IIA, REGIME_IIB = (REGIMES.index(r) for r in REGIMES)
BOUNDARIES = {"I|II": ("I", "II"), "II-A|II-B": ("II-A", "II-B")}
COLUMNS = ["knob", "temperature", "boundary", "low_side", "high_side", "density", "outside", "low", "high"]
COLUMNS += ["p_inside", "interval"]


def _cuts(upper: np.ndarray, rising: bool) -> np.ndarray:
    """Every index b of a best step (cells before b one class, from b on the other, the fewest
    cells on the wrong side), ascending: ``upper`` marks the cells of the class that lies high
    when ``rising``."""
    k = len(upper)
    ups = np.concatenate([[0], np.cumsum(upper)])  # upper cells among the first b
    b = np.arange(k + 1)
    if rising:
        wrong = ups + (k - b) - (ups[-1] - ups)  # upper below b, lower at or above b
    else:
        wrong = (b - ups) + (ups[-1] - ups)
    return np.flatnonzero(wrong == wrong.min())


def _log_position(b: int, log_d: np.ndarray, margin: np.ndarray, rising: bool) -> float:
    """Log density of a cut between cells b-1 and b: where the margin crosses zero, linearly in
    log density, else their midpoint; -inf / +inf for a cut below / above the grid."""
    if b == 0:
        return -math.inf
    if b == len(log_d):
        return math.inf
    m0, m1 = (margin[b - 1], margin[b]) if rising else (-margin[b - 1], -margin[b])
    x0, x1 = log_d[b - 1], log_d[b]
    if m0 < 0 <= m1 and m1 > m0:
        return float(x0 + (x1 - x0) * (-m0) / (m1 - m0))
    return float((x0 + x1) / 2)


def _row_boundary(labels, margin, log_d, kind: str, rising=None, near: float | None = None):
    """(log density, rising) of one boundary of one row; rising None: choose the orientation.
    Equally good steps: the one nearest ``near`` (a draw: the point estimate), else the lowest."""
    if kind == "I|II":
        keep = np.ones(len(labels), dtype=bool)
        upper = labels != REGIME_I
    else:
        keep = labels != REGIME_I
        upper = labels == REGIME_IIB
    if keep.sum() < 2:
        return math.nan, rising
    upper, margin, log_d = upper[keep], margin[keep], log_d[keep]
    if rising is None:
        fits = {r: _errors(upper, r) for r in (True, False)}
        rising = fits[True] <= fits[False]
    positions = [_log_position(b, log_d, margin, rising) for b in _cuts(upper, rising)]
    if near is None or math.isnan(near):
        return positions[0], rising
    return min(positions, key=lambda x: abs(np.clip(x, -1e9, 1e9) - np.clip(near, -1e9, 1e9))), rising


def _errors(upper: np.ndarray, rising: bool) -> int:
    b = _cuts(upper, rising)[0]
    return int(upper[:b].sum() + (~upper[b:]).sum()) if rising else int((~upper[:b]).sum() + upper[b:].sum())


def _margins(mc, cka, eps, cut, kind: str) -> np.ndarray:
    return mc + eps if kind == "I|II" else cka - cut


def boundaries(regimes: pd.DataFrame, draws: Draws | None, cka_metric: str, interval: float) -> pd.DataFrame:
    """One row per temperature and boundary (module docstring); measured cells with a regime only
    (an adaptive grid's inferred cells have no means, a collapsed cell has no regime)."""
    if "mc_mean" not in regimes:
        return pd.DataFrame(columns=COLUMNS)
    measured = regimes[regimes["mc_mean"].notna() & regimes["regime"].isin(REGIMES)]
    rows = []
    if measured.empty:
        return pd.DataFrame(columns=COLUMNS)
    knob = measured["knob"].iloc[0]
    eps, cut = float(measured["eps"].iloc[0]), float(measured["cka_cut"].iloc[0])
    index = {}
    if draws is not None:
        cells = draws.cells.reset_index(drop=True)
        index = {(t, d): i for i, (t, d) in enumerate(zip(cells["temperature"], cells["density"]))}
    for temperature, row in measured.sort_values("density").groupby("temperature", sort=True):
        log_d = np.log(row["density"].to_numpy(float))
        labels = row["regime"].map(REGIMES.index).to_numpy()
        mc, cka = row["mc_mean"].to_numpy(float), row[f"{cka_metric}_mean"].to_numpy(float)
        columns = [index.get((temperature, d)) for d in row["density"]]
        for kind, (low_class, high_class) in BOUNDARIES.items():
            point, rising = _row_boundary(labels, _margins(mc, cka, eps, cut, kind), log_d, kind)
            sides = (low_class, high_class) if rising in (True, None) else (high_class, low_class)
            found = []
            if draws is not None and None not in columns and rising is not None:
                for r in range(len(draws.eps)):
                    margin = _margins(
                        draws.mc[r, columns], draws.cka[r, columns], draws.eps[r], draws.cut[r], kind
                    )
                    labels_r = draws.labels[r, columns]
                    position, _ = _row_boundary(labels_r, margin, log_d, kind, rising, point)
                    found.append(position)
            rows.append(_row(knob, temperature, kind, sides, point, np.array(found), interval))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(knob, temperature, kind, sides, point, found: np.ndarray, interval: float) -> dict:
    """A boundary's table row from its point log density and its draws'."""
    found = found[~np.isnan(found)]
    low = high = math.nan
    p_inside = math.nan
    if len(found):
        tail = (1 - interval) / 2
        low_log = float(np.quantile(found, tail, method="lower"))
        high_log = float(np.quantile(found, 1 - tail, method="higher"))
        low, high = (math.exp(x) if math.isfinite(x) else math.nan for x in (low_log, high_log))
        p_inside = float(np.isfinite(found).mean())
    outside = (
        "" if math.isfinite(point) else {-math.inf: "below", math.inf: "above"}.get(point, "no boundary")
    )
    return {
        "knob": knob,
        "temperature": temperature,
        "boundary": kind,
        "low_side": sides[0],
        "high_side": sides[1],
        "density": math.exp(point) if math.isfinite(point) else math.nan,
        "outside": outside,
        "low": low,
        "high": high,
        "p_inside": p_inside,
        "interval": interval,
    }
