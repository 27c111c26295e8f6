"""Wall-time prediction: the dry run's jobs and their graph, the scheduling simulation on known
graphs, and the prediction against a recorded demo run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from threeregime.views.cost import COLUMNS, read_costs, read_local_costs
from threeregime.views.walltime import Job, dependencies, job_seconds, local_rules, parse_dry_run, simulate

FIXTURES = Path(__file__).parent / "fixtures"

DRY_RUN = """\
Building DAG of jobs...
[Mon Dec  7 12:36:29 2026]
rule dense_train:
    input: results/demo/data/dataset.pt
    output: results/demo/dense/epochs-20/seed1/model.pt
    log: results/demo/logs/dense/epochs-20/seed1.log
    jobid: 2
    benchmark: results/demo/benchmarks/dense_train/epochs-20/seed1.tsv
    reason: Forced execution
    wildcards: temperature=20, seed=1
    threads: 2
    resources: tmpdir=/tmp
[Mon Dec  7 12:36:29 2026]
rule prune:
    input: results/demo/dense/epochs-20/seed1/model.pt
    output: results/demo/pruned/epochs-20/density-0.1/seed1/model.pt
    jobid: 5
    wildcards: temperature=20, density=0.1, seed=1
    resources: tmpdir=/tmp
[Mon Dec  7 12:36:29 2026]
localrule collect:
    input: results/demo/pruned/epochs-20/density-0.1/seed1/model.pt
    output: results/demo/metrics.csv
    jobid: 7
    resources: tmpdir=/tmp
[Mon Dec  7 12:36:29 2026]
localrule all:
    input: results/demo/metrics.csv
    jobid: 0
    resources: tmpdir=/tmp
Job stats:
job        count
"""


def test_the_dry_run_gives_jobs_with_wildcards_threads_and_their_graph():
    jobs = parse_dry_run(DRY_RUN)
    assert [(j.jobid, j.rule, j.threads, j.local) for j in jobs] == [
        (2, "dense_train", 2, False), (5, "prune", 1, False), (7, "collect", 1, True)
    ]  # fmt: skip
    assert jobs[1].wildcards == {"temperature": "20", "density": "0.1", "seed": "1"}
    assert dependencies(jobs) == {2: set(), 5: {2}, 7: {5}}


def test_local_rules_are_read_from_the_rules_declarations(tmp_path):
    (tmp_path / "a.smk").write_text(
        "rule train:\n    output: 'x'\n    threads: 2\n\n\n"
        "rule collect:\n    output: 'y'\n    localrule: True\n"
    )
    (tmp_path / "b.smk").write_text(
        "if config.get('x'):\n\n    checkpoint round:\n        output: 'z'\n        localrule: True\n"
        "\n\nrule plot:  # localrule: True in a comment is not a declaration\n    output: 'w'\n"
    )
    assert local_rules(tmp_path) == {"collect", "round"}
    assert local_rules() == {
        "prepare_data",
        "collect",
        "classify",
        "plot",
        "adaptive_round",
        "compare_setups",
    }


def _job(jobid, rule="r", threads=1, local=False):
    return Job(jobid, rule, {}, threads=threads, local=local)


def test_simulation_on_known_graphs():
    # a -> (b, c, d) -> e; 10 s each but c 30 s
    jobs = [_job(i) for i in range(5)]
    needs = {0: set(), 1: {0}, 2: {0}, 3: {0}, 4: {1, 2, 3}}
    seconds = {0: 10.0, 1: 10.0, 2: 30.0, 3: 10.0, 4: 10.0}
    assert simulate(jobs, needs, seconds, cores=1) == 70.0  # one at a time: the sum
    assert simulate(jobs, needs, seconds, cores=2) == 50.0  # c first (longest chain), b and d beside it
    assert simulate(jobs, needs, seconds, cores=8) == 50.0  # the critical path
    two_threads = [_job(i, threads=2) for i in range(5)]
    assert simulate(two_threads, needs, seconds, cores=2) == 70.0  # each job takes both cores
    assert simulate(two_threads, needs, seconds, cores=4) == 50.0
    # a cluster runs at most 2 jobs at once; the local job e runs beside them
    cluster = jobs[:4] + [_job(4, local=True)]
    assert simulate(cluster, needs, seconds, cores=1, cluster_jobs=2) == 50.0
    assert simulate(cluster, needs, seconds, cores=1, cluster_jobs=1) == 70.0


def test_job_seconds_use_the_jobs_own_measurement_else_the_rules_rate():
    jobs = [
        Job(1, "prune", {"temperature": "20", "density": "0.1", "seed": "1"}),
        Job(2, "prune", {"temperature": "20", "density": "0.2", "seed": "1"}),
        Job(3, "retrain", {"temperature": "20", "seed": "1"}),
        Job(4, "classify", {}, local=True),
    ]
    costs = pd.DataFrame(
        [
            {"rule": "prune", "temperature": "20", "density": "0.1", "seed": "1", "wall_s": 2.5},
            {"rule": "retrain", "temperature": "20", "seed": "1", "rseed": "", "wall_s": 40.0},
        ],
        columns=COLUMNS,
    )
    seconds = job_seconds(jobs, costs, {"prune": 3.0, "retrain": 1.0}, lambda rule, keys: 2.0)
    assert seconds == {1: 2.5, 2: 6.0, 3: 40.0, 4: 30.0}  # classify: the stated default


@pytest.mark.parametrize("recorded", ["recorded_demo", "recorded_demo_packed"])
def test_the_prediction_is_within_a_quarter_of_a_recorded_demo_run(recorded):
    """A demo run recorded from an empty results/ with `snakemake` (2 cores): its dry run, every
    job's benchmark and its measured wall time. The prediction from those alone (the model the
    cost command uses) is within 25% of what the run took: one run of 84 jobs under heavy load,
    one of 37 (prune and metrics packed per dense model) on a quiet machine."""
    folder = FIXTURES / recorded
    record = json.loads((folder / "run.json").read_text())
    jobs = parse_dry_run((folder / "dry_run.txt").read_text())
    results = folder / "run"  # results/demo of the recorded run: its benchmark files
    costs = pd.concat([read_costs(results, 2, 4), read_local_costs(results)], ignore_index=True)
    seconds = job_seconds(jobs, costs, {}, lambda rule, keys: 0.0)
    assert len(jobs) == record["jobs"] and all(seconds[j.jobid] > 0 for j in jobs)
    predicted = record["dry_run_s"] + simulate(jobs, dependencies(jobs), seconds, record["cores"])
    assert predicted == pytest.approx(record["wall_s"], rel=0.25), (predicted, record)
    # what the simulation adds: summed job time (one core) is far from the run's wall time
    assert sum(seconds.values()) > 1.5 * record["wall_s"]
