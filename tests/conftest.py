"""Shared fixtures: tiny configs, tiny datasets, and a Snakemake runner in a scratch folder."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"

TINY_CONFIG = {
    "run_name": "tiny",
    "data": {"name": "mnist1d", "num_samples": 600, "generation_seed": 3},
    "model": {"name": "cnn1d", "width": 0.25},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    "knob": {"name": "epochs", "values": [1, 3]},
    "prune": {"method": "uniform", "densities": [0.2, 0.6]},
    "seeds": {"dense": [1], "retrain": [1, 2]},
    "metrics": {
        "lmc_points": 5,
        "cka_samples": 200,
        "hessian_samples": 64,
        "hessian_max_iter": 10,
        "hessian_probes": 4,
        "hessian_probe_batch": 2,
        "hessian_trace_deflation": 4,
    },
    "regimes": {"eps": 0.01, "cka_cut": 0.9},
    "runtime": {"device": "cpu", "threads": 1},
}


@pytest.fixture(autouse=True)
def _cpu_convolutions_restored():
    """A channels_last run turns oneDNN off process-wide (runtime.set_cpu_convolutions), as a
    job would; tests share one process, so each starts from PyTorch's default."""
    yield
    torch.backends.mkldnn.enabled = True


@pytest.fixture
def tiny_config() -> dict:
    return copy.deepcopy(TINY_CONFIG)


def write_config(folder: Path, config: dict, name: str = "config.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(folder: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the project's workflow with ``folder`` as working directory (its config.yaml)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(folder)]
    command += ["--cores", "2", *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def vector_payload(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """A prepared-dataset payload (as written by prepare-data) from raw vectors."""
    return {
        "train_x": x,
        "train_y": y,
        "test_x": x,
        "test_y": y,
        "num_classes": num_classes,
        "in_channels": x.shape[1],
        "image": False,
        "mean": None,
        "std": None,
        "augment": False,
    }


@pytest.fixture(scope="session")
def mnist1d_payload() -> dict:
    from threeregime.compute.data import prepare_dataset
    from threeregime.config.settings import DataConfig

    return prepare_dataset(DataConfig(num_samples=600, generation_seed=3))


# The test files that take longest (their end-to-end workflow runs; from `--durations`), longest
# first. A stale list costs only time.
LONGEST_FIRST = ["test_slurm.py", "test_adaptive.py", "test_deploy.py", "test_incremental.py"]
LONGEST_FIRST += ["test_progress.py", "test_lm.py", "test_workflow.py", "test_knobs.py", "test_setups.py"]
LONGEST_FIRST += ["test_presets.py", "test_locks.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest test files first, the rest in their own order: the suite's workers
    (pytest-xdist, a whole file each) take files in this order, so a long file does not start
    last and leave one worker running alone at the end."""

    def rank(item: pytest.Item) -> int:
        name = Path(str(item.fspath)).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order
