"""Where and how a job computes: device choice with CPU fallback, threads, numeric settings."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("threeregime")


class DeviceError(RuntimeError):
    """A GPU was demanded (runtime.require_gpu) but none is usable."""


@dataclass(frozen=True)
class Performance:
    """Numeric fast paths; all off is the CPU reference path."""

    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    tf32: bool = False

    def autocast(self, device: torch.device):
        enabled = self.amp == "bf16"
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def resolve_device(requested: str, require_gpu: bool = False) -> torch.device:
    """cpu -> cpu; cuda/auto -> cuda if usable, else CPU with a warning (or DeviceError)."""
    if requested == "cpu":
        if require_gpu:
            raise DeviceError("runtime.require_gpu is true but runtime.device is cpu")
        return torch.device("cpu")
    if torch.cuda.is_available():
        index = claim_gpu(torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    if require_gpu:
        raise DeviceError(
            f"runtime.device: {requested} requested and runtime.require_gpu is true, "
            "but torch.cuda.is_available() is False on this node"
        )
    if requested == "cuda":
        log.warning("runtime.device: cuda requested but unavailable; falling back to CPU")
    return torch.device("cpu")


_CLAIMS: list = []  # open lock files: each claim lasts as long as this process


def claim_gpu(count: int, lock_dir: Path | None = None) -> int:
    """Index of the GPU this process should use, of ``count`` visible ones.

    Snakemake caps how many GPU jobs run at once on a machine (``--resources gpu=N``) but does not
    tell a local job which card is its; every job would use card 0. So each job locks the first
    free (slot, card) pair in slot-major order, a file lock the OS drops when the process ends
    (also on a crash): N jobs spread over N cards, and with more jobs than cards each card takes
    one more before any takes two. Under Slurm a job sees only its own cards, so ``count`` is
    theirs and the lock only numbers jobs sharing one.
    """
    try:
        import fcntl
    except ImportError:  # no POSIX file locks (Windows): the first card
        return 0
    if count <= 1:
        return 0
    folder = lock_dir or Path(tempfile.gettempdir()) / f"threeregime-gpus-{os.getuid()}"
    folder.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        for index in range(count):
            handle = open(folder / f"cuda{index}.slot{slot}.lock", "w")  # kept open: the claim
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            _CLAIMS.append(handle)
            log.info("runtime: GPU %d of %d (slot %d)", index, count, slot)
            return index
        slot += 1


def set_tf32(enabled: bool) -> None:
    """TF32 for cuDNN convolutions and cuBLAS matmuls (Ampere and newer GPUs). PyTorch's default
    turns it on for convolutions, which rounds them to ~1e-3; off, "fp32" on a GPU means fp32
    and matches the CPU reference to ~1e-5 (tests/test_cuda.py). No effect on the CPU."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def setup(threads: int, device: torch.device) -> None:
    """Fixed thread count: with it, the same config and seeds give the same numbers on CPU."""
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def configure_logging() -> None:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
