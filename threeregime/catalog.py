"""Static facts about the datasets and models, importable without torch.

The Snakefile validates the configuration before it builds the DAG; these facts (CIFAR's
on-disk layout, the conv weight shapes of every model) let it do so in milliseconds instead of
importing torch and building a model. ``threeregime.models`` and ``threeregime.data`` take their
channel plans and file layout from here, and a test checks the shapes against the real modules.
"""

from __future__ import annotations

from pathlib import Path

DATA_SHAPES = {"mnist1d": (1, 10), "cifar10": (3, 10), "cifar100": (3, 100)}
MNIST1D_TRAIN_SPLIT = 0.8  # mnist1d's make_dataset default: the first 80% of samples train
CIFAR_TRAIN_SAMPLES = 50_000


def train_samples(data_name: str, num_samples: int) -> int:
    """Size of the training split, known before the data exists."""
    if data_name == "mnist1d":
        return int(num_samples * MNIST1D_TRAIN_SPLIT)
    return CIFAR_TRAIN_SAMPLES


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

PRERESNET_PLANES = (16, 32, 64)
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


def conv_weight_shapes(model: str, width: float, data_name: str) -> dict[str, tuple[int, ...]]:
    """Shape of every conv weight (the prunable layers), keyed by parameter name."""
    in_channels, _ = DATA_SHAPES[data_name]
    shapes: dict[str, tuple[int, ...]] = {}
    if model == "cnn1d":
        c1, c2, c3 = (scaled(c, width) for c in CNN1D_PLANES)
        previous = in_channels
        for index, (channels, kernel) in enumerate(((c1, 5), (c2, 3), (c3, 3), (c3, 3))):
            shapes[f"features.{3 * index}.weight"] = (channels, previous, kernel)
            previous = channels
    elif model == "preresnet20":
        planes = [scaled(c, width) for c in PRERESNET_PLANES]
        shapes["conv1.weight"] = (planes[0], in_channels, 3, 3)
        previous, block = planes[0], 0
        for stage, channels in enumerate(planes):
            for index in range(3):
                name = f"blocks.{block}"
                shapes[f"{name}.conv1.weight"] = (channels, previous, 3, 3)
                shapes[f"{name}.conv2.weight"] = (channels, channels, 3, 3)
                if (stage > 0 and index == 0) or previous != channels:
                    shapes[f"{name}.downsample.weight"] = (channels, previous, 1, 1)
                previous, block = channels, block + 1
    elif model == "vgg16_bn":
        previous, index = in_channels, 0
        for item in VGG16_LAYOUT:
            if item == "M":
                index += 1
                continue
            channels = scaled(item, width)
            shapes[f"features.{index}.weight"] = (channels, previous, 3, 3)
            previous, index = channels, index + 3  # conv, BN, ReLU
    else:
        raise ValueError(f"model.name: unknown model {model!r}")
    return shapes


def conv_layer_sizes(model: str, width: float, data_name: str) -> dict[str, int]:
    """Weights per prunable layer."""
    sizes = {}
    for name, shape in conv_weight_shapes(model, width, data_name).items():
        count = 1
        for dim in shape:
            count *= dim
        sizes[name] = count
    return sizes
