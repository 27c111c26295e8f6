"""Stale Snakemake locks: a run killed hard must not block the next one; a live run's lock stays."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from threeregime import locks
from threeregime.cli import main

from .conftest import SNAKEFILE, TINY_CONFIG, write_config

GONE = 2**22 + 12345  # above the default pid_max: no such process


def _lock(workdir: Path, name: str, owner: dict | None = None) -> Path:
    folder = workdir / locks.LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("results/x\n")
    if owner is not None:
        record = {"locks": [name], **owner}
        (folder / f"threeregime-owner.{owner['host']}.{owner['pid']}.json").write_text(json.dumps(record))
    return path


@pytest.fixture
def sleeper(tmp_path):
    """A live process named like Snakemake, working in tmp_path."""
    code = "import time; time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code, "snakemake"], cwd=tmp_path)
    yield process
    process.kill()
    process.wait()


def test_only_locks_of_dead_owners_on_this_host_are_removed(tmp_path, sleeper):
    host = socket.gethostname()
    dead = _lock(tmp_path, "0.input.lock", {"host": host, "pid": GONE})
    reused = _lock(tmp_path, "1.input.lock", {"host": host, "pid": os.getpid()})  # alive, not snakemake
    live = _lock(tmp_path, "2.input.lock", {"host": host, "pid": sleeper.pid})
    foreign = _lock(tmp_path, "3.input.lock", {"host": "elsewhere.example", "pid": GONE})
    unowned = _lock(tmp_path, "4.output.lock")
    removed, kept = locks.remove_stale_locks(tmp_path)
    assert sorted(removed) == [dead, reused]
    assert not dead.exists() and not reused.exists()
    assert live.exists() and foreign.exists() and unowned.exists()
    assert any(f"pid {sleeper.pid} on {host}" in line for line in kept)
    assert any("pid" in line and "elsewhere.example" in line for line in kept)
    assert any("4.output.lock without an owner record" in line for line in kept)


def test_unlock_refuses_while_snakemake_runs_in_the_directory(tmp_path, sleeper, capsys):
    _lock(tmp_path, "0.input.lock")
    assert main(["unlock", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"Snakemake is running here (pid {sleeper.pid})" in err and err.count("\n") == 1
    sleeper.kill()
    sleeper.wait()
    assert main(["unlock", str(tmp_path)]) == 0
    assert "removed 1 lock file(s)" in capsys.readouterr().out
    assert locks.lock_files(tmp_path) == []
    assert main(["unlock", str(tmp_path)]) == 0 and "not locked" in capsys.readouterr().out


def test_unlock_refuses_a_lock_of_another_host_unless_forced(tmp_path, capsys):
    _lock(tmp_path, "0.input.lock", {"host": "elsewhere.example", "pid": 7})
    assert main(["unlock", str(tmp_path)]) == 1
    assert "locked by a Snakemake on another host (pid 7 on elsewhere.example)" in capsys.readouterr().err
    assert main(["unlock", str(tmp_path), "--force"]) == 0
    assert locks.lock_files(tmp_path) == []


def _snakemake(folder: Path, *args: str, **kwargs):
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(folder)]
    return command + ["--cores", "1", *args]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL])  # SIGHUP (closed terminal) leaves them alike
def test_a_run_killed_hard_does_not_lock_out_the_next_one(tmp_path, sig):
    write_config(tmp_path, TINY_CONFIG)
    log = tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(
            _snakemake(tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    owner = None
    deadline = time.time() + 120
    while owner is None and time.time() < deadline and first.poll() is None:
        found = locks.owners(tmp_path)
        owner = found[0] if found else None
        time.sleep(0.05)
    assert owner is not None, log.read_text()[-3000:]
    assert owner.pid == first.pid and set(owner.locks) == {p.name for p in locks.lock_files(tmp_path)}
    os.killpg(first.pid, sig)  # the whole run: Snakemake and its jobs (power loss, closed terminal)
    first.wait()
    assert locks.lock_files(tmp_path), "the killed run left its locks"
    # the next run targets one file, so that it locks and runs one short job
    target = "results/tiny/data/dataset.pt"
    again = subprocess.run(
        _snakemake(tmp_path, target, "--forcerun", "prepare_data"), capture_output=True, text=True
    )
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert "LockException" not in output and "cannot be locked" not in output
    assert "its Snakemake run was killed" in output
    assert locks.lock_files(tmp_path) == [], "the second run cleaned up after itself"
