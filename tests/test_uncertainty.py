"""The pooled uncertainty model on tables with planted truths: probabilities against their
analytic values, the moderation prior against planted noise, calibration over simulated grids,
threshold uncertainty, and what cannot be measured."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from threeregime.analysis.regimes import REGIMES
from threeregime.analysis.uncertainty import (
    bootstrap_draws,
    moderation_prior,
    noise,
    pooled_draws,
    uncertainty_draws,
    unit_table,
)
from threeregime.config.settings import RegimeConfig

EPS = 0.05
FIXED = RegimeConfig(eps_mode="fixed", eps=EPS, cka_cut_mode="fixed", cka_cut=0.9)


def _units_table(cells: dict[tuple[float, float], list[tuple[float, float]]], pairs: int = 1) -> pd.DataFrame:
    """Observations from per-cell lists of (mc, cka), one dense seed per entry, ``pairs`` identical
    retrain pairs per dense seed (so a unit's mean is the entry)."""
    rows = []
    for (t, d), units in cells.items():
        for s, (mc, cka) in enumerate(units, start=1):
            for a in range(1, pairs + 1):
                rows.append(
                    {"knob": "epochs", "temperature": t, "density": d, "dense_seed": s, "seed_a": a,
                     "seed_b": a + 1, "mc": mc, "cka_softmax": cka}
                )  # fmt: skip
    return pd.DataFrame(rows)


def _exact_units(mean: float, sd: float, n: int) -> np.ndarray:
    """n values with exactly this mean and sample standard deviation."""
    z = np.arange(n) - (n - 1) / 2
    return mean + sd * z / z.std(ddof=1)


def _p(draws, t, d, regime):
    cells = draws.cells.reset_index(drop=True)
    row = cells.index[(cells["temperature"] == t) & (cells["density"] == d)][0]
    return draws.probabilities()[row, REGIMES.index(regime)]


def test_equal_noise_gives_the_pooled_t_probability_of_each_side_of_eps():
    """12 cells with the same unit spread sd and 4 dense seeds: the noise is the trend's, flat here
    (36 degrees of freedom less the trend's 2) and P(I) = P(true mean < -eps) =
    T_34((-eps - mean) / (sd / 2))."""
    sd, n = 0.01, 4
    offsets = [-2, -1, -0.5, 0, 0.5, 1, 2, 3, -3, 1.5, -1.5, 0.25]
    cells = {}
    for k, offset in enumerate(offsets):
        mc = _exact_units(-EPS - offset * sd / 2, sd, n)
        cells[(10 + k, 0.5)] = list(zip(mc, np.full(n, 0.95), strict=True))
    draws = pooled_draws(_units_table(cells), FIXED, count=40000)
    assert draws.units == "dense seeds"
    for k, offset in enumerate(offsets):
        expected = stats.t.cdf(offset, df=len(offsets) * (n - 1) - 2)
        assert _p(draws, 10 + k, 0.5, "I") == pytest.approx(expected, abs=0.012), offset
        # connected draws are all II-B: CKA sits far above the cut with zero spread
        assert _p(draws, 10 + k, 0.5, "II-B") == pytest.approx(1 - expected, abs=0.012)


def test_the_moderation_prior_recovers_a_planted_trend_and_spread():
    """Cell variances drawn around a level that rises as exp(2 x) with a covariate x, with d0 prior
    degrees of freedom, then sampled with 3 degrees of freedom each: the fitted prior levels
    follow the planted trend and d0 is recovered."""
    rng = np.random.default_rng(5)
    s0, d0, d, cells = 0.02**2, 8.0, 3.0, 3000
    x = rng.uniform(-2, 1, cells)
    true_var = s0 * np.exp(2 * x) * d0 / rng.chisquare(d0, cells)
    sample_var = true_var * rng.chisquare(d, cells) / d
    levels, prior_dof, residual_dof = moderation_prior(sample_var, np.full(cells, d), x)
    assert np.median(levels / (s0 * np.exp(2 * x))) == pytest.approx(1.0, rel=0.1)
    assert prior_dof == pytest.approx(d0, rel=0.3) and residual_dof == cells * d - 2
    # without a trend to find, the level is flat
    flat, _, _ = moderation_prior(s0 * rng.chisquare(d, cells) / d, np.full(cells, d), x)
    assert flat.max() / flat.min() == pytest.approx(1.0, abs=0.1)


def test_consistent_variances_pool_and_inconsistent_ones_are_moderated():
    """Equal cell variances: infinite prior degrees of freedom, every cell gets the pooled level.
    One very noisy cell among quiet ones keeps more noise than the quiet ones (moderated, not
    pooled away), and less than its own."""
    quiet = {(t, 0.5): [(m, 0.95) for m in _exact_units(-0.2, 0.01, 3)] for t in range(10, 16)}
    table = _units_table(quiet)
    units, _ = unit_table(table, "cka_softmax")
    cells = units.groupby(["knob", "temperature", "density"]).size().reset_index()
    equal = noise(units, cells, "mc", "mc")
    assert equal.shared and np.allclose(equal.variance, 0.01**2) and np.all(equal.dof == 11)

    rng = np.random.default_rng(2)
    mixed = {(t, 0.5): [(m, 0.95) for m in -0.2 + 0.01 * rng.standard_normal(3)] for t in range(10, 30)}
    mixed[(99, 0.5)] = [(m, 0.95) for m in _exact_units(-0.2, 0.2, 3)]
    units, _ = unit_table(_units_table(mixed), "cka_softmax")
    cells = units.groupby(["knob", "temperature", "density"]).size().reset_index()
    moderated = noise(units, cells, "mc", "mc")
    noisy = int(np.flatnonzero(cells["temperature"].to_numpy() == 99)[0])
    assert np.isfinite(moderated.dof[noisy]) and moderated.dof[noisy] > 2
    assert np.median(moderated.variance) < moderated.variance[noisy] < 0.2**2


def test_simulated_two_seed_grids_are_calibrated_where_the_bootstrap_is_overconfident():
    """The demo's design (2 dense seeds, one pair each) on 60 simulated 4 x 4 grids with planted
    means near the thresholds and a shared noise: among the labels the model gives probability
    p, about p are the true label (mean gap <= 0.05 overall and within each probability band);
    the bootstrap of the same tables claims more than it delivers."""
    rng = np.random.default_rng(11)
    sd = 0.03
    pooled, boot = [], []
    for grid in range(60):
        truth, cells = {}, {}
        for t in range(4):
            for d in range(4):
                mc_true = rng.uniform(-0.15, 0.05)
                cka_true = rng.uniform(0.8, 1.0)
                truth[(t, d)] = "I" if mc_true < -EPS else ("II-A" if cka_true < 0.9 else "II-B")
                units = np.column_stack([mc_true + sd * rng.standard_normal(2),
                                         cka_true + sd * rng.standard_normal(2)])  # fmt: skip
                cells[(t, d)] = [tuple(u) for u in units]
        table = _units_table(cells)
        for method, out in (("pooled", pooled), ("bootstrap", boot)):
            if method == "bootstrap" and grid >= 20:
                continue
            draws = (
                pooled_draws(table, FIXED, 1000, seed=grid)
                if method == "pooled"
                else bootstrap_draws(table, FIXED, 200, seed=grid)
            )
            probs = draws.probabilities()
            for row, cell in enumerate(draws.cells.itertuples(index=False)):
                k = int(np.argmax(probs[row]))
                out.append((probs[row, k], REGIMES[k] == truth[(cell.temperature, cell.density)]))
    p, hit = map(np.array, zip(*pooled, strict=True))
    assert abs(p.mean() - hit.mean()) <= 0.05, (p.mean(), hit.mean())
    for low, high in ((0.5, 0.7), (0.7, 0.9), (0.9, 1.01)):
        band = (p >= low) & (p < high)
        assert band.sum() >= 50
        assert abs(p[band].mean() - hit[band].mean()) <= 0.07, (low, p[band].mean(), hit[band].mean())
    p_boot, hit_boot = map(np.array, zip(*boot, strict=True))
    assert p_boot.mean() - hit_boot.mean() > 0.03 + abs(p.mean() - hit.mean()), (
        p_boot.mean(),
        hit_boot.mean(),
    )


def test_drawn_eps_follows_what_a_run_of_the_same_design_would_estimate():
    """eps_mode noise: a draw's eps is the point rule (eps_z x the median over cells of a cell's
    standard error) on spreads a run of the same design would see. With the noise known well (40
    cells, 2 dense seeds each, one level), its distribution is the point rule's sampling
    distribution, simulated here directly; a cell sitting at the point eps is a coin flip."""
    cfg = RegimeConfig(eps_mode="noise", eps=0.001, eps_z=2.0, cka_cut_mode="fixed", cka_cut=0.9)
    sd, n, count = 0.02, 2, 40
    rng = np.random.default_rng(8)
    cells = {(t, 0.5): [(m, 0.95) for m in -0.5 + sd * rng.standard_normal(n)] for t in range(count)}
    draws = pooled_draws(_units_table(cells), cfg, 20000)
    simulated = sd * rng.standard_normal((20000, count, n))
    point = 2.0 * np.median(simulated.std(axis=2, ddof=1), axis=1) / np.sqrt(n)
    for q in (5, 50, 95):
        assert np.percentile(draws.eps, q) == pytest.approx(np.percentile(point, q), rel=0.12), q
    at_eps = dict(cells) | {(99, 0.5): [(m, 0.95) for m in _exact_units(-np.median(draws.eps), sd, n)]}
    again = pooled_draws(_units_table(at_eps), cfg, 20000)
    assert _p(again, 99, 0.5, "I") == pytest.approx(0.5, abs=0.06)
    assert _p(again, 10, 0.5, "I") == pytest.approx(1.0, abs=1e-9)


def test_a_cka_split_over_too_few_connected_cells_uses_the_declared_cut_in_every_draw():
    cfg = RegimeConfig(eps_mode="fixed", eps=EPS, cka_cut_mode="split", cka_cut=0.93, cka_split_min_cells=5)
    rng = np.random.default_rng(0)
    barrier = {(t, 0.5): [(-0.5 + 0.01 * rng.standard_normal(), 0.9) for _ in range(2)] for t in range(6)}
    connected = {(9, 0.5): [(0.0, 0.80), (0.0, 0.82)], (9, 0.9): [(0.0, 0.99), (0.0, 0.985)]}
    draws = pooled_draws(_units_table(barrier | connected), cfg, 500)
    assert np.all(draws.cut == 0.93)
    assert _p(draws, 9, 0.5, "II-A") == pytest.approx(1.0) and _p(draws, 9, 0.9, "II-B") == pytest.approx(1.0)
    # with enough connected cells the cut is split per draw, and moves with the drawn means
    densities, means = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95), (0.80, 0.83, 0.86, 0.97, 0.98, 0.99)
    more = {(9, d): [(0.0, c), (0.0, c + 0.01)] for d, c in zip(densities, means, strict=True)}
    split = pooled_draws(_units_table(barrier | more), cfg, 500)
    assert split.cut.std() > 0 and 0.86 < np.median(split.cut) < 0.97


def test_one_dense_seed_makes_pairs_the_units_and_one_observation_measures_nothing():
    one_dense = _units_table({(10, 0.5): [(-0.2, 0.9)]}, pairs=1)
    pairs = pd.concat([one_dense.assign(seed_a=a, seed_b=a + 1, mc=-0.2 + 0.01 * a) for a in range(3)])
    units, kind = unit_table(pairs, "cka_softmax")
    assert len(units) == 3 and kind.startswith("retrain pairs")
    assert pooled_draws(pairs, FIXED, 100).measured.all()
    single = pooled_draws(one_dense, FIXED, 100)
    assert not single.measured.any() and np.isnan(single.probabilities()).all()


def test_draws_are_deterministic_and_the_method_is_chosen_by_config():
    rng = np.random.default_rng(3)
    cells = {(t, d): [(rng.normal(-0.05, 0.05), rng.uniform(0.8, 1.0)) for _ in range(2)]
             for t in range(3) for d in (0.1, 0.5)}  # fmt: skip
    table = _units_table(cells)
    first, second = pooled_draws(table, FIXED, 300), pooled_draws(table, FIXED, 300)
    assert np.array_equal(first.labels, second.labels) and np.array_equal(first.mc, second.mc)
    assert uncertainty_draws(table, RegimeConfig(uncertainty="pooled", draws=50)).method == "pooled"
    assert uncertainty_draws(table, RegimeConfig(uncertainty="bootstrap", bootstrap=20)).method == "bootstrap"
    assert uncertainty_draws(table, RegimeConfig(uncertainty="none")) is None
    assert uncertainty_draws(None, RegimeConfig()) is None


def test_missing_columns_are_named():
    table = _units_table({(10, 0.5): [(-0.2, 0.9), (-0.1, 0.9)]}).drop(columns=["seed_b"])
    with pytest.raises(ValueError, match=r"lacks columns \['seed_b'\]"):
        pooled_draws(table, FIXED, 10)
