"""Regime boundaries along density, with intervals from the draws: planted rows with known
crossings, orientation, boundaries outside the grid, and ties in a draw."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from threeregime.analysis.boundaries import boundaries
from threeregime.analysis.regimes import REGIMES
from threeregime.analysis.uncertainty import Draws

DENSITIES = [0.05, 0.1, 0.2, 0.4]
EPS, CUT = 0.02, 0.95


def _regimes(rows: dict) -> pd.DataFrame:
    """rows: temperature -> [(regime, mc, cka)] along DENSITIES."""
    out = []
    for t, cells in rows.items():
        for d, (regime, mc, cka) in zip(DENSITIES, cells, strict=True):
            out.append({"knob": "epochs", "temperature": t, "density": d, "regime": regime, "mc_mean": mc,
                        "cka_softmax_mean": cka, "eps": EPS, "cka_cut": CUT})  # fmt: skip
    return pd.DataFrame(out)


def _draws(regimes: pd.DataFrame, labels: list[list[str]]) -> Draws:
    """Draws whose means are the table's and whose labels are given per draw (cells in the
    table's order)."""
    count, cells = len(labels), regimes[["knob", "temperature", "density"]].reset_index(drop=True)
    mc = np.tile(regimes["mc_mean"].to_numpy(float), (count, 1))
    cka = np.tile(regimes["cka_softmax_mean"].to_numpy(float), (count, 1))
    codes = np.array([[REGIMES.index(r) for r in draw] for draw in labels])
    return Draws("test", cells, mc, cka, np.full(count, EPS), np.full(count, CUT), codes,
                 np.ones(len(cells), dtype=bool))  # fmt: skip


ROW = [("I", -0.1, 0.9), ("I", -0.05, 0.93), ("II-A", 0.0, 0.94), ("II-B", 0.0, 0.99)]


def _row(table: pd.DataFrame, kind: str) -> pd.Series:
    return table[table["boundary"] == kind].iloc[0]


def test_the_point_boundary_is_where_the_rule_margin_crosses_zero_in_log_density():
    table = boundaries(_regimes({20: ROW}), None, "cka_softmax", 0.9)
    first = _row(table, "I|II")
    # margin mc + eps: -0.03 at 0.1, +0.02 at 0.2 -> 3/5 of the way in log density
    assert first["density"] == pytest.approx(0.1 * 2**0.6)
    assert (first["low_side"], first["high_side"], first["outside"]) == ("I", "II", "")
    second = _row(table, "II-A|II-B")
    # margin CKA - cut: -0.01 at 0.2, +0.04 at 0.4 -> 1/5 of the way
    assert second["density"] == pytest.approx(0.2 * 2**0.2)
    assert (second["low_side"], second["high_side"]) == ("II-A", "II-B")
    assert math.isnan(first["low"]) and math.isnan(first["p_inside"])  # no draws, no interval


def test_orientation_comes_from_the_row_and_whole_rows_lie_outside():
    falling = [("II-B", 0.0, 0.99), ("II-B", 0.0, 0.99), ("II-A", 0.0, 0.9), ("II-A", 0.0, 0.9)]
    table = boundaries(_regimes({5: falling, 10: [("II-B", 0.0, 0.99)] * 4}), None, "cka_softmax", 0.9)
    flipped = table[(table["temperature"] == 5) & (table["boundary"] == "II-A|II-B")].iloc[0]
    assert (flipped["low_side"], flipped["high_side"]) == ("II-B", "II-A")
    assert flipped["density"] == pytest.approx(0.1 * 2 ** (4 / 9))  # CKA - cut: +0.04, then -0.05
    whole = table[table["temperature"] == 10].set_index("boundary")
    assert whole.loc["I|II", "outside"] == "below" and math.isnan(whole.loc["I|II", "density"])
    assert whole.loc["II-A|II-B", "outside"] == "below"


def test_the_interval_is_the_central_share_of_the_draws_boundaries():
    regimes = _regimes({20: ROW})
    point = [r for r, _, _ in ROW]
    moved = ["I", "I", "I", "II-B"]  # the boundary one cell up: between 0.2 and 0.4
    draws = _draws(regimes, [point] * 50 + [moved] * 50)
    first = _row(boundaries(regimes, draws, "cka_softmax", 0.9), "I|II")
    assert first["low"] == pytest.approx(0.1 * 2**0.6)
    # in the moved draws the margins (0.02 at 0.2 and 0.4) do not cross: the geometric midpoint
    assert first["high"] == pytest.approx(math.sqrt(0.2 * 0.4))
    assert first["p_inside"] == 1.0 and first["interval"] == 0.9


def test_a_draw_with_equally_good_steps_takes_the_one_nearest_the_point():
    """One stray II at the lowest density fits a step below the grid and one above 0.1 equally
    badly; the draw keeps the boundary where the point estimate has it, not below the grid."""
    regimes = _regimes({20: ROW})
    stray = ["II-B", "I", "II-A", "II-B"]
    draws = _draws(regimes, [stray] * 10)
    first = _row(boundaries(regimes, draws, "cka_softmax", 0.9), "I|II")
    assert first["low"] == pytest.approx(first["density"]) and first["p_inside"] == 1.0


def test_collapsed_and_inferred_cells_are_left_out():
    regimes = _regimes({20: ROW})
    regimes.loc[0, "regime"] = "collapsed"
    regimes.loc[3, "mc_mean"] = np.nan  # an inferred cell has no means
    table = boundaries(regimes, None, "cka_softmax", 0.9)
    assert _row(table, "I|II")["density"] == pytest.approx(0.1 * 2**0.6)
    assert _row(table, "II-A|II-B")["outside"] == "no boundary"  # one connected cell left
