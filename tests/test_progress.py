"""Measured cost (benchmark files -> cost.csv, `threeregime cost`) and live progress
(`threeregime status`) of a run, checked on a real tiny run that is watched while it computes.

The run: the tiny config with longer retraining (so a retrain job can be caught running), one job
at a time. `status` is called before anything ran, while a retrain job runs (frozen with SIGSTOP
for the look, so the test does not race its end), and after that job was killed with SIGKILL
(the run goes on with --keep-going, so the other cells finish).
"""

from __future__ import annotations

import copy
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from threeregime.config.load import load_config
from threeregime.views.cost import job_keys, job_units, project, read_costs, target_units, train_samples

from .conftest import SNAKEFILE, TINY_CONFIG, write_config

CONFIG = copy.deepcopy(TINY_CONFIG)
CONFIG["retrain"] = {"recipe": {"epochs": 12}}
CONFIG["runtime"] = {"device": "cpu", "threads": 1, "checkpoint_every": 1}
RESULTS = Path("results/tiny")


def cli(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SNAKEFILE.parents[1]))
    return subprocess.run(
        [sys.executable, "-m", "threeregime", *args], cwd=folder, capture_output=True, text=True, env=env
    )


# ----------------------------------------------------------------------------- units, projection
def test_job_keys_read_the_workflow_paths():
    assert job_keys(Path("epochs-10/density-0.05/seed2/pair1-3.tsv")) == {
        "temperature": "10", "density": "0.05", "seed": "2", "a": "1", "b": "3",
    }  # fmt: skip
    assert job_keys(Path("sam_rho-0.1/density-0.8/seed1/retrain2.tsv"))["rseed"] == "2"
    packed = {"temperature": "16", "seed": "3", "rseed": ""}
    assert job_keys(Path("batch_size-16/seed3/retrain.tsv")) == packed


def test_projection_scales_measured_seconds_per_unit_to_the_target():
    small = load_config(CONFIG)  # MNIST-1D, 600 samples: 480 training samples
    big = copy.deepcopy(CONFIG)
    big["prune"]["densities"] = [0.2, 0.4, 0.6]
    big["metrics"]["lmc_points"] = 11
    big["retrain"] = {"recipe": {"epochs": 24}}
    target = load_config(big)
    assert train_samples(small) == 480
    costs = pd.DataFrame(
        [
            {
                "rule": "metrics",
                "temperature": "1",
                "density": "0.2",
                "seed": "1",
                "a": "1",
                "b": "2",
                "wall_s": 10.0,
                "device": "cpu",
            },
            {
                "rule": "metrics",
                "temperature": "3",
                "density": "0.6",
                "seed": "1",
                "a": "1",
                "b": "2",
                "wall_s": 20.0,
                "device": "cpu",
            },
            {
                "rule": "retrain",
                "temperature": "3",
                "density": "0.6",
                "seed": "1",
                "rseed": "1",
                "wall_s": 6.0,
                "device": "cuda",
            },
            {"rule": "dense_train", "temperature": "3", "seed": "1", "wall_s": 4.0, "device": "cuda"},
        ]
    ).reindex(columns=["rule", "temperature", "density", "seed", "rseed", "a", "b", "wall_s", "device"])
    table = project(costs, small, target).set_index("rule")
    # metrics: 30 s over 2 jobs x 5 points x 480 samples; the target has 2 x 3 x 1 pairs x 11 x 480
    assert table.loc["metrics", "s_per_unit"] == pytest.approx(30 / (2 * 5 * 480))
    assert table.loc["metrics", "projected_h"] == pytest.approx(30 / 2 * 11 / 5 * 6 / 3600)
    # retrain: one run of 12 epochs in 6 s; the target: 2 x 3 cells x 2 runs x 24 epochs
    assert table.loc["retrain", "projected_h"] == pytest.approx(6 / 12 * 24 * 12 / 3600)
    # dense (epochs knob): the measured job trained epochs 1..3 (2 epochs); the target 3 in all
    assert job_units(small, "dense_train", {"temperature": "3"}) == 2 * 480
    assert table.loc["dense_train", "projected_h"] == pytest.approx(4 / 2 * 3 / 3600)
    assert math.isnan(table.loc["prune", "projected_h"])  # nothing measured: not guessed
    assert target_units(target)["metrics"][0] == 6


# ----------------------------------------------------------------------------- a watched run
def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _retrain_process(folder: Path) -> int | None:
    """pid of a retrain job of this run that has saved at least one epoch."""
    if not list((folder / RESULTS / "retrain").rglob("model.pt.resume")):
        return None
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().split(b"\0")
            ours = Path(os.readlink(proc / "cwd")) == folder
            if ours and b"threeregime" in command and b"retrain" in command:
                return int(proc.name)
        except OSError:
            continue
    return None


def _stopped(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:  # it ended in the meantime: wait for the next one
        return None
    return pid


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    folder = tmp_path_factory.mktemp("watched")
    write_config(folder, CONFIG)
    before = cli(folder, "status")
    command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "1", "--keep-going"]
    log = (folder / "run.log").open("w")
    run = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Freeze a running retrain job (SIGSTOP), look, then kill it: no race with its end.
        pid = _wait(lambda: _stopped(_retrain_process(folder)), 300, "a retrain job with a saved epoch")
        during = cli(folder, "status")
        os.kill(pid, signal.SIGKILL)
        run.wait(timeout=600)
    finally:
        if run.poll() is None:
            run.send_signal(signal.SIGINT)
            run.wait(timeout=60)
        log.close()
    after = cli(folder, "status")
    cost = cli(folder, "cost", "--cores", "2", "--remaining")
    return folder, before, during, after, cost, (folder / "run.log").read_text()


@pytest.mark.slow
def test_status_before_the_run_shows_nothing_started(watched):
    _, before, *_ = watched
    assert before.returncode == 0, before.stderr
    assert "cells: # done 0, > running 0, X failed 0, ~ partial 0, . not started 4" in before.stdout


@pytest.mark.slow
def test_status_during_the_run_shows_the_running_job(watched):
    folder, _, during, *_ = watched
    assert during.returncode == 0, during.stderr
    jobs = next(line for line in during.stdout.splitlines() if line.startswith("jobs:"))
    assert ", running 1, failed 0," in jobs, during.stdout  # one job at a time (--cores 1)
    assert "> running 1" in during.stdout  # its cell
    assert "wrote results/tiny/progress.png" in during.stdout


@pytest.mark.slow
def test_status_after_a_killed_job_names_it_failed_and_draws_partial_figures(watched):
    folder, _, _, after, _, run_log = watched
    assert "Error in rule retrain" in run_log or "error" in run_log.lower()
    out = after.stdout
    assert after.returncode == 0, after.stderr
    assert "cells: # done 3, > running 0, X failed 1, ~ partial 0, . not started 0" in out, out
    failed = [line for line in out.splitlines() if line.startswith("failed retrain")]
    assert len(failed) == 1 and "killed?" in failed[0], out
    for name in ("progress.png", "partial_phase_diagram.png", "partial_regime_map.png"):
        assert (folder / RESULTS / name).read_bytes()[:4] == b"\x89PNG", name
    assert "wrote results/tiny/partial_phase_diagram.png" in out


@pytest.mark.slow
def test_cost_is_measured_per_job_and_projected(watched):
    folder, *_, cost, _ = watched
    costs = read_costs(folder / RESULTS, retrain_seeds=2, densities=2)
    # every finished job has a benchmark: 1 + 2 dense + 4 prune + 8 retrain - 1 killed + 3 metrics
    counts = costs["rule"].value_counts().to_dict()
    assert counts == {"prepare_data": 1, "dense_train": 2, "prune": 4, "retrain": 7, "metrics": 3}
    assert (costs["wall_s"] > 0).all() and (costs["max_rss_mb"] > 10).all()
    assert set(costs.loc[costs["rule"] == "retrain", "device"]) == {"cpu"}
    assert cost.returncode == 0, cost.stderr
    assert "projected from the jobs measured in results/tiny (17 jobs)" in cost.stdout
    assert "assumes: each rule's time is linear in its units" in cost.stdout
    # the wall time of what is left: the killed retraining, the metrics waiting for it, the analysis
    line = next(x for x in cost.stdout.splitlines() if x.startswith("expected wall time"))
    assert line.startswith("expected wall time of the jobs still to run (5) at --cores 2: "), line
    start, jobs, summed = map(
        float, re.findall(r"start (\d+) s \+ jobs (\d+) s; summed job time ([\d.]+) min", line)[0]
    )
    # one or two cores never take longer than the summed job time (printed to 0.1 min: +- 3 s)
    assert 0 < jobs <= summed * 60 + 3 + 1 and start > 0


def test_status_plans_the_shared_dense_run_and_the_rewind_replays():
    from threeregime.config.load import load_config
    from threeregime.views.status import plan_cells

    config = copy.deepcopy(TINY_CONFIG)
    config["knob"] = {"name": "rewind_step", "values": [0, 3]}
    config["retrain"] = {"mode": "rewind_weights"}
    cells = plan_cells(load_config(config))
    dense = {str(job.outputs[0]) for cell in cells for job in cell.dense if job.rule == "dense_train"}
    assert dense == {"results/tiny/dense/shared/seed1/model.pt"}
    jobs = {id(job) for cell in cells for job in cell.dense if job.rule == "dense_train"}
    assert len(jobs) == 1  # counted once in the jobs line, however many rewind steps share it
    rewinds = {str(job.outputs[0]) for cell in cells for job in cell.dense if job.rule == "rewind"}
    assert rewinds == {f"results/tiny/rewind/rewind_step-{k}/seed1/model.pt" for k in (0, 3)}


def test_status_and_cost_count_a_dense_models_packed_jobs_once():
    """Under retrain_pack temperature one prune, retrain and metrics job per dense model: status
    lists each in every cell it serves (the cell's own files, the job's one log) and counts it
    once; a state is the whole job's; cost counts its units as every density's (and pair's)."""
    from threeregime.config.load import load_config
    from threeregime.views.status import distinct_jobs, plan_cells

    config = copy.deepcopy(TINY_CONFIG)
    config["runtime"] = {"retrain_pack": "temperature"}
    cfg = load_config(config)
    cells = plan_cells(cfg)
    listed = [job for cell in cells for job in cell.jobs]
    logs = {job.rule: set() for job in listed}
    for job in listed:
        logs[job.rule].add(str(job.log))
    for rule in ("prune", "retrain", "metrics"):
        folder = {"retrain": "retrain/epochs-{}/seed1/retrain.log"}.get(rule, rule + "/epochs-{}/seed1.log")
        assert logs[rule] == {f"results/tiny/logs/{folder.format(t)}" for t in ("1", "3")}, rule
    row = [cell for cell in cells if cell.temperature == "1"]
    assert [str(job.outputs[0]) for cell in row for job in cell.metrics] == [
        f"results/tiny/metrics/epochs-1/density-{d}/seed1/pair1-2.json" for d in ("0.2", "0.6")
    ]
    row[0].metrics[0].state, row[1].metrics[0].state = "done", "running"
    jobs = distinct_jobs([job for cell in cells for job in cell.jobs])
    assert sorted((j.rule, j.state) for j in jobs) == sorted(
        [("prune", "not started"), ("retrain", "not started")] * 2
        + [("metrics", "running"), ("metrics", "not started")]
    )
    # cost: a packed metrics job measures 2 densities x 1 pair; a packed prune job 2 models
    pair = job_units(cfg, "metrics", {"temperature": "1", "density": "0.2", "seed": "1", "a": "1", "b": "2"})
    assert job_units(cfg, "metrics", {"temperature": "1", "seed": "1"}) == 2 * pair
    assert job_units(cfg, "prune", {"temperature": "1", "seed": "1"}) == 2.0
    units = target_units(cfg)
    assert units["prune"] == (2, 4.0) and units["metrics"] == (2, 4 * pair) and units["retrain"][0] == 2


def test_a_density_added_to_a_packed_run_shows_its_cells_not_started(tmp_path):
    """Packed per dense model, a finished job's log exists when a new density's parts of it
    have not run yet: those cells read not started, not failed; a job whose parts are all
    missing beside its log failed."""
    import zipfile

    from threeregime.config.load import load_config
    from threeregime.views.status import read_status

    config = copy.deepcopy(TINY_CONFIG)
    config["runtime"] = {"retrain_pack": "temperature"}
    write_config(tmp_path, config)
    logs = tmp_path / RESULTS / "logs"
    for rule in ("prune", "metrics"):
        for t in ("1", "3"):
            (logs / rule / f"epochs-{t}").mkdir(parents=True, exist_ok=True)
            (logs / rule / f"epochs-{t}" / "seed1.log").write_text("done\n")
    for t in ("1", "3"):
        pruned = tmp_path / RESULTS / f"pruned/epochs-{t}/density-0.2/seed1/model.pt"
        pruned.parent.mkdir(parents=True)
        zipfile.ZipFile(pruned, "w").close()  # a whole checkpoint, as far as status reads it
        _write_cell(tmp_path, t, "0.2")
    (tmp_path / RESULTS / "pruned/epochs-3/density-0.2/seed1/model.pt").unlink()  # epochs-3: none left
    cells, _ = read_status(load_config(config), tmp_path)
    state = {(c.temperature, c.density): c.state for c in cells}
    prune = {(c.temperature, c.density): c.jobs[0].state for c in cells}
    metrics = {(c.temperature, c.density): c.metrics[0].state for c in cells}
    assert prune == {
        ("1", "0.2"): "done",
        ("1", "0.6"): "not started",
        ("3", "0.2"): "failed",
        ("3", "0.6"): "failed",
    }
    assert metrics[("1", "0.6")] == metrics[("3", "0.6")] == "not started"
    assert state == {
        ("1", "0.2"): "done",
        ("1", "0.6"): "not started",
        ("3", "0.2"): "done",
        ("3", "0.6"): "failed",
    }


# ----------------------------------------------------------------------------- half-done or broken runs
def _fabricated_pair(temperature: str, density: str, mc: float, cka: float) -> dict:
    """A metrics record of one retrain pair, as the metrics job writes it (the fields status and
    classification read)."""
    model = {"test_error": 0.1, "train_loss": 0.1, "train_error": 0.02, "hessian_top_eigenvalue": 5.0}
    model |= {"hessian_trace": 50.0, "density_actual": float(density)}
    record = {"knob": "epochs", "temperature": float(temperature), "density": float(density)}
    record |= {"dense_seed": 1, "seed_a": 1, "seed_b": 2, "mc": mc, "barrier": max(0.0, -mc)}
    record |= {"cka_softmax": cka, "cka_logits": cka, "cka_samples": 200, "environments": []}
    return record | {"models": [model | {"retrain_seed": 1}, model | {"retrain_seed": 2}]}


def _write_cell(folder: Path, temperature: str, density: str, mc: float = -0.1, cka: float = 0.9) -> None:
    from threeregime.io.files import write_json

    path = folder / RESULTS / f"metrics/epochs-{temperature}/density-{density}/seed1/pair1-2.json"
    write_json(path, _fabricated_pair(temperature, density, mc, cka))


def _status(folder: Path) -> str:
    result = cli(folder, "status")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_status_of_a_half_done_run_without_the_reference_row_draws_what_is_measured(tmp_path):
    write_config(tmp_path, TINY_CONFIG)  # epochs 1 and 3; the advice's reference is 3
    _write_cell(tmp_path, "1", "0.2", mc=-0.2, cka=0.8)
    _write_cell(tmp_path, "1", "0.6", mc=0.0, cka=0.99)
    out = _status(tmp_path)
    assert "cells: # done 2, > running 0, X failed 0, ~ partial 0, . not started 2" in out, out
    assert "wrote results/tiny/partial_regime_map.png" in out


def test_status_names_a_failed_run_job_and_a_damaged_output(tmp_path):
    write_config(tmp_path, TINY_CONFIG)
    for t in ("1", "3"):
        for d in ("0.2", "0.6"):
            _write_cell(tmp_path, t, d, mc=float("nan"), cka=float("nan"))  # collapsed models
    logs = tmp_path / RESULTS / "logs"
    logs.mkdir(parents=True)
    (logs / "classify.log").write_text("threeregime classify: error: something went wrong\n")
    data = tmp_path / RESULTS / "data" / "dataset.pt"
    data.parent.mkdir(parents=True)
    data.write_bytes(b"PK\x03\x04 a zip cut short")
    out = _status(tmp_path)
    assert "cells: # done 4, > running 0, X failed 0," in out, out  # measured before the damage
    failed = [line for line in out.splitlines() if line.startswith("failed ")]
    assert failed == [
        "failed classify (results/tiny/logs/classify.log): threeregime classify: error: something went wrong",
        "failed prepare_data (results/tiny/logs/prepare_data.log): results/tiny/data/dataset.pt is "
        "damaged (truncated?); delete it and run snakemake again",
    ], out
    assert "wrote results/tiny/partial_regime_map.png" in out  # NaN cells are drawn, not a crash


def test_cost_says_which_benchmark_file_it_cannot_read(tmp_path):
    folder = tmp_path / RESULTS / "benchmarks" / "prune" / "epochs-1" / "density-0.2"
    folder.mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    (folder / "seed1.tsv").write_text(header + "1.5\t0:00:01\t100\t200\t90\t95\t0\t0\t50\t1.2\n")
    (folder / "seed2.tsv").write_text(header)  # a job killed before its row was written
    (folder / "seed3.tsv").write_bytes(b"\x00\xff garbage")
    assert read_costs(tmp_path / RESULTS)["seed"].tolist() == ["1"]
    write_config(tmp_path, TINY_CONFIG)
    result = cli(tmp_path, "cost")
    assert result.returncode == 0, result.stderr
    for name in ("seed2.tsv", "seed3.tsv"):
        assert f"{folder.relative_to(tmp_path)}/{name}: unreadable benchmark file, left out" in result.stdout
    assert "projected from the jobs measured in results/tiny (1 jobs)" in result.stdout
