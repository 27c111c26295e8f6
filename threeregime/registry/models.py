"""The models: one declarative entry each, importable without torch.

The schema's ``model.name`` enum, which datasets a model takes and the shapes of its prunable
weights derive from the entries. The shapes are known without torch, so that a density that
would empty a layer is refused at validation in milliseconds, before torch is imported;
``threeregime.compute.models`` builds the modules from the channel plans here, and a test holds
the shapes equal to the modules' own.

What is prunable is one rule for every model (threeregime.compute.models.prunable_layers): every
convolution weight and every Linear weight except the last Linear layer, the classifier, which
the paper and the lottery-ticket papers never prune.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from threeregime.registry.base import Registry, reference_problem
from threeregime.registry.datasets import DATASETS

PRERESNET_PLANES = (16, 32, 64)
RESNET_PLANES = (16, 32, 64)  # open_lth's cifar_resnet_20: W, 2W, 4W filters with W = 16
CNN1D_PLANES = (32, 64, 64)
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
LENET300_HIDDEN = (300, 100)  # LeNet-300-100 (LeCun et al. 1998; Frankle & Carbin 2019's MNIST net)
LENET5_PLANES = (6, 16)  # LeNet-5's two 5x5 convs
LENET5_HIDDEN = (120, 84)
MNIST_PIXELS = 28 * 28


def scaled(channels: int, width: float) -> int:
    """Channels times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


@dataclass(frozen=True)
class Model:
    """One model. ``builder``: ``module:function`` called as (in_channels, num_classes, width)
    returning the nn.Module (threeregime.compute.models). ``weight_shapes``: the shapes of its
    prunable weights by parameter name, in the module's order, from (width, in_channels),
    without torch. ``datasets``: the datasets it is built for. ``packs``: every layer has a
    packed form (threeregime.compute.pack), so its runs may share a job's model
    (runtime.retrain_pack). ``requires``: an optional package the builder imports and how to
    install it, (module, install command), checked at validation."""

    name: str
    builder: str
    weight_shapes: Callable[[float, int], dict[str, tuple[int, ...]]]
    datasets: tuple[str, ...]
    description: str
    packs: bool = True
    requires: tuple[str, str] | None = None


MODELS: Registry[Model] = Registry("model")
register = MODELS.register


def registry_problems() -> list[str]:
    """One line per incomplete entry (empty when the registry is sound)."""
    problems = []
    for name, m in MODELS.items():
        where = MODELS.where(name)
        if m.name != name:
            problems.append(f"{where}: registered under another name than its entry's {m.name!r}")
        missing = reference_problem(m.builder, "builder")
        if missing:
            problems.append(f"{where}: {missing}")
        if not callable(m.weight_shapes):
            problems.append(f"{where}: weight_shapes must be a function of (width, in_channels)")
        unknown = [d for d in m.datasets if d not in DATASETS]
        if not m.datasets or unknown:
            problems.append(f"{where}: datasets must name registered datasets, got {list(m.datasets)}")
    return problems


def weight_shapes(model: str, width: float, data_name: str) -> dict[str, tuple[int, ...]]:
    """Shape of every prunable weight, keyed by parameter name."""
    if model not in MODELS:
        raise ValueError(f"model.name: unknown model {model!r}")
    return MODELS[model].weight_shapes(width, DATASETS[data_name].shape[0])


def layer_sizes(model: str, width: float, data_name: str) -> dict[str, int]:
    """Weights per prunable layer."""
    sizes = {}
    for name, shape in weight_shapes(model, width, data_name).items():
        count = 1
        for dim in shape:
            count *= dim
        sizes[name] = count
    return sizes


def _cnn1d_shapes(width: float, in_channels: int) -> dict[str, tuple[int, ...]]:
    c1, c2, c3 = (scaled(c, width) for c in CNN1D_PLANES)
    shapes, previous = {}, in_channels
    for index, (channels, kernel) in enumerate(((c1, 5), (c2, 3), (c3, 3), (c3, 3))):
        shapes[f"features.{3 * index}.weight"] = (channels, previous, kernel)
        previous = channels
    return shapes


def _residual_shapes(planes: list[int], in_channels: int, stem: str, shortcut: str) -> dict:
    """Conv shapes of a CIFAR ResNet-20 layout: a 3x3 stem, three stages of three basic blocks,
    a 1x1 shortcut conv where a block changes stride or width (named as each model names them)."""
    shapes = {stem: (planes[0], in_channels, 3, 3)}
    previous, block = planes[0], 0
    for stage, channels in enumerate(planes):
        for index in range(3):
            name = f"blocks.{block}"
            shapes[f"{name}.conv1.weight"] = (channels, previous, 3, 3)
            shapes[f"{name}.conv2.weight"] = (channels, channels, 3, 3)
            if (stage > 0 and index == 0) or previous != channels:
                shapes[f"{name}.{shortcut}"] = (channels, previous, 1, 1)
            previous, block = channels, block + 1
    return shapes


def _preresnet20_shapes(width: float, in_channels: int) -> dict[str, tuple[int, ...]]:
    planes = [scaled(c, width) for c in PRERESNET_PLANES]
    return _residual_shapes(planes, in_channels, "conv1.weight", "downsample.weight")


def _resnet20_shapes(width: float, in_channels: int) -> dict[str, tuple[int, ...]]:
    planes = [scaled(c, width) for c in RESNET_PLANES]
    return _residual_shapes(planes, in_channels, "conv.weight", "shortcut.0.weight")


def _vgg16_bn_shapes(width: float, in_channels: int) -> dict[str, tuple[int, ...]]:
    shapes, previous, index = {}, in_channels, 0
    for item in VGG16_LAYOUT:
        if item == "M":
            index += 1
            continue
        channels = scaled(item, width)
        shapes[f"features.{index}.weight"] = (channels, previous, 3, 3)
        previous, index = channels, index + 3  # conv, BN, ReLU
    return shapes


def _lenet300_shapes(width: float, in_channels: int) -> dict[str, tuple[int, ...]]:
    h1, h2 = (scaled(h, width) for h in LENET300_HIDDEN)
    return {"fc1.weight": (h1, in_channels * MNIST_PIXELS), "fc2.weight": (h2, h1)}


def _lenet5_shapes(width: float, in_channels: int) -> dict[str, tuple[int, ...]]:
    c1, c2 = (scaled(c, width) for c in LENET5_PLANES)
    h1, h2 = (scaled(h, width) for h in LENET5_HIDDEN)
    return {
        "conv1.weight": (c1, in_channels, 5, 5),
        "conv2.weight": (c2, c1, 5, 5),
        "fc1.weight": (h1, c2 * 5 * 5),  # 28 -> conv (pad 2) 28 -> pool 14 -> conv 10 -> pool 5
        "fc2.weight": (h2, h1),
    }


register(
    Model(
        "cnn1d", "threeregime.compute.models:CNN1d", _cnn1d_shapes, ("mnist1d",),
        "a small BatchNorm 1D CNN (4 convs)",
    )
)  # fmt: skip
register(
    Model(
        "preresnet20", "threeregime.compute.models:preresnet20", _preresnet20_shapes,
        ("cifar10", "cifar100"),
        "PreResNet-20 (the paper's model: 16/32/64 channels, 1x1 downsample convs)",
    )
)  # fmt: skip
register(
    Model(
        "resnet20", "threeregime.compute.models:resnet20", _resnet20_shapes, ("cifar10", "cifar100"),
        "ResNet-20 (open_lth's cifar_resnet_20, the lottery-ticket papers' model: post-activation "
        "blocks, 16/32/64 channels, 1x1 conv + BN shortcuts)",
    )
)  # fmt: skip
register(
    Model(
        "vgg16_bn", "threeregime.compute.models:VGG", _vgg16_bn_shapes, ("cifar10", "cifar100"),
        "VGG-16 with BatchNorm",
    )
)  # fmt: skip
register(
    Model(
        "lenet300", "threeregime.compute.models:LeNet300", _lenet300_shapes, ("mnist5k",),
        "LeNet-300-100 for 28x28 images: 784-300-100-10, ReLU, Gaussian Glorot init (Frankle & "
        "Carbin 2019's MNIST network; the output layer is never pruned)",
    )
)  # fmt: skip
register(
    Model(
        "lenet5", "threeregime.compute.models:LeNet5", _lenet5_shapes, ("mnist5k",),
        "LeNet-5 for 28x28 images: two 5x5 convs (6, 16) with ReLU and 2x2 max pools, fc 120-84-10",
    )
)  # fmt: skip


# ----------------------------------------------------------------------------- LLaMA causal LMs
@dataclass(frozen=True)
class LlamaPlan:
    """A LLaMA decoder's sizes (Touvron et al. 2023; Hugging Face's LlamaConfig): model width,
    MLP width, decoder layers, attention heads and key/value heads."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def scaled(self, width: float) -> LlamaPlan:
        """``width`` times the head size (kept even: rotary embeddings rotate pairs) and the MLP
        width (kept a multiple of 8, so that every row holds whole 2:4 and 4:8 groups)."""
        head = 2 * scaled(self.head_dim // 2, width)
        return replace(self, hidden=head * self.heads, intermediate=8 * scaled(self.intermediate // 8, width))


LLAMA_PLANS = {
    "llama_tiny": LlamaPlan(hidden=64, intermediate=176, layers=2, heads=4, kv_heads=4),
    "llama_small": LlamaPlan(hidden=128, intermediate=352, layers=4, heads=4, kv_heads=4),
    "llama_medium": LlamaPlan(hidden=384, intermediate=1024, layers=8, heads=6, kv_heads=6),
}
TRANSFORMERS_INSTALL = "pip install -e '.[lm]' (transformers 5.x)"


def llama_shapes(plan: LlamaPlan, width: float) -> dict[str, tuple[int, ...]]:
    """The prunable weights of a LLaMA decoder: every Linear of every block, with Hugging Face's
    names (q_proj ... down_proj); the embedding and the lm_head (the last Linear) are kept."""
    p = plan.scaled(width)
    kv = p.kv_heads * p.head_dim
    shapes = {}
    for i in range(p.layers):
        block = f"model.layers.{i}"
        for name, shape in (
            ("self_attn.q_proj", (p.hidden, p.hidden)),
            ("self_attn.k_proj", (kv, p.hidden)),
            ("self_attn.v_proj", (kv, p.hidden)),
            ("self_attn.o_proj", (p.hidden, p.hidden)),
            ("mlp.gate_proj", (p.intermediate, p.hidden)),
            ("mlp.up_proj", (p.intermediate, p.hidden)),
            ("mlp.down_proj", (p.hidden, p.intermediate)),
        ):
            shapes[f"{block}.{name}.weight"] = shape
    return shapes


for _name, _plan in LLAMA_PLANS.items():
    register(
        Model(
            _name, f"threeregime.compute.models:{_name}",
            lambda width, in_channels, plan=_plan: llama_shapes(plan, width), ("pystdlib",),
            f"a LLaMA-architecture causal LM (Hugging Face's LlamaForCausalLM, eager attention): "
            f"{_plan.layers} blocks, width {_plan.hidden}, {_plan.heads} heads, MLP {_plan.intermediate}; "
            "the blocks' Linear layers are pruned, the embedding and lm_head kept",
            packs=False, requires=("transformers", TRANSFORMERS_INSTALL),
        )
    )  # fmt: skip
