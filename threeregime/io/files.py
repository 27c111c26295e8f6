"""Atomic file output and checked checkpoint input.

Every artefact is written to a temporary file in the target folder and renamed into place, so a
killed job never leaves a truncated file that a later rule would read as complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("threeregime")

REBUILD_ADVICE = "delete it and run snakemake again (it rebuilds the file and what was computed from it)"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupted or of the wrong kind."""


def _umask() -> int:
    """The process umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Temporaries left next to ``path`` by a killed writer are removed first: only one job writes
    a given output at a time. The result gets the permissions the umask gives a new file
    (mkstemp alone would leave it 0600, unreadable to collaborators on a shared cluster).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in remove_stale_temporaries(path):
        log.warning("removed %s, left by an interrupted write", stale)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC or _disk_full(path.parent):
            raise OSError(errno.ENOSPC, f"{path}: No space left on device") from None
        raise
    except RuntimeError as exc:  # torch's zip writer reports a full disk as a RuntimeError
        if _disk_full(path.parent):
            raise OSError(errno.ENOSPC, f"{path}: No space left on device ({exc})") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _disk_full(folder: Path) -> bool:
    """Whether the file system of ``folder`` has (next to) no room left."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete temp files that a killed writer of ``path`` left behind (see atomic_path)."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> None:
    with atomic_path(path) as tmp:
        writer(tmp)


def write_text(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc}); {REBUILD_ADVICE}") from None


def write_csv(path: str | Path, frame) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_figure(fig, path: str | Path, dpi: int) -> None:
    fmt = Path(path).suffix.lstrip(".")
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches="tight"))


# Checkpoints hold tensors and plain data only (dicts, lists, strings, numbers), and are read with
# torch's weights-only unpickler, which builds nothing else: a file from elsewhere (a shared results
# folder, a cluster, a download) cannot run code when it is loaded. The format tag and version let
# a reader tell this format from an older threeregime's (version 1 pickled Python objects).
CHECKPOINT_FORMAT = "threeregime-checkpoint"
CHECKPOINT_VERSION = 2
NOT_A_CHECKPOINT = (
    "not a threeregime checkpoint: it holds Python objects other than tensors and plain data, "
    "which are refused unread because loading them could run code (a file of another program, "
    "or one written by threeregime before 0.2); if threeregime wrote it, " + REBUILD_ADVICE
)


def save_checkpoint(path: str | Path, payload: dict, kind: str) -> None:
    """Write ``payload`` (tensors and plain data) as a checkpoint of ``kind``, atomically."""
    import torch

    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "kind": kind}
    write_atomic(path, lambda tmp: torch.save(header | payload, tmp))


def load_checkpoint(path: str | Path, kind: str, map_location: str = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` without running anything in it, with
    one clear line if it is missing, damaged, of another format or of the wrong kind."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: {NOT_A_CHECKPOINT}") from None
    except Exception as exc:  # torch raises several types for truncated or garbled zips
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: corrupted or truncated checkpoint ({message}); {REBUILD_ADVICE}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: {NOT_A_CHECKPOINT}")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: a threeregime checkpoint of format version {payload.get('version')}, this "
            f"threeregime reads version {CHECKPOINT_VERSION}; {REBUILD_ADVICE}"
        )
    if payload.get("kind") != kind:
        raise CheckpointError(f"{path}: expected a '{kind}' checkpoint, found '{payload.get('kind')}'")
    return payload


def file_digest(path: str | Path) -> str:
    """Content hash, used to refuse resuming from state built on a different input."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
