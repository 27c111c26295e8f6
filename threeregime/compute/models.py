"""Model zoo: a BatchNorm 1D CNN for MNIST-1D, PreResNet-20, ResNet-20 and VGG-16-BN for CIFAR,
LeNet-300-100 and LeNet-5 for 28x28 MNIST, LLaMA-architecture causal LMs for byte-level corpora.

Pruning acts on every convolution weight (first conv and 1x1 downsample convs included) and
every Linear weight but the last Linear layer's, the classifier, which is never pruned, as in
the paper (:func:`prunable_layers`). Channel plans come from ``threeregime.registry.models``,
which also gives the prunable shapes without torch (config validation).
"""

from __future__ import annotations

import importlib
import os
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from threeregime.config.settings import ModelConfig
from threeregime.registry.models import (
    CNN1D_PLANES,
    LENET5_HIDDEN,
    LENET5_PLANES,
    LENET300_HIDDEN,
    LLAMA_PLANS,
    MNIST_PIXELS,
    MODELS,
    PRERESNET_PLANES,
    RESNET_PLANES,
    VGG16_LAYOUT,
    LlamaPlan,
    scaled,
)


class CNN1d(nn.Module):
    """Four conv-BN-ReLU layers over the 40-step MNIST-1D signal, global average pool, linear."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        c1, c2, c3 = (scaled(c, width) for c in CNN1D_PLANES)
        layers, previous = [], in_channels
        for channels, kernel, stride in ((c1, 5, 1), (c2, 3, 2), (c3, 3, 2), (c3, 3, 1)):
            layers += [
                nn.Conv1d(previous, channels, kernel, stride, kernel // 2, bias=False),
                nn.BatchNorm1d(channels),
                nn.ReLU(inplace=True),
            ]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=2))


class PreActBlock(nn.Module):
    """Pre-activation basic block; the 1x1 downsample conv sees the block input, as in the paper."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Conv2d(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def residual_stages(block, planes: list[int], blocks_per_stage: int) -> tuple[nn.Sequential, int]:
    """The blocks of a CIFAR ResNet's three stages (stride 2 entering stages 2 and 3) and the
    last stage's width."""
    stages, previous = [], planes[0]
    for stage, channels in enumerate(planes):
        for index in range(blocks_per_stage):
            stages.append(block(previous, channels, 2 if stage > 0 and index == 0 else 1))
            previous = channels
    return nn.Sequential(*stages), previous


class PreResNet(nn.Module):
    """PreResNet-(6n+2) for 32x32 inputs: 16/32/64 channels times ``width``, fc 64 -> classes.

    As the paper's code: conv1 (3x3) -> 3 stages of n pre-activation basic blocks (the first
    block of stages 2 and 3 has stride 2 and a 1x1 downsample conv, no BN, on the block input)
    -> BN -> ReLU -> 8x8 average pool -> fc. Convs are He-normal with fan_out, BN (1, 0), fc
    torch's default. Depth 20 has 21 convs (19 3x3 + 2 1x1), about 0.27M parameters.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 20, width: float = 1.0):
        super().__init__()
        assert (depth - 2) % 6 == 0, "PreResNet depth must be 6n+2"
        blocks_per_stage = (depth - 2) // 6
        planes = [scaled(c, width) for c in PRERESNET_PLANES]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.blocks, previous = residual_stages(PreActBlock, planes, blocks_per_stage)
        self.bn = nn.BatchNorm2d(previous)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.blocks(self.conv1(x))))
        return self.fc(out.mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    """Post-activation basic block (He et al. 2016): conv-BN-ReLU-conv-BN, plus the shortcut,
    then ReLU. A block that changes shape has a 1x1 stride-2 conv + BN shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs as open_lth's ``cifar_resnet_<depth>`` (the lottery-ticket
    papers' model): 16/32/64 channels times ``width``, post-activation basic blocks.

    3x3 conv -> BN -> ReLU -> 3 stages of n blocks (the first block of stages 2 and 3 has stride
    2 and a 1x1 conv + BN shortcut) -> global average pool -> fc 64 -> classes. Initialisation
    as open_lth's defaults (kaiming_normal, batchnorm_init uniform): conv and fc weights
    He-normal with fan_in, BN weights U[0, 1) and biases 0, fc bias torch's default. Depth 20
    has 21 convs (19 3x3 + 2 1x1) and 272,474 parameters on CIFAR-10. Parameter names follow
    open_lth's (conv, bn, blocks.i.conv1 ... shortcut.0, fc), so its checkpoints load as they are.
    """

    def __init__(self, in_channels: int, num_classes: int, depth: int = 20, width: float = 1.0):
        super().__init__()
        assert (depth - 2) % 6 == 0, "ResNet depth must be 6n+2"
        blocks_per_stage = (depth - 2) // 6
        planes = [scaled(c, width) for c in RESNET_PLANES]
        self.conv = nn.Conv2d(in_channels, planes[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.blocks, previous = residual_stages(BasicBlock, planes, blocks_per_stage)
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.0, 1.0)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(self.relu(self.bn(self.conv(x))))
        return self.fc(out.mean(dim=(2, 3)))


class VGG(nn.Module):
    """VGG-16 with BatchNorm for CIFAR: 13 conv-BN-ReLU layers, global pool, one linear layer.

    As the paper's code (layout D, four max pools, 2x2 average pool = global mean on 32x32
    inputs, Linear 512 -> classes): convs He-normal with fan_in, fc N(0, 0.01) with zero bias.
    Convs have no bias (the paper's have one; BatchNorm right after makes it a no-op).
    """

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        layers, previous = [], in_channels
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            channels = scaled(item, width)
            layers += [
                nn.Conv2d(previous, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(previous, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.fc.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


class LeNet300(nn.Module):
    """LeNet-300-100 (LeCun et al. 1998), Frankle & Carbin 2019's MNIST network: the flattened
    28x28 image through fully connected layers of 300 and 100 ReLU units (times ``width``) to
    the classes. Weights Gaussian Glorot as theirs, biases zero. Every layer acts per sample on
    the flattened input, so the packed form (several runs in one module) is exact."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        h1, h2 = (scaled(h, width) for h in LENET300_HIDDEN)
        self.fc1 = nn.Linear(in_channels * MNIST_PIXELS, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)
        for layer in (self.fc1, self.fc2, self.fc3):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.fc1(x.flatten(1)))
        return self.fc3(torch.relu(self.fc2(out)))


class LeNet5(nn.Module):
    """LeNet-5 for 28x28 images with ReLU and max pooling: conv 5x5 (6 channels, padding 2),
    pool, conv 5x5 (16), pool, fc 400 -> 120 -> 84 -> classes (channels and units times
    ``width``); torch's default initialisation."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0):
        super().__init__()
        c1, c2 = (scaled(c, width) for c in LENET5_PLANES)
        h1, h2 = (scaled(h, width) for h in LENET5_HIDDEN)
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 5 * 5, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        out = F.max_pool2d(torch.relu(self.conv2(out)), 2)
        out = torch.relu(self.fc1(out.flatten(1)))
        return self.fc3(torch.relu(self.fc2(out)))


def preresnet20(in_channels: int, num_classes: int, width: float = 1.0) -> PreResNet:
    return PreResNet(in_channels, num_classes, depth=20, width=width)


def resnet20(in_channels: int, num_classes: int, width: float = 1.0) -> ResNet:
    return ResNet(in_channels, num_classes, depth=20, width=width)


@cache
def _causal_lm_class() -> type:
    """Hugging Face's LlamaForCausalLM whose forward takes token ids and returns the logits as
    (batch, vocabulary, positions): the layout cross-entropy takes, so the trainer, evaluation,
    LMC and Hessian treat every position as one prediction with no special case. Parameter names
    stay LLaMA's (model.layers.i.self_attn.q_proj ..., lm_head). transformers is imported here,
    on first use: it is an optional dependency (the ``lm`` extra)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built from a config: nothing to fetch
    from transformers import LlamaForCausalLM

    class CausalLM(LlamaForCausalLM):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return super().forward(input_ids=input_ids, use_cache=False).logits.transpose(1, 2)

    return CausalLM


def causal_lm(plan: LlamaPlan, vocabulary: int) -> nn.Module:
    """A LLaMA decoder of ``plan``'s sizes, eager attention (SDPA has no double backward on the
    CPU, which the Hessian needs), no dropout, untied embedding and lm_head, float32."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=vocabulary, hidden_size=plan.hidden, intermediate_size=plan.intermediate,
        num_hidden_layers=plan.layers, num_attention_heads=plan.heads,
        num_key_value_heads=plan.kv_heads, max_position_embeddings=4096, use_cache=False,
        tie_word_embeddings=False, attn_implementation="eager",
    )  # fmt: skip
    return _causal_lm_class()(config).float()


def llama_tiny(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    return causal_lm(LLAMA_PLANS["llama_tiny"].scaled(width), num_classes)


def llama_small(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    return causal_lm(LLAMA_PLANS["llama_small"].scaled(width), num_classes)


def llama_medium(in_channels: int, num_classes: int, width: float = 1.0) -> nn.Module:
    return causal_lm(LLAMA_PLANS["llama_medium"].scaled(width), num_classes)


def build_model(cfg: ModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    """The registered model's builder (threeregime.registry.models.MODELS)."""
    entry = MODELS.get(cfg.name)
    if entry is None:
        raise ValueError(f"model.name: unknown model {cfg.name!r}; choose one of {', '.join(MODELS)}")
    module, _, function = entry.builder.partition(":")
    return getattr(importlib.import_module(module), function)(in_channels, num_classes, cfg.width)


def init_model(cfg: ModelConfig, in_channels: int, num_classes: int, seed: int) -> nn.Module:
    """Build a model whose initial weights depend only on ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(cfg, in_channels, num_classes)


def prunable_layers(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every convolution weight and every Linear weight but the last Linear layer's (the
    classifier), keyed by parameter name, in the module's order."""
    layers = [
        (name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))
    ]
    linear = [name for name, m in layers if isinstance(m, nn.Linear)]
    classifier = linear[-1] if linear else None
    return {f"{name}.weight": m.weight for name, m in layers if name != classifier}
