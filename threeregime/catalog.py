"""Static facts about the datasets and models, importable without torch: the model and dataset
registries (one entry each; the schema's model.name and data.name enums, the model/data pairing
and the data spec derive from them).

The Snakefile validates the configuration before it builds the DAG; these facts (CIFAR's
on-disk layout, the conv weight shapes of every model) let it do so in milliseconds instead of
importing torch and building a model. ``threeregime.models`` and ``threeregime.data`` take their
channel plans and file layout from here, and a test checks the shapes against the real modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# torchvision's python-pickle layout: folder, train files, test files, label key, meta file.
CIFAR_LAYOUT = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test": ("test_batch",),
        "label_key": "labels",
        "meta": "batches.meta",
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ("train",),
        "test": ("test",),
        "label_key": "fine_labels",
        "meta": "meta",
    },
}

MNIST1D_TRAIN_SPLIT = 0.8  # mnist1d's make_dataset default: the first 80% of samples train
CIFAR_TRAIN_SAMPLES = 50_000

PRERESNET_PLANES = (16, 32, 64)
RESNET_PLANES = (16, 32, 64)  # open_lth's cifar_resnet_20: W, 2W, 4W filters with W = 16
CNN1D_PLANES = (32, 64, 64)
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def scaled(channels: int, width: float) -> int:
    """Channels times the width multiplier, at least 1."""
    return max(1, int(round(channels * width)))


def cifar_folder(name: str) -> str:
    return CIFAR_LAYOUT[name]["folder"]


def cifar_howto(name: str, root: str | Path) -> str:
    """How to get CIFAR into ``root`` (the end of every missing-data message)."""
    return (
        f"get it with `python -m threeregime fetch-data --name {name} --root {root}` (needs internet), "
        f"or extract torchvision's {name} archive into {root}, or set data.download: true"
    )


def cifar_missing(name: str, root: str | Path) -> list[Path]:
    """The files of torchvision's layout that are absent under ``root`` (empty when complete)."""
    layout = CIFAR_LAYOUT[name]
    folder = Path(root) / layout["folder"]
    return [folder / f for f in (*layout["train"], *layout["test"]) if not (folder / f).is_file()]


# ----------------------------------------------------------------------------- registries
@dataclass(frozen=True)
class Dataset:
    """One dataset. ``shape``: (input channels, classes). ``loader``: ``module:function`` taking
    the DataConfig and returning the prepared payload (threeregime.data). ``content_keys``: the
    data.* settings that define its content (the data spec; others rerun nothing).
    ``train_size``: the training split's size from data.num_samples, known before the data
    exists (batch sizes are checked against it; None: unknown, not checked)."""

    name: str
    shape: tuple[int, int]
    loader: str
    content_keys: tuple[str, ...]
    description: str
    train_size: Callable[[int], int] | None = None


@dataclass(frozen=True)
class Model:
    """One model. ``builder``: ``module:function`` called as (in_channels, num_classes, width)
    returning the nn.Module (threeregime.models). ``conv_shapes``: the shapes of its conv
    weights (the prunable layers) by parameter name, from (width, in_channels), without torch:
    config checks run before any import of torch, and a test holds them equal to the module's.
    ``datasets``: the datasets it is built for."""

    name: str
    builder: str
    conv_shapes: Callable[[float, int], dict[str, tuple[int, ...]]]
    datasets: tuple[str, ...]
    description: str


DATASETS: dict[str, Dataset] = {}
MODELS: dict[str, Model] = {}


def register_dataset(entry: Dataset) -> Dataset:
    DATASETS[entry.name] = entry
    return entry


def register_model(entry: Model) -> Model:
    MODELS[entry.name] = entry
    return entry


def registry_problems(data_fields: set[str]) -> list[str]:
    """One line per incomplete model or dataset entry (empty when both registries are sound)."""
    problems = []
    for name, d in DATASETS.items():
        where = f"dataset registry: {name}"
        if d.name != name:
            problems.append(f"{where}: registered under another name than its entry's {d.name!r}")
        if len(d.shape) != 2 or min(d.shape) < 1:
            problems.append(f"{where}: shape must be (input channels, classes), got {d.shape!r}")
        if ":" not in d.loader:
            problems.append(f"{where}: loader must be 'module:function', got {d.loader!r}")
        for key in d.content_keys:
            if key not in data_fields:
                problems.append(f"{where}: content key {key!r} is not a data.* config key")
    for name, m in MODELS.items():
        where = f"model registry: {name}"
        if m.name != name:
            problems.append(f"{where}: registered under another name than its entry's {m.name!r}")
        if ":" not in m.builder:
            problems.append(f"{where}: builder must be 'module:function', got {m.builder!r}")
        if not callable(m.conv_shapes):
            problems.append(f"{where}: conv_shapes must be a function of (width, in_channels)")
        unknown = [d for d in m.datasets if d not in DATASETS]
        if not m.datasets or unknown:
            problems.append(f"{where}: datasets must name registered datasets, got {list(m.datasets)}")
    return problems


def conv_weight_shapes(model: str, width: float, data_name: str) -> dict[str, tuple[int, ...]]:
    """Shape of every conv weight (the prunable layers), keyed by parameter name."""
    if model not in MODELS:
        raise ValueError(f"model.name: unknown model {model!r}")
    return MODELS[model].conv_shapes(width, DATASETS[data_name].shape[0])


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


register_dataset(
    Dataset(
        "mnist1d", (1, 10), "threeregime.data:load_mnist1d", ("name", "num_samples", "generation_seed"),
        "MNIST-1D (Greydanus 2020), generated offline from a seed",
        train_size=lambda num_samples: int(num_samples * MNIST1D_TRAIN_SPLIT),
    )
)  # fmt: skip
for _name, _classes in (("cifar10", 10), ("cifar100", 100)):
    register_dataset(
        Dataset(
            _name, (3, _classes), "threeregime.data:load_cifar", ("name", "augment"),
            f"{_name.upper()} from torchvision's files under data.root",
            train_size=lambda _: CIFAR_TRAIN_SAMPLES,
        )
    )  # fmt: skip
register_model(
    Model(
        "cnn1d", "threeregime.models:CNN1d", _cnn1d_shapes, ("mnist1d",),
        "a small BatchNorm 1D CNN (4 convs)",
    )
)  # fmt: skip
register_model(
    Model(
        "preresnet20", "threeregime.models:preresnet20", _preresnet20_shapes, ("cifar10", "cifar100"),
        "PreResNet-20 (the paper's model: 16/32/64 channels, 1x1 downsample convs)",
    )
)  # fmt: skip
register_model(
    Model(
        "resnet20", "threeregime.models:resnet20", _resnet20_shapes, ("cifar10", "cifar100"),
        "ResNet-20 (open_lth's cifar_resnet_20, the lottery-ticket papers' model: post-activation "
        "blocks, 16/32/64 channels, 1x1 conv + BN shortcuts)",
    )
)  # fmt: skip
register_model(
    Model(
        "vgg16_bn", "threeregime.models:VGG", _vgg16_bn_shapes, ("cifar10", "cifar100"),
        "VGG-16 with BatchNorm",
    )
)  # fmt: skip
DATA_SHAPES = {name: entry.shape for name, entry in DATASETS.items()}  # registered at import


def train_samples(data_name: str, num_samples: int) -> int | None:
    """Size of the training split, known before the data exists (None: not declared)."""
    size = DATASETS[data_name].train_size
    return None if size is None else size(num_samples)


def conv_layer_sizes(model: str, width: float, data_name: str) -> dict[str, int]:
    """Weights per prunable layer."""
    sizes = {}
    for name, shape in conv_weight_shapes(model, width, data_name).items():
        count = 1
        for dim in shape:
            count *= dim
        sizes[name] = count
    return sizes
