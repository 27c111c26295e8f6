"""Comparing runs under shared thresholds (threeregime.analysis.compare, `threeregime compare`):
planted tables whose pooled thresholds, labels and differences are known by hand, and the
refusals of runs that cannot be compared."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from threeregime.analysis.cells import aggregate_cells
from threeregime.analysis.compare import IncomparableRuns, RunTables, compare_runs
from threeregime.cli import main
from threeregime.config.settings import RegimeConfig
from threeregime.stages.classify import TABLES, classify

# eps from the noise (floor below it), the CKA cut from Otsu's split, 1000 pooled draws
RULES = RegimeConfig(eps_mode="noise", eps=0.001, eps_z=2.0, cka_cut_mode="split", cka_cut=0.5, draws=1000)
TEMPS, DENSITIES = (2, 5), (0.1, 0.2, 0.4)
MC_SPREAD = {"A": 0.005, "B": 0.01}  # each cell's two dense seeds sit at mean -/+ spread
CKA_SPREAD = 0.002


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    """The command logs to the standard output it found (threeregime.io.logs); drop that handler
    after each test, whose captured output is closed then."""
    yield
    logging.getLogger().handlers.clear()


def planted(run: str, means: dict, knob: str = "epochs", densities=DENSITIES) -> pd.DataFrame:
    """Per-pair observations of one run: 2 dense seeds x 1 retrain pair per cell, mc and CKA at
    the cell's planted mean -/+ a spread; ``means`` maps (temperature, density) to (mc, cka)."""
    rows = []
    for t in TEMPS:
        for d in densities:
            mc, cka = means.get((t, d), (0.02, 0.99))
            for seed, sign in ((1, -1), (2, 1)):
                rows.append(
                    {
                        "knob": knob, "temperature": float(t), "density": float(d), "dense_seed": seed,
                        "seed_a": 1, "seed_b": 2, "mc": mc + sign * MC_SPREAD[run],
                        "cka_softmax": cka + sign * CKA_SPREAD, "test_error": 0.2 + 0.1 * (mc < -0.1),
                    }
                )  # fmt: skip
    return pd.DataFrame(rows)


# Connected cells at mc 0.02 (4 standard errors above -eps), CKA 0.99 unless planted.
# A: Regime I at (2, 0.1), II-B elsewhere but a II-A cell at (5, 0.2).
# B: as A, and Regime I at (5, 0.1) (A: II-B) and II-A at (2, 0.4) (A: II-B): two planted
# differences; (5, 0.4) differs by 0.001 in mc only: a planted non-difference.
MEANS = {
    "A": {(2, 0.1): (-0.3, 0.95), (5, 0.2): (0.02, 0.80)},
    "B": {(2, 0.1): (-0.3, 0.95), (5, 0.2): (0.02, 0.80), (5, 0.1): (-0.3, 0.95), (2, 0.4): (0.02, 0.81),
          (5, 0.4): (0.021, 0.99)},
}  # fmt: skip


def run_tables(name: str, observations: pd.DataFrame) -> RunTables:
    description = {"run": name, "knob": "epochs", "model": "cnn1d", "data": "mnist1d", "method": "uniform"}
    return RunTables(name, observations, aggregate_cells(observations), description)


def test_shared_thresholds_come_from_the_pooled_cells_by_the_runs_own_rules():
    runs = [run_tables(n, planted(n, MEANS[n])) for n in ("A", "B")]
    comparison = compare_runs(runs, RULES)
    # the std of a cell's two seeds at mean -/+ s is s*sqrt(2); with 2 observations per cell,
    # eps = eps_z * median(std) / sqrt(2): A alone 2 * 0.005 = 0.01, B alone 0.02, and pooled
    # the median of six A and six B spreads: 2 * (0.005 + 0.01) / 2 = 0.015
    assert comparison.thresholds.eps == pytest.approx(0.015, rel=1e-9)
    assert comparison.thresholds.eps_source.startswith("noise")
    # connected cells: A's five and B's four; CKA 0.80, 0.80, 0.81 and six at 0.99 (+-0.002 per
    # seed, the same means): Otsu splits between 0.81 and 0.99
    assert comparison.thresholds.cka_cut == pytest.approx((0.81 + 0.99) / 2, abs=1e-9)
    assert comparison.thresholds.cka_cut_source.startswith("split")
    labels = comparison.labels.set_index(["run", "temperature", "density"])["regime"]
    assert labels[("A", 2.0, 0.1)] == "I" and labels[("A", 5.0, 0.1)] == "II-B"
    assert labels[("B", 5.0, 0.1)] == "I" and labels[("B", 2.0, 0.4)] == "II-A"
    assert (comparison.labels["regime"] == "II-A").sum() == 3


def test_each_runs_own_thresholds_differ_from_the_shared_ones():
    """The pooling matters: each run alone gets another eps (0.01, 0.02)."""
    from threeregime.analysis.regimes import choose_thresholds

    for name, eps in (("A", 0.01), ("B", 0.02)):
        cells = aggregate_cells(planted(name, MEANS[name]))
        assert choose_thresholds(cells, RULES).eps == pytest.approx(eps, rel=1e-9)


def test_a_planted_difference_is_real_and_a_non_difference_is_not():
    runs = [run_tables(n, planted(n, MEANS[n])) for n in ("A", "B")]
    diff = compare_runs(runs, RULES).differences.set_index(["temperature", "density"])
    assert len(diff) == 6 and set(diff["run_a"]) == {"A"} and set(diff["run_b"]) == {"B"}
    barrier = diff.loc[(5.0, 0.1)]  # mc 0.02 against -0.3: 20-60 standard errors apart
    assert barrier["differs"] and barrier["change"] == "II-B -> I"
    assert barrier["p_differ"] > 0.99 and barrier["confidence"] == "confident"
    similarity = diff.loc[(2.0, 0.4)]  # CKA 0.99 against 0.81, the cut at 0.90
    assert similarity["differs"] and similarity["change"] == "II-B -> II-A" and similarity["p_differ"] > 0.99
    same = diff.loc[(5.0, 0.4)]  # mc 0.02 and 0.021, both far above -eps, CKA far above the cut
    assert not same["differs"] and same["change"] == "" and same["p_differ"] < 0.05
    assert same["confidence"] == "confident"  # of the agreement
    assert int(diff["differs"].sum()) == 2


def test_the_probability_is_the_share_of_joint_draws_in_which_the_labels_differ():
    runs = [run_tables(n, planted(n, MEANS[n])) for n in ("A", "B")]
    comparison = compare_runs(runs, RULES)
    draws = comparison.draws
    cells = draws.cells.reset_index(drop=True)
    assert list(cells.columns) == ["run", "knob", "temperature", "density"] and len(cells) == 12

    def column(run, t, d):
        hit = (cells["run"] == run) & (cells["temperature"] == t) & (cells["density"] == d)
        return int(np.flatnonzero(hit)[0])

    a, b = column("A", 5.0, 0.4), column("B", 5.0, 0.4)
    expected = float((draws.labels[:, a] != draws.labels[:, b]).mean())
    row = comparison.differences.query("temperature == 5 and density == 0.4").iloc[0]
    assert row["p_differ"] == expected
    # one eps and one cut per draw, derived from every run's cells together
    assert draws.eps.shape == (1000,) and draws.cut.shape == (1000,)


def test_three_runs_give_every_pair_and_a_run_with_its_own_densities_its_own_columns():
    c = planted("A", {}, densities=(0.5,))
    runs = [run_tables(n, planted(n, MEANS[n], densities=(*DENSITIES, 0.5))) for n in ("A", "B")]
    runs.append(run_tables("C", c))
    comparison = compare_runs(runs, RULES)
    pairs = comparison.differences.groupby(["run_a", "run_b"]).size().to_dict()
    assert pairs == {("A", "B"): 8, ("A", "C"): 2, ("B", "C"): 2}
    assert sorted(comparison.labels.query("run == 'C'")["density"].unique()) == [0.5]


def test_a_collapsed_cell_has_no_probability_and_takes_no_part_in_the_thresholds():
    a = planted("A", MEANS["A"])
    b = planted("B", MEANS["B"])
    b.loc[(b["temperature"] == 2) & (b["density"] == 0.2), "cka_softmax"] = math.nan  # collapsed
    runs = [run_tables("A", a), run_tables("B", b)]
    comparison = compare_runs(runs, RULES)
    row = comparison.differences.query("temperature == 2 and density == 0.2").iloc[0]
    assert row["regime_b"] == "collapsed" and row["differs"] and math.isnan(row["p_differ"])
    assert row["confidence"] == "unmeasured"
    assert comparison.thresholds.cka_cut == pytest.approx((0.81 + 0.99) / 2, abs=1e-9)


def test_runs_of_different_knobs_are_refused_in_one_line():
    runs = [run_tables("A", planted("A", {})), run_tables("B", planted("B", {}, knob="lr"))]
    with pytest.raises(
        IncomparableRuns, match=r"^A sweeps the epochs knob and B the lr knob: .*cannot be compared$"
    ):
        compare_runs(runs, RULES)


def test_runs_without_a_common_cell_are_refused_naming_them():
    runs = [run_tables("A", planted("A", {})), run_tables("B", planted("B", {}, densities=(0.5,)))]
    message = (
        "B shares no (temperature, density) cell with A: A has epochs 2, 5 x density 0.1, 0.2, 0.4, "
        "B has epochs 2, 5 x density 0.5"
    )
    with pytest.raises(IncomparableRuns) as caught:
        compare_runs(runs, RULES)
    assert str(caught.value) == message


def test_one_run_or_a_run_twice_is_refused():
    run = run_tables("A", planted("A", {}))
    with pytest.raises(IncomparableRuns, match="two runs or more, got 1"):
        compare_runs([run], RULES)
    with pytest.raises(IncomparableRuns, match="A given twice"):
        compare_runs([run, run], RULES)


# ----------------------------------------------------------------------------- the command
def write_run(folder, observations: pd.DataFrame, description: dict, rules: RegimeConfig = RULES) -> None:
    """A run folder as the workflow writes it: metrics.csv, cells.csv, and the classify stage's
    tables and summary (with the run's description and rules)."""
    folder.mkdir(parents=True)
    observations.to_csv(folder / "metrics.csv", index=False)
    aggregate_cells(observations).to_csv(folder / "cells.csv", index=False)
    outputs = {name: str(folder / f"{name}.csv") for name in TABLES}
    classify(str(folder / "cells.csv"), str(folder / "metrics.csv"), rules, outputs,
             str(folder / "summary.json"), "", None, description)  # fmt: skip


def describe(run: str, method: str = "uniform", setup: str | None = None) -> dict:
    found = {"run": run, "knob": "epochs", "model": "cnn1d", "data": "mnist1d", "method": method}
    return found | {"setup": setup} if setup else found


def test_the_command_writes_the_tables_and_figures_titled_with_every_run(tmp_path, capsys):
    write_run(tmp_path / "results" / "a", planted("A", MEANS["A"]), describe("a", "uniform"))
    write_run(tmp_path / "results" / "b", planted("B", MEANS["B"]), describe("b", "global"))
    out = tmp_path / "cmp"
    assert main(["compare", str(tmp_path / "results/a"), str(tmp_path / "results/b"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "shared thresholds: eps 0.015, CKA cut 0.9" in printed
    assert "a vs b: 2 of 6 shared cells differ, 2 of them with p >= 0.9" in printed
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.query("differs")["change"]) == ["II-B -> II-A", "II-B -> I"]
    labels = pd.read_csv(out / "comparison_labels.csv")
    assert set(labels["run"]) == {"a", "b"} and "own_regime" in labels
    # b alone has four connected cells, too few for a split (cka_split_min_cells 5): its own
    # cut is the fixed 0.5, which calls its two low-CKA cells II-B; the pooled split calls them
    # II-A. a's own split (five cells) already gave its labels.
    moved = labels[labels["regime"] != labels["own_regime"]]
    assert list(zip(moved["run"], moved["temperature"], moved["density"])) == [("b", 2, 0.4), ("b", 5, 0.2)]
    assert set(moved["own_regime"]) == {"II-B"} and set(moved["regime"]) == {"II-A"}
    summary = json.loads((out / "comparison.json").read_text())
    assert summary["thresholds"]["eps"] == pytest.approx(0.015) and summary["reference"] == "a"
    assert summary["pairs"][0]["changes"] == {"II-B -> I": 1, "II-B -> II-A": 1}
    assert summary["relabelled_by_shared_thresholds"] == {"a": 0, "b": 2}
    page = (out / "tables" / "comparison.html").read_text()
    assert "Where the runs differ" in page and "regime-II-A" in page
    for name in ("comparison_maps", "comparison_difference"):
        assert (out / f"{name}.png").stat().st_size > 10_000 and (out / f"{name}.pdf").is_file()


def test_the_figures_name_run_knob_model_and_method(tmp_path):
    from threeregime.views.compare import difference_figure, maps_figure

    runs = [run_tables("A", planted("A", MEANS["A"])), run_tables("B", planted("B", MEANS["B"]))]
    runs[1] = RunTables("B", runs[1].observations, runs[1].cells, describe("B", "lamp, 2:4"))
    comparison = compare_runs(runs, RULES)
    for make in (maps_figure, difference_figure):
        fig = make(comparison)
        texts = [fig._suptitle.get_text()] + [ax.get_title() for ax in fig.axes]
        joined = " ".join(texts).replace("\n", " ")
        for needed in ("run A | B", "knob epochs", "model cnn1d", "pruning uniform | lamp, 2:4"):
            assert needed in joined, (make.__name__, needed, joined)


@pytest.mark.parametrize(
    "second,expected",
    [
        (("b", "lr"), "error: a sweeps the epochs knob and b the lr knob"),
        (("b", "dens"), "error: b shares no (temperature, density) cell with a: a has epochs 2, 5 x density"),
    ],
)
def test_the_command_refuses_in_one_line(tmp_path, capsys, second, expected):
    write_run(tmp_path / "a", planted("A", {}), describe("a"))
    knob = "lr" if second[1] == "lr" else "epochs"
    densities = (0.5,) if second[1] == "dens" else DENSITIES
    write_run(
        tmp_path / "b", planted("B", {}, knob=knob, densities=densities), describe("b") | {"knob": knob}
    )
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err
    assert not (tmp_path / "o").exists()


def test_a_folder_that_is_no_run_is_refused_naming_the_file(tmp_path, capsys):
    write_run(tmp_path / "a", planted("A", {}), describe("a"))
    (tmp_path / "b").mkdir()
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{tmp_path / 'b'}: no metrics.csv, cells.csv, summary.json" in err
