"""Where and how a job computes: device choice with CPU fallback, threads, numeric settings."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import torch

from threeregime.compute.gpus import claim_gpu
from threeregime.config.settings import RuntimeConfig

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


def set_tf32(enabled: bool) -> None:
    """TF32 for cuDNN convolutions and cuBLAS matmuls (Ampere and newer GPUs). PyTorch's default
    turns it on for convolutions, which rounds them to ~1e-3; off, "fp32" on a GPU means fp32
    and matches the CPU reference to ~1e-5 (tests/test_cuda.py). No effect on the CPU."""
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled


def set_cpu_convolutions(device: torch.device, channels_last: bool) -> None:
    """oneDNN's backward pass of a strided 1x1 convolution in channels_last memory crashes the
    process (SIGSEGV) on some CPUs (seen: AMD EPYC, AVX2, torch 2.14.1 with oneDNN 3.12, one
    thread). channels_last is a GPU fast path; on the CPU such runs use PyTorch's native
    convolutions instead (same numbers to rounding). Process-wide, like set_tf32: every
    training job and train_runs call sets it for its own run."""
    torch.backends.mkldnn.enabled = not (device.type == "cpu" and channels_last)


def setup(threads: int, device: torch.device) -> None:
    """Fixed thread count: with it, the same config and seeds give the same numbers on CPU."""
    torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def job_runtime(runtime_json: str, threads: int) -> tuple[RuntimeConfig, torch.device]:
    """A compute job's runtime settings (``--runtime`` JSON) and device, with threads and device
    flags set for the process."""
    cfg = RuntimeConfig(**json.loads(runtime_json))
    device = resolve_device(cfg.device, cfg.require_gpu)
    setup(threads, device)
    log.info("runtime: device %s, %d threads, %s", device, threads, cfg)
    return cfg, device


def job_performance(spec: dict, runtime: RuntimeConfig, device: torch.device) -> Performance:
    """The job's numeric fast paths (its spec's ``performance``, the runtime's compile); also
    sets the process-wide TF32 and CPU convolution flags to match."""
    perf = spec.get("performance", {})
    tf32 = perf.get("tf32", False)
    set_tf32(tf32)
    set_cpu_convolutions(device, perf.get("channels_last", False))
    return Performance(perf.get("amp", "none"), perf.get("channels_last", False), runtime.compile, tf32)


def place(model: torch.nn.Module, device, perf: Performance, image: bool) -> torch.nn.Module:
    """Move a model to the device, in channels_last memory order for image models if asked."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if perf.channels_last and image else model


def numeric_environment(device: torch.device, threads: int, perf: Performance) -> dict:
    """What, besides config and seeds, decides a job's last bits: device (and the CPU's vector
    ISA, which picks oneDNN's kernels), thread count, library versions and numeric fast paths.
    Recorded in every model and metrics file; a mismatch is reported, never silently mixed."""
    env = {
        "device": device.type,
        "threads": int(threads),
        "torch": str(torch.__version__),  # a str subclass, which checkpoints do not hold
        "amp": perf.amp,
        "tf32": perf.tf32,
        "channels_last": perf.channels_last,
        "compile": perf.compile,
    }
    if device.type == "cuda":
        env["device"] = f"cuda {torch.cuda.get_device_name(device)}"
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["cpu"] = torch.backends.cpu.get_cpu_capability()
    return env
