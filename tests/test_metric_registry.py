"""The metric registry: columns, cell aggregation, panels and captions derive from one entry each;
list-valued metrics flow through collect and the cell table."""

from __future__ import annotations

import json

import jinja2
import numpy as np
import pandas as pd
import pytest
from docutils.core import publish_parts

from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError, PlotConfig
from threeregime.registry.metrics import METRICS, Metric, Panel, combine, panel_caption, panels
from threeregime.views.plot import phase_figure

from .conftest import REPO
from .test_plot import _regimes

VECTORS = {
    "layer_alpha": Metric("layer_alpha", "model", "a test", "per-layer values", "vector", "elementwise"),
    "esd_nodes": Metric("esd_nodes", "model", "a test", "quadrature nodes", "vector", "pool"),
    "esd_weights": Metric(
        "esd_weights",
        "model",
        "a test",
        "quadrature weights",
        "vector",
        "pool_weights",
        weights_of="esd_nodes",
    ),
}


@pytest.fixture
def vector_metrics(monkeypatch):
    for name, metric in VECTORS.items():
        monkeypatch.setitem(METRICS, name, metric)


def _pair_file(folder, temperature, seed, shift):
    """One metrics file as the metrics command writes it, with list-valued model metrics."""
    models = [
        {
            "retrain_seed": r,
            "test_error": 0.1 + shift + 0.01 * r,
            "train_loss": 0.5,
            "layer_alpha": [2.0 + shift + r, 4.0 + r],
            "esd_nodes": [1.0 * r, 10.0 + shift],
            "esd_weights": [0.25, 0.75],
            "not_registered": [1, 2],
            "seconds": 1.0,
        }
        for r in (1, 2)
    ]
    record = {
        "knob": "epochs", "temperature": float(temperature), "density": 0.5, "dense_seed": seed,
        "seed_a": 1, "seed_b": 2, "mc": -0.01 * shift, "cka_softmax": 0.9, "lmc_t": [0, 0.5, 1],
        "seconds": 2.0, "models": models,
    }  # fmt: skip
    path = folder / f"t{temperature}-s{seed}.json"
    path.write_text(json.dumps(record))
    return path


def test_collect_handles_list_valued_metrics(tmp_path, vector_metrics, capsys):
    from threeregime.cli import main

    for t in ("1", "3"):
        for seed, shift in (("1", 0.0), ("2", 0.1 if t == "3" else 0.0)):
            _pair_file(tmp_path, t, seed, shift)
    grid = {"temperature": ["3", "1"], "density": ["0.5"], "seed": ["1", "2"], "pair": [[1, 2]]}
    out = {name: str(tmp_path / f"{name}.csv") for name in ("models", "metrics", "cells")}
    args = ["collect", "--pattern", str(tmp_path / "t{temperature}-s{seed}.json"), "--grid", json.dumps(grid)]
    args += ["--models-csv", out["models"], "--metrics", out["metrics"], "--cells", out["cells"]]
    assert main(args) == 0
    assert "not_registered: a list that is not a registered vector metric" in capsys.readouterr().out
    models = pd.read_csv(out["models"])
    assert len(models) == 8 and json.loads(models["not_registered"].iloc[0]) == [1, 2]
    metrics = pd.read_csv(out["metrics"])
    assert "not_registered" not in metrics and "lmc_t" not in metrics
    row = metrics[(metrics["temperature"] == 3) & (metrics["dense_seed"] == 2)].iloc[0]
    assert json.loads(row["layer_alpha"]) == pytest.approx([3.6, 5.5])  # mean of [3.1, 5] and [4.1, 6]
    assert json.loads(row["esd_nodes"]) == pytest.approx([1.0, 10.1, 2.0, 10.1])  # both models pooled
    assert json.loads(row["esd_weights"]) == pytest.approx([0.125, 0.375, 0.125, 0.375])  # still sums to 1
    assert row["test_error"] == pytest.approx(0.215)
    cells = pd.read_csv(out["cells"]).set_index("temperature")
    assert cells.loc[3, "n"] == 2 and cells.loc[3, "test_error_mean"] == pytest.approx(0.165)
    assert json.loads(cells.loc[3, "layer_alpha_mean"]) == pytest.approx([3.55, 5.5])
    weights = json.loads(cells.loc[3, "esd_weights_mean"])
    assert len(weights) == 8 and sum(weights) == pytest.approx(1.0)
    assert json.loads(cells.loc[1, "layer_alpha_mean"]) == pytest.approx([3.5, 5.5])


def test_elementwise_mean_refuses_lists_of_other_lengths(vector_metrics):
    with pytest.raises(ValueError, match="layer_alpha: elementwise mean of lists of lengths \\[2, 3\\]"):
        combine("layer_alpha", [[1, 2], [1, 2, 3]])


F = "threeregime.compute.landscape:output_similarity"  # a function that exists


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (Metric("half", "cell", F, "c", kind="matrix"), "kind 'matrix' is not one of"),
        (Metric("half", "models", F, "c"), "scope 'models' is not one of"),
        (Metric("half", "model", F, "c", aggregate="median"), "a scalar cannot aggregate by 'median'"),
        (Metric("half", "model", F, "c", "vector", "elementwise", Panel("t", "l")), "a vector has no"),
        (Metric("half", "model", "", "c"), "computed_by must be 'module:function', got ''"),
        (Metric("half", "model", F, "c", "vector", "pool_weights"), "weights_of must name a registered"),
    ],
)
def test_a_half_registered_metric_fails_validation_in_one_line(monkeypatch, tiny_config, entry, message):
    monkeypatch.setitem(METRICS, "half", entry)
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config)
    assert str(info.value).startswith(f"metric registry: half: {message}") and "\n" not in str(info.value)


def test_panels_are_the_registry_entries_with_a_panel():
    columns = [column for column, _ in panels()]
    # a panel is drawn only where its column has values (threeregime.views.plot)
    assert columns == [
        "test_error_mean", "normalized_test_error", "mc_mean", "cka_softmax_mean", "cka_hidden_mean",
        "hessian_top_eigenvalue_mean", "hessian_trace_mean", "weight_alpha_mean", "test_loss_mean",
        "perplexity_mean", "p_label",
    ]  # fmt: skip


def test_a_registered_metric_gets_its_panel_with_its_colour_map_and_log_scale(monkeypatch):
    monkeypatch.setitem(
        METRICS,
        "sharpness",
        Metric("sharpness", "model", F, "a caption", panel=Panel("Sharp", "s [au]", "magma", log=True)),
    )
    regimes = _regimes()
    regimes["sharpness_mean"] = np.linspace(1, 1000, len(regimes))
    fig = phase_figure(regimes, PlotConfig())
    axes = {ax.get_gid(): ax for ax in fig.axes if ax.get_gid()}
    image = axes["sharpness_mean"].images[0]
    assert axes["sharpness_mean"].get_title() == "Sharp"
    assert image.get_cmap().name == "magma" and type(image.norm).__name__ == "LogNorm"
    assert axes["test_error_mean"].images[0].get_cmap().name == "viridis"  # plot.cmap by default


def test_report_caption_lists_the_registered_panels():
    """The phase diagram caption as Snakemake renders it (Jinja, then reStructuredText)."""
    template = (REPO / "workflow" / "report" / "phase_diagram.rst").read_text()
    params = type("Params", (), {"panels": panel_caption()})
    text = jinja2.Template(template).render(snakemake=type("S", (), {"params": params}))
    settings = {"halt_level": 2, "report_level": 2, "warning_stream": False}
    body = publish_parts(text, writer="html", settings_overrides=settings)["body"]
    for _, panel in panels():
        assert f"<strong>{panel.title}</strong>" in body
