"""Shared pieces of the benchmark scripts: machine description, timing, tables, synthetic data.

Every script compares its contenders side by side in one process (same machine, same load),
interleaving repetitions so that a burst of load from elsewhere hits all of them alike, and
prints a Markdown table for benchmarks/README.md (current) or benchmarks/logs/ (full, dated).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(REPO))

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: str = "cpu") -> str:
    """One line: date, CPU, cores, load, torch, and the GPU when one is used."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    parts = [
        datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        f"{cpu_model()} x {os.cpu_count()} cores",
        f"load avg {load:.2f}",
        f"torch {torch.__version__}",
        f"{torch.get_num_threads()} torch threads",
    ]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return ", ".join(parts)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable when shared)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; best is reported")
    p.add_argument("--tf32", action="store_true", help="TF32 on a GPU (default off, as in a job)")
    return p


def setup(args) -> None:
    import torch

    from threeregime.compute.runtime import set_tf32

    torch.set_num_threads(args.threads)
    set_tf32(args.tf32)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("--device cuda: no usable GPU here")
        torch.backends.cudnn.benchmark = True


def synchronize(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(func: Callable[[], object], device="cpu") -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = func()
    synchronize(device)
    return time.perf_counter() - start, result


def run_snakemake(
    folder: Path, *extra: str, checkout: Path = REPO
) -> tuple[float, subprocess.CompletedProcess, int]:
    """The workflow of ``checkout`` (this one by default; its package imported first) in
    ``folder``, timed as a whole process: (seconds, result, jobs), jobs from Snakemake's "total"
    line (-1 when it printed none)."""
    command = [sys.executable, "-m", "snakemake", "-s", str(checkout / "workflow" / "Snakefile")]
    command += ["--directory", str(folder), *extra]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))
    )
    seconds, done = timed(
        lambda: subprocess.run(command, capture_output=True, text=True, cwd=folder, env=env)
    )
    match = re.search(r"^total\s+(\d+)", done.stdout + done.stderr, re.MULTILINE)
    return seconds, done, int(match.group(1)) if match else -1


def table(headers: list[str], rows: list[list[object]]) -> str:
    def cell(value):
        if isinstance(value, float):
            if value != value:
                return "n/a"
            return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def synthetic_cifar(num_train: int, num_test: int, seed: int = 0, learnable: bool = False) -> dict:
    """A CIFAR-10-shaped prepared-dataset payload (uint8 NCHW images, 10 classes).

    Noise with random labels, or with ``learnable`` each image is half a fixed per-class
    template and half noise, so a few hundred SGD steps give a network with a trained-looking
    loss landscape.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (10, 3, 32, 32), generator=generator).float()

    def split(n):
        labels = torch.randint(0, 10, (n,), generator=generator)
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
        if learnable:
            images = (0.5 * templates[labels] + 0.5 * images.float()).round().to(torch.uint8)
        return images, labels

    train_x, train_y = split(num_train)
    test_x, test_y = split(num_test)
    return {
        "train_x": train_x,
        "train_y": train_y,
        "test_x": test_x,
        "test_y": test_y,
        "num_classes": 10,
        "in_channels": 3,
        "image": True,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "augment": True,
    }


def trained_preresnet20(device, data, steps: int, seed: int = 0):
    """PreResNet-20 after ``steps`` SGD steps (batch 64, lr 0.05) of the project's trainer."""
    from threeregime.compute.train import train
    from threeregime.config.settings import Recipe

    model = preresnet20(device, seed)
    if steps:
        recipe = Recipe(iterations=steps, batch_size=64, lr=0.05, lr_milestones=())
        train(model, data, recipe, stream=(9, seed))
    return model


class TorchvisionCIFAR:
    """A map-style dataset over uint8 NCHW arrays that behaves like torchvision's CIFAR10:
    each item goes through PIL and the given torchvision transform, one image at a time."""

    def __init__(self, images, labels, transform):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC, as CIFAR10.data
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), self.labels[index]


def paper_transforms(augment: bool):
    """The paper's torchvision pipeline: RandomCrop(32, 4) + flip (train), ToTensor, Normalize."""
    import torchvision.transforms as T

    steps = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize(CIFAR10_MEAN, CIFAR10_STD)])


def preresnet20(device, seed: int = 0):
    import torch

    from threeregime.compute.models import init_model
    from threeregime.config.settings import ModelConfig

    return init_model(ModelConfig(name="preresnet20"), 3, 10, seed).to(torch.device(device))


def report(title: str, args, body: str) -> None:
    print(f"\n## {title}\n")
    print(f"Machine: {machine(args.device)}; device {args.device}\n")
    print(body)
    sys.stdout.flush()


def read_observations(folder: Path):
    """A run folder's config and every per-pair metrics file of its results, read as the
    classification reads them (threeregime.stages.plan.pair_observation): (experiment config,
    regime settings, observations table with a ``cell`` column of canonical strings). Works on a
    run that is still going: it reads the files that exist."""
    import pandas as pd

    from threeregime.config.load import load_config
    from threeregime.config.settings import fmt_value
    from threeregime.io.files import read_json
    from threeregime.stages.plan import pair_observation

    config = load_config(folder / "config.yaml")
    files = sorted((folder / "results" / config.run_name / "metrics").rglob("*.json"))
    if not files:
        sys.exit(f"{folder}: no metrics files under results/{config.run_name}/metrics")
    rows = [pair_observation(read_json(f), config.regimes.cka_metric) for f in files]
    observations = pd.DataFrame(rows)
    observations["cell"] = [
        (fmt_value(t), fmt_value(d)) for t, d in zip(observations["temperature"], observations["density"])
    ]
    return config, config.regimes, observations
