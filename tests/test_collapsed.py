"""A cell whose retrained models fell to chance (test error at 1 - 1/classes, or no mc / CKA)
is labelled ``collapsed``: left out of the thresholds, the bootstrap, the advice and the model
selection, drawn grey in the regime map, and never a crash downstream."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from threeregime.analysis.cells import aggregate_cells
from threeregime.analysis.regimes import choose_thresholds
from threeregime.config.settings import PlotConfig, RegimeConfig
from threeregime.stages.classify import classify_run
from threeregime.views.plot import boundary_segments, phase_figure, regime_figure

CFG = RegimeConfig(eps_mode="noise", eps=0.01, cka_cut_mode="split", reference_temperature=10.0, bootstrap=50)
# (temperature, density) -> (mc, CKA, test error); epochs 10 is the coldest of this grid here
GRID = {
    (10, 0.05): (0.0, np.nan, 0.90),  # collapsed: constant outputs, no CKA, chance test error
    (20, 0.05): (-0.30, 0.93, 0.40),
    (40, 0.05): (-0.20, 0.94, 0.35),
    (10, 0.4): (0.0, 0.97, 0.10),
    (20, 0.4): (0.0, 0.91, 0.12),
    (40, 0.4): (0.0, 0.85, 0.15),
}


def _observations(grid: dict = GRID) -> pd.DataFrame:
    """Two dense seeds x one retrain pair per cell, seed to seed noise of 0.005."""
    rng = np.random.default_rng(0)
    rows = []
    for (t, d), (mc, cka, err) in grid.items():
        for seed in (1, 2):
            rows.append(
                {
                    "knob": "epochs", "temperature": t, "density": d, "dense_seed": seed,
                    "seed_a": 1, "seed_b": 2, "mc": mc + rng.normal(0, 0.005),
                    "cka_softmax": cka + rng.normal(0, 0.005), "test_error": err + rng.normal(0, 0.001),
                    "train_loss": err / 2, "chance_error": 0.9,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_a_collapsed_cell_is_labelled_and_kept_out_of_every_decision():
    observations = _observations()
    cells = aggregate_cells(observations)
    assert cells.loc[cells["collapsed"], ["temperature", "density"]].values.tolist() == [[10, 0.05]]
    result = classify_run(cells, observations, CFG)  # used to crash: idxmax over an all-NaN CKA
    regimes = result["regimes"].set_index(["temperature", "density"])
    assert len(regimes) == 6
    assert regimes.loc[(10, 0.05), "regime"] == regimes.loc[(10, 0.05), "confidence"] == "collapsed"
    assert np.isnan(regimes.loc[(10, 0.05), "p_label"]) and np.isnan(regimes.loc[(10, 0.05), "stability"])
    assert set(regimes.drop(index=(10, 0.05))["regime"]) <= {"I", "II-A", "II-B"}
    assert regimes.drop(index=(10, 0.05))["p_label"].notna().all()
    # the thresholds are those of the other five cells
    measured = choose_thresholds(cells[~cells["collapsed"]], CFG)
    assert (result["thresholds"].eps, result["thresholds"].cka_cut) == (measured.eps, measured.cka_cut)
    # no pick and no advice from it
    selection = result["selection"].set_index("density")
    assert selection.loc[0.05, "rule_temperature"] in (20.0, 40.0)
    advice = result["advice"].set_index("density")
    assert advice.loc[0.05, ["advice", "confidence", "checkable"]].tolist() == ["none", "collapsed", False]
    assert advice.loc[0.05, "advice_note"].startswith("collapsed")
    assert advice.loc[0.05, "best_temperature"] == 40.0
    assert result["summary"]["regime_counts"]["collapsed"] == 1
    assert result["summary"]["collapsed_cells"] == [{"temperature": 10.0, "density": 0.05}]
    # a cells table read back from CSV keeps the label
    assert classify_run(cells.astype({"collapsed": str}).astype({"collapsed": bool}), None, CFG)


def test_chance_test_error_alone_marks_a_cell_collapsed():
    grid = dict(GRID) | {(10, 0.05): (0.0, 0.99, 0.89)}  # finite mc and CKA, error 0.89 of chance 0.9
    cells = aggregate_cells(_observations(grid))
    assert cells["collapsed"].sum() == 1
    near = dict(GRID) | {(10, 0.05): (0.0, 0.99, 0.85)}  # bad, not chance: classified
    assert not aggregate_cells(_observations(near))["collapsed"].any()


def test_a_column_of_collapsed_cells_and_a_grid_of_them_survive():
    grid = {key: (0.0, np.nan, 0.9) if key[1] == 0.05 else value for key, value in GRID.items()}
    result = classify_run(aggregate_cells(_observations(grid)), _observations(grid), CFG)
    selection = result["selection"].set_index("density")
    assert (
        np.isnan(selection.loc[0.05, "rule_temperature"])
        and selection.loc[0.05, "rule_regime"] == "collapsed"
    )
    assert selection.loc[0.4, "rule_temperature"] == 10.0
    everything = {key: (0.0, np.nan, 0.9) for key in GRID}
    result = classify_run(aggregate_cells(_observations(everything)), _observations(everything), CFG)
    assert set(result["regimes"]["regime"]) == {"collapsed"}
    assert result["summary"]["robustness"]["mean_stability"] is None


def test_the_regime_map_draws_collapsed_cells_grey_without_boundaries():
    observations = _observations()
    result = classify_run(aggregate_cells(observations), observations, CFG)
    regimes = result["regimes"]
    figure = regime_figure(regimes, PlotConfig(), result["selection"])
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "collapsed" in texts
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert any(label.startswith("collapsed") for label in labels)
    phase_figure(regimes, PlotConfig())
    grid = np.array([["collapsed", "I"], ["II-B", "II-A"]])  # cell (r, c) centred at x = c, y = r
    # the edges of I | II-A and II-B | II-A are boundaries; none of the collapsed cell's are
    assert sorted(boundary_segments(grid)) == [("I", (0.5, 1.5), (0.5, 0.5)), ("II", (0.5, 0.5), (0.5, 1.5))]


@pytest.mark.parametrize("column", ["mc_mean", "cka_softmax_mean"])
def test_a_cells_table_without_the_column_derives_it(column):
    from threeregime.analysis.cells import collapsed_cells

    cells = aggregate_cells(_observations()).drop(columns="collapsed")
    cells.loc[3, column] = np.nan
    assert collapsed_cells(cells).tolist() == [i in (0, 3) for i in range(6)]
