"""Label probabilities in the tables, and the bootstrap method, on observation tables with known
answers (the pooled model: tests/test_uncertainty.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from threeregime.analysis.advice import analyse
from threeregime.analysis.cells import aggregate_cells
from threeregime.analysis.confidence import P_COLUMNS, add_confidence, confidence_level, rule_picks
from threeregime.analysis.uncertainty import _Design, bootstrap_draws
from threeregime.config.settings import RegimeConfig

FIXED = RegimeConfig(eps_mode="fixed", eps=0.05, cka_cut_mode="fixed", cka_cut=0.9)


def _observations(cells: dict, dense_seeds=(1, 2, 3), retrain_seeds=(1, 2, 3), seed=0):
    """cells: (temperature, density) -> function(rng, dense, a, b) -> (mc, cka)."""
    rng = np.random.default_rng(seed)
    pairs = [(a, b) for i, a in enumerate(retrain_seeds) for b in retrain_seeds[i + 1 :]]
    rows = []
    for (t, d), draw in cells.items():
        for s in dense_seeds:
            for a, b in pairs:
                mc, cka = draw(rng, s, a, b)
                rows.append(
                    {"knob": "epochs", "temperature": t, "density": d, "dense_seed": s, "seed_a": a,
                     "seed_b": b, "mc": mc, "cka_softmax": cka, "test_error": 0.1 + 0.01 * t,
                     "train_loss": 0.1}
                )  # fmt: skip
    return pd.DataFrame(rows)


def _far(mc, cka):
    return lambda rng, *_: (mc + rng.normal(0, 0.002), cka + rng.normal(0, 0.002))


def _straddle(rng, dense, a, b):
    """mc scattered widely around -eps: the mean's side of -eps is a coin flip."""
    return -0.05 + rng.normal(0, 0.05), 0.95


GRID = {
    (10, 0.1): _far(-0.5, 0.95),  # far in Regime I
    (10, 0.4): _far(0.0, 0.80),  # far in II-A
    (20, 0.1): _far(0.0, 0.99),  # far in II-B
    (20, 0.4): _straddle,
}


def _table(draws) -> pd.DataFrame:
    probs = draws.cells.reset_index(drop=True).copy()
    for j, column in enumerate(P_COLUMNS.values()):
        probs[column] = draws.probabilities()[:, j]
    return probs


def _probabilities(observations, cfg=FIXED, resamples=300, **kw):
    return _table(bootstrap_draws(observations, cfg, resamples, **kw)).set_index(["temperature", "density"])


def test_far_cells_are_certain_and_a_straddling_cell_is_a_coin_flip():
    probs = _probabilities(_observations(GRID, dense_seeds=(1, 2, 3, 4, 5, 6)))
    assert probs.loc[(10, 0.1), "p_I"] == 1.0
    assert probs.loc[(10, 0.4), "p_IIA"] == 1.0
    assert probs.loc[(20, 0.1), "p_IIB"] == 1.0
    straddle = probs.loc[(20, 0.4)]
    assert 0.25 < straddle["p_I"] < 0.75 and straddle["p_IIA"] == 0
    assert straddle["p_I"] + straddle["p_IIB"] == pytest.approx(1.0)
    row_sums = probs[["p_I", "p_IIA", "p_IIB"]].sum(axis=1)
    assert np.allclose(row_sums, 1.0)


def test_deterministic_given_the_seed():
    observations = _observations(GRID)
    first = bootstrap_draws(observations, FIXED, 100)
    again = bootstrap_draws(observations.sample(frac=1, random_state=3), FIXED, 100)
    pd.testing.assert_frame_equal(_table(first), _table(again))
    pd.testing.assert_frame_equal(rule_picks(first), rule_picks(again))
    other = bootstrap_draws(observations, FIXED, 100, seed=1)
    assert not np.allclose(_table(first)["p_I"], _table(other)["p_I"])


def test_one_observation_per_cell_is_unmeasured_not_certain():
    observations = _observations(GRID, dense_seeds=(1,), retrain_seeds=(1, 2))
    probs = _probabilities(observations)
    assert probs[["p_I", "p_IIA", "p_IIB"]].isna().all().all()
    result = analyse(aggregate_cells(observations), FIXED)
    add_confidence(result, bootstrap_draws(observations, FIXED, 50))
    assert (result["regimes"]["confidence"] == "unmeasured").all()
    assert result["regimes"]["p_label"].isna().all()
    assert result["advice_cells"]["advice_note"].str.startswith("confidence unmeasured").all()
    assert result["summary"]["confidence"]["levels"] == {"unmeasured": 4}


def test_one_dense_seed_with_three_retrain_seeds_is_measured():
    observations = _observations(GRID, dense_seeds=(1,), retrain_seeds=(1, 2, 3))
    probs = _probabilities(observations)
    assert probs.loc[(10, 0.1), "p_I"] == 1.0


def test_retrain_seeds_are_the_resampled_unit():
    """Pairs sharing a seed move together: a resample of seeds {1, 1, 2} weighs pair (1,2) by 2
    and drops (1,3) and (2,3); every resample keeps at least one pair."""
    observations = _observations({(10, 0.1): _far(0.0, 0.9)}, dense_seeds=(1,), retrain_seeds=(1, 2, 3))
    design = _Design(observations, "cka_softmax")
    rng = np.random.default_rng(0)
    allowed = {(1, 1, 1), (2, 0, 0), (0, 2, 0), (0, 0, 2)}  # three draws, two distinct at least
    seen = set()
    for _ in range(200):
        w = tuple(int(x) for x in design.weights(rng))  # pairs (1,2), (1,3), (2,3)
        assert w in allowed, w
        seen.add(w)
    assert seen == allowed


def test_threshold_uncertainty_counts():
    """A cell exactly at the Otsu CKA cut's edge moves with the cut even though its own
    observations are tight: noise in the other cells shifts the derived threshold."""
    cells = {(t, 0.1): _far(0.0, 0.80) for t in (10, 20)}
    cells |= {(t, 0.4): _far(0.0, 0.99) for t in (10, 20)}
    wide = lambda rng, *_: (0.0, 0.895 + rng.normal(0, 0.03))  # noqa: E731
    cells[(30, 0.1)] = wide
    cells[(30, 0.4)] = _far(0.0, 0.895)
    cfg = RegimeConfig(eps_mode="fixed", eps=0.05, cka_cut_mode="split")
    probs = _probabilities(_observations(cells, dense_seeds=(1, 2, 3, 4)), cfg)
    assert probs.loc[(10, 0.1), "p_IIA"] == 1.0
    assert 0 < probs.loc[(30, 0.4), "p_IIA"] < 1  # its own rows barely vary; the cut does


def test_advice_and_selection_carry_the_confidence():
    observations = _observations(GRID, dense_seeds=(1, 2, 3, 4, 5, 6))
    result = analyse(aggregate_cells(observations), FIXED)
    add_confidence(result, bootstrap_draws(observations, FIXED, 200))
    regimes = result["regimes"].set_index(["temperature", "density"])
    assert regimes.loc[(10, 0.1), "confidence"] == "confident"
    straddle = regimes.loc[(20, 0.4)]
    assert straddle["p_label"] < 0.8 and straddle["confidence"] in ("uncertain", "coin flip")
    notes = result["advice_cells"].set_index(["temperature", "density"])
    assert notes.loc[(20, 0.4), "advice_note"].startswith(straddle["confidence"])
    assert notes.loc[(10, 0.1), "advice_note"].startswith("confident: regime I with probability 100%")
    selection = result["selection"].set_index("density")
    assert selection.loc[0.1, "rule_temperature"] == 20 and selection.loc[0.1, "rule_pick_p"] == 1.0
    summary = result["summary"]["confidence"]
    assert summary["draws"] == 200 and summary["method"] == "bootstrap"


def test_bootstrap_off():
    observations = _observations(GRID)
    result = analyse(aggregate_cells(observations), FIXED)
    add_confidence(result, None)
    assert (result["regimes"]["confidence"] == "off").all()
    assert "rule_pick_p" not in result["selection"]


def test_confidence_words():
    assert [confidence_level(p) for p in (1.0, 0.9, 0.85, 0.5, float("nan"))] == [
        "confident", "confident", "uncertain", "coin flip", "unmeasured"
    ]  # fmt: skip


def test_figures_hatch_uncertain_and_inferred_cells():
    import matplotlib.pyplot as plt

    from threeregime.config.settings import PlotConfig
    from threeregime.views.plot import phase_figure, regime_figure

    from .test_plot import _regimes

    regimes = _regimes()
    regimes["p_label"] = [1.0, 0.55, 0.9, 1.0, 0.7, np.nan]
    regimes["label_source"] = ["measured"] * 5 + ["inferred"]
    fig = regime_figure(regimes, PlotConfig())
    ax = fig.axes[0]
    gids = [p.get_gid() for p in ax.patches]
    assert gids.count("uncertain") == 2 and gids.count("inferred") == 1
    assert {"p=0.55", "p=0.70"} <= {t.get_text() for t in ax.texts}
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("probability < 90%" in x for x in labels) and any("inferred" in x for x in labels)
    plt.close(fig)
    fig = phase_figure(regimes, PlotConfig())
    assert "p_label" in [a.get_gid() for a in fig.axes]
    plt.close(fig)
    fig = regime_figure(_regimes(), PlotConfig())  # no confidence columns: nothing marked
    assert not [p for p in fig.axes[0].patches if p.get_gid() in ("uncertain", "inferred")]
    plt.close(fig)
