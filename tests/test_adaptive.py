"""Adaptive refinement: the coarse sub-grid, label inference, which cells a round adds, and the
inferred rows of the regimes table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from threeregime.analysis.adaptive import (
    Grid,
    coarse_cells,
    infer_labels,
    next_cells,
    plan_round,
    with_inferred,
)
from threeregime.config.settings import RegimeConfig, fmt_value

from .conftest import write_config

# 5 temperatures (coldest first) x 5 densities; reference = the coldest
GRID = Grid(("160", "120", "80", "40", "20"), ("0.05", "0.1", "0.2", "0.4", "0.8"), "160")


def test_coarse_grid_has_every_other_value_and_the_corners():
    cells = coarse_cells(GRID, 2)
    assert cells == [(t, d) for t in ("160", "80", "20") for d in ("0.05", "0.2", "0.8")]
    even = Grid(("8", "6", "4", "2"), ("0.1", "0.2", "0.3", "0.4"), "6")
    # indices 0, 2 and the last (3); the reference 6 joins at the coarse densities
    assert coarse_cells(even, 2) == [(t, d) for t in ("8", "6", "4", "2") for d in ("0.1", "0.3", "0.4")]


def _truth(t: str, d: str) -> str:
    """Regime I at low density and cold; II-B elsewhere."""
    return "I" if float(d) <= 0.1 and float(t) >= 120 else "II-B"


def test_inferred_labels_come_from_the_nearest_measured_cells():
    labels = {c: _truth(*c) for c in coarse_cells(GRID, 2)}
    full = infer_labels(labels, {}, GRID).set_index(["temperature", "density"])
    assert (full.loc[list(labels), "label_source"] == "measured").all()
    assert full.loc[("120", "0.05"), "regime"] == "I"  # between I (160) and II-B (80): tie -> I
    assert full.loc[("120", "0.05"), "inferred_from"] == "I:1,II-B:1"
    assert full.loc[("40", "0.4"), "regime"] == "II-B"  # all four nearest are II-B
    assert full.loc[("40", "0.4"), "inferred_from"] == "II-B:4"
    # ties break on summed p_label
    p = {c: 1.0 for c in labels} | {("160", "0.05"): 0.3}
    full = infer_labels(labels, p, GRID).set_index(["temperature", "density"])
    assert full.loc[("120", "0.05"), "regime"] == "II-B"


def test_a_round_adds_boundary_cells_first_and_respects_the_budget():
    labels = {c: _truth(*c) for c in coarse_cells(GRID, 2)}
    added = next_cells(labels, {}, GRID, budget=1.0, min_confidence=0.8)
    reasons = dict(added)
    # cells whose nearest measured cells disagree: between the I corner and the II-B cells
    boundary = {c for c, r in reasons.items() if r == "boundary"}
    assert boundary == {("120", "0.05"), ("160", "0.1"), ("120", "0.1")}
    assert all(c not in labels for c in reasons)
    assert ("40", "0.4") not in reasons  # deep inside II-B: never measured
    small = next_cells(labels, {}, GRID, budget=11 / 25, min_confidence=0.8)
    assert len(small) == 2 and [r for _, r in small] == ["boundary", "boundary"]


def test_a_new_density_column_brings_its_reference_cell():
    labels = {c: _truth(*c) for c in coarse_cells(GRID, 2)}
    added = [c for c, _ in next_cells(labels, {}, GRID, budget=1.0, min_confidence=0.8)]
    for density in {d for _, d in added}:
        assert ("160", density) in added or ("160", density) in labels


def test_low_confidence_measured_cells_get_their_neighbours_measured():
    labels = {c: "II-B" for c in coarse_cells(GRID, 2)}
    assert next_cells(labels, {}, GRID, budget=1.0, min_confidence=0.8) == []
    p = {c: 1.0 for c in labels} | {("80", "0.2"): 0.55}
    added = dict(next_cells(labels, p, GRID, budget=1.0, min_confidence=0.8))
    assert {c for c, r in added.items() if r == "uncertain"} == {
        ("120", "0.2"), ("40", "0.2"), ("80", "0.1"), ("80", "0.4")
    }  # fmt: skip


def _observations(cells, seeds=(1, 2, 3)):
    rng = np.random.default_rng(0)
    rows = []
    for t, d in cells:
        regime = _truth(t, d)
        for s in seeds:
            rows.append(
                {"knob": "epochs", "temperature": float(t), "density": float(d), "dense_seed": s,
                 "seed_a": 1, "seed_b": 2, "mc": (-0.3 if regime == "I" else 0.0) + rng.normal(0, 0.01),
                 "cka_softmax": 0.97 + rng.normal(0, 0.003), "test_error": 0.1}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_plan_round_is_deterministic_and_cumulative():
    cfg = RegimeConfig(eps_mode="fixed", eps=0.05, bootstrap=50)
    coarse = coarse_cells(GRID, 2)
    plan = plan_round(1, coarse, _observations(coarse), GRID, cfg, 1.0, 0.8)
    again = plan_round(1, coarse, _observations(coarse), GRID, cfg, 1.0, 0.8)
    assert plan == again
    cells = [tuple(c) for c in plan["cells"]]
    assert set(coarse) < set(cells) and plan["measured_before"] == 9
    assert plan["labels"]["160/0.05"] == "I" and plan["labels"]["20/0.8"] == "II-B"
    with pytest.raises(ValueError, match="no metrics for planned cells"):
        plan_round(2, cells, _observations(coarse), GRID, cfg, 1.0, 0.8)


def test_regimes_table_gets_flagged_inferred_rows():
    measured = coarse_cells(GRID, 2)
    regimes = pd.DataFrame(
        {"knob": "epochs", "temperature": [float(t) for t, _ in measured],
         "density": [float(d) for _, d in measured], "regime": [_truth(*c) for c in measured],
         "mc_mean": 0.0, "p_label": 1.0, "confidence": "confident", "eps": 0.05, "cka_cut": 0.9}
    )  # fmt: skip
    full = with_inferred(regimes, GRID)
    assert len(full) == 25 and (full["label_source"] == "measured").sum() == 9
    inferred = full[full["label_source"] == "inferred"]
    assert inferred["mc_mean"].isna().all() and inferred["p_label"].isna().all()
    assert (inferred["confidence"] == "inferred").all() and (inferred["eps"] == 0.05).all()
    keys = {(fmt_value(t), fmt_value(d)) for t, d in zip(full["temperature"], full["density"])}
    assert keys == set(GRID.cells())
    off_grid = regimes.assign(density=regimes["density"].replace(0.8, 0.9))
    with pytest.raises(ValueError, match="not on the configured grid"):
        with_inferred(off_grid, GRID)


# ----------------------------------------------------------------------------- the workflow
def _adaptive_config(densities=(0.2, 0.4, 0.6)) -> dict:
    """3 temperatures x 3 densities; every cell connected (eps 1) and the CKA cut an Otsu split,
    so the coarse cells always fall in two regimes and a round has boundary cells to add."""
    from .conftest import TINY_CONFIG

    config = copy.deepcopy(TINY_CONFIG)
    config["knob"]["values"] = [1, 2, 3]
    config["prune"]["densities"] = list(densities)
    config["regimes"] = {"eps_mode": "fixed", "eps": 1.0, "cka_cut_mode": "split", "bootstrap": 20}
    config["adaptive"] = {"enabled": True, "rounds": 2, "budget": 1.0}
    return config


def _plan_cells(results: Path, round_number: int) -> set:
    plan = json.loads((results / f"adaptive/round{round_number}.json").read_text())
    return {tuple(c) for c in plan["cells"]}


def _cell_jobs(cells) -> set:
    from .test_incremental import job

    out = set()
    for t, d in cells:
        wildcards = {"temperature": t, "density": d, "seed": "1"}
        out |= {job("prune", **wildcards), job("metrics", **wildcards, a="1", b="2")}
        out |= {job("retrain", **wildcards, rseed=r) for r in ("1", "2")}
    return out


def test_dry_run_plans_the_coarse_grid_and_the_checkpoints(tmp_path):
    from .test_incremental import job, plan

    write_config(tmp_path, _adaptive_config())
    jobs = plan(tmp_path)
    coarse = {("3", "0.2"), ("3", "0.6"), ("1", "0.2"), ("1", "0.6")}
    expected = _cell_jobs(coarse) | {job("prepare_data")}
    expected |= {job("dense_train", temperature=t, seed="1") for t in ("1", "2", "3")}
    expected |= {job("adaptive_round", round=r) for r in ("1", "2")}
    expected |= {job("collect"), job("classify"), job("plot")}
    assert jobs == expected  # what the rounds add is known only once they have run


@pytest.mark.slow
def test_adaptive_run_then_a_new_density_reuses_every_measured_cell(tmp_path):
    from .test_incremental import job, jobs_in, plan, run

    write_config(tmp_path, _adaptive_config())
    results = tmp_path / "results" / "tiny"
    output = run(tmp_path)
    first = jobs_in(output)
    # a planning round runs where snakemake runs (localrules), never as a queued cluster job
    assert "localcheckpoint adaptive_round:" in output
    measured = _plan_cells(results, 2)
    coarse = {("3", "0.2"), ("3", "0.6"), ("1", "0.2"), ("1", "0.6")}
    assert coarse < measured and _plan_cells(results, 1) <= measured
    assert {j for j in first if j[0] in ("prune", "retrain", "metrics")} == _cell_jobs(measured)
    regimes = pd.read_csv(results / "regimes.csv")
    assert len(regimes) == 9 and (regimes["label_source"] == "measured").sum() == len(measured)
    inferred = regimes[regimes["label_source"] == "inferred"]
    assert inferred["mc_mean"].isna().all() and (inferred["confidence"] == "inferred").all()
    assert len(pd.read_csv(results / "metrics.csv")) == len(measured)
    assert plan(tmp_path) == set()  # nothing left to do

    write_config(tmp_path, _adaptive_config(densities=(0.2, 0.4, 0.6, 0.8)))
    second = jobs_in(run(tmp_path))
    remeasured = _plan_cells(results, 2)
    expected = _cell_jobs(remeasured - measured)
    expected |= {job("adaptive_round", round=r) for r in ("1", "2")}
    expected |= {job("collect"), job("classify"), job("plot")}
    assert second == expected  # no cell measured before runs again
    regimes = pd.read_csv(results / "regimes.csv")
    assert len(regimes) == 12
    measured_now = _measured_rows(regimes)
    assert measured_now >= remeasured | measured

    # a lower budget plans fewer cells, but every cell measured before stays measured (its rows
    # exactly), and no cell job runs
    lower = _adaptive_config(densities=(0.2, 0.4, 0.6, 0.8))
    lower["adaptive"]["budget"] = 0.3
    write_config(tmp_path, lower)
    third = jobs_in(run(tmp_path))
    assert not {j for j in third if j[0] in ("prune", "retrain", "metrics")}
    assert len(_plan_cells(results, 2)) < len(measured_now)
    regimes = pd.read_csv(results / "regimes.csv")
    assert _measured_rows(regimes) == measured_now
    assert plan(tmp_path) == set()  # and it stays so: nothing to do on the next look


def _measured_rows(regimes: pd.DataFrame) -> set:
    rows = regimes[regimes["label_source"] == "measured"]
    return {(fmt_value(t), fmt_value(d)) for t, d in zip(rows["temperature"], rows["density"])}


def test_compare_maps_counts_agreement_by_label_source():
    from threeregime.analysis.adaptive import compare_maps

    cells = [(t, d) for t in (1.0, 2.0) for d in (0.1, 0.2)]
    full = pd.DataFrame(
        {"temperature": [t for t, _ in cells], "density": [d for _, d in cells],
         "regime": ["I", "II-A", "II-B", "II-B"], "p_label": [1.0, 0.55, 0.9, np.nan]}
    )  # fmt: skip
    adaptive = full[["temperature", "density"]].assign(
        regime=["I", "II-B", "II-A", "II-B"], label_source=["measured", "measured", "inferred", "inferred"]
    )
    table, summary = compare_maps(full, adaptive.iloc[::-1])
    assert summary["agreement"] == 0.5 and summary["measured"] == 2
    assert summary["agreement_measured"] == 0.5 and summary["agreement_inferred"] == 0.5
    assert summary["disagreements"] == 2 and summary["disagreements_uncertain_in_full"] == 1
    assert table.set_index(["temperature", "density"]).loc[(1.0, 0.2), "full_uncertain"]
    with pytest.raises(ValueError, match="different grids"):
        compare_maps(full, adaptive.iloc[:3])
