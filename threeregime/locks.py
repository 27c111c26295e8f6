"""Stale Snakemake locks: tell a crashed run's lock from a live one, and remove only the former.

Snakemake locks a working directory with files under ``.snakemake/locks/`` and removes them when
it exits, but not when it is killed (SIGKILL, OOM killer, power loss, SIGHUP from a closed
terminal); the next run then fails with ``LockException``. Snakemake's own ``--unlock`` removes
every lock, also a live run's. Here each run records which lock files are its own (an *owner*
file: host, pid, lock names, written by the Snakefile's ``onstart``), and a later run removes the
locks of owners that are provably dead: same host, and the pid is gone or is no Snakemake.
A lock of another host, of a live process, or without an owner record is left alone.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

LOCKS = Path(".snakemake") / "locks"
OWNER_GLOB = "threeregime-owner.*.json"


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    locks: tuple[str, ...]
    path: Path

    def alive(self) -> bool:
        """True unless the process is provably gone (only decidable on its own host)."""
        if self.host != socket.gethostname():
            return True
        return _is_snakemake(self.pid)


def _is_snakemake(pid: int) -> bool:
    """Whether ``pid`` is a live process whose command line runs Snakemake (pids are reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (e.g. macOS): a live pid counts as alive
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return b"snakemake" in cmdline


def record_owner(workdir: str | Path, lock_files) -> Path | None:
    """Write this run's owner record next to its lock files (called from ``onstart``)."""
    names = sorted(Path(p).name for p in lock_files)
    folder = Path(workdir) / LOCKS
    if not names or not folder.is_dir():
        return None
    path = folder / f"threeregime-owner.{socket.gethostname()}.{os.getpid()}.json"
    record = {"host": socket.gethostname(), "pid": os.getpid(), "locks": names}
    path.write_text(json.dumps(record) + "\n")
    return path


def owners(workdir: str | Path) -> list[Owner]:
    found = []
    for path in sorted((Path(workdir) / LOCKS).glob(OWNER_GLOB)):
        try:
            record = json.loads(path.read_text())
            found.append(Owner(record["host"], int(record["pid"]), tuple(record["locks"]), path))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable record: its locks count as unowned, so they stay
    return found


def lock_files(workdir: str | Path) -> list[Path]:
    folder = Path(workdir) / LOCKS
    return sorted(folder.glob("*.lock")) if folder.is_dir() else []


def remove_stale_locks(workdir: str | Path) -> tuple[list[Path], list[str]]:
    """Remove the lock files of dead owners on this host.

    Returns the removed files and one line for each lock left in place, saying why.
    """
    workdir = Path(workdir)
    locks = {p.name: p for p in lock_files(workdir)}
    removed, kept = [], []
    owned = set()
    for owner in owners(workdir):
        owned.update(owner.locks)
        if owner.alive():
            kept.append(f"held by a running Snakemake (pid {owner.pid} on {owner.host})")
            continue
        for name in owner.locks:
            if name in locks:
                locks[name].unlink(missing_ok=True)
                removed.append(locks[name])
        owner.path.unlink(missing_ok=True)
    unowned = sorted(set(locks) - owned)
    if unowned:
        kept.append(f"{', '.join(unowned)} without an owner record (a run that has not started yet?)")
    return removed, kept


def live_snakemake_pids(workdir: str | Path) -> list[int]:
    """Pids of Snakemake processes on this host whose working directory is ``workdir``."""
    target = Path(workdir).resolve()
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        if pid == os.getpid():
            continue
        try:
            if Path(os.readlink(proc / "cwd")).resolve() != target:
                continue
            if b"snakemake" in (proc / "cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            continue
    return sorted(pids)


def unlock(workdir: str | Path, force: bool = False) -> str:
    """Remove every lock of ``workdir`` unless a Snakemake may still be running there.

    Refuses (ValueError, one line) while a Snakemake process of this directory runs on this
    host, or while a lock's owner ran on another host, unless ``force``.
    """
    workdir = Path(workdir)
    locks = lock_files(workdir)
    if not locks:
        return f"{workdir}: not locked"
    if not force:
        pids = live_snakemake_pids(workdir)
        if pids:
            raise ValueError(
                f"{workdir}: Snakemake is running here (pid {', '.join(map(str, pids))}); not unlocking"
            )
        foreign = [o for o in owners(workdir) if o.host != socket.gethostname()]
        if foreign:
            hosts = ", ".join(sorted({f"pid {o.pid} on {o.host}" for o in foreign}))
            raise ValueError(
                f"{workdir}: locked by a Snakemake on another host ({hosts}); if it is no longer "
                "running there, run again with --force"
            )
    for path in (workdir / LOCKS).iterdir():
        path.unlink(missing_ok=True)
    return f"{workdir}: removed {len(locks)} lock file(s)"
