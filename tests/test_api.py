"""The Python API (threeregime.api) and its page: docs/api.md's worked script runs against two
fabricated runs, and each call does what the page says."""

from __future__ import annotations

import logging
import re

import pandas as pd
import pytest

from threeregime import api
from threeregime.analysis.compare import IncomparableRuns
from threeregime.config.settings import ConfigError

from .conftest import REPO
from .test_compare import MEANS, describe, planted, write_run

PAGE = REPO / "docs" / "api.md"
DEMO_DENSITIES, WANDA_DENSITIES = (0.1, 0.2, 0.4), (0.2, 0.4, 0.6)


@pytest.fixture(autouse=True)
def _no_stale_log_handler():
    yield
    logging.getLogger().handlers.clear()


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """results/demo and results/mnist1d-wanda as the workflow writes them (planted tables), the
    working directory their parent."""
    write_run(tmp_path / "results/demo", planted("A", MEANS["A"], densities=DEMO_DENSITIES), describe("demo"))
    wanda = planted("B", MEANS["B"], densities=WANDA_DENSITIES)
    write_run(tmp_path / "results/mnist1d-wanda", wanda, describe("mnist1d-wanda", "wanda"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def worked_script() -> str:
    text = PAGE.read_text()
    marker = text.index("<!-- worked script:")
    return re.search(r"```python\n(.*?)```", text[marker:], re.S).group(1)


def test_the_pages_worked_script_runs(runs, capsys):
    exec(compile(worked_script(), str(PAGE), "exec"), {})
    printed = capsys.readouterr().out
    assert "'run': 'demo'" in printed and "shared eps" in printed
    for name in ("phase_diagram.png", "regime_map.png"):
        assert (runs / "figures/demo-eps-0.05" / name).stat().st_size > 10_000
    out = runs / "figures/demo-vs-wanda"
    for name in ("comparison.csv", "comparison_labels.csv", "comparison.json", "comparison_maps.png",
                 "comparison_difference.png", "tables/comparison.html"):  # fmt: skip
        assert (out / name).is_file(), name
    shared = pd.read_csv(out / "comparison.csv")
    assert sorted(shared["density"].unique()) == [0.2, 0.4]  # the densities both runs have


def test_load_run_reads_the_tables_and_rules(runs):
    demo = api.load_run("demo")  # a run name under results/
    assert demo.folder.as_posix() == "results/demo"
    assert demo.name == "demo" and demo.description["method"] == "uniform"
    assert demo.rules.eps_mode == "noise" and demo.rules.draws == 1000
    assert (
        len(demo.cells) == 6
        and len(demo.metrics) == 12
        and set(demo.regimes["regime"]) == {"I", "II-A", "II-B"}
    )


def test_reclassify_changes_the_labels_and_leaves_the_files(runs):
    demo = api.load_run("results/demo")
    before = (runs / "results/demo/regimes.csv").read_text()
    # a fixed eps of 0.5 makes the barrier at mc -0.3 no barrier: Regime I disappears
    loose = demo.reclassify(eps_mode="fixed", eps=0.5)
    assert loose.rules.eps == 0.5 and demo.rules.eps_mode == "noise"
    assert "I" not in set(loose.regimes["regime"]) and "I" in set(demo.regimes["regime"])
    assert loose.summary["thresholds"]["eps"] == 0.5
    assert (runs / "results/demo/regimes.csv").read_text() == before
    with pytest.raises(ConfigError, match="^epsilon: not regimes settings"):
        demo.reclassify(epsilon=0.1)


def test_draw_titles_the_figures_with_the_run(runs):
    from threeregime.views.plot import regime_figure

    demo = api.load_run("results/demo")
    paths = demo.draw(runs / "figs", formats=("png", "pdf"))
    assert [p.name for p in paths] == [
        "phase_diagram.png",
        "phase_diagram.pdf",
        "regime_map.png",
        "regime_map.pdf",
    ]
    assert all(p.is_file() for p in paths)
    title = regime_figure(demo.regimes, api.PlotConfig(), description=demo.description).axes[0].get_title()
    assert " ".join(title.split()).startswith(
        "demo: knob epochs, model cnn1d on mnist1d, pruning uniform Regimes:"
    )


def test_compare_refuses_runs_without_a_common_cell(runs):
    write_run(runs / "results/far", planted("A", {}, densities=(0.8,)), describe("far"))
    with pytest.raises(IncomparableRuns, match="^far shares no .* cell with demo"):
        api.compare("results/demo", "results/far")


def test_load_run_names_what_is_missing(runs):
    with pytest.raises(ConfigError, match="nowhere: no such run folder"):
        api.load_run("nowhere")
