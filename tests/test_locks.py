"""Locks of live runs and jobs (threeregime.io.locks): liveness is the kernel's flock, so a live run is
never taken for dead whatever started it, a dead one never blocks the next run, and a run that
ends never unlocks another. Every wait here is for an event (a line, a file), never a sleep, so
the tests hold on a saturated machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from threeregime.cli import main
from threeregime.config.settings import Recipe
from threeregime.io import locks

from .conftest import SNAKEFILE, TINY_CONFIG, write_config

HOLDER = """
import sys
from threeregime.io import locks
locks.acquire_run(sys.argv[1], sys.argv[2], [sys.argv[3]])
print("ready", flush=True)
sys.stdin.readline()
"""


def _can_unshare_pid() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run([*STARTERS["pid namespace"], "true"], capture_output=True)
    return probe.returncode == 0


STARTERS = {
    "python": [],
    "pid namespace": ["unshare", "--pid", "--fork", "--mount-proc"],  # pid 1 of its own /proc
}


def _snakemake_lock(workdir: Path, name: str) -> Path:
    folder = workdir / locks.SNAKEMAKE_LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("results/x\n")
    return path


def _start_holder(workdir: Path, run_name: str, lock_name: str, starter: list[str]) -> subprocess.Popen:
    """A process that takes the run lock the way the Snakefile does, then waits for a line."""
    command = [*starter, sys.executable, "-c", HOLDER, str(workdir), run_name, lock_name]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


@pytest.mark.parametrize("starter", list(STARTERS))
def test_a_live_run_keeps_its_locks_whatever_started_it_and_a_dead_one_loses_them(tmp_path, starter):
    if starter == "pid namespace" and not _can_unshare_pid():
        pytest.skip("unshare --pid is not permitted here")
    lock = _snakemake_lock(tmp_path, "0.input.lock")
    holder = _start_holder(tmp_path, "demo", lock.name, STARTERS[starter])
    try:
        removed, kept = locks.remove_stale_locks(tmp_path)
        assert removed == [] and lock.exists()
        assert any(line.startswith("run demo is running (pid ") for line in kept), kept
        with pytest.raises(locks.Locked, match=r"results/demo is being written by a running snakemake"):
            locks.acquire_run(tmp_path, "demo")
        assert locks.run_holder(tmp_path, "demo").startswith("pid ")
        assert main(["unlock", str(tmp_path)]) == 1 and lock.exists()
        locks.acquire_run(tmp_path, "other")  # another results folder in the same directory
        locks.release_run(tmp_path, "other")
    finally:
        holder.communicate("\n")  # the holder ends: the kernel drops its lock
    assert holder.returncode == 0
    assert locks.run_holder(tmp_path, "demo") is None
    removed, _ = locks.remove_stale_locks(tmp_path)
    assert removed == [lock] and not lock.exists()
    assert locks.holders(tmp_path) == [], "the dead run's record goes with its locks"
    locks.acquire_run(tmp_path, "demo")
    locks.release_run(tmp_path, "demo")


def _record(workdir: Path, run_name: str, host: str, lock_names: list[str]) -> None:
    folder = workdir / locks.RUN_LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run_name": run_name, "host": host, "pid": 7, "started": "2026-01-01 00:00:00"}
    (folder / f"run-{run_name}.json").write_text(json.dumps(record | {"locks": lock_names}))


def test_records_of_another_host_are_kept_until_forced(tmp_path, capsys):
    mine = _snakemake_lock(tmp_path, "0.input.lock")
    theirs = _snakemake_lock(tmp_path, "1.input.lock")
    unowned = _snakemake_lock(tmp_path, "2.output.lock")
    _record(tmp_path, "dead", socket.gethostname(), [mine.name])
    _record(tmp_path, "far", "elsewhere.example", [theirs.name])
    removed, kept = locks.remove_stale_locks(tmp_path)
    assert removed == [mine] and theirs.exists() and unowned.exists()
    assert any("run far ran on another host (pid 7 on elsewhere.example" in line for line in kept)
    assert any("2.output.lock without an owner record" in line for line in kept)
    refusal = r"another host \(pid 7 on elsewhere.example, .*; if it is no .* `threeregime unlock --force`"
    with pytest.raises(locks.Locked, match=refusal):
        locks.acquire_run(tmp_path, "far")
    assert main(["unlock", str(tmp_path)]) == 1
    assert "locked by a Snakemake on another host (pid 7 on elsewhere.example)" in capsys.readouterr().err
    assert main(["unlock", str(tmp_path), "--force"]) == 0
    assert locks.snakemake_lock_files(tmp_path) == [] and locks.holders(tmp_path) == []
    assert main(["unlock", str(tmp_path)]) == 0 and "not locked" in capsys.readouterr().out


def test_a_job_whose_output_another_live_process_computes_is_refused(tmp_path):
    """A job of a killed run that goes on running, and the same job of the next run."""
    data = tmp_path / "dataset.pt"
    spec = json.dumps({"name": "mnist1d", "num_samples": 600, "generation_seed": 3})
    assert main(["prepare-data", "--spec", spec, "--out", str(data)]) == 0
    recipe = Recipe(epochs=40, batch_size=32, lr=0.05).__dict__ | {"lr_milestones": [0.5, 0.75]}
    dense = {"model": {"name": "cnn1d", "width": 0.25}, "recipe": recipe, "seed": 3, "stop_epoch": None}
    dense |= {"performance": {"amp": "none", "channels_last": False}}
    out = tmp_path / "dense" / "model.pt"
    command = [sys.executable, "-m", "threeregime", "dense", "--spec", json.dumps(dense)]
    command += ["--data", str(data), "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock = out.with_name(f".{out.name}.lock")
    while first.poll() is None and "pid" not in (lock.read_text() if lock.exists() else ""):
        time.sleep(0.01)  # until the job holds its lock (an event, however slow the machine)
    first.send_signal(signal.SIGSTOP)  # alive, holding the lock, computing nothing
    try:
        if first.poll() is not None:
            pytest.fail(f"the first job ended before it could be frozen: {first.stdout.read()}")
        second = subprocess.run(command, capture_output=True, text=True)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"threeregime dense: error: {out}: pid {first.pid} on {socket.gethostname()} is still "
        "computing it (a job of an earlier snakemake run that was killed?); wait for it to end or stop "
        "it, then run snakemake again"
    ]
    assert first.wait() == 0 and out.is_file()
    out.unlink()
    again = subprocess.run(command, capture_output=True, text=True)  # the lock died with its job
    assert again.returncode == 0, again.stderr


DRIVER = """
import sys
from snakemake.cli import main
main(sys.argv[1:])
"""


def _workflow(folder: Path, *args: str) -> list[str]:
    return ["-s", str(SNAKEFILE), "--directory", str(folder), "--cores", "1", *args]


@pytest.mark.slow
def test_a_second_live_run_is_refused_and_a_finished_run_unlocks_no_other(tmp_path):
    """Run A, started from a Python driver (in its own PID namespace where permitted), is frozen
    mid-run; run C of another results folder in the same directory ends (Snakemake then deletes
    .snakemake/locks, A's locks included); a second run of A's results is still refused before
    any job, and A then finishes unharmed. A and C make one file each (the lock is the same for
    a run of every job)."""
    write_config(tmp_path, TINY_CONFIG)
    target = "results/tiny/dense/epochs-1/seed1/model.pt"
    write_config(tmp_path, {"run_name": "other"}, "other.yaml")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    starter = STARTERS["pid namespace"] if _can_unshare_pid() else []
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(
            [*starter, sys.executable, str(driver), *_workflow(tmp_path, target)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    record = tmp_path / locks.RUN_LOCKS / "run-tiny.json"
    while first.poll() is None and not record.exists():
        time.sleep(0.05)  # until run A holds its run lock
    os.killpg(first.pid, signal.SIGSTOP)  # A and its jobs: alive, holding the lock, doing nothing
    try:
        assert first.poll() is None, log.read_text()[-3000:]
        other = subprocess.run(
            [sys.executable, "-m", "snakemake", *_workflow(tmp_path, "results/other/data/dataset.pt",
             "--configfile", str(tmp_path / "other.yaml"))], capture_output=True, text=True,
        )  # fmt: skip
        assert other.returncode == 0, other.stderr[-3000:]
        assert locks.snakemake_lock_files(tmp_path) == [], "Snakemake dropped every lock when C ended"
        second = subprocess.run(
            [sys.executable, "-m", "snakemake", *_workflow(tmp_path)], capture_output=True, text=True
        )
        output = second.stdout + second.stderr
        assert second.returncode != 0
        assert "results/tiny is being written by a running snakemake (pid " in output
        assert "Select jobs to execute" not in output, "refused before any job"
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert first.wait() == 0, log.read_text()[-3000:]
    assert (tmp_path / target).is_file()
    assert locks.holders(tmp_path) == [], "a run that ends drops its record"


@pytest.mark.slow
def test_a_run_killed_hard_does_not_lock_out_the_next_one(tmp_path):
    write_config(tmp_path, TINY_CONFIG)
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *_workflow(tmp_path)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    record = tmp_path / locks.RUN_LOCKS / "run-tiny.json"
    while first.poll() is None and not record.exists():
        time.sleep(0.05)
    assert first.poll() is None, log.read_text()[-3000:]
    os.killpg(first.pid, signal.SIGKILL)  # the whole run: Snakemake and its jobs (power loss)
    first.wait()
    (holder,) = locks.holders(tmp_path)
    assert set(holder.locks) == {p.name for p in locks.snakemake_lock_files(tmp_path)} != set()
    # the next run targets one file, so that it locks and runs one short job
    again = subprocess.run(
        [sys.executable, "-m", "snakemake", *_workflow(tmp_path, "results/tiny/data/dataset.pt",
         "--forcerun", "prepare_data")], capture_output=True, text=True,
    )  # fmt: skip
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "LockException" not in output and "cannot be locked" not in output
    assert "its Snakemake run was killed" in output
    assert locks.snakemake_lock_files(tmp_path) == [] and locks.holders(tmp_path) == []
