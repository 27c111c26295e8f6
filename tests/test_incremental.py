"""Incremental reruns: after one real run, each config edit reruns exactly the affected jobs.

Snakemake runs from the repository root, as a user would, so the workflow profile
profiles/default (cores, the one-machine `gpu` cap, rerun-incomplete) is in force. The job sets
come from the dry-run plan (`snakemake -n`) and are compared exactly, wildcards included.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import REPO, TINY_CONFIG, write_config

pytestmark = pytest.mark.slow

# Two temperatures (the epochs-3 dense run continues epochs-1), one density, one retrain pair:
# 14 jobs. runtime.device cuda makes dense_train/retrain/metrics ask `gpu: 1` (CPU fallback).
BASE = copy.deepcopy(TINY_CONFIG)
BASE["prune"]["densities"] = [0.5]
BASE["runtime"] = {"device": "cuda", "threads": 1}
TEMPS, DENSITY, SEED, PAIR = ["1", "3"], "0.5", "1", ("1", "2")
GPU_RULES = {"dense_train", "retrain", "metrics"}
ANALYSIS = {("collect", frozenset()), ("classify", frozenset()), ("plot", frozenset())}

JOB_HEADER = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")


def job(rule: str, **wildcards: str) -> tuple[str, frozenset]:
    return rule, frozenset(wildcards.items())


def cell_jobs(temperature: str, density: str, with_prune: bool = True) -> set:
    """The prune, retrain and metrics jobs of one (temperature, density) cell."""
    cell = {"temperature": temperature, "density": density, "seed": SEED}
    jobs = {job("retrain", **cell, rseed=r) for r in PAIR}
    jobs.add(job("metrics", **cell, a=PAIR[0], b=PAIR[1]))
    if with_prune:
        jobs.add(job("prune", **cell))
    return jobs


def snakemake(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`snakemake --directory folder ARGS` from the repository root, the venv's bin on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "snakemake", "--directory", str(folder), *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)


def run(folder: Path, *args: str) -> str:
    """Run and return stdout + stderr; fail the test if Snakemake fails."""
    result = snakemake(folder, *args)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{output[-4000:]}")
    return output


def jobs_in(output: str) -> set:
    """(rule, wildcards) of every job a (dry) run lists, the target rule `all` left out."""
    jobs, rule = set(), None
    for line in output.splitlines():
        header = JOB_HEADER.match(line)
        if header:
            rule = header.group(1)
            if rule != "all":
                jobs.add(job(rule))
            continue
        stripped = line.strip()
        if rule and rule != "all" and stripped.startswith("wildcards:"):
            jobs.discard(job(rule))
            pairs = (item.split("=", 1) for item in stripped.removeprefix("wildcards:").split(","))
            jobs.add((rule, frozenset((k.strip(), v.strip()) for k, v in pairs)))
        elif not line.startswith(" "):
            rule = None
    return jobs


def plan(folder: Path, overlay: dict | None = None) -> set:
    """The jobs `snakemake -n` plans, with an overlay config file on top of config.yaml if given."""
    args = ["-n"]
    if overlay is not None:
        args += ["--configfile", str(write_config(folder, overlay, "overlay.yaml"))]
    output = run(folder, *args)
    if "Nothing to be done" in output:
        return set()
    return jobs_in(output)


def job_intervals(output: str) -> list[tuple[str, datetime, datetime]]:
    """(rule, start, end) of every finished job, from Snakemake's own log of a real run."""
    stamp, rule, starts, spans = None, None, {}, []
    for line in output.splitlines():
        if STAMP.match(line):
            stamp = datetime.strptime(" ".join(STAMP.match(line).group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif JOB_HEADER.match(line):
            rule = JOB_HEADER.match(line).group(1)
        elif line.strip().startswith("jobid:") and rule:
            starts[line.split(":")[1].strip()] = (rule, stamp)
            rule = None
        elif FINISHED.match(line):
            jobid = FINISHED.match(line).group(1)
            spans.append((starts[jobid][0], starts[jobid][1], stamp))
    return spans


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One real run of the base config; returns (folder, its Snakemake output)."""
    folder = tmp_path_factory.mktemp("incremental")
    write_config(folder, BASE)
    return folder, run(folder)


def test_base_run_uses_the_workflow_profile_and_one_gpu_job_at_a_time(done):
    folder, output = done
    assert "workflow specific profile profiles/default" in output
    assert re.search(r'Provided resources: gpu=(Resource\("gpu", )?1\b', output), output[:3000]
    assert (folder / "results/tiny/regimes.csv").exists()
    spans = job_intervals(output)
    counts = {"prepare_data": 1, "dense_train": 2, "prune": 2, "retrain": 4, "metrics": 2, "collect": 1}
    counts |= {"classify": 1, "plot": 1}
    assert Counter(rule for rule, _, _ in spans if rule != "all") == counts
    gpu = sorted((start, end, rule) for rule, start, end in spans if rule in GPU_RULES)
    assert len(gpu) == 8
    for (_, end, first), (start, _, second) in zip(gpu, gpu[1:]):
        assert start >= end, f"{first} (until {end}) and {second} (from {start}) shared the one GPU"


def test_second_run_does_nothing(done):
    folder, _ = done
    assert "Nothing to be done" in run(folder)


def test_added_density_runs_only_its_cells_and_the_analysis(done):
    folder, _ = done
    overlay = {"prune": {"densities": [0.5, 0.2]}}
    expected = set().union(*(cell_jobs(t, "0.2") for t in TEMPS)) | ANALYSIS
    assert plan(folder, overlay) == expected


def test_retrain_hyperparameter_reruns_retrain_and_downstream_not_dense_or_prune(done):
    folder, _ = done
    overlay = {"retrain": {"recipe": {"lr": 0.02}}}
    expected = set().union(*(cell_jobs(t, DENSITY, with_prune=False) for t in TEMPS))
    assert plan(folder, overlay) == expected | ANALYSIS


def test_plot_setting_reruns_only_plot(done):
    folder, _ = done
    assert plan(folder, {"plot": {"dpi": 80}}) == {job("plot")}


def test_runtime_settings_rerun_nothing(done):
    folder, _ = done
    overlay = {"runtime": {"device": "cpu", "threads": 2, "checkpoint_every": 2}}
    assert plan(folder, overlay) == set()


def test_tf32_reruns_everything_from_dense_training_on(done):
    """TF32 changes the numbers on a GPU (it is a no-op on the CPU, but Snakemake cannot know)."""
    folder, _ = done
    jobs = plan(folder, {"runtime": {"tf32": True}})
    dense = {job("dense_train", temperature=t, seed=SEED) for t in TEMPS}
    cells = set().union(*(cell_jobs(t, DENSITY) for t in TEMPS))
    assert jobs == dense | cells | ANALYSIS


@pytest.mark.parametrize(
    "overlay", [{"prune": {"granularity": "2:4"}}, {"prune": {"method": "wanda", "calibration_samples": 64}}]
)
def test_a_granularity_or_method_reruns_pruning_and_what_follows(done, overlay):
    folder, _ = done
    expected = set().union(*(cell_jobs(t, DENSITY) for t in TEMPS)) | ANALYSIS
    assert plan(folder, overlay) == expected


def test_the_pruning_defaults_written_out_rerun_nothing(done):
    folder, _ = done
    assert plan(folder, {"prune": {"granularity": "unstructured", "min_layer_weights": 2}}) == set()


def test_packing_a_cells_retrain_seeds_reruns_nothing(done):
    """Packing only changes how results are computed (to rounding), like compile."""
    folder, _ = done
    assert plan(folder, {"runtime": {"retrain_pack": "cell"}}) == set()


def test_packing_by_temperature_plans_one_job_per_dense_model_and_step(tmp_path):
    """A fresh plan: one prune, one retrain and one metrics job per (temperature, dense seed),
    each holding every density's models and pairs."""
    config = copy.deepcopy(BASE)
    config["prune"]["densities"] = [0.2, 0.5]
    config["runtime"]["retrain_pack"] = "temperature"
    write_config(tmp_path, config)
    output = run(tmp_path, "-n")
    planned = jobs_in(output)
    for rule in ("prune", "retrain", "metrics"):
        assert {j for j in planned if j[0] == rule} == {job(rule, temperature=t, seed=SEED) for t in TEMPS}
    assert len(re.findall(r"retrain/epochs-3/density-0\.[25]/seed1/retrain[12]/model\.pt", output)) >= 4
    assert len(re.findall(r"metrics/epochs-3/density-0\.[25]/seed1/pair1-2\.json", output)) >= 2


def test_packed_jobs_reproduce_the_separate_jobs(done, tmp_path):
    """The same workflow with each dense model's pruning, retrainings and metrics packed into
    one job per step: the same pruned models and metrics files (keys and labels too) as the
    separate jobs of the base run, the retrained numbers up to rounding."""
    import json

    import pandas as pd
    import torch

    from threeregime.compute.checkpoints import load

    folder, _ = done
    packed = tmp_path / "packed"
    shutil.copytree(folder, packed, symlinks=True)
    overlay = write_config(packed, {"runtime": {"retrain_pack": "temperature"}}, "overlay.yaml")
    # The packed prune job's spec (a list) is not the separate one's: every prune reruns, and
    # what is computed from the pruned models.
    output = run(packed, "--configfile", str(overlay))
    counts = Counter(rule for rule, _, _ in job_intervals(output))
    assert {rule: counts[rule] for rule in ("prune", "retrain", "metrics")} == dict.fromkeys(
        ("prune", "retrain", "metrics"), len(TEMPS)
    )
    logs = packed / "results/tiny/logs"
    log = (logs / "retrain/epochs-3/seed1/retrain.log").read_text()
    assert "2 packed runs (retrain density=0.5 seed=1, retrain density=0.5 seed=2)" in log
    assert "pruned with uniform" in (logs / "prune/epochs-3/seed1.log").read_text()
    for t in TEMPS:
        cell = f"epochs-{t}/density-{DENSITY}/seed{SEED}"
        alone = load(str(folder / f"results/tiny/pruned/{cell}/model.pt"), "pruned")
        together = load(str(packed / f"results/tiny/pruned/{cell}/model.pt"), "pruned")
        for part in ("masks", "model"):
            assert all(torch.equal(alone[part][k], together[part][k]) for k in alone[part]), (cell, part)
        alone = json.loads((folder / f"results/tiny/metrics/{cell}/pair1-2.json").read_text())
        together = json.loads((packed / f"results/tiny/metrics/{cell}/pair1-2.json").read_text())
        assert list(together) == list(alone)
        labels = ("knob", "temperature", "density", "dense_seed", "seed_a", "seed_b")
        assert (
            [together[k] for k in labels] == [alone[k] for k in labels] == ["epochs", float(t), 0.5, 1, 1, 2]
        )
    keys = ["temperature", "density", "dense_seed", "retrain_seed"]
    separate = pd.read_csv(folder / "results/tiny/models.csv").sort_values(keys).reset_index(drop=True)
    together = pd.read_csv(packed / "results/tiny/models.csv").sort_values(keys).reset_index(drop=True)
    assert len(separate) == len(together) == 2 * len(TEMPS)
    # Rounding (grouped vs plain convs) grows over training; these 3-epoch runs stay within
    # 1e-4 in loss (measured), while the two retrain seeds differ by 3.5e-3 (checked below).
    relative = lambda a, b: ((a - b).abs() / b.abs().clip(lower=1e-12)).max()  # noqa: E731
    assert relative(together["train_loss"], separate["train_loss"]) <= 3e-4
    assert relative(together["hessian_top_eigenvalue"], separate["hessian_top_eigenvalue"]) <= 1e-2
    assert (together["test_error"] - separate["test_error"]).abs().max() <= 0.01  # a test sample
    swapped = separate.groupby(["temperature"])["train_loss"].transform(lambda s: s[::-1].to_numpy())
    assert relative(swapped, separate["train_loss"]) > 2e-3, "a seed mix-up must be visible"
    # Back to separate jobs: every cell's jobs rerun (their commands and specs differ). A second
    # density joins every packed job's outputs: each reruns whole.
    cells = set().union(*(cell_jobs(t, DENSITY) for t in TEMPS))
    assert plan(packed, {"runtime": {"retrain_pack": "none"}}) == cells | ANALYSIS
    overlay = {"prune": {"densities": [0.5, 0.2]}, "runtime": {"retrain_pack": "temperature"}}
    per_model = {
        job(rule, temperature=t, seed=SEED) for rule in ("prune", "retrain", "metrics") for t in TEMPS
    }
    assert plan(packed, overlay) == per_model | ANALYSIS


@pytest.mark.parametrize(
    "overlay",
    [
        {"data": {"root": "/elsewhere", "download": True, "augment": False}},  # not read by MNIST-1D
        {"train": {"sam_rho": 0.3}},  # plain SGD: rho is not used
        {"retrain": {"recipe": {"sam_rho": 0.3}}},
        {"adaptive": {"enabled": False, "step": 3, "rounds": 5, "budget": 0.2}},  # a grid not adaptive
    ],
)
def test_settings_that_change_no_number_rerun_nothing(done, overlay):
    folder, _ = done
    assert plan(folder, overlay) == set()


def test_deleted_metrics_file_recomputes_only_it_and_its_dependents(done):
    folder, _ = done
    cell = {"temperature": "3", "density": DENSITY, "seed": SEED}
    target = folder / "results/tiny/metrics/epochs-3/density-0.5/seed1/pair1-2.json"
    target.unlink()
    expected = {job("metrics", **cell, a="1", b="2")} | ANALYSIS
    assert plan(folder) == expected
    executed = run(folder)
    assert jobs_in(executed) == expected
    assert target.exists()
    assert plan(folder) == set()


def test_summary_lists_every_output_as_up_to_date(done):
    folder, _ = done
    result = snakemake(folder, "--summary")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("output_file\t")))
    rows = [line.split("\t") for line in lines[header + 1 :] if line.strip()]
    assert {row[2] for row in rows} >= {"prepare_data", "dense_train", "prune", "retrain", "metrics", "plot"}
    assert all(row[-1] == "no update" for row in rows), [row for row in rows if row[-1] != "no update"]


RULE_EDGES = {
    ("prepare_data", "dense_train"), ("dense_train", "dense_train"), ("dense_train", "prune"),
    ("prepare_data", "retrain"), ("prune", "retrain"), ("prepare_data", "metrics"),
    ("retrain", "metrics"), ("metrics", "collect"), ("collect", "classify"), ("classify", "plot"),
}  # fmt: skip


def rulegraph_edges(dot: str) -> set:
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, flags=re.M))
    return {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)$", dot, flags=re.M)}


def graph(folder: Path, kind: str) -> str:
    result = snakemake(folder, kind)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout[result.stdout.index("digraph") :]


def test_rulegraph_shows_the_pipeline(done):
    folder, _ = done
    edges = rulegraph_edges(graph(folder, "--rulegraph"))
    assert RULE_EDGES <= edges, RULE_EDGES - edges


def test_dag_renders_with_graphviz(done):
    if shutil.which("dot") is None:
        pytest.skip("graphviz `dot` is not installed (apt-get install graphviz)")
    folder, _ = done
    for kind in ("--rulegraph", "--dag"):
        svg = subprocess.run(
            ["dot", "-Tsvg"], input=graph(folder, kind), capture_output=True, text=True, check=True
        ).stdout
        assert svg.lstrip().startswith("<?xml") and "<svg" in svg
        assert "retrain" in svg and "plot" in svg


def test_results_record_one_numeric_environment(done):
    import json

    import pandas as pd

    folder, _ = done
    summary = json.loads((folder / "results/tiny/summary.json").read_text())
    assert summary["mixed_environments"] is False
    (environment,) = summary["environments"]
    assert environment.startswith("cpu") and ", 1 thread, torch " in environment
    assert set(pd.read_csv(folder / "results/tiny/metrics.csv")["environment"]) == {environment}


def test_a_corrupted_model_deleted_as_told_is_rebuilt_with_what_depends_on_it(done):
    """The error for a truncated model says to delete it and run snakemake again; doing so
    rebuilds that model and reruns exactly what was computed from it (then nothing is left)."""
    folder, _ = done
    cell = f"epochs-3/density-{DENSITY}/seed{SEED}"
    pruned = folder / f"results/tiny/pruned/{cell}/model.pt"
    pruned.write_bytes(pruned.read_bytes()[:200])
    spec = '{"recipe": {"lr_milestones": []}}'
    retrain = [sys.executable, "-m", "threeregime", "retrain", "--spec", spec, "--data"]
    retrain += [str(folder / "results/tiny/data/dataset.pt"), "--run", str(pruned), str(folder / "x.pt"), "1"]
    failed = subprocess.run(retrain, capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert f"{pruned}: corrupted or truncated checkpoint" in failed.stderr
    assert "delete it and run snakemake again" in failed.stderr
    pruned.unlink()
    assert plan(folder) == cell_jobs("3", DENSITY) | ANALYSIS
    run(folder)
    assert plan(folder) == set()
