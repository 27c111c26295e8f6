"""Which GPU a job takes, and how many a job reserves: bookkeeping without torch, so that the
Snakefile can ask it while it builds the DAG."""

from __future__ import annotations

import glob
import logging
import os
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("threeregime")


def gpus_per_job(device: str) -> int:
    """GPUs a training or metrics job reserves (runtime.device): cuda 1, cpu 0, auto 1 only if
    this machine shows an NVIDIA device (so on a CPU-only machine auto jobs do not queue for a
    GPU)."""
    if device == "auto":
        return 1 if glob.glob("/dev/nvidia[0-9]*") else 0
    return int(device == "cuda")


_CLAIMS: list = []  # open lock files: each claim lasts as long as this process


def claim_gpu(count: int, lock_dir: Path | None = None) -> int:
    """Index of the GPU this process should use, of ``count`` visible ones.

    Snakemake caps how many GPU jobs run at once on a machine (``--resources gpu=N``) but does not
    tell a local job which card is its; every job would use card 0. So each job counts the jobs
    on each card by their lock files, takes the card with the fewest (the lowest index on a tie)
    and holds a lock file of it until the process ends (the OS drops it, also on a crash). Two
    jobs starting at the same instant may both see the same counts; they then share a card.
    Under Slurm a job sees only its own cards, so ``count`` is theirs.
    """
    if count <= 1 or sys.platform == "win32":  # nothing to choose, or no POSIX file locks
        return 0
    folder = lock_dir or Path(tempfile.gettempdir()) / f"threeregime-gpus-{os.getuid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [_jobs_on(folder, index) for index in range(count)]
        index = jobs.index(min(jobs))
        slot, handle = 0, None
        while handle is None:
            handle = _try_lock(folder / f"cuda{index}.slot{slot}.lock")
            slot += 1
    except OSError as error:
        log.warning("runtime: cannot claim a GPU under %s (%s); using GPU 0", folder, error)
        return 0
    _CLAIMS.append(handle)
    log.info("runtime: GPU %d of %d (%d other jobs on it)", index, count, jobs[index])
    return index


def _try_lock(path: Path):
    """The open, exclusively locked file, or None if another holder has it."""
    import fcntl

    handle = open(path, "w")  # kept open by the caller: the lock lives as long as the file
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def _jobs_on(folder: Path, index: int) -> int:
    """How many of card ``index``'s lock files are held (by any process, this one included)."""
    held = 0
    for path in folder.glob(f"cuda{index}.slot*.lock"):
        handle = _try_lock(path)
        if handle is None:
            held += 1
        else:
            handle.close()
    return held
