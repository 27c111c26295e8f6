"""Adaptive refinement: the coarse sub-grid, label inference, which cells a round adds, the
inferred rows of the regimes table, and one real adaptive run (made once) that a new density
continues and a run through a storage provider (no shared file system) reproduces."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from threeregime.analysis.adaptive import infer_labels, next_moves, plan_round, with_inferred
from threeregime.config.experiment import Grid, coarse_cells
from threeregime.config.settings import AdaptiveConfig, RegimeConfig, fmt_value

from .conftest import snakemake, write_config

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


ADAPTIVE = AdaptiveConfig(enabled=True, step=2, budget=1.0, min_confidence=0.9, max_seeds=4)
BASE = [1, 2]  # the config's dense seeds: a new cell costs 2 units, a replicate 1


def _moves(labels, p_label=None, units=100, adaptive=ADAPTIVE, seeds=None):
    p_label = p_label or {}
    seeds = seeds or {c: list(BASE) for c in labels}
    return next_moves(labels, p_label, seeds, GRID, adaptive, BASE, units)


def test_a_round_adds_boundary_cells_first_and_respects_the_budget():
    labels = {c: _truth(*c) for c in coarse_cells(GRID, 2)}
    cells, seeds, why = _moves(labels)
    reasons = dict(cells)
    # cells whose nearest measured cells disagree: between the I corner and the II-B cells
    boundary = {c for c, r in reasons.items() if r == "boundary"}
    assert boundary == {("120", "0.05"), ("160", "0.1"), ("120", "0.1")}
    assert all(c not in labels for c in reasons) and seeds == [] and why == ""
    assert ("40", "0.4") not in reasons  # deep inside II-B: never measured
    small, _, _ = _moves(labels, units=4)  # two cells of two dense seeds each
    assert [r for _, r in small] == ["boundary", "boundary"]
    none, _, why = _moves(labels, units=1)
    assert none == [] and why == "budget spent: the cheapest move needs 2 units, 1 are left"


def test_a_new_density_column_brings_its_reference_cell():
    labels = {c: _truth(*c) for c in coarse_cells(GRID, 2)}
    added = [c for c, _ in _moves(labels)[0]]
    for density in {d for _, d in added}:
        assert ("160", density) in added or ("160", density) in labels


def test_low_confidence_measured_cells_get_their_neighbours_measured_and_a_seed():
    labels = {c: "II-B" for c in coarse_cells(GRID, 2)}
    cells, seeds, why = _moves(labels)
    assert cells == [] and seeds == []
    assert why.startswith("nothing to add: no unmeasured cell lies near a boundary or an uncertain label")
    p = {c: 1.0 for c in labels} | {("80", "0.2"): 0.55, ("20", "0.8"): 0.7}
    cells, seeds, _ = _moves(labels, p)
    assert {c for c, r in cells if r == "uncertain neighbour"} == {
        ("120", "0.2"), ("40", "0.2"), ("80", "0.1"), ("80", "0.4"), ("20", "0.4"), ("40", "0.8")
    }  # fmt: skip
    # a replicate for each uncertain measured cell, least probable first; only those
    assert seeds == [(("80", "0.2"), 3, "p_label 0.55"), (("20", "0.8"), 3, "p_label 0.70")]


def test_replicates_come_before_edge_cells_and_stop_at_max_seeds():
    labels = {c: "II-B" for c in coarse_cells(GRID, 2)}
    p = {c: 1.0 for c in labels} | {("80", "0.2"): 0.55}
    seeds = {c: list(BASE) for c in labels} | {("80", "0.2"): [1, 2, 3, 4]}  # at max_seeds
    cells, added, _ = _moves(labels, p, seeds=seeds)
    assert added == []  # no fifth seed; its neighbours are still measured
    assert len([c for c, reason in cells if reason != "reference"]) == 4
    cells, added, _ = _moves(labels, p, units=1)  # one unit: the replicate, not a cell
    assert added == [(("80", "0.2"), 3, "p_label 0.55")] and cells == []


def _observations(cells, seeds=(1, 2, 3), extra=None):
    rng = np.random.default_rng(0)
    rows = []
    for t, d in cells:
        regime = _truth(t, d)
        for s in list(seeds) + (extra or {}).get((t, d), []):
            rows.append(
                {"knob": "epochs", "temperature": float(t), "density": float(d), "dense_seed": s,
                 "seed_a": 1, "seed_b": 2, "mc": (-0.3 if regime == "I" else 0.0) + rng.normal(0, 0.01),
                 "cka_softmax": 0.97 + rng.normal(0, 0.003), "test_error": 0.1}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_plan_round_is_deterministic_and_cumulative():
    cfg = RegimeConfig(eps_mode="fixed", eps=0.05, draws=200)
    coarse = coarse_cells(GRID, 2)
    first = {"cells": coarse, "seeds": {}}
    plan = plan_round(1, first, _observations(coarse, BASE), GRID, cfg, ADAPTIVE, BASE)
    again = plan_round(1, first, _observations(coarse, BASE), GRID, cfg, ADAPTIVE, BASE)
    assert plan == again
    cells = [tuple(c) for c in plan["cells"]]
    assert set(coarse) < set(cells) and plan["measured_before"] == 9
    assert plan["units"] == {"allowed": 50, "used_before": 18, "added": 2 * len(plan["added"])}
    assert plan["labels"]["160/0.05"] == "I" and plan["labels"]["20/0.8"] == "II-B"
    with pytest.raises(ValueError, match="no metrics for planned cells"):
        plan_round(2, plan, _observations(coarse, BASE), GRID, cfg, ADAPTIVE, BASE)


def test_a_plan_keeps_every_measured_cell_and_its_extra_seeds():
    """Cells and seeds measured before (an earlier run with a larger budget) stay in the plan,
    whatever this round can afford."""
    cfg = RegimeConfig(eps_mode="fixed", eps=0.05, draws=200)
    coarse = coarse_cells(GRID, 2)
    earlier = coarse + [("120", "0.05")]
    observations = _observations(earlier, BASE, extra={("160", "0.05"): [3]})
    tight = AdaptiveConfig(enabled=True, step=2, budget=0.3, min_confidence=0.9)
    plan = plan_round(1, {"cells": coarse, "seeds": {}}, observations, GRID, cfg, tight, BASE)
    assert {tuple(c) for c in plan["cells"]} == set(earlier)
    assert plan["seeds"] == {"160/0.05": [3]}
    assert plan["added"] == [] and plan["replicated"] == []
    assert plan["units"]["used_before"] == 21 > plan["units"]["allowed"] == 15
    assert plan["why_nothing"].startswith("budget spent")


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
    """3 temperatures x 3 densities; every cell connected (eps 1) and the CKA cut an Otsu split
    even of the 4 coarse cells, so they always fall in two regimes and a round has boundary cells
    to add."""
    from .conftest import TINY_CONFIG

    config = copy.deepcopy(TINY_CONFIG)
    config["knob"]["values"] = [1, 2, 3]
    config["prune"]["densities"] = list(densities)
    config["regimes"] = {"eps_mode": "fixed", "eps": 1.0, "cka_cut_mode": "split", "bootstrap": 20}
    config["regimes"]["cka_split_min_cells"] = 4
    config["adaptive"] = {"enabled": True, "rounds": 2, "budget": 1.0}
    config["runtime"] = {"device": "cpu", "threads": 1, "retrain_pack": "cell"}  # a cell's runs: one job
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
        out.add(job("retrain", **wildcards))  # both retrain seeds packed (retrain_pack cell)
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


@pytest.fixture(scope="module")
def adaptive_run(tmp_path_factory) -> tuple[Path, str]:
    """One adaptive run (two rounds) on a shared file system, made once for this module: the
    tests below continue a copy of it or compare another way of running with it."""
    from .test_incremental import run

    folder = tmp_path_factory.mktemp("adaptive")
    write_config(folder, _adaptive_config())
    return folder, run(folder)


@pytest.mark.slow
def test_adaptive_run_then_a_new_density_reuses_every_measured_cell(adaptive_run, tmp_path):
    from .test_incremental import job, jobs_in, plan, run

    folder = shutil.copytree(adaptive_run[0], tmp_path / "run", symlinks=True)  # mtimes kept
    results = folder / "results" / "tiny"
    output = adaptive_run[1]
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
    assert plan(folder) == set()  # nothing left to do

    # a plan that adds dense seed 2 to one uncertain cell runs that cell's seed and nothing else
    final = results / "adaptive/round2.json"
    kept = final.read_text()
    t, d = sorted(measured)[0]
    final.write_text(json.dumps(json.loads(kept) | {"seeds": {f"{t}/{d}": [2]}}))
    wildcards = {"temperature": t, "density": d, "seed": "2"}
    replicate = {job("dense_train", temperature=t, seed="2"), job("prune", **wildcards)}
    replicate |= {job("retrain", **wildcards), job("metrics", **wildcards, a="1", b="2")}
    assert plan(folder) == replicate | {job("collect"), job("classify"), job("plot")}
    final.write_text(kept)

    write_config(folder, _adaptive_config(densities=(0.2, 0.4, 0.6, 0.8)))
    second = jobs_in(run(folder))
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
    lower["adaptive"]["budget"] = 0.6  # 7 units: above the coarse sub-grid's 6, below what was measured
    write_config(folder, lower)
    third = jobs_in(run(folder))
    assert not {j for j in third if j[0] in ("prune", "retrain", "metrics")}
    assert len(_plan_cells(results, 2)) < len(measured_now)
    regimes = pd.read_csv(results / "regimes.csv")
    assert _measured_rows(regimes) == measured_now
    assert plan(folder) == set()  # and it stays so: nothing to do on the next look


@pytest.mark.slow
def test_an_adaptive_grid_without_a_shared_file_system_plans_as_with_one(adaptive_run, tmp_path):
    """Adaptive refinement reads each round's plan, and asks which cells an earlier run measured,
    while Snakemake builds the DAG: under a storage provider too (plans stay local, cells are
    looked up in storage). Same tables as the run on a shared file system; a later invocation
    with no local copies left has nothing to do."""
    from .test_deploy import _rsync

    _rsync()
    project = write_config(tmp_path / "project", _adaptive_config()).parent
    storage = ["--default-storage-provider", "fs", "--default-storage-prefix", str(tmp_path / "store")]
    snakemake(project, *storage, "--shared-fs-usage", "none")
    stored, shared = tmp_path / "store" / "results" / "tiny", adaptive_run[0] / "results" / "tiny"
    for table in ("metrics.csv", "regimes.csv"):
        assert (stored / table).read_bytes() == (shared / table).read_bytes(), table
    local = sorted(p.name for p in (project / "results" / "tiny").rglob("*"))
    assert local == ["adaptive", "round1.json", "round2.json"]
    elsewhere = ["--local-storage-prefix", str(tmp_path / "fresh-copies")]
    assert "Nothing to be done" in snakemake(project, "-n", *storage, *elsewhere).stdout


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
