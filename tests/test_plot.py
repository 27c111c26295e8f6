"""Figures: layout, axes, temperature direction, and regime boundaries where the classification
puts them (checked on the drawn line segments); HTML table pages."""

from __future__ import annotations

import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from threeregime.config.settings import PlotConfig
from threeregime.views.plot import boundary_segments, phase_diagram, phase_figure, regime_figure, regime_map
from threeregime.views.tables import html_table, write_html_tables

# 3 temperatures x 2 densities; rows coldest first. For epochs the coldest is 40 epochs.
#            density 0.1   density 0.5
# 40 (cold)  I             II-B
# 20         II-A          II-B
# 10 (hot)   II-A          II-A
LAYOUT = {(40, 0.1): "I", (40, 0.5): "II-B", (20, 0.1): "II-A", (20, 0.5): "II-B"}
LAYOUT |= {(10, 0.1): "II-A", (10, 0.5): "II-A"}


def _regimes(knob="epochs", temps=(40, 20, 10)):
    rename = dict(zip((40, 20, 10), temps))
    rows = []
    for (t, d), regime in LAYOUT.items():
        rows.append(
            {
                "knob": knob,
                "temperature": rename[t],
                "density": d,
                "regime": regime,
                "test_error_mean": 0.1 + 0.01 * t / 10 + (0.05 if d == 0.1 else 0),
                "normalized_test_error": 0.0,
                "mc_mean": -0.3 if regime == "I" else 0.0,
                "cka_softmax_mean": 0.97 if regime == "II-B" else 0.9,
                "hessian_top_eigenvalue_mean": 10.0 * t,
                "hessian_trace_mean": 50.0 * t,
                "eps": 0.02,
                "cka_cut": 0.95,
                "stability": 1.0 if regime != "II-A" else 0.5,
            }
        )
    return pd.DataFrame(rows)


# Expected edges in image coordinates (x = density index, y = row index, coldest row 0):
# row 0: I | II-B (vertical, x = 0.5)                       -> LMC boundary
# row 1: II-A | II-B (vertical, x = 0.5)                    -> CKA boundary
# col 0: I (row 0) above II-A (row 1): horizontal y = 0.5   -> LMC boundary
# col 1: II-B (row 1) below II-A (row 2): horizontal y = 1.5 -> CKA boundary
EXPECTED = {
    ("I", (0.5, 0.5), (-0.5, 0.5)),
    ("II", (0.5, 0.5), (0.5, 1.5)),
    ("I", (-0.5, 0.5), (0.5, 0.5)),
    ("II", (0.5, 1.5), (1.5, 1.5)),
}


def _drawn(ax) -> set:
    out = set()
    for line in ax.lines:
        gid = line.get_gid() or ""
        if gid.startswith("boundary-"):
            xs, ys = line.get_data()
            out.add((gid.removeprefix("boundary-"), tuple(map(float, xs)), tuple(map(float, ys))))
    return out


def test_boundary_segments_on_known_grid():
    grid = np.array([["I", "II-B"], ["II-A", "II-B"], ["II-A", "II-A"]])
    assert set(boundary_segments(grid)) == EXPECTED
    assert boundary_segments(np.array([["II-B", "II-B"], ["II-B", "II-B"]])) == []


def test_phase_diagram_panels_axes_and_boundaries():
    fig = phase_figure(_regimes(), PlotConfig(ncols=3))
    panels = [ax for ax in fig.axes if ax.get_gid()]
    assert [ax.get_gid() for ax in panels] == [
        "test_error_mean",
        "normalized_test_error",
        "mc_mean",
        "cka_softmax_mean",
        "hessian_top_eigenvalue_mean",
        "hessian_trace_mean",
    ]
    # a 2 x 3 grid: two distinct rows of panels, three distinct columns
    rows = {round(ax.get_position().y0, 3) for ax in panels}
    cols = {round(ax.get_position().x0, 3) for ax in panels}
    assert len(rows) == 2 and len(cols) == 3
    for ax in panels:
        assert _drawn(ax) == EXPECTED, ax.get_gid()
        # temperature rises upward: the bottom row is the coldest (most epochs)
        assert [t.get_text() for t in ax.get_yticklabels()] == ["40", "20", "10"]
        assert ax.get_ylim()[0] < ax.get_ylim()[1]
        assert "dense training epochs [epochs]" in " ".join(ax.get_ylabel().split())
        assert "temperature rises upward" in " ".join(ax.get_ylabel().split())
        assert ax.get_xlabel().startswith("density")
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.5"]
    # boundary styles: solid for the LMC boundary, dashed for the CKA boundary
    styles = {line.get_gid(): line.get_linestyle() for line in panels[0].lines if line.get_gid()}
    assert styles["boundary-I"] == "-" and styles["boundary-II"] == "--"
    # stars on the lowest test error of each density: the hottest row (10 epochs) in both
    stars = [line.get_data() for line in panels[0].lines if line.get_gid() == "best-test-error"]
    assert sorted(round(float(y[0])) for _, y in stars) == [2, 2]
    legend = fig.legends[0]
    assert any("eps = 0.02" in t.get_text() for t in legend.get_texts())
    assert any("cut = 0.95" in t.get_text() for t in legend.get_texts())
    plt.close(fig)


def test_batch_size_knob_puts_the_smallest_batch_on_top():
    regimes = _regimes(knob="batch_size", temps=(512, 128, 32))
    fig = phase_figure(regimes, PlotConfig())
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["512", "128", "32"]
    assert "dense batch size [samples per step]" in " ".join(ax.get_ylabel().split())
    assert "smaller batch" in ax.get_ylabel()
    assert _drawn(ax) == EXPECTED
    plt.close(fig)


def test_missing_metrics_drop_their_panel():
    regimes = _regimes().drop(columns=["hessian_trace_mean"])
    regimes["hessian_top_eigenvalue_mean"] = np.nan
    fig = phase_figure(regimes, PlotConfig(ncols=3))
    assert [ax.get_gid() for ax in fig.axes if ax.get_gid()] == [
        "test_error_mean",
        "normalized_test_error",
        "mc_mean",
        "cka_softmax_mean",
    ]
    plt.close(fig)


def test_regime_map_legend_markers_and_boundaries():
    selection = pd.DataFrame(
        {"density": [0.1, 0.5], "best_temperature": [10, 10], "rule_temperature": [20, 40]}
    )
    fig = regime_figure(_regimes(), PlotConfig(), selection)
    ax = fig.axes[0]
    assert _drawn(ax) == EXPECTED
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:3] == ["Regime I", "Regime II-A", "Regime II-B"]
    assert "pick from training metrics" in labels and "lowest test error" in labels
    picks = {tuple(np.round(np.ravel(line.get_data()), 2)) for line in ax.lines if line.get_gid() == "pick"}
    assert picks == {(0.32, 1.32), (1.32, 0.32)}  # density 0.1 at 20 epochs (row 1), 0.5 at 40
    texts = [t.get_text() for t in ax.texts]
    assert "I" in texts and "II-A\n(50%)" in texts and "II-B" in texts
    assert "mc < -0.02" in ax.get_title() and "CKA < 0.95" in ax.get_title()
    plt.close(fig)


def test_boundary_intervals_are_drawn_where_the_table_puts_them():
    """Each boundary's interval is a bar across its row from low to high (an end beyond the grid
    runs to the edge), its estimate a diamond; in the regime map and every phase-diagram panel."""
    boundaries = pd.DataFrame(
        [
            {"knob": "epochs", "temperature": 40, "boundary": "I|II", "density": np.sqrt(0.05),
             "low": 0.1, "high": 0.5, "interval": 0.9},
            {"knob": "epochs", "temperature": 20, "boundary": "II-A|II-B", "density": np.sqrt(0.05),
             "low": np.nan, "high": 0.5, "interval": 0.9},
        ]
    )  # fmt: skip
    figures = [regime_figure(_regimes(), PlotConfig(), None, boundaries)]
    figures.append(phase_figure(_regimes(), PlotConfig(), boundaries=boundaries))
    for fig in figures:
        for ax in [a for a in fig.axes if a.get_images()]:  # heatmaps, not colour bars
            bands = {
                line.get_gid(): tuple(np.round(np.ravel(line.get_data()), 2))
                for line in ax.lines
                if (line.get_gid() or "").startswith(("band-", "estimate-"))
            }
            # rows: 40 epochs is row 0, 20 epochs row 1; bars sit below the row's centre
            assert bands == {
                "band-I|II": (0.0, 1.0, -0.42, -0.42),
                "estimate-I|II": (0.5, -0.42),
                "band-II-A|II-B": (-0.5, 1.0, 0.7, 0.7),  # no low end: from the grid's edge
                "estimate-II-A|II-B": (0.5, 0.7),
            }
        plt.close(fig)
    labels = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert "I | II boundary: estimate and 90% interval" in labels


def test_figures_are_written_as_png_and_pdf(tmp_path):
    regimes = _regimes()
    paths = [tmp_path / "phase.png", tmp_path / "phase.pdf"]
    phase_diagram(regimes, PlotConfig(dpi=60), [str(p) for p in paths])
    regime_map(regimes, PlotConfig(dpi=60), [str(tmp_path / "map.png"), str(tmp_path / "map.pdf")])
    for path in [*paths, tmp_path / "map.png"]:
        assert path.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert (tmp_path / "map.pdf").read_bytes()[:5] == b"%PDF-"


def test_html_tables(tmp_path):
    frame = pd.DataFrame(
        {"density": [0.1], "regime": ["II-A"], "agree": [True], "x": [np.nan], "a<b>": ["<i>&"]}
    )
    page = html_table(frame, "Title <1>", "note & more")
    cells = re.findall(r'<td [^>]*class="([^"]*)"[^>]*>(.*?)</td>', page)
    assert [text for _, text in cells] == ["0.1", "II-A", "yes", "", "&lt;i&gt;&amp;"]  # escaped
    assert [("regime-II-A" in classes.split()) for classes, _ in cells] == [False, True, False, False, False]
    assert ">a&lt;b&gt;</th>" in page and "<i>" not in page
    assert "Title &lt;1&gt;" in page and "note &amp; more" in page
    names = ("regimes", "advice", "advice_cells", "selection", "robustness", "boundaries")
    tables = {name: frame for name in names}
    paths = write_html_tables(tables | {"summary": {"thresholds": {"eps": 0.02}}}, tmp_path)
    assert len(paths) == 7
    assert "thresholds.eps" in (tmp_path / "summary.html").read_text()


@pytest.mark.parametrize("ncols", [2, 6])
def test_layout_follows_ncols(ncols):
    fig = phase_figure(_regimes(), PlotConfig(ncols=ncols))
    panels = [ax for ax in fig.axes if ax.get_gid()]
    rows = {round(ax.get_position().y0, 3) for ax in panels}
    assert len(rows) == 6 // ncols
    plt.close(fig)


def test_instability_figure_draws_each_densitys_barrier_against_the_knob():
    from threeregime.views.plot import instability_figure

    regimes = _regimes()
    regimes["barrier_mean"] = 0.001 * regimes["temperature"]
    regimes["barrier_std"] = 0.002
    fig = instability_figure(regimes, stable_barrier=0.02)
    ax = fig.axes[0]
    lines = {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}
    assert set(lines) == {"barrier-0.1", "barrier-0.5", "stable-barrier"}
    # the knob's values evenly spaced, smallest left
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "40"]
    for density in ("0.1", "0.5"):
        x, y = lines[f"barrier-{density}"].get_data()
        assert list(x) == [0, 1, 2] and np.allclose(y, [0.01, 0.02, 0.04])
    assert lines["stable-barrier"].get_ydata()[0] == 0.02
    plt.close(fig)


def _texts(fig) -> list:
    """Every visible, non-empty text of a drawn figure with its extent in pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for text in fig.findobj(matplotlib.text.Text):
        if text.get_visible() and text.get_text().strip() and text.get_figure() is not None:
            found.append((text.get_text(), text.get_window_extent(renderer)))
    return found


def _overlaps(texts) -> list[tuple[str, str]]:
    clashes = []
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1 :]:
            overlap_x = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            overlap_y = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if overlap_x > 1 and overlap_y > 1:  # pixels
                clashes.append((a, b))
    return clashes


def test_figures_stay_readable_for_a_long_knob_name_and_a_two_by_two_grid(monkeypatch):
    """No text of the phase diagram or the regime map covers another or leaves the figure."""
    from threeregime.registry.knobs import KNOBS, Knob

    long_knob = Knob(
        name="momentum_of_the_heavy_ball_optimizer", field="momentum", schedule="runs", hotter=1,
        why="a long one", label="heavy-ball momentum coefficient of the dense training runs",
        unit="dimensionless coefficient between zero and one", integer=False,
        words=("more heavy-ball momentum in dense training", "less heavy-ball momentum in dense training"),
        retrain="the base recipe's momentum",
    )  # fmt: skip
    monkeypatch.setitem(KNOBS, long_knob.name, long_knob)
    regimes = _regimes(knob=long_knob.name)
    regimes = regimes[regimes["temperature"].isin([20, 10])].reset_index(drop=True)  # 2 x 2
    assert len(regimes) == 4
    selection = pd.DataFrame(
        {"density": [0.1, 0.5], "best_temperature": [10, 20], "rule_temperature": [20, 20]}
    )
    for fig in (phase_figure(regimes, PlotConfig()), regime_figure(regimes, PlotConfig(), selection)):
        texts = _texts(fig)
        assert _overlaps(texts) == [], fig
        frame = fig.bbox
        for text, box in texts:
            inside = box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y0 >= frame.y0 - 1
            assert inside and box.y1 <= frame.y1 + 1, f"{text!r} leaves the figure"
        plt.close(fig)
