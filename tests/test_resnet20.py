"""ResNet-20 as open_lth's cifar_resnet_20: shapes, parameter count, forward pass, initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from threeregime.compute.models import build_model, init_model, prunable_layers
from threeregime.config.settings import ModelConfig
from threeregime.registry.models import MODELS
from threeregime.registry.models import weight_shapes as conv_weight_shapes


def _expected_parameters(classes: int) -> dict[str, int]:
    """ResNet-20's parameters counted from its plan: a 3x3 stem conv 3 -> 16 + BN, 3 stages of 3
    blocks at 16/32/64 channels (two 3x3 convs + two BNs each), a 1x1 conv + BN shortcut into
    stages 2 and 3, and fc 64 -> classes."""
    convs = 3 * 16 * 9  # stem
    bns = 2 * 16
    previous = 16
    for channels in (16, 32, 64):
        for _ in range(3):
            convs += channels * previous * 9 + channels * channels * 9
            bns += 2 * (2 * channels)
            if previous != channels:
                convs += channels * previous  # 1x1 shortcut conv
                bns += 2 * channels  # its BN
            previous = channels
    return {"conv": convs, "bn": bns, "fc": 64 * classes + classes}


def test_parameter_count_is_open_lths_resnet20():
    expected = _expected_parameters(10)
    assert expected == {"conv": 270_256, "bn": 1_568, "fc": 650}
    model = build_model(ModelConfig("resnet20", 1.0), 3, 10)
    assert sum(p.numel() for p in model.parameters()) == sum(expected.values()) == 272_474  # open_lth's test
    assert sum(w.numel() for w in prunable_layers(model).values()) == expected["conv"]
    cifar100 = build_model(ModelConfig("resnet20", 1.0), 3, 100)
    assert sum(p.numel() for p in cifar100.parameters()) == sum(_expected_parameters(100).values()) == 278_324


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 1.5])
@pytest.mark.parametrize(("data", "classes"), [("cifar10", 10), ("cifar100", 100)])
def test_torch_free_shapes_are_the_modules_conv_shapes(width, data, classes):
    model = build_model(ModelConfig("resnet20", width), 3, classes)
    actual = {name: tuple(w.shape) for name, w in prunable_layers(model).items()}
    assert conv_weight_shapes("resnet20", width, data) == actual
    assert list(conv_weight_shapes("resnet20", width, data)) == list(actual)  # same order
    assert model.fc.out_features == classes


def test_the_architecture_has_21_convs_two_of_them_1x1_shortcuts():
    convs = {
        n: tuple(w.shape) for n, w in prunable_layers(build_model(ModelConfig("resnet20"), 3, 10)).items()
    }
    assert len(convs) == 21 and convs["conv.weight"] == (16, 3, 3, 3)
    shortcuts = {n: s for n, s in convs.items() if "shortcut" in n}
    assert shortcuts == {
        "blocks.3.shortcut.0.weight": (32, 16, 1, 1),
        "blocks.6.shortcut.0.weight": (64, 32, 1, 1),
    }
    assert sum(s[2:] == (3, 3) for s in convs.values()) == 19
    assert MODELS["resnet20"].datasets == ("cifar10", "cifar100")


def _reference_forward(model, x: torch.Tensor) -> torch.Tensor:
    """Post-activation ResNet written out with functional ops (eval mode)."""

    def bn(module, h):
        return F.batch_norm(h, module.running_mean, module.running_var, module.weight, module.bias)

    out = F.relu(bn(model.bn, F.conv2d(x, model.conv.weight, padding=1)))
    for index, block in enumerate(model.blocks):
        stride = 2 if index in (3, 6) else 1
        h = F.relu(bn(block.bn1, F.conv2d(out, block.conv1.weight, stride=stride, padding=1)))
        h = bn(block.bn2, F.conv2d(h, block.conv2.weight, padding=1))
        if index in (3, 6):
            conv, norm = block.shortcut[0], block.shortcut[1]
            shortcut = bn(norm, F.conv2d(out, conv.weight, stride=2))
        else:
            shortcut = out
        out = F.relu(h + shortcut)
    out = F.avg_pool2d(out, 8).flatten(1)  # 32 -> 16 -> 8: the pool covers the whole map
    return F.linear(out, model.fc.weight, model.fc.bias)


def test_forward_is_post_activation_with_bn_on_the_shortcut():
    model = init_model(ModelConfig("resnet20", 1.0), 3, 10, seed=0)
    with torch.no_grad():  # random BN statistics and affines, so that every BN matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(x), _reference_forward(model, x), rtol=1e-4, atol=1e-5)


def test_initialisation_is_open_lths_default():
    """kaiming_normal (fan_in, gain sqrt 2) on conv and fc weights; BN weights U[0, 1), biases 0."""
    model = init_model(ModelConfig("resnet20", 1.0), 3, 10, seed=1)
    w = model.blocks[8].conv2.weight  # 36,864 weights, fan_in 64 * 9
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.03)
    assert abs(w.mean().item()) < 0.03 * w.std().item()
    fc = model.fc.weight  # fan_in 64 (fan_out would give sqrt(2 / 10))
    assert fc.std().item() == pytest.approx((2 / 64) ** 0.5, rel=0.1)
    gammas = torch.cat([m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    betas = torch.cat([m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert gammas.numel() == 784 and 0 <= gammas.min() and gammas.max() < 1
    assert gammas.mean().item() == pytest.approx(0.5, abs=0.05) and not betas.any()
    again = init_model(ModelConfig("resnet20", 1.0), 3, 10, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
