"""Where and how a job computes: device choice with CPU fallback, threads, numeric settings."""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass

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
        return torch.device("cuda")
    if require_gpu:
        raise DeviceError(
            f"runtime.device: {requested} requested and runtime.require_gpu is true, "
            "but torch.cuda.is_available() is False on this node"
        )
    if requested == "cuda":
        log.warning("runtime.device: cuda requested but unavailable; falling back to CPU")
    return torch.device("cpu")


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
