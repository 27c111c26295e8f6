"""Locks of live runs and jobs, proven by the kernel, never guessed from process names.

Snakemake locks a working directory with files under ``.snakemake/locks/`` and cannot tell a
live run's lock from a killed run's; and Snakemake 9 deletes that whole folder when any run ends,
so a finished run also drops the locks of other runs still live there. threeregime therefore keeps
its own locks beside it, as ``flock`` locks: a lock is held by an open file of a live process and
the kernel releases it when that process ends, however it ends (SIGKILL, OOM killer, a closed
terminal), whatever started it (a shell, Python, a container with its own PID namespace).

* **Run lock**, ``.snakemake/threeregime/run-<run_name>.lock``: held by the Snakemake process
  that writes ``results/<run_name>`` from its start (``onstart``) to its end. A second run of the
  same results folder is refused in one line while it is held. ``run-<run_name>.json`` beside
  it says who holds it and which of Snakemake's lock files are that run's.
* **Stale Snakemake locks**: the lock files of a run whose run lock is free (it died) are removed
  by the next run. Only records of this host are acted on: some shared file systems show locks
  only to the host that took them, so a free lock taken elsewhere proves nothing.
* **Job lock**, ``.<output>.lock`` next to a job's first output: held by the job process. A
  second process computing the same output (a job of a killed run that goes on running while
  the next run starts it again) is refused in one line.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SNAKEMAKE_LOCKS = Path(".snakemake") / "locks"
RUN_LOCKS = Path(".snakemake") / "threeregime"
_HELD: dict[Path, object] = {}  # this process's run locks: open files, held until released


class Locked(RuntimeError):
    """A run or job that another live process is already doing."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run lock: its record."""

    run_name: str
    host: str
    pid: int
    started: str
    locks: tuple[str, ...]
    record: Path

    @property
    def lock_file(self) -> Path:
        return self.record.with_suffix(".lock")

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"


def _try_flock(path: Path):
    """The open file, exclusively locked, or None while another open file holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # never truncated, never deleted: see held()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def held(path: Path) -> bool:
    """Whether a live process holds the lock of ``path`` (a missing file: no). Lock files are
    never deleted, so that two processes can never lock two different files of one name."""
    if not path.exists():
        return False
    handle = _try_flock(path)
    if handle is None:
        return True
    handle.close()
    return False


def _acquire(path: Path, attempts: int = 200):
    """Lock ``path``, retrying briefly: another run's :func:`held` may be probing it."""
    for _ in range(attempts):
        handle = _try_flock(path)
        if handle is not None:
            return handle
        time.sleep(0.01)
    return None


# ----------------------------------------------------------------------------- run locks
def _record_path(workdir: str | Path, run_name: str) -> Path:
    return Path(workdir) / RUN_LOCKS / f"run-{run_name}.json"


def _read_holder(record: Path) -> Holder | None:
    try:
        data = json.loads(record.read_text())
        return Holder(
            data["run_name"], data["host"], int(data["pid"]), data["started"], tuple(data["locks"]), record
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no record, or one being written: nothing known about the holder


def _write_record(record: Path, holder: dict) -> None:
    tmp = record.with_name(f".{record.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(holder) + "\n")
    os.replace(tmp, record)


def run_holder(workdir: str | Path, run_name: str) -> str | None:
    """Who is running ``run_name`` in ``workdir`` now (one phrase), or None when nobody is."""
    record = _record_path(workdir, run_name)
    if not held(record.with_suffix(".lock")):
        return None
    holder = _read_holder(record)
    return holder.describe() if holder else "a process that is starting"


def acquire_run(workdir: str | Path, run_name: str, snakemake_locks=()) -> None:
    """Hold the run lock of ``results/<run_name>`` until :func:`release_run` or the end of this
    process, and record the holder; :class:`Locked` (one line) while another live run holds it,
    or while a run on another host left a record this host cannot prove dead."""
    record = _record_path(workdir, run_name)
    lock_file = record.with_suffix(".lock")
    release_run(workdir, run_name)  # this process's own earlier run (a notebook running twice)
    previous = _read_holder(record)
    handle = _acquire(lock_file)
    if handle is None:
        who = previous.describe() if previous else "another process"
        raise Locked(
            f"results/{run_name} is being written by a running snakemake ({who}); wait for it to "
            f"end, or stop it, before running it again (snakemake -n is fine meanwhile)"
        )
    if previous and previous.host != socket.gethostname():
        handle.close()
        raise Locked(
            f"results/{run_name} was being written by a snakemake on another host "
            f"({previous.describe()}) that this host cannot see; if it is no longer running there, "
            f"run `threeregime unlock --force`"
        )
    _HELD[record] = handle
    names = sorted(Path(p).name for p in snakemake_locks)
    _write_record(
        record,
        {
            "run_name": run_name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "locks": names,
        },
    )


def release_run(workdir: str | Path, run_name: str) -> None:
    """Drop this process's run lock of ``run_name`` and its record (no-op if not held)."""
    record = _record_path(workdir, run_name)
    handle = _HELD.pop(record, None)
    if handle is not None:
        record.unlink(missing_ok=True)
        handle.close()


def holders(workdir: str | Path) -> list[Holder]:
    """The records of every run lock in ``workdir``, live or left by a dead run."""
    folder = Path(workdir) / RUN_LOCKS
    found = [_read_holder(path) for path in sorted(folder.glob("run-*.json"))] if folder.is_dir() else []
    return [holder for holder in found if holder is not None]


def snakemake_lock_files(workdir: str | Path) -> list[Path]:
    folder = Path(workdir) / SNAKEMAKE_LOCKS
    return sorted(folder.glob("*.lock")) if folder.is_dir() else []


def remove_stale_locks(workdir: str | Path) -> tuple[list[Path], list[str]]:
    """Remove the Snakemake lock files of runs of this host that died (their run lock is free),
    and their records. Returns the removed files and one line for each lock left, saying why."""
    workdir = Path(workdir)
    present = {path.name: path for path in snakemake_lock_files(workdir)}
    removed, kept, owned = [], [], set()
    for holder in holders(workdir):
        owned.update(holder.locks)
        if held(holder.lock_file):
            kept.append(f"run {holder.run_name} is running ({holder.describe()})")
        elif holder.host != socket.gethostname():
            kept.append(f"run {holder.run_name} ran on another host ({holder.describe()})")
        else:
            for name in holder.locks:
                if name in present:
                    present[name].unlink(missing_ok=True)
                    removed.append(present[name])
            holder.record.unlink(missing_ok=True)
    unowned = sorted(set(present) - owned)
    if unowned:
        kept.append(f"{', '.join(unowned)} without an owner record (a run that has not started yet?)")
    return removed, kept


def unlock(workdir: str | Path, force: bool = False) -> str:
    """Remove every Snakemake lock and dead run record of ``workdir``; refuses (ValueError, one
    line) while a run there is live, or, unless ``force``, while a run of another host may be."""
    workdir = Path(workdir)
    records = holders(workdir)
    live = [holder for holder in records if held(holder.lock_file)]
    if live:
        who = "; ".join(f"run {h.run_name}, {h.describe()}" for h in live)
        raise ValueError(f"{workdir}: Snakemake is running here ({who}); not unlocking")
    foreign = [holder for holder in records if holder.host != socket.gethostname()]
    if foreign and not force:
        who = ", ".join(sorted({f"pid {h.pid} on {h.host}" for h in foreign}))
        raise ValueError(
            f"{workdir}: locked by a Snakemake on another host ({who}); if it is no longer "
            "running there, run again with --force"
        )
    lock_files = snakemake_lock_files(workdir)
    for path in lock_files:
        path.unlink(missing_ok=True)
    for holder in records:
        holder.record.unlink(missing_ok=True)
    if not lock_files and not records:
        return f"{workdir}: not locked"
    return f"{workdir}: removed {len(lock_files)} lock file(s) and {len(records)} run record(s)"


# ----------------------------------------------------------------------------- job locks
@contextmanager
def job_lock(output: str | Path):
    """Hold the lock of a job's first ``output`` while the job runs; :class:`Locked` (one line)
    while another live process computes the same output. The lock file is removed when the job
    ends; a process that locked a file just removed retries on the new one (inode check)."""
    output = Path(output)
    path = output.with_name(f".{output.name}.lock")
    while True:
        handle = _try_flock(path)
        if handle is None:
            try:
                who = path.read_text().strip() or "another process"
            except OSError:
                who = "another process"
            raise Locked(
                f"{output}: {who} is still computing it (a job of an earlier snakemake run that was "
                "killed?); wait for it to end or stop it, then run snakemake again"
            )
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # locked a file its holder removed as it ended: lock the current one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)  # still holding the lock: nobody can be mid-way through it
        handle.close()
