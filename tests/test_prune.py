"""Pruning invariants: exact density, kept weights outrank pruned ones, masks survive retraining."""

from __future__ import annotations

import pytest
import torch

from threeregime.compute.data import DeviceData
from threeregime.compute.models import init_model, prunable_layers
from threeregime.compute.prune import PruneError, apply_masks, compute_masks, lamp_scores, mask_density
from threeregime.compute.train import train
from threeregime.config.settings import ModelConfig, Recipe
from threeregime.registry.models import layer_sizes as conv_layer_sizes


def _model(name="cnn1d", seed=0):
    shapes = {"cnn1d": (1, 10), "preresnet20": (3, 10), "vgg16_bn": (3, 10)}
    return init_model(ModelConfig(name=name, width=0.5), *shapes[name], seed=seed)


@pytest.mark.parametrize("name", ["cnn1d", "preresnet20", "vgg16_bn"])
def test_every_conv_is_prunable_and_linear_is_not(name):
    model = _model(name)
    layers = prunable_layers(model)
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))]
    assert len(layers) == len(convs)
    assert not any(name.startswith("fc") for name in layers)
    if name == "preresnet20":
        assert len(layers) == 21  # 19 3x3 convs + 2 1x1 downsample convs
        assert sum("downsample" in n for n in layers) == 2
    data_name = "cifar10" if name != "cnn1d" else "mnist1d"  # the torch-free catalog agrees
    assert conv_layer_sizes(name, 0.5, data_name) == {n: w.numel() for n, w in layers.items()}


@pytest.mark.parametrize("density", [0.05, 0.1, 0.37, 0.8])
def test_uniform_reaches_density_in_every_layer(density):
    model = _model("preresnet20")
    masks = compute_masks(model, density, "uniform")
    for name, mask in masks.items():
        assert int(mask.sum()) == round(density * mask.numel()), name
    total = sum(m.numel() for m in masks.values())
    assert abs(mask_density(masks) - density) <= len(masks) / total


@pytest.mark.parametrize("method", ["global", "lamp"])
@pytest.mark.parametrize("density", [0.05, 0.2, 0.6])
def test_global_scores_reach_exact_overall_density(method, density):
    masks = compute_masks(_model("preresnet20"), density, method)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(density * total)


def test_kept_weights_outrank_pruned_ones():
    model = _model("preresnet20")
    layers = prunable_layers(model)
    uniform = compute_masks(model, 0.2, "uniform")
    for name, mask in uniform.items():
        magnitude = layers[name].detach().abs()
        assert magnitude[mask].min() >= magnitude[~mask].max()
    globally = compute_masks(model, 0.2, "global")
    kept = torch.cat([layers[n].detach().abs()[m] for n, m in globally.items()])
    pruned = torch.cat([layers[n].detach().abs()[~m] for n, m in globally.items()])
    assert kept.min() >= pruned.max()
    lamp = compute_masks(model, 0.2, "lamp")
    kept = torch.cat([lamp_scores(layers[n])[m.flatten()] for n, m in lamp.items()])
    pruned = torch.cat([lamp_scores(layers[n])[~m.flatten()] for n, m in lamp.items()])
    assert kept.min() >= pruned.max()


def test_lamp_scores_match_definition():
    weight = torch.tensor([3.0, -1.0, 2.0, 0.5])
    # sorted squares: 0.25, 1, 4, 9 -> tail sums 14.25, 14, 13, 9
    expected = torch.tensor([9 / 9, 1 / 14, 4 / 13, 0.25 / 14.25], dtype=torch.float64)
    assert torch.allclose(lamp_scores(weight), expected)


def test_lamp_never_empties_a_layer():
    masks = compute_masks(_model("preresnet20"), 0.002, "lamp")
    assert all(m.any() for m in masks.values())


def test_density_that_empties_a_layer_is_an_error():
    model = _model("cnn1d")
    with pytest.raises(PruneError, match="keeps no weight of layer features.0.weight"):
        compute_masks(model, 0.005, "uniform")  # 80 weights in the first layer
    with torch.no_grad():
        prunable_layers(model)["features.0.weight"].mul_(1e-6)  # globally the smallest layer
    with pytest.raises(PruneError, match="empties layer features.0.weight"):
        compute_masks(model, 0.1, "global")


def test_pruned_weights_stay_exactly_zero_through_retraining(mnist1d_payload):
    model = _model("cnn1d")
    masks = compute_masks(model, 0.1, "uniform")
    apply_masks(model, masks)
    before = {n: w.detach().clone() for n, w in prunable_layers(model).items()}
    data = DeviceData(mnist1d_payload, "cpu")
    for optimizer in ("sgd", "sam"):
        train(model, data, Recipe(epochs=2, batch_size=64, optimizer=optimizer), stream=(1, 1), masks=masks)
        for name, weight in prunable_layers(model).items():
            assert torch.count_nonzero(weight[~masks[name]]) == 0, (optimizer, name)
            assert not torch.equal(weight[masks[name]], before[name][masks[name]]), "kept weights must train"
