"""The workflow on a real (single-node) Slurm cluster through `snakemake --profile profiles/slurm`.

tests/slurm/up.sh starts a private munged + slurmctld + slurmd (installing the Debian packages
when missing; it needs root) with two fake GPUs and no slurmdbd; tests/slurm/down.sh stops exactly
those daemons afterwards. Snakemake runs in a scratch copy of the repository layout (links to
workflow/, profiles/, threeregime/, envs/), exactly as a user types it in a checkout, so the
workflow profile profiles/default is loaded too.

One sequence is checked: a first run whose dense_train job is cancelled with scancel half way
through training (reported as failed, no model left behind), then a rerun that resumes the
training from its checkpoint and completes the workflow.

A second one checks the profile's job grouping on a grid of two cells: the sbatch submissions the
plan makes without the grouping (a copy of the profile without `groups`) and with it; a `cell`
group job (prune + retrainings) cancelled half way through its retraining, and the rerun, which
redoes exactly that group's unfinished retrainings (resuming them; its prune stays done) and the
metrics group waiting for them, nothing else.

A third runs an adaptive grid (a planning round between the coarse cells and the rest) through the
profile and checks what was submitted and the regimes table it ends with.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from threeregime.config.settings import fmt_value

from .conftest import REPO, TINY_CONFIG, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

HARNESS = REPO / "tests" / "slurm"
PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
GPU_RULES = {"dense_train", "retrain", "metrics"}
RULES = ["prepare_data", "dense_train", "prune", "retrain", "metrics", "collect", "classify", "plot"]
RULES += ["adaptive_round"]  # a local rule: never submitted, named so a regression reads clearly
GROUP_JOBS = {"cell_prune_retrain": "cell", "cell_retrain": "cell", "metrics_metrics": "metrics"}

# One dense run of 30 epochs (~0.5 s each on the 2-core dev machine, a checkpoint after each) so it
# is still training when cancelled; short retraining; one cell, whose two retrainings (GPU jobs)
# run side by side.
CONFIG = copy.deepcopy(TINY_CONFIG)
CONFIG["run_name"] = "slurm"
CONFIG["data"]["num_samples"] = 2000
CONFIG["train"].update(epochs=30, batch_size=16)
CONFIG["knob"]["values"] = [30]
CONFIG["prune"]["densities"] = [0.5]
CONFIG["retrain"] = {"recipe": {"epochs": 2}}
CONFIG["runtime"] = {"device": "cuda", "threads": 1, "checkpoint_every": 1}
RESULTS = Path("results/slurm")
DENSE = RESULTS / "dense/epochs-30/seed1/model.pt"
DENSE_LOG = RESULTS / "logs/dense/epochs-30/seed1.log"


@dataclass
class Cluster:
    state: Path
    env: dict


def _read_env(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().split() if "=" in line)


def _alive_with(pid: int, marker: str) -> bool:
    try:
        return marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    state = Path(tempfile.mkdtemp(prefix="threeregime-slurm-", dir="/tmp"))  # short: munge socket
    try:
        up = subprocess.run(["bash", str(HARNESS / "up.sh"), str(state)], capture_output=True, text=True)
        if up.returncode == 77:
            pytest.skip(up.stdout.strip().splitlines()[-1])
        assert up.returncode == 0, f"up.sh failed:\n{up.stdout}\n{up.stderr}"
        recorded = _read_env(state / "env")
        env = dict(os.environ, SLURM_CONF=recorded["SLURM_CONF"])
        # The harness's srun first (see up.sh), then the venv: jobs run snakemake and python.
        env["PATH"] = os.pathsep.join(
            [recorded["PATH_PREFIX"], str(Path(sys.executable).parent), env["PATH"]]
        )
        yield Cluster(state, env)
    finally:
        pids = _read_env(state / "pids") if (state / "pids").exists() else {}
        down = subprocess.run(["bash", str(HARNESS / "down.sh"), str(state)], capture_output=True, text=True)
        still = {name: pid for name, pid in pids.items() if _alive_with(int(pid), str(state))}
        assert down.returncode == 0 and not still, f"down.sh left {still}:\n{down.stdout}\n{down.stderr}"
        for name, pid in pids.items():
            assert f"{name.removesuffix('_PID').lower()} {pid}" in down.stdout, down.stdout
        shutil.rmtree(state, ignore_errors=True)


def slurm(cluster: Cluster, *args: str) -> str:
    return subprocess.run(args, env=cluster.env, capture_output=True, text=True, check=True).stdout


def checkout(folder: Path, config: dict = CONFIG) -> Path:
    """A folder laid out like the repository, with its own config.yaml, results and logs.
    profiles/ holds the repository's profiles and `ungrouped`: profiles/slurm without its job
    grouping (every job its own sbatch), to count what the grouping saves."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("workflow", "threeregime", "envs"):
        (folder / name).symlink_to(REPO / name)
    for name in ("default", "slurm"):
        (folder / "profiles").mkdir(exist_ok=True)
        (folder / "profiles" / name).symlink_to(REPO / "profiles" / name)
    ungrouped = {k: v for k, v in PROFILE.items() if k not in ("groups", "group-components")}
    write_config(folder / "profiles" / "ungrouped", ungrouped)
    write_config(folder, config)
    return folder


def profile_run(
    cluster: Cluster, folder: Path, *args: str, profile: str = "profiles/slurm", **popen
) -> subprocess.Popen:
    command = [sys.executable, "-m", "snakemake", "--profile", profile]
    # Poll Slurm 2 s after each submission instead of the profile's 20 s (MinJobAge is 600 s).
    command += ["--slurm-init-seconds-before-status-checks", "2", *args]
    return subprocess.Popen(command, cwd=folder, env=cluster.env, text=True, **popen)


def finish(process: subprocess.Popen, log: Path, timeout: float) -> tuple[int, str]:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)  # snakemake cancels its Slurm jobs on SIGINT
        process.wait(timeout=60)
        raise AssertionError(f"snakemake did not finish in {timeout} s:\n{log.read_text()[-4000:]}") from None
    return process.returncode, log.read_text()


def job_records(cluster: Cluster, folder: Path) -> list[dict]:
    """Every job submitted from ``folder`` that slurmctld still remembers (finished ones for
    MinJobAge), as key=value dicts."""
    lines = slurm(cluster, "scontrol", "show", "job", "--oneliner").splitlines()
    records = [dict(token.split("=", 1) for token in line.split() if "=" in token) for line in lines if line]
    return [r for r in records if r.get("WorkDir") == str(folder)]


def rule_of(record: dict) -> str:
    """The rule of a Slurm job, or the group's name for a group job (profiles/slurm: cell, metrics;
    Snakemake names a group job <group>_<its rules>)."""
    comment = record.get("Comment", "")
    names = [*RULES, *GROUP_JOBS]
    name = max((r for r in names if re.fullmatch(rf"rule_{r}(_wildcards_.*)?", comment)), key=len)
    return GROUP_JOBS.get(name, name)


@dataclass
class Runs:
    folder: Path
    cancelled: str  # Slurm job id of the cancelled dense_train job
    first: tuple[int, str]
    dense_after_cancel: bool
    resume_after_cancel: bool
    second: tuple[int, str]
    dry: str
    records: list[dict]


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory) -> Runs:
    folder = checkout(tmp_path_factory.mktemp("slurm") / "checkout")
    log1 = folder / "first.log"
    with log1.open("w") as out:
        first = profile_run(cluster, folder, stdout=out, stderr=subprocess.STDOUT)
    # Wait until dense_train has saved a resume checkpoint, then cancel its Slurm job.
    deadline, jobid = time.monotonic() + 300, None
    while time.monotonic() < deadline and first.poll() is None:
        log = folder / DENSE_LOG
        if log.exists() and re.search(r"epoch ([2-9]|\d\d)/30", log.read_text()):
            if Path(f"{folder / DENSE}.resume").exists():
                queue = slurm(cluster, "squeue", "-h", "-t", "RUNNING", "-o", "%i|%k")
                running = [j for j, c in (r.split("|") for r in queue.split()) if c.startswith("rule_dense")]
                if running:
                    jobid = running[0]
                    slurm(cluster, "scancel", jobid)
                    break
        time.sleep(0.2)
    assert jobid, f"dense_train never reached epoch 2 under Slurm:\n{log1.read_text()[-4000:]}"
    first_result = finish(first, log1, 300)
    dense_after, resume_after = (folder / DENSE).exists(), Path(f"{folder / DENSE}.resume").exists()

    log2 = folder / "second.log"
    with log2.open("w") as out:
        second = profile_run(cluster, folder, stdout=out, stderr=subprocess.STDOUT)
    second_result = finish(second, log2, 480)
    with (folder / "dry.log").open("w") as out:
        dry = finish(
            profile_run(cluster, folder, "-n", stdout=out, stderr=subprocess.STDOUT), folder / "dry.log", 120
        )
    return Runs(
        folder,
        jobid,
        first_result,
        dense_after,
        resume_after,
        second_result,
        dry[1],
        job_records(cluster, folder),
    )


def test_cancelled_job_is_reported_failed_and_leaves_no_model(runs):
    returncode, output = runs.first
    assert returncode != 0
    assert f"SLURM-job '{runs.cancelled}' failed, SLURM status is: 'CANCELLED'" in output
    assert "Falling back to 'sacct'" not in output  # squeue answered: no slurmdbd here
    assert not runs.dense_after_cancel, "a cancelled dense_train left its model behind"
    assert runs.resume_after_cancel, "the resume checkpoint should survive the cancellation"
    record = next(r for r in runs.records if r["JobId"] == runs.cancelled)
    assert record["JobState"] == "CANCELLED"
    # The failed job's sbatch log is kept under the profile's log dir (logs/slurm).
    assert list((runs.folder / "logs/slurm/rule_dense_train").rglob(f"{runs.cancelled}.log"))


def test_rerun_resumes_training_and_completes(runs):
    returncode, output = runs.second
    assert returncode == 0, output[-4000:]
    assert "Using profiles profiles/slurm and workflow specific profile profiles/default" in output
    resumed = re.search(
        r"resuming from \S+model\.pt\.resume at epoch (\d+)", (runs.folder / DENSE_LOG).read_text()
    )
    assert resumed and int(resumed.group(1)) >= 2, (runs.folder / DENSE_LOG).read_text()
    assert "done at epoch 30" in (runs.folder / DENSE_LOG).read_text()
    assert not Path(f"{runs.folder / DENSE}.resume").exists()
    results = runs.folder / RESULTS
    metrics = pd.read_csv(results / "metrics.csv")
    assert len(metrics) == 1 and set(metrics["density"]) == {0.5}
    assert metrics[["mc", "cka_softmax", "test_error"]].notna().all().all()
    assert len(pd.read_csv(results / "regimes.csv")) == 1
    assert (results / "phase_diagram.png").read_bytes()[:4] == b"\x89PNG"
    assert "Nothing to be done" in runs.dry


def _minutes(limit: str) -> int:
    hours, minutes, _ = (int(x) for x in limit.split("-")[-1].split(":"))
    return hours * 60 + minutes


def test_jobs_ask_slurm_for_the_profile_resources(runs):
    ours = [r for r in runs.records if r.get("Comment", "").startswith("rule_")]
    # prepare_data, collect, classify and plot are local rules; prune and the two retrainings are
    # one `cell` group job; the metrics job is a `metrics` group job.
    assert Counter(rule_of(r) for r in ours) == {"dense_train": 2, "cell": 1, "metrics": 1}
    default, rules = PROFILE["default-resources"], PROFILE["set-resources"]
    # A group asks for the largest memory of its members and the sum of their time limits (run
    # one after another: one GPU per job).
    cell = {
        "mem_mb": rules["retrain"]["mem_mb"],
        "runtime": rules["prune"]["runtime"] + 2 * rules["retrain"]["runtime"],
    }
    for record in ours:
        rule = rule_of(record)
        wanted = default | {"cell": cell}.get(rule, rules.get(rule, {}))
        asks_gpu = "gpu" in record.get("TresPerJob", "")
        assert asks_gpu == (rule in GPU_RULES | {"cell"}), (rule, record.get("TresPerJob"))
        if asks_gpu:
            assert record["TresPerJob"] == "gres:gpu:1"
        assert _minutes(record["TimeLimit"]) == wanted["runtime"], (rule, record["TimeLimit"])
        assert record["MinMemoryNode"] == f"{wanted['mem_mb']}M", (rule, record["MinMemoryNode"])
        assert record["NumCPUs"] == "1"  # runtime.threads
        assert record["Partition"] == "debug"  # no partition in the profile: the cluster default


# Two cells (densities 0.3 and 0.6) of one short dense run, two retrain seeds each; retraining
# long enough (20 epochs of ~0.5 s, a checkpoint after each) to be cancelled half way.
GRID = copy.deepcopy(CONFIG)
GRID["run_name"] = "grid"
GRID["train"].update(epochs=2)
GRID["knob"]["values"] = [2]
GRID["prune"]["densities"] = [0.3, 0.6]
GRID["retrain"] = {"recipe": {"epochs": 20}}
GRID_RESULTS = Path("results/grid")


@dataclass
class Grid:
    ungrouped: Counter  # sbatch submissions the same plan makes without the profile's grouping
    planned: Counter  # submissions the grouped dry run plans
    folder: Path  # the grouped runs
    cancelled: str  # Slurm job id of the cancelled `cell` group job
    density: str  # its cell
    first: tuple[int, str]
    first_records: list[dict]
    after_cancel: dict[str, bool]  # outputs of the cancelled cell present after the first run
    rerun_plan: set  # jobs `snakemake -n` plans after the cancellation
    second: tuple[int, str]
    second_records: list[dict]


def _running_retrain(folder: Path) -> tuple[str, str] | None:
    """(Slurm job id, density) of a retraining of ``folder`` that has passed its 3rd epoch."""
    for log in sorted((folder / GRID_RESULTS / "logs/retrain").rglob("*.log")):
        if re.search(r"epoch ([3-9]|1\d)/20", log.read_text()) and "done at epoch" not in log.read_text():
            density = re.search(r"density-([\d.]+)", str(log)).group(1)
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    command = (proc / "cmdline").read_bytes().decode(errors="replace")
                    if "threeregime\0retrain" not in command or f"density-{density}/" not in command:
                        continue
                    if Path(os.readlink(proc / "cwd")) != folder:
                        continue
                    environ = dict(
                        item.split("=", 1)
                        for item in (proc / "environ").read_bytes().decode().split("\0")
                        if "=" in item
                    )
                except OSError:
                    continue
                if "SLURM_JOB_ID" in environ:
                    return environ["SLURM_JOB_ID"], density
    return None


@pytest.fixture(scope="module")
def grid(cluster, tmp_path_factory) -> Grid:
    from .test_cluster import submissions
    from .test_incremental import jobs_in

    folder = checkout(tmp_path_factory.mktemp("grouped") / "checkout", GRID)
    # Without the grouping, every job is its own sbatch: what the same grid's plan submits.
    with (folder / "ungrouped.log").open("w") as out:
        plain = profile_run(
            cluster, folder, "-n", profile="profiles/ungrouped", stdout=out, stderr=subprocess.STDOUT
        )
        ungrouped = submissions(finish(plain, folder / "ungrouped.log", 120)[1])
    with (folder / "dry.log").open("w") as out:
        dry = finish(
            profile_run(cluster, folder, "-n", stdout=out, stderr=subprocess.STDOUT), folder / "dry.log", 120
        )
    planned = submissions(dry[1])
    log1 = folder / "first.log"
    with log1.open("w") as out:
        first = profile_run(cluster, folder, stdout=out, stderr=subprocess.STDOUT)
    deadline, found = time.monotonic() + 300, None
    while time.monotonic() < deadline and first.poll() is None and not found:
        found = _running_retrain(folder)
        time.sleep(0.2)
    assert found, f"no retraining reached epoch 3 under Slurm:\n{log1.read_text()[-4000:]}"
    jobid, density = found
    slurm(cluster, "scancel", jobid)
    first_result = finish(first, log1, 600)
    first_records = job_records(cluster, folder)
    cell = f"epochs-2/density-{density}/seed1"
    after = {
        "pruned": (folder / GRID_RESULTS / "pruned" / cell / "model.pt").exists(),
        "retrained": any((folder / GRID_RESULTS / "retrain" / cell).rglob("model.pt")),
        "resume": any((folder / GRID_RESULTS / "retrain" / cell).rglob("model.pt.resume")),
    }
    plan = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n"], cwd=folder, env=cluster.env, capture_output=True, text=True
    )
    log2 = folder / "second.log"
    with log2.open("w") as out:
        second = profile_run(cluster, folder, stdout=out, stderr=subprocess.STDOUT)
    second_result = finish(second, log2, 900)
    seen = {r["JobId"] for r in first_records}
    second_records = [r for r in job_records(cluster, folder) if r["JobId"] not in seen]
    return Grid(
        ungrouped, planned, folder, jobid, density, first_result, first_records, after,
        jobs_in(plan.stdout), second_result, second_records,
    )  # fmt: skip


def test_grouping_cuts_the_sbatch_submissions_of_a_grid(grid):
    """Without grouping every job is one sbatch (local rules aside): 1 dense, 2 prune, 4 retrain
    and 2 metrics jobs = 9; grouped: 1 dense, 2 cells (prune + retrainings), 1 metrics = 4."""
    assert grid.ungrouped == {"dense_train": 1, "prune": 2, "retrain": 4, "metrics": 2}
    assert grid.planned == {"dense_train": 1, "cell": 2, "metrics": 1}
    first = Counter(rule_of(r) for r in grid.first_records)
    # The metrics group waits for both cells, so the first run (one cell cancelled) never
    # submitted it. The rerun submits the cancelled cell's two unfinished retrainings (its prune
    # is done, so they are no longer connected: one `cell` job each) and the metrics group.
    assert first == {"dense_train": 1, "cell": 2}
    assert Counter(rule_of(r) for r in grid.second_records) == {"cell": 2, "metrics": 1}


def test_gpu_jobs_run_side_by_side_on_slurm(grid):
    """The one-machine cap (profiles/default: gpu=1) does not throttle Slurm submissions: the
    first run's two cell jobs (one GPU each) overlap."""
    spans = sorted((r["StartTime"], r["EndTime"]) for r in grid.first_records if rule_of(r) == "cell")
    assert len(spans) == 2
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def test_cancelled_group_job_reruns_exactly_its_cell(grid):
    returncode, output = grid.first
    assert returncode != 0
    # A failed group job is reported by group, with its sbatch log (named after its Slurm id).
    assert "Error in group cell" in output
    assert f"logs/slurm/group_cell_prune_retrain/{grid.cancelled}.log" in output
    record = next(r for r in grid.first_records if r["JobId"] == grid.cancelled)
    assert rule_of(record) == "cell" and record["JobState"] == "CANCELLED"
    # keep-incomplete (profiles/slurm): the group's finished prune keeps its model; the killed
    # retrainings left only their resume checkpoints (outputs are written atomically).
    assert grid.after_cancel == {"pruned": True, "retrained": False, "resume": True}, grid.after_cancel
    cell = {"temperature": "2", "density": grid.density, "seed": "1"}
    other = {**cell, "density": ({"0.3", "0.6"} - {grid.density}).pop()}
    expected = {("retrain", frozenset((cell | {"rseed": r}).items())) for r in ("1", "2")}
    expected |= {("metrics", frozenset((c | {"a": "1", "b": "2"}).items())) for c in (cell, other)}
    expected |= {(rule, frozenset()) for rule in ("collect", "classify", "plot")}
    assert grid.rerun_plan == expected


def test_rerun_after_group_cancel_resumes_and_completes(grid):
    returncode, output = grid.second
    assert returncode == 0, output[-4000:]
    logs = grid.folder / GRID_RESULTS / "logs/retrain/epochs-2" / f"density-{grid.density}" / "seed1"
    resumed = [log for log in logs.glob("*.log") if "resuming from" in log.read_text()]
    assert resumed, "the cancelled retraining started over instead of resuming"
    metrics = pd.read_csv(grid.folder / GRID_RESULTS / "metrics.csv")
    assert sorted(metrics["density"]) == [0.3, 0.6]
    assert metrics[["mc", "cka_softmax", "test_error"]].notna().all().all()


# Adaptive refinement on the cluster: the coarse sub-grid, one planning round (a checkpoint,
# run where snakemake runs), the cells it adds, and the inferred rest, all through the profile.
def test_adaptive_grid_runs_through_the_slurm_profile(cluster, tmp_path):
    from .test_adaptive import _adaptive_config, _plan_cells

    runtime = CONFIG["runtime"] | {"retrain_pack": "cell"}  # a cell's retrainings in one process
    config = _adaptive_config() | {"run_name": "adaptive", "runtime": runtime}
    config["adaptive"] |= {"rounds": 1}
    folder = checkout(tmp_path / "checkout", config)
    log = folder / "run.log"
    with log.open("w") as out:
        process = profile_run(cluster, folder, stdout=out, stderr=subprocess.STDOUT)
    returncode, output = finish(process, log, 600)
    assert returncode == 0, output[-4000:]
    results = folder / "results" / "adaptive"
    measured = _plan_cells(results, 1)
    coarse = {("3", "0.2"), ("3", "0.6"), ("1", "0.2"), ("1", "0.6")}
    assert coarse < measured  # the round added cells (how many depends on the measured labels)
    records = job_records(cluster, folder)
    submitted = Counter(rule_of(r) for r in records)
    # Every measured cell is one `cell` group job (prune + its packed retrainings); the planning
    # round and the tables are local rules, never submitted.
    assert submitted["cell"] == len(measured) and submitted["dense_train"] == 3, submitted
    assert set(submitted) == {"dense_train", "cell", "metrics"}, submitted
    regimes = pd.read_csv(results / "regimes.csv")
    assert len(regimes) == 9
    sources = regimes[["temperature", "density", "label_source"]].values
    assert {(fmt_value(t), fmt_value(d)) for t, d, s in sources if s == "measured"} == measured
    assert sum(s == "inferred" for _, _, s in sources) == 9 - len(measured)
    with (folder / "dry.log").open("w") as out:
        dry = profile_run(cluster, folder, "-n", stdout=out, stderr=subprocess.STDOUT)
    output = finish(dry, folder / "dry.log", 120)[1]
    assert "Nothing to be done" in output, output[-3000:]


def test_down_never_signals_a_process_it_did_not_start(tmp_path):
    """down.sh checks that a recorded pid still belongs to its state dir before it signals it."""
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "pids").write_text(f"SLURMD_PID={stranger.pid}\nMUNGED_PID={stranger.pid}\n")
        down = subprocess.run(
            ["bash", str(HARNESS / "down.sh"), str(tmp_path)], capture_output=True, text=True
        )
        assert down.returncode == 0, down.stderr
        assert stranger.poll() is None, "down.sh killed a process it did not start"
        assert f"not running: slurmd {stranger.pid}" in down.stdout
    finally:
        stranger.kill()
        stranger.wait()
