"""Regime rules, thresholds, robustness and advice on hand-made tables with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from threeregime.config import RegimeConfig
from threeregime.regimes import (
    aggregate_cells,
    classify,
    classify_cells,
    knob_action,
    model_selection,
    noise_eps,
    otsu_cut,
    robustness,
    temperature_advice,
)


def _cells(rows):
    """rows: (temperature, density, mc, cka, test_error) -> a cells table like collect writes."""
    frame = pd.DataFrame(
        rows, columns=["temperature", "density", "mc_mean", "cka_softmax_mean", "test_error_mean"]
    )
    frame["knob"] = "epochs"
    frame["n"] = 1
    frame["mc_std"] = np.nan
    return frame


# epochs 10 (hottest) .. 40 (coldest); the paper's picture: barrier at low density + many epochs
TABLE = _cells(
    [
        (10, 0.05, -0.01, 0.80, 0.30),
        (10, 0.40, 0.00, 0.85, 0.12),
        (20, 0.05, -0.15, 0.90, 0.25),
        (20, 0.40, 0.00, 0.95, 0.10),
        (40, 0.05, -0.30, 0.92, 0.35),
        (40, 0.40, 0.01, 0.97, 0.08),
    ]
)


def test_rules_on_hand_made_table():
    regime = classify(TABLE, eps=0.05, cka_cut=0.9, cka_metric="cka_softmax")
    assert list(regime) == ["II-A", "II-A", "I", "II-B", "I", "II-B"]
    cfg = RegimeConfig(eps_mode="fixed", eps=0.05, cka_cut_mode="fixed", cka_cut=0.9)
    classified, thresholds = classify_cells(TABLE, cfg)
    assert list(classified["regime"]) == list(regime)
    assert thresholds.eps == 0.05 and thresholds.cka_cut == 0.9


def test_otsu_split_separates_two_groups():
    assert otsu_cut(np.array([0.80, 0.82, 0.81, 0.95, 0.97])) == pytest.approx((0.82 + 0.95) / 2)
    assert otsu_cut(np.array([0.9, 0.9])) is None
    cfg = RegimeConfig(eps_mode="fixed", eps=0.05, cka_cut_mode="split")
    classified, thresholds = classify_cells(TABLE, cfg)
    # connected cells' CKA: 0.80, 0.85, 0.95, 0.97 -> cut between 0.85 and 0.95
    assert thresholds.cka_cut == pytest.approx(0.90)
    assert "split" in thresholds.cka_cut_source


def test_noise_eps_from_replicates():
    cells = TABLE.copy()
    cells["n"] = 4
    cells["mc_std"] = 0.02
    assert noise_eps(cells, z=2.0) == pytest.approx(2 * 0.02 / 2)
    assert noise_eps(TABLE, z=2.0) is None  # one observation per cell: no noise estimate
    cells["mc_std"] = 0.2
    _, thresholds = classify_cells(cells, RegimeConfig(eps_mode="noise", eps=0.01, eps_z=2.0))
    assert thresholds.eps == pytest.approx(0.2) and thresholds.eps_source.startswith("noise")
    _, floor = classify_cells(TABLE, RegimeConfig(eps_mode="noise", eps=0.01))
    assert floor.eps == 0.01 and "no replicate" in floor.eps_source


def test_aggregate_means_std_and_normalized_error():
    obs = pd.DataFrame(
        {
            "knob": "epochs",
            "temperature": [10, 10, 20, 20],
            "density": [0.1, 0.1, 0.1, 0.1],
            "test_error": [0.2, 0.4, 0.1, 0.1],
            "mc": [0.0, -0.2, 0.0, 0.0],
        }
    )
    cells = aggregate_cells(obs)
    hot = cells[cells["temperature"] == 10].iloc[0]
    assert hot["test_error_mean"] == pytest.approx(0.3) and hot["n"] == 2
    assert hot["mc_std"] == pytest.approx(np.std([0.0, -0.2], ddof=1))
    assert hot["normalized_test_error"] == pytest.approx(0.2)
    assert cells.loc[cells["temperature"] == 20, "normalized_test_error"].iloc[0] == 0


def test_robustness_counts_changed_cells():
    cfg = RegimeConfig(
        eps_mode="fixed", eps=0.05, cka_cut=0.9, eps_range=(0.05, 0.2), cka_cut_range=(0.9, 0.96)
    )
    classified, thresholds = classify_cells(TABLE, cfg)
    table = robustness(TABLE, cfg, thresholds).set_index(["eps", "cka_cut"])
    assert table.loc[(0.05, 0.9), "cells_changed"] == 0
    assert table.loc[(0.2, 0.9), "cells_changed"] == 1  # (20, 0.05) mc -0.15 becomes connected
    assert table.loc[(0.05, 0.96), "cells_changed"] == 1  # (20, 0.40) CKA 0.95 drops to II-A
    assert table.loc[(0.2, 0.96), "n_I"] == 1


def test_advice_and_model_selection():
    classified, _ = classify_cells(TABLE, RegimeConfig(eps_mode="fixed", eps=0.05, cka_cut=0.9))
    advice = temperature_advice(classified).set_index(["density", "temperature"])
    # density 0.05, 40 epochs: Regime I -> raise temperature (fewer epochs); 20 epochs is better
    assert advice.loc[(0.05, 40), "advice"] == "raise"
    assert advice.loc[(0.05, 40), "advice_knob"] == "fewer epochs"
    assert advice.loc[(0.05, 40), "observed_best_move"] == "raise" and advice.loc[(0.05, 40), "agree"]
    # density 0.4, 10 epochs: II-A -> lower temperature (more epochs), and 20 epochs is better
    assert advice.loc[(0.4, 10), "advice"] == "lower" and advice.loc[(0.4, 10), "agree"]
    selection = model_selection(classified, eps=0.05, cka_metric="cka_softmax").set_index("density")
    # 0.05: connected cell is only 10 epochs -> rank 2 of 3 (20 epochs is best)
    assert selection.loc[0.05, "rule_temperature"] == 10 and selection.loc[0.05, "rule_rank"] == 2
    assert selection.loc[0.4, "rule_temperature"] == 40 and selection.loc[0.4, "rule_rank"] == 1
    assert selection.loc[0.05, "regret"] == pytest.approx(0.05)


def test_knob_words():
    assert knob_action("epochs", "raise") == "fewer epochs"
    assert knob_action("batch_size", "lower") == "larger batch"
    assert knob_action("sam_rho", "raise") == "larger rho"
    assert knob_action("sam_rho", "keep") == "keep"
