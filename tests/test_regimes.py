"""Regime rules, thresholds, robustness, advice and model selection on tables with known answers,
and on the demo's real output when it exists."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from threeregime.analysis.advice import analyse, cell_advice, knob_action, model_selection, temperature_advice
from threeregime.analysis.cells import aggregate_cells
from threeregime.analysis.regimes import (
    cell_stability,
    choose_thresholds,
    classify,
    classify_cells,
    noise_eps,
    otsu_split,
    robustness,
    robustness_grid,
    ticket_criteria,
)
from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError, RegimeConfig
from threeregime.config.specs import regime_config_from_spec

from .conftest import REPO


def _cells(rows, knob="epochs"):
    """rows: (temperature, density, mc, cka, test_error) -> a cells table like collect writes."""
    frame = pd.DataFrame(
        rows, columns=["temperature", "density", "mc_mean", "cka_softmax_mean", "test_error_mean"]
    )
    frame["knob"] = knob
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
FIXED = RegimeConfig(eps_mode="fixed", eps=0.05, cka_cut_mode="fixed", cka_cut=0.9)


def test_rules_on_hand_made_table():
    regime = classify(TABLE, eps=0.05, cka_cut=0.9, cka_metric="cka_softmax")
    assert list(regime) == ["II-A", "II-A", "I", "II-B", "I", "II-B"]
    classified, thresholds = classify_cells(TABLE, FIXED)
    assert list(classified["regime"]) == list(regime)
    assert thresholds.eps == 0.05 and thresholds.cka_cut == 0.9
    assert thresholds.eps_source.startswith("fixed") and thresholds.cka_cut_source.startswith("fixed")
    # boundaries are inclusive on the connected / similar side
    edge = _cells([(10, 0.1, -0.05, 0.9, 0.1)])
    assert classify(edge, eps=0.05, cka_cut=0.9, cka_metric="cka_softmax").iloc[0] == "II-B"


def test_cka_metric_choice():
    cells = TABLE.assign(cka_logits_mean=[0.99, 0.99, 0.99, 0.5, 0.99, 0.5])
    regime = classify(cells, eps=0.05, cka_cut=0.9, cka_metric="cka_logits")
    assert list(regime) == ["II-B", "II-B", "I", "II-A", "I", "II-A"]


def test_otsu_split_separates_two_groups():
    values = np.array([0.80, 0.82, 0.81, 0.95, 0.97])
    cut, separation = otsu_split(values)
    assert cut == pytest.approx((0.82 + 0.95) / 2)
    low, high = values[:3], values[3:]
    between = 3 * 2 * (low.mean() - high.mean()) ** 2 / 25
    assert separation == pytest.approx(between / values.var())
    assert separation > 0.95  # two tight clusters
    assert otsu_split(np.array([0.9, 0.9])) is None and otsu_split([0.5]) is None
    # evenly spread values: every split is weaker; ties go to the lowest cut
    _, flat = otsu_split(np.array([0.1, 0.2, 0.3, 0.4]))
    assert flat < 0.8
    assert otsu_split(np.array([0.0, 1.0, 2.0, 3.0]))[0] == pytest.approx(1.5)
    assert otsu_split(np.array([0.0, 0.0, 1.0, 1.0]))[0] == pytest.approx(0.5)
    cfg = RegimeConfig(eps_mode="fixed", eps=0.05, cka_cut_mode="split", cka_split_min_cells=4)
    classified, thresholds = classify_cells(TABLE, cfg)
    # connected cells' CKA: 0.80, 0.85, 0.95, 0.97 -> cut between 0.85 and 0.95
    assert thresholds.cka_cut == pytest.approx(0.90)
    assert "split" in thresholds.cka_cut_source and thresholds.cka_split_separation > 0.8


def test_split_falls_back_to_the_fixed_cut():
    cells = _cells([(10, 0.1, 0.0, 0.95, 0.1), (20, 0.1, -0.5, 0.5, 0.2)])
    cfg = RegimeConfig(eps_mode="fixed", cka_cut_mode="split", cka_cut=0.7, cka_split_min_cells=1)
    thresholds = choose_thresholds(cells, cfg)
    assert thresholds.cka_cut == 0.7 and "fewer than two" in thresholds.cka_cut_source
    assert thresholds.cka_split_separation is None


def test_a_split_of_two_cells_falls_back_to_the_declared_cut_with_a_warning(caplog):
    """Otsu's split always finds a cut, even between two cells; on fewer connected cells than
    regimes.cka_split_min_cells it would be noise, so the declared cut is used and said so."""
    from threeregime.stages.classify import classify_run

    cells = _cells([(10, 0.1, 0.0, 0.95, 0.1), (20, 0.1, 0.0, 0.80, 0.2), (30, 0.1, -0.5, 0.5, 0.3)])
    cfg = RegimeConfig(eps_mode="fixed", cka_cut_mode="split", cka_cut=0.9, uncertainty="none")
    with caplog.at_level("WARNING", logger="threeregime"):
        result = classify_run(cells, None, cfg)
    thresholds = result["summary"]["thresholds"]
    assert thresholds["cka_cut"] == 0.9 and thresholds["cka_split_separation"] is None
    expected = "a split of 2 connected cells would be unstable (fewer than regimes.cka_split_min_cells = 5)"
    assert expected in thresholds["cka_cut_source"]
    assert [r.message for r in caplog.records] == [f"CKA cut: fixed regimes.cka_cut: {expected}"]
    assert choose_thresholds(
        cells, RegimeConfig(eps_mode="fixed", cka_cut_mode="split", cka_split_min_cells=2)
    ).cka_cut == pytest.approx(0.875)


def test_noise_eps_from_replicates():
    cells = TABLE.copy()
    cells["n"] = 4
    cells["mc_std"] = 0.02
    assert noise_eps(cells, z=2.0) == pytest.approx(2 * 0.02 / 2)
    assert noise_eps(TABLE, z=2.0) is None  # one observation per cell: no noise estimate
    cells["mc_std"] = 0.2
    _, thresholds = classify_cells(cells, RegimeConfig(eps_mode="noise", eps=0.01, eps_z=2.0))
    assert thresholds.eps == pytest.approx(0.2) and thresholds.eps_source.startswith("noise")
    assert thresholds.eps_measured == pytest.approx(0.2) and thresholds.replicates == 4
    # measured noise below the floor: the floor wins, and the measurement is still reported
    _, floored = classify_cells(cells.assign(mc_std=0.002), RegimeConfig(eps_mode="noise", eps=0.01))
    assert floored.eps == 0.01 and floored.eps_measured == pytest.approx(0.002)
    assert "larger than the measured" in floored.eps_source
    # no replicates (the demo: 1 dense seed x 1 retrain pair): honest fallback to the floor
    _, floor = classify_cells(TABLE, RegimeConfig(eps_mode="noise", eps=0.01))
    assert floor.eps == 0.01 and floor.eps_measured is None
    assert "cannot be measured" in floor.eps_source


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
    assert len(table) == 4 and table["chosen"].sum() == 1 and table.loc[(0.05, 0.9), "chosen"]
    assert table.loc[(0.05, 0.9), "cells_changed"] == 0
    assert table.loc[(0.2, 0.9), "cells_changed"] == 1  # (20, 0.05) mc -0.15 becomes connected
    assert table.loc[(0.05, 0.96), "cells_changed"] == 1  # (20, 0.40) CKA 0.95 drops to II-A
    assert table.loc[(0.2, 0.96), "cells_changed"] == 2
    assert table.loc[(0.2, 0.96), "n_I"] == 1
    # stability: (20, 0.05) keeps I in 2 of 4 settings, (20, 0.40) keeps II-B in 2 of 4, rest 4/4
    stability = dict(zip(zip(TABLE["temperature"], TABLE["density"]), classified["stability"]))
    assert stability[(20, 0.05)] == 0.5 and stability[(20, 0.4)] == 0.5
    assert all(v == 1 for k, v in stability.items() if k not in {(20, 0.05), (20, 0.4)})
    assert cell_stability(TABLE, cfg, thresholds).tolist() == classified["stability"].tolist()


def test_default_robustness_grid_scales_around_the_chosen_values():
    _, thresholds = classify_cells(TABLE, FIXED)
    eps_grid, cut_grid = robustness_grid(FIXED, thresholds)
    assert eps_grid == pytest.approx([0.025, 0.0375, 0.05, 0.075, 0.1])
    assert cut_grid == pytest.approx([0.8, 0.85, 0.9, 0.925, 0.95])


def test_advice_per_density_from_a_reference():
    classified, _ = classify_cells(TABLE, FIXED)
    # reference: 40 epochs (the coldest, a fully trained dense model)
    advice = temperature_advice(classified, reference=40).set_index("density")
    assert list(advice.index) == [0.05, 0.4]
    low = advice.loc[0.05]  # Regime I at 40 epochs -> raise temperature = fewer epochs
    assert (low["regime"], low["advice"], low["advice_knob"]) == ("I", "raise", "fewer epochs")
    assert low["next_temperature"] == 20 and low["best_temperature"] == 20
    assert low["best_move"] == "raise" and low["agree"] and low["step_improves"] and low["checkable"]
    high = advice.loc[0.4]  # II-B and already the best column entry -> keep, agreed
    assert (high["advice"], high["best_move"], high["agree"]) == ("keep", "keep", True)
    # reference 10 epochs (the hottest): II-A -> lower temperature = more epochs
    hot = temperature_advice(classified, reference=10).set_index("density")
    assert hot.loc[0.4, "advice_knob"] == "more epochs" and hot.loc[0.4, "next_temperature"] == 20
    assert hot.loc[0.4, "best_temperature"] == 40 and hot.loc[0.4, "agree"]
    assert hot.loc[0.05, "best_move"] == "lower" and hot.loc[0.05, "agree"]


def test_advice_that_leaves_the_grid_is_not_checkable_and_tolerance_makes_ties():
    cells = _cells([(10, 0.1, 0.0, 0.5, 0.20), (20, 0.1, 0.0, 0.5, 0.19)])  # II-A everywhere
    classified, _ = classify_cells(cells, FIXED)
    cold = temperature_advice(classified, reference=20).iloc[0]  # lower = more epochs: off-grid
    assert cold["advice"] == "lower" and not cold["checkable"]
    assert pd.isna(cold["agree"]) and pd.isna(cold["next_temperature"])
    hot = temperature_advice(classified, reference=10).iloc[0]
    assert hot["best_move"] == "lower" and hot["agree"]
    tied = temperature_advice(classified, reference=10, tol=0.02).iloc[0]
    assert tied["best_move"] == "keep" and not tied["agree"] and not tied["step_improves"]
    with pytest.raises(ValueError, match="reference temperature"):
        temperature_advice(classified, reference=30)


def test_cell_advice_checks_every_cell():
    classified, _ = classify_cells(TABLE, FIXED)
    advice = cell_advice(classified).set_index(["density", "temperature"])
    assert len(advice) == len(TABLE)
    # density 0.05, 40 epochs: Regime I -> raise temperature (fewer epochs); 20 epochs is better
    assert advice.loc[(0.05, 40), "advice"] == "raise" and advice.loc[(0.05, 40), "agree"]
    # density 0.4, 10 epochs: II-A -> lower temperature (more epochs), and 40 epochs is best
    assert advice.loc[(0.4, 10), "advice_knob"] == "more epochs" and advice.loc[(0.4, 10), "agree"]
    # density 0.4, 20 epochs: II-B says keep, but 40 epochs is better -> disagreement
    assert advice.loc[(0.4, 20), "advice"] == "keep" and not advice.loc[(0.4, 20), "agree"]
    # density 0.05, 10 epochs: II-A says lower (more epochs); 20 epochs is better -> agree
    assert advice.loc[(0.05, 10), "best_move"] == "lower" and advice.loc[(0.05, 10), "agree"]


def test_model_selection_with_baselines():
    classified, _ = classify_cells(TABLE.assign(train_loss_mean=[0.5, 0.1, 0.4, 0.2, 0.3, 0.3]), FIXED)
    selection = model_selection(classified, eps=0.05, cka_metric="cka_softmax", reference=40)
    selection = selection.set_index("density")
    # 0.05: the only connected cell is 10 epochs -> rank 2 of 3 (20 epochs is best)
    assert selection.loc[0.05, "rule_temperature"] == 10 and selection.loc[0.05, "rule_rank"] == 2
    assert selection.loc[0.05, "rule_regime"] == "II-A"
    assert selection.loc[0.05, "regret"] == pytest.approx(0.05)
    assert selection.loc[0.4, "rule_temperature"] == 40 and selection.loc[0.4, "rule_rank"] == 1
    assert selection.loc[0.05, "reference_rank"] == 3 and selection.loc[0.4, "reference_rank"] == 1
    assert selection.loc[0.05, "train_loss_temperature"] == 40
    assert selection.loc[0.4, "train_loss_temperature"] == 10 and selection.loc[0.4, "train_loss_rank"] == 3
    # nothing connected: the smallest barrier wins
    barrier = _cells([(10, 0.1, -0.3, 0.9, 0.2), (20, 0.1, -0.2, 0.8, 0.3)])
    picked = model_selection(classify_cells(barrier, FIXED)[0], eps=0.05, cka_metric="cka_softmax")
    assert picked.iloc[0]["rule_temperature"] == 20 and picked.iloc[0]["rule_rank"] == 2


def test_knob_words():
    assert knob_action("epochs", "raise") == "fewer epochs"
    assert knob_action("batch_size", "lower") == "larger batch"
    assert knob_action("batch_size", "raise") == "smaller batch"
    assert knob_action("sam_rho", "raise") == "larger rho"
    assert knob_action("sam_rho", "keep") == "keep"


def _synthetic_observations(knob="epochs", seed=0):
    """A 5 x 5 grid drawn like the paper's Figure 2, with 3 dense seeds x 3 retrain pairs.

    Ground truth: Regime I at density <= 0.1 and the two coldest temperatures; II-A at the two
    hottest temperatures elsewhere; II-B in between. Test error is lowest in II-B, and in each
    column lower along the direction the regime advice points to.
    """
    rng = np.random.default_rng(seed)
    temps = {"epochs": [160, 120, 80, 40, 20], "batch_size": [512, 256, 128, 64, 32]}[knob]
    densities = [0.05, 0.1, 0.2, 0.4, 0.8]
    truth, rows = {}, []
    for i, t in enumerate(temps):  # i = 0 coldest
        for d in densities:
            if d <= 0.1 and i <= 1:
                regime, mc, cka, err = "I", -0.3, 0.93, 0.30 - 0.05 * i
            elif i >= 3:
                regime, mc, cka, err = "II-A", 0.0, 0.90, 0.20 + 0.03 * (i - 3)
            else:
                regime, mc, cka, err = "II-B", 0.0, 0.98, 0.15 + 0.01 * abs(i - 2)
            truth[(t, d)] = regime
            for seed_ in range(3):
                for pair in range(3):
                    rows.append(
                        {
                            "knob": knob,
                            "temperature": t,
                            "density": d,
                            "dense_seed": seed_,
                            "pair": pair,
                            "mc": mc + rng.normal(0, 0.01),
                            "cka_softmax": cka + rng.normal(0, 0.003),
                            "test_error": err + rng.normal(0, 0.001),
                            "train_loss": 0.1 + rng.normal(0, 0.01),
                        }
                    )
    return pd.DataFrame(rows), truth


@pytest.mark.parametrize("knob", ["epochs", "batch_size"])
def test_synthetic_grid_with_noise_is_recovered(knob):
    observations, truth = _synthetic_observations(knob)
    cells = aggregate_cells(observations)
    assert (cells["n"] == 9).all()
    coldest = max(t for t, _ in truth)
    cfg = RegimeConfig(
        eps_mode="noise", eps=0.001, eps_z=2.0, cka_cut_mode="split", reference_temperature=coldest,
        eps_range=(0.01, 0.05, 0.1), cka_cut_range=(0.92, 0.94, 0.96),
    )  # fmt: skip
    result = analyse(cells, cfg)
    regimes, thresholds = result["regimes"], result["thresholds"]
    got = dict(zip(zip(regimes["temperature"], regimes["density"]), regimes["regime"]))
    assert got == truth
    # eps from the noise: 2 x 0.01 / sqrt(9) ~ 0.0067, far above the floor
    assert thresholds.eps_source.startswith("noise") and 0.004 < thresholds.eps < 0.01
    assert 0.9 < thresholds.cka_cut < 0.98 and thresholds.cka_split_separation > 0.95
    # well-separated clusters: no cell moves anywhere in the sweep
    assert (regimes["stability"] == 1).all() and result["robustness"]["cells_changed"].max() == 0
    # advice from the coldest model: raise at density <= 0.1 (Regime I), keep elsewhere... but
    # the coldest II-B cells are not the best (best is the middle temperature): honest disagreement
    advice = result["advice"].set_index("density")
    assert list(advice.loc[[0.05, 0.1], "advice"]) == ["raise", "raise"]
    assert advice.loc[[0.05, 0.1], "agree"].all()
    assert list(advice.loc[[0.2, 0.4, 0.8], "advice"]) == ["keep"] * 3
    assert not advice.loc[[0.2, 0.4, 0.8], "agree"].any()
    per_cell = result["advice_cells"]
    assert per_cell.loc[per_cell["regime"] == "II-A", "agree"].all()  # lower the temperature: right
    assert per_cell.loc[per_cell["regime"] == "I", "agree"].all()
    summary = result["summary"]
    assert summary["regime_counts"] == {"I": 4, "II-A": 10, "II-B": 11}
    # selection: the highest-CKA connected cell is always II-B; its rank is 1 or 2 (noise in CKA)
    selection = result["selection"]
    assert (selection["rule_regime"] == "II-B").all() and (selection["rule_rank"] <= 3).all()
    assert summary["selection"]["rule"]["mean_rank"] <= 2.5
    json.dumps(summary)  # serialisable as written to summary.json


def test_reference_temperature_resolution(tiny_config):
    # default: the base recipe's own knob value when it is on the grid (train.epochs = 3)
    assert load_config(tiny_config).analysis_spec()["regimes"]["reference_temperature"] == 3.0
    tiny_config["train"]["epochs"] = 4  # not on the grid [1, 3]: the coldest value (3 epochs)
    assert load_config(tiny_config).analysis_spec()["regimes"]["reference_temperature"] == 3.0
    tiny_config["regimes"]["reference_temperature"] = 1
    assert load_config(tiny_config).analysis_spec()["regimes"]["reference_temperature"] == 1.0
    tiny_config["regimes"]["reference_temperature"] = 2
    with pytest.raises(ConfigError, match="reference_temperature: 2 is not one of"):
        load_config(tiny_config).analysis_spec()
    tiny_config["regimes"]["reference_temperature"] = -1
    with pytest.raises(ConfigError, match="reference_temperature"):
        load_config(tiny_config)


DEMO = REPO / "results" / "demo"


@pytest.mark.skipif(not (DEMO / "cells.csv").exists(), reason="run `snakemake` first (demo output)")
def test_demo_output_reclassifies_consistently():
    """The demo's real cells: recomputing gives the workflow's regimes, and the advice and
    selection tables agree with the cells they come from."""
    from threeregime.stages.classify import classify_run

    cfg_spec = load_config(REPO / "config.yaml").analysis_spec()["regimes"]
    cfg = regime_config_from_spec(cfg_spec)
    cells = pd.read_csv(DEMO / "cells.csv")
    result = classify_run(cells, pd.read_csv(DEMO / "metrics.csv"), cfg)
    written = pd.read_csv(DEMO / "regimes.csv")
    key = ["temperature", "density"]
    merged = written.merge(result["regimes"], on=key, suffixes=("_written", ""))
    assert len(merged) == len(cells) and (merged["regime_written"] == merged["regime"]).all()
    assert np.allclose(merged["p_label_written"], merged["p_label"], equal_nan=True)
    if (cells["n"] == 1).all():  # 1 dense seed x 1 retrain pair: no noise to measure
        assert result["thresholds"].eps == cfg.eps and result["thresholds"].eps_measured is None
        assert "cannot be measured" in result["thresholds"].eps_source
    advice, selection = result["advice"], result["selection"]
    assert list(advice["density"]) == sorted(cells["density"].unique())
    for density, column in cells.groupby("density"):
        best = column.loc[column["test_error_mean"].idxmin(), "temperature"]
        assert advice.loc[advice["density"] == density, "best_temperature"].iloc[0] == best
        row = selection[selection["density"] == density].iloc[0]
        assert row["best_temperature"] == best and 1 <= row["rule_rank"] <= len(column)
    written_summary = json.loads((DEMO / "summary.json").read_text())
    # the stage adds what the run is and the rules it was classified by (for comparing runs)
    assert written_summary.pop("run", {"run": "demo"})["run"] == "demo"
    as_json = json.loads(json.dumps(cfg_spec))
    assert json.loads(json.dumps(written_summary.pop("regimes", cfg_spec))) == as_json
    assert written_summary == json.loads(json.dumps(result["summary"]))


def test_ticket_criteria_use_the_configured_cuts_and_stay_empty_without_data():
    cells = pd.DataFrame(
        {
            "barrier_mean": [0.0, 0.019, 0.021, np.nan],
            "test_error_mean": [0.10, 0.106, 0.104, 0.2],
            "dense_test_error_mean": [0.10, 0.10, np.nan, 0.1],
        }
    )
    out = ticket_criteria(cells, RegimeConfig(stable_barrier=0.02, matching_tolerance=0.005))
    assert out["stable"].tolist() == [True, True, False, None]
    assert out["matching"].tolist() == [True, False, None, False]
    strict = ticket_criteria(cells, RegimeConfig(stable_barrier=0.01, matching_tolerance=0.0))
    assert strict["stable"].tolist()[:3] == [True, False, False]
    assert strict["matching"].tolist()[:2] == [True, False]
    old = ticket_criteria(cells.drop(columns="dense_test_error_mean"), RegimeConfig())
    assert old["matching"].tolist() == [None] * 4
    unknown = ticket_criteria(cells.assign(test_error_mean=np.nan), RegimeConfig())
    assert unknown["matching"].tolist() == [None] * 4
