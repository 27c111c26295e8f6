"""The datasets: one declarative entry each, importable without torch.

The schema's ``data.name`` enum, the data spec (which ``data.*`` keys define a dataset's
content, so that changing another reruns nothing) and the training-set size that batch sizes are
checked against derive from the entries. CIFAR's on-disk layout lives here too, so that a config
naming a missing CIFAR folder is refused at validation, before torch is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from threeregime.registry.base import Registry, reference_problem

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


@dataclass(frozen=True)
class Dataset:
    """One dataset. ``shape``: (input channels, classes). ``loader``: ``module:function`` taking
    the DataConfig and returning the prepared payload (threeregime.compute.data).
    ``content_keys``: the data.* settings that define its content (the data spec; others rerun
    nothing). ``train_size``: the training split's size from data.num_samples, known before the
    data exists (batch sizes are checked against it; None: unknown, not checked)."""

    name: str
    shape: tuple[int, int]
    loader: str
    content_keys: tuple[str, ...]
    description: str
    train_size: Callable[[int], int] | None = None


DATASETS: Registry[Dataset] = Registry("dataset")
register = DATASETS.register


def registry_problems(data_fields: set[str]) -> list[str]:
    """One line per incomplete entry (empty when the registry is sound)."""
    problems = []
    for name, d in DATASETS.items():
        where = DATASETS.where(name)
        if d.name != name:
            problems.append(f"{where}: registered under another name than its entry's {d.name!r}")
        if len(d.shape) != 2 or min(d.shape) < 1:
            problems.append(f"{where}: shape must be (input channels, classes), got {d.shape!r}")
        missing = reference_problem(d.loader, "loader")
        if missing:
            problems.append(f"{where}: {missing}")
        for key in d.content_keys:
            if key not in data_fields:
                problems.append(f"{where}: content key {key!r} is not a data.* config key")
    return problems


def train_samples(data_name: str, num_samples: int) -> int | None:
    """Size of the training split, known before the data exists (None: not declared)."""
    size = DATASETS[data_name].train_size
    return None if size is None else size(num_samples)


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


register(
    Dataset(
        "mnist1d", (1, 10), "threeregime.compute.data:load_mnist1d",
        ("name", "num_samples", "generation_seed"),
        "MNIST-1D (Greydanus 2020), generated offline from a seed",
        train_size=lambda num_samples: int(num_samples * MNIST1D_TRAIN_SPLIT),
    )
)  # fmt: skip
for _name, _classes in (("cifar10", 10), ("cifar100", 100)):
    register(
        Dataset(
            _name, (3, _classes), "threeregime.compute.data:load_cifar", ("name", "augment"),
            f"{_name.upper()} from torchvision's files under data.root",
            train_size=lambda _: CIFAR_TRAIN_SAMPLES,
        )
    )  # fmt: skip
