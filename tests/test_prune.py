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
    with pytest.raises(PruneError, match="keeps 0 of 80 weights of layer features.0.weight"):
        compute_masks(model, 0.005, "uniform")  # 80 weights in the first layer
    with torch.no_grad():
        prunable_layers(model)["features.0.weight"].mul_(1e-6)  # globally the smallest layer
    with pytest.raises(PruneError, match="global at density 0.1 keeps 0 of 80 weights of layer features.0"):
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


# ----------------------------------------------------------------------------- granularities
def _inputs(name: str, n: int = 16) -> torch.Tensor:
    shape = (1, 40) if name == "cnn1d" else (3, 32, 32)
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0))


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def test_unstructured_global_and_lamp_keep_the_top_of_one_ranking_over_all_layers():
    """Global methods now allocate layer densities from one ranking, then keep each layer's top:
    the masks are exactly the top round(d * N) of all layers' scores ranked together, as before."""
    model = _model("preresnet20")
    layers = {n: w.detach() for n, w in prunable_layers(model).items()}
    for method, score in (("global", lambda w: w.abs().flatten().double()), ("lamp", lamp_scores)):
        flat = torch.cat([score(w) for w in layers.values()])
        order = torch.argsort(flat, descending=True, stable=True)
        expected = torch.zeros_like(flat, dtype=torch.bool)
        expected[order[: round(0.13 * flat.numel())]] = True
        masks = compute_masks(model, 0.13, method)
        assert torch.equal(torch.cat([m.flatten() for m in masks.values()]), expected), method


@pytest.mark.parametrize("method", ["uniform", "wanda"])
@pytest.mark.parametrize(("granularity", "n", "m"), [("2:4", 2, 4), ("4:8", 4, 8)])
@pytest.mark.parametrize("name", ["cnn1d", "preresnet20"])
def test_n_of_m_keeps_exactly_n_of_every_m_consecutive_input_weights(method, granularity, n, m, name):
    model = _model(name)
    masks = compute_masks(model, n / m, method, granularity=granularity, inputs=_inputs(name))
    layers = prunable_layers(model)
    structured = 0
    for layer, mask in masks.items():
        rows = _rows(mask)
        if rows.shape[1] % m:  # the first conv: 1 x 5 (cnn1d) or 3 x 3 x 3 inputs per filter
            assert mask.all(), layer
            continue
        structured += 1
        groups = rows.reshape(-1, m)
        assert (groups.sum(dim=1) == n).all(), layer
        if method == "uniform":  # within each group the kept weights outrank the pruned ones
            magnitude = _rows(layers[layer].detach().abs()).reshape(-1, m)
            kept_min = torch.where(groups, magnitude, torch.inf).min(dim=1).values
            pruned_max = torch.where(groups, -torch.inf, magnitude).max(dim=1).values
            assert (kept_min >= pruned_max).all(), layer
    assert structured == len(masks) - 1


@pytest.mark.parametrize("method", ["uniform", "global", "lamp", "wanda"])
@pytest.mark.parametrize("density", [0.1, 0.3, 0.5])
def test_channel_masks_remove_whole_filters(method, density):
    model = _model("preresnet20")
    masks = compute_masks(model, density, method, granularity="channel", inputs=_inputs("preresnet20"))
    layers = prunable_layers(model)
    for name, mask in masks.items():
        rows = _rows(mask)
        filters = rows.all(dim=1)
        assert torch.equal(rows.any(dim=1), filters), name  # every filter all kept or all pruned
        if method == "uniform":
            assert int(filters.sum()) == round(density * rows.shape[0]), name
            norms = _rows(layers[name].detach().abs()).double().sum(dim=1)  # L1 norm per filter
            assert norms[filters].min() >= norms[~filters].max(), name


@pytest.mark.parametrize("granularity", ["unstructured", "2:4", "4:8", "channel"])
@pytest.mark.parametrize("method", ["uniform", "wanda"])
def test_the_torch_free_counts_of_validation_equal_the_masks(granularity, method):
    """Config validation predicts each layer's kept weights from its shape (registry entry's
    ``kept``); the masks keep exactly that many."""
    from threeregime.registry.pruning import GRANULARITIES, PRUNING_METHODS

    per_row = PRUNING_METHODS[method].ranking == "per row"
    for name in ("cnn1d", "preresnet20"):
        model = _model(name)
        for density in [0.5] if ":" in granularity else [0.25, 0.37, 0.5]:
            masks = compute_masks(model, density, method, granularity=granularity, inputs=_inputs(name))
            for layer, mask in masks.items():
                expected = GRANULARITIES[granularity].kept(tuple(mask.shape), density, per_row)
                assert int(mask.sum()) == expected, (name, density, layer)


def test_a_layer_left_too_few_weights_is_refused_for_every_method(monkeypatch):
    """AlphaPruning's allocation may leave a layer one weight (it clips at one): refused in one
    line naming the layer, as for every method, at prune.min_layer_weights."""
    import threeregime.compute.spectra as spectra

    model = _model("cnn1d")
    alphas = dict.fromkeys(prunable_layers(model), 2.0) | {"features.3.weight": 40.0}
    monkeypatch.setattr(spectra, "layer_alphas", lambda layers, xmin_rule: alphas)
    masks = compute_masks(model, 0.1, "alpha", {"alpha_epsilon": 0.9})
    assert int(masks["features.3.weight"].sum()) == 1  # the allocation's floor, allowed at 1
    with pytest.raises(PruneError) as info:
        compute_masks(model, 0.1, "alpha", {"alpha_epsilon": 0.9}, min_layer_weights=2)
    assert str(info.value) == (
        "prune.method alpha at density 0.1 keeps 1 of 1536 weights of layer features.3.weight, "
        "fewer than prune.min_layer_weights = 2; use a higher density or another method"
    )
    with pytest.raises(PruneError, match=r"uniform \(channel\) at density 0.03 keeps 0 of 80 weights"):
        compute_masks(model, 0.03, "uniform", granularity="channel")  # round(0.48) of 16 filters


# ----------------------------------------------------------------------------- Wanda
def _wanda_example():
    """A Linear(8, 3) layer (pruned) and a classifier, two calibration samples, by hand:
    ||X_j||^2 = x1_j^2 + x2_j^2 = [2, 4, 4, 2, 9, 16, 2, 4]."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 3, bias=False), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    weight = torch.tensor(
        [
            [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0],
            [4.0, 0.5, -0.5, 3.0, 0.1, 0.1, -2.0, 1.0],
            [3.0, 2.0, 1.0, 0.1, 0.1, -0.1, 0.2, 0.1],
        ]
    )
    with torch.no_grad():
        model[0].weight.copy_(weight)
    inputs = torch.tensor(
        [[1.0, 2.0, 0.0, 1.0, 3.0, 0.0, 1.0, 2.0], [1.0, 0.0, 2.0, 1.0, 0.0, 4.0, 1.0, 0.0]]
    )
    return model, inputs


def test_wanda_scores_are_weight_times_input_norm_compared_per_row():
    from threeregime.compute.prune import score_wanda

    model, inputs = _wanda_example()
    r2 = 2**0.5
    ranked = score_wanda({"0.weight": model[0].weight.detach()}, 0.5, {}, model=model, inputs=inputs)
    expected = torch.tensor(
        [
            [r2, 2, 2, r2, 3, 4, r2, 2],
            [4 * r2, 1, 1, 3 * r2, 0.3, 0.4, 2 * r2, 2],
            [3 * r2, 4, 2, 0.1 * r2, 0.3, 0.4, 0.2 * r2, 0.2],
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(ranked.scores["0.weight"], expected, rtol=1e-6)
    # every row keeps its own top 4 of 8 (ties by position): not a threshold over the layer
    masks = compute_masks(model, 0.5, "wanda", inputs=inputs)
    assert masks["0.weight"].int().tolist() == [
        [0, 1, 1, 0, 1, 1, 0, 0],
        [1, 0, 0, 1, 0, 0, 1, 1],
        [1, 1, 1, 0, 0, 1, 0, 0],
    ]
    assert masks["0.weight"].sum(dim=1).tolist() == [4, 4, 4]
    # uniform magnitude pruning compares the whole layer: |w| > 1 first, then the ties at 1 by position
    assert compute_masks(model, 0.5, "uniform")["0.weight"].sum(dim=1).tolist() == [7, 3, 2]


def test_wanda_with_2_of_4_keeps_the_top_two_of_every_four():
    model, inputs = _wanda_example()
    masks = compute_masks(model, 0.5, "wanda", granularity="2:4", inputs=inputs)
    assert masks["0.weight"].int().tolist() == [
        [0, 1, 1, 0, 1, 1, 0, 0],
        [1, 0, 0, 1, 0, 0, 1, 1],
        [1, 1, 0, 0, 1, 1, 0, 0],  # row 2 keeps 2 of its first 4, not 3 as unstructured does
    ]


def test_wanda_needs_its_calibration_inputs():
    model, _ = _wanda_example()
    with pytest.raises(PruneError, match="prune.method wanda needs calibration inputs"):
        compute_masks(model, 0.5, "wanda")


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv1d(3, 4, 5, stride=2, padding=2, bias=False),
        torch.nn.Conv1d(2, 4, 3, stride=1, padding=3, dilation=3, bias=False),
        torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        torch.nn.Conv2d(2, 4, (3, 1), stride=(1, 2), padding=(1, 0), bias=False),
    ],
)
def test_conv_input_norms_are_those_of_the_unfolded_patches(conv):
    """||X_j|| of a convolution: over every column of its unfolded input (im2col, zero padding
    included), in the order of the weight's rows; checked against torch's own unfold."""
    from threeregime.compute.calibration import input_norms

    model = torch.nn.Sequential(conv)
    shape = (5, conv.in_channels, 11) if isinstance(conv, torch.nn.Conv1d) else (5, conv.in_channels, 9, 8)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    four = x.unsqueeze(2) if x.dim() == 3 else x
    pairs = lambda v: (1, v[0]) if isinstance(conv, torch.nn.Conv1d) else v  # noqa: E731
    starts = (0, conv.padding[0]) if isinstance(conv, torch.nn.Conv1d) else conv.padding
    patches = torch.nn.functional.unfold(
        four.double(), pairs(conv.kernel_size), pairs(conv.dilation), starts, pairs(conv.stride)
    )
    expected = (patches**2).sum(dim=(0, 2)).sqrt()
    norms = input_norms(model, x, ["0.weight"])["0.weight"]
    assert norms.shape == (conv.weight[0].numel(),)
    assert torch.allclose(norms, expected, rtol=1e-12)


def test_wanda_calibrates_in_eval_mode_and_leaves_the_model_as_it_was():
    model = _model("cnn1d")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute_masks(model, 0.3, "wanda", inputs=_inputs("cnn1d"))
    assert model.training  # its mode restored
    for key, value in model.state_dict().items():  # BatchNorm running statistics untouched
        assert torch.equal(value, before[key]), key


# ----------------------------------------------------------------------------- density audit
def test_the_audit_counts_nonzero_weights_and_refuses_one_outside_the_mask():
    from threeregime.compute.prune import kept_counts, nonzero_counts, retrained_density

    model = _model("cnn1d")
    masks = compute_masks(model, 0.3, "uniform")
    apply_masks(model, masks)
    state = model.state_dict()
    assert nonzero_counts(state, masks, "m.pt") == kept_counts(masks)
    payload = {"model": state, "masks": masks, "density_actual": mask_density(masks)}
    assert retrained_density(payload, "m.pt") == {"density_retrained": mask_density(masks)}
    name = "features.6.weight"
    state[name].view(-1)[torch.nonzero(~masks[name].view(-1))[0]] = 0.5  # one pruned weight revived
    with pytest.raises(PruneError) as info:
        nonzero_counts(state, masks, "m.pt")
    assert str(info.value) == (
        "m.pt: 1 weights of features.6.weight outside its pruning mask are nonzero; retraining "
        "must keep pruned weights at zero"
    )


@pytest.mark.parametrize(("method", "granularity"), [("wanda", "unstructured"), ("uniform", "channel")])
def test_a_lower_density_on_a_pruned_model_keeps_a_subset(method, granularity):
    """Iterative pruning needs nested masks: pruned weights score zero and rank last."""
    from threeregime.compute.prune import check_nested

    model = _model("cnn1d")
    first = compute_masks(model, 0.6, method, granularity=granularity, inputs=_inputs("cnn1d"))
    apply_masks(model, first)
    second = compute_masks(model, 0.3, method, granularity=granularity, inputs=_inputs("cnn1d"))
    check_nested(second, first, method)
    assert mask_density(second) < mask_density(first)
