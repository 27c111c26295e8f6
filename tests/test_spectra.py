"""Heavy-tailed weight spectra (alpha) and AlphaPruning's allocation, against hand computations,
known power laws and the other pruning methods at equal global density; the alpha metric and the
alpha method through the real commands."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from threeregime.compute.models import prunable_layers
from threeregime.compute.prune import alpha_densities, compute_masks, layer_densities, mask_density
from threeregime.compute.spectra import fit_power_law, layer_alphas, layer_eigenvalues
from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError

from .test_prune import _model


def _hand_fit(eigenvalues: np.ndarray) -> tuple[float, float, float]:
    """The KS-chosen continuous power-law fit written out in numpy, one xmin at a time."""
    x = np.sort(eigenvalues)
    best = (math.inf, None, None)
    for i in range(len(x) - 1):
        tail = x[i:]
        alpha = 1 + len(tail) / np.sum(np.log(tail / x[i]))
        cdf_fit = 1 - (tail / x[i]) ** (1 - alpha)
        cdf_data = np.arange(len(tail)) / len(tail)
        distance = np.max(np.abs(cdf_fit - cdf_data))
        if distance < best[0]:
            best = (distance, alpha, x[i])
    return best[1], best[2], best[0]


def test_fit_matches_the_hand_computation():
    rng = np.random.default_rng(0)
    values = np.exp(rng.normal(size=300))  # lognormal: the fit must pick xmin itself
    fit = fit_power_law(torch.from_numpy(values))
    alpha, xmin, distance = _hand_fit(values)
    assert fit.alpha == pytest.approx(alpha, rel=1e-10) and fit.xmin == pytest.approx(xmin, rel=1e-12)
    assert fit.ks_distance == pytest.approx(distance, rel=1e-9)


@pytest.mark.parametrize("alpha", [2.0, 3.5])
def test_fit_recovers_a_known_power_law(alpha):
    """Pareto samples above 1 with a lognormal bulk below: the tail exponent comes back."""
    rng = np.random.default_rng(1)
    tail = (1 - rng.random(3000)) ** (-1 / (alpha - 1))  # p(x) ~ x^-alpha, x >= 1
    bulk = np.exp(rng.normal(-2, 0.3, size=1000))
    fit = fit_power_law(torch.from_numpy(np.concatenate([bulk, tail])))
    assert fit.alpha == pytest.approx(alpha, abs=0.12)
    assert 0.5 < fit.xmin < 2.5


def test_conv_weights_are_one_matrix_per_kernel_position():
    weight = torch.randn(6, 4, 3, 2, generator=torch.Generator().manual_seed(0))
    by_hand = torch.cat(
        [
            torch.linalg.eigvalsh(weight[:, :, i, j].double().T @ weight[:, :, i, j].double())
            for i in range(3)
            for j in range(2)
        ]
    )
    torch.testing.assert_close(layer_eigenvalues(weight), torch.sort(by_hand).values, rtol=1e-10, atol=1e-12)
    conv1d = weight[:, :, :, 0]
    by_hand = torch.cat(
        [torch.linalg.eigvalsh(conv1d[:, :, i].double().T @ conv1d[:, :, i].double()) for i in range(3)]
    )
    torch.testing.assert_close(layer_eigenvalues(conv1d), torch.sort(by_hand).values, rtol=1e-10, atol=1e-12)
    linear = weight[:, :, 0, 0]
    torch.testing.assert_close(
        layer_eigenvalues(linear), torch.linalg.eigvalsh(linear.double().T @ linear.double())
    )


def test_alpha_is_scale_free():
    weight = torch.randn(32, 16, 3, 3, generator=torch.Generator().manual_seed(2))
    assert layer_alphas({"w": weight})["w"] == pytest.approx(layer_alphas({"w": 7.5 * weight})["w"], rel=1e-6)


# ----------------------------------------------------------------------------- allocation
def test_allocation_is_the_papers_linear_rule_at_the_global_density():
    sizes = {"a": 1000, "b": 4000, "c": 2000}
    alphas = {"a": 2.0, "b": 4.0, "c": 3.0}
    densities = alpha_densities(sizes, alphas, density=0.3, epsilon=0.2)
    # by hand: ratios 0.8, 1.2, 1.0, times the factor that prunes 70% of 7000 weights
    factor = 0.7 * 7000 / (1000 * 0.8 + 4000 * 1.2 + 2000 * 1.0)
    expected = {"a": 1 - 0.8 * factor, "b": 1 - 1.2 * factor, "c": 1 - 1.0 * factor}
    assert densities == pytest.approx(expected, rel=1e-12)
    assert sum(sizes[k] * densities[k] for k in sizes) == pytest.approx(0.3 * 7000, rel=1e-12)
    assert densities["a"] > densities["c"] > densities["b"]  # heavier tail (smaller alpha) keeps more
    assert alpha_densities(sizes, dict.fromkeys(sizes, 3.0), 0.3, 0.2) == pytest.approx(
        dict.fromkeys(sizes, 0.3)
    )


def test_allocation_clips_to_one_weight_and_keeps_the_total():
    sizes = {"tiny": 10, "big": 10000, "mid": 1000}
    densities = alpha_densities(sizes, {"tiny": 9.0, "big": 2.0, "mid": 3.0}, density=0.05, epsilon=0.9)
    assert densities["tiny"] == pytest.approx(0.1)  # would be below one weight: clipped to one
    assert all(0 < d <= 1 for d in densities.values())
    assert sum(sizes[k] * densities[k] for k in sizes) == pytest.approx(0.05 * 11010, rel=1e-12)


@pytest.mark.parametrize("density", [0.05, 0.2, 0.5])
def test_alpha_pruning_against_uniform_global_and_lamp_at_equal_density(density):
    model = _model("preresnet20", seed=3)
    layers = prunable_layers(model)
    total = sum(w.numel() for w in layers.values())
    masks = {
        m: compute_masks(model, density, m, {"alpha_epsilon": 0.3})
        for m in ("uniform", "global", "lamp", "alpha")
    }
    for method in ("global", "lamp"):
        assert mask_density(masks[method]) == round(density * total) / total
    for method in ("uniform", "alpha"):  # per-layer rounding: at most half a weight per layer off
        assert abs(mask_density(masks[method]) - density) <= len(layers) / (2 * total)
    alphas = layer_alphas(layers, "xmin_mid")  # AlphaPruning's rule for image classifiers
    kept = layer_densities(masks["alpha"])
    expected = alpha_densities({k: w.numel() for k, w in layers.items()}, alphas, density, 0.3)
    for name, mask in masks["alpha"].items():
        assert int(mask.sum()) == round(expected[name] * mask.numel()), name
        weight = layers[name].detach().abs()
        if 0 < int(mask.sum()) < mask.numel():  # magnitude pruning inside the layer
            assert weight[mask].min() >= weight[~mask].max()
    order = sorted(alphas, key=alphas.get)
    assert kept[order[0]] > kept[order[-1]]  # lowest alpha keeps more than highest
    assert max(kept.values()) - min(kept.values()) > 0.05  # not uniform
    assert masks["alpha"].keys() == masks["uniform"].keys()


# ----------------------------------------------------------------------------- through the CLI
def test_alpha_pruning_and_the_alpha_metric_through_the_commands(tmp_path, tiny_config):
    """prepare-data, dense, prune (alpha), retrain x2, metrics (weight_alpha on), collect."""
    from threeregime.cli import main
    from threeregime.io.files import load_checkpoint

    tiny_config["train"]["epochs"] = 1
    tiny_config["knob"]["values"] = [1]
    tiny_config["prune"] = {"method": "alpha", "densities": [0.5], "alpha_epsilon": 0.25}
    tiny_config["metrics"]["weight_alpha"] = True
    cfg = load_config(tiny_config)
    assert cfg.prune_spec("0.5") == {
        "method": "alpha",
        "density": 0.5,
        "alpha_epsilon": 0.25,
        "alpha_xmin": "xmin_mid",
    }
    assert cfg.metrics_spec()["weight_alpha"] is True
    compute = ["--runtime", json.dumps({"device": "cpu"}), "--threads", "1"]
    data, dense, pruned = (str(tmp_path / f"{n}.pt") for n in ("data", "dense", "pruned"))
    assert main(["prepare-data", "--spec", json.dumps(cfg.data_spec()), "--out", data]) == 0
    spec = json.dumps(cfg.dense_spec("1", 1))
    assert main(["dense", "--spec", spec, "--data", data, "--init", "", "--out", dense, *compute]) == 0
    assert (
        main(["prune", "--spec", json.dumps(cfg.prune_spec("0.5")), "--dense", dense, "--out", pruned]) == 0
    )
    payload = load_checkpoint(pruned, "pruned")
    sizes = {k: m.numel() for k, m in payload["masks"].items()}
    assert payload["density_actual"] == pytest.approx(0.5, abs=len(sizes) / (2 * sum(sizes.values())))
    from threeregime.compute.checkpoints import model_from

    dense_layers = prunable_layers(model_from(load_checkpoint(dense, "dense")))
    expected = alpha_densities(sizes, layer_alphas(dense_layers, "xmin_mid"), 0.5, 0.25)
    assert {k: int(m.sum()) for k, m in payload["masks"].items()} == {
        k: round(expected[k] * sizes[k]) for k in sizes
    }
    retrained = [str(tmp_path / f"r{s}.pt") for s in (1, 2)]
    for seed, out in zip((1, 2), retrained):
        args = [
            "retrain",
            "--spec",
            json.dumps(cfg.retrain_spec()),
            "--data",
            data,
            "--run",
            pruned,
            out,
            str(seed),
        ]
        assert main([*args, *compute]) == 0
    metrics = tmp_path / "metrics" / "1-0.5-1.json"
    metrics.parent.mkdir()
    labels = ["knob=epochs", "temperature=1", "density=0.5", "dense_seed=1", "seed_a=1", "seed_b=2"]
    flags = [x for label in labels for x in ("--label", label)]
    args = ["metrics", "--spec", json.dumps(cfg.metrics_spec()), "--data", data, "--a", retrained[0]]
    assert main([*args, "--b", retrained[1], *flags, "--out", str(metrics), *compute]) == 0
    result = json.loads(metrics.read_text())
    for side, path in zip(result["models"], retrained):
        model = model_from(load_checkpoint(path, "retrain"))
        fitted = layer_alphas(prunable_layers(model))
        by_layer = list(fitted.values())
        assert side["weight_alpha_layers"] == pytest.approx(by_layer, rel=1e-9)
        assert side["weight_alpha"] == pytest.approx(np.mean(by_layer), rel=1e-9)
        assert "features.0.weight" not in fitted and len(fitted) >= 2  # first conv: 1 input channel
        assert all(1 < a < 20 for a in by_layer)
    out = {n: str(tmp_path / f"{n}.csv") for n in ("models", "metrics", "cells")}
    grid = json.dumps(cfg.metrics_axes())
    pattern = str(tmp_path / "metrics" / "{temperature}-{density}-{seed}.json")
    args = ["collect", "--pattern", pattern, "--grid", grid, "--models-csv", out["models"]]
    assert main([*args, "--metrics", out["metrics"], "--cells", out["cells"]]) == 0
    cells = pd.read_csv(out["cells"])
    mean_layers = np.mean([m["weight_alpha_layers"] for m in result["models"]], axis=0)
    assert json.loads(cells["weight_alpha_layers_mean"].iloc[0]) == pytest.approx(mean_layers, rel=1e-9)
    assert cells["weight_alpha_mean"].iloc[0] == pytest.approx(
        np.mean([m["weight_alpha"] for m in result["models"]])
    )


def test_fit_equals_weightwatchers_own_fit_where_installed():
    """weightwatcher is not a dependency (threeregime/compute/spectra.py says why); where it is
    installed, its power-law fit on the same eigenvalues gives the same alpha and xmin."""
    ww = pytest.importorskip("weightwatcher.WW_powerlaw")
    weight = torch.distributions.StudentT(3.0).sample((64, 32, 3, 3))
    eigenvalues = layer_eigenvalues(weight)
    ours, theirs = fit_power_law(eigenvalues), ww.WWFit(eigenvalues.numpy())
    assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-10) and ours.xmin == pytest.approx(theirs.xmin)


def test_overlays_turn_on_the_alpha_metric_and_method_over_the_demo():
    import yaml
    from snakemake.utils import update_config

    from .conftest import REPO

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    demo = load_config(base)
    assert "weight_alpha" not in demo.metrics_spec() and "alpha_epsilon" not in demo.prune_spec("0.1")
    for overlay in ("weight-spectra", "alpha-pruning"):
        update_config(base, yaml.safe_load((REPO / "presets" / "overlays" / f"{overlay}.yaml").read_text()))
    cfg = load_config(base)
    assert cfg.metrics_spec() == demo.metrics_spec() | {"weight_alpha": True}
    alpha = {"method": "alpha", "density": 0.1, "alpha_epsilon": 0.2, "alpha_xmin": "xmin_mid"}
    assert cfg.prune_spec("0.1") == alpha


def _published_matrices():
    """The matrices the reference numbers below were computed on (seeded)."""
    generator = torch.Generator().manual_seed(0)
    yield "gauss 64x128", torch.randn(64, 128, generator=generator)
    student = torch.distributions.StudentT(torch.tensor(2.5))
    torch.manual_seed(1)
    yield "student-t 64x128", student.sample((64, 128))
    torch.manual_seed(3)
    u, v = torch.randn(64, 5), torch.randn(5, 128)
    yield "rank 5 + noise 64x128", 3 * u @ v / 128**0.5 + 0.5 * torch.randn(64, 128)


# alpha of each matrix under each xmin rule, by the published code: weightwatcher 0.7.7's default
# fit (search) and AlphaPruning's net_esd_estimator (xmin_mid, xmin_peak; float32)
PUBLISHED = {
    "gauss 64x128": {"search": 6.743147256613956, "xmin_mid": 2.6958811283, "xmin_peak": 2.2869625092},
    "student-t 64x128": {"search": 2.783835599518328, "xmin_mid": 2.2702236176, "xmin_peak": 1.5704002380},
    "rank 5 + noise 64x128": {
        "search": 2.0251400316248964,
        "xmin_mid": 2.0882177353,
        "xmin_peak": 2.0251402855,
    },
}


@pytest.mark.parametrize("rule", ["search", "xmin_mid", "xmin_peak"])
def test_each_xmin_rule_gives_the_published_codes_alpha(rule):
    for name, matrix in _published_matrices():
        alpha = fit_power_law(layer_eigenvalues(matrix.float()), rule).alpha
        tolerance = 1e-10 if rule == "search" else 2e-6  # the published xmin_mid/peak run in float32
        assert alpha == pytest.approx(PUBLISHED[name][rule], rel=tolerance), name


def test_the_xmin_rules_are_settings_of_the_metric_and_of_alpha_pruning(tiny_config):
    tiny_config["prune"] = {"method": "alpha", "densities": [0.3], "alpha_xmin": "xmin_peak"}
    tiny_config["metrics"] |= {"weight_alpha": True, "weight_alpha_xmin": "xmin_mid"}
    cfg = load_config(tiny_config)
    assert cfg.prune_spec("0.3")["alpha_xmin"] == "xmin_peak"
    assert cfg.metrics_spec()["weight_alpha_xmin"] == "xmin_mid"
    tiny_config["metrics"]["weight_alpha_xmin"] = "mid"
    with pytest.raises(ConfigError, match="metrics.weight_alpha_xmin: 'mid' is not one of"):
        load_config(tiny_config)
