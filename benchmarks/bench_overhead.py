"""Where a run's job time goes: process start-up and imports against the work itself, per rule.

Reads a finished run's benchmark files (``results/<run>/benchmarks``, wall and CPU seconds of
every job) and measures, on this machine now, what a job pays before it computes anything: a
fresh interpreter importing torch and the package's compute modules (the probe below), best of
``--repeats`` interleaved with a bare interpreter. Each rule's start-up share is the probe's CPU
time over the rule's mean job CPU time (a job's start-up is at most its whole CPU time). Run it
right after the run it reads, on the same machine.

    python benchmarks/bench_overhead.py results/demo
    python benchmarks/bench_overhead.py /path/to/results/demo --repeats 5
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import machine, table

# What every compute job imports before its first computation (threeregime.cli's handlers
# import their compute modules lazily; these cover prune, retrain and metrics).
PROBE = (
    "import torch, threeregime.cli, threeregime.compute.train, threeregime.compute.prune, "
    "threeregime.compute.landscape, threeregime.compute.hessian"
)


def timed_process(code: str) -> tuple[float, float]:
    """(wall s, CPU s of the child) of ``python -c code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def probe(repeats: int) -> dict[str, tuple[float, float]]:
    """Best (wall, CPU) of a bare interpreter and of the start-up probe, interleaved."""
    best = {"bare interpreter": (float("inf"),) * 2, "start-up probe": (float("inf"),) * 2}
    for _ in range(repeats):
        for name, code in (("bare interpreter", "pass"), ("start-up probe", PROBE)):
            wall, cpu = timed_process(code)
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def split_by_rule(results: Path, startup_cpu: float) -> list[list[object]]:
    """Per rule: jobs, mean wall and CPU seconds per job, the probe's CPU seconds as the start-up
    part of each job's CPU time and the rest as its work, and the summed start-up CPU. CPU time,
    not wall time: it moves far less with the machine's load between the run and the probe."""
    from threeregime.views.cost import read_costs

    costs = read_costs(results)
    if costs.empty:
        sys.exit(
            f"{results}: no benchmark files under benchmarks/ (expected a finished run's results folder)"
        )
    groups = [(rule, jobs) for rule, jobs in costs.groupby("rule", sort=False)]
    rows = []
    for rule, jobs in [*groups, ("**all jobs**", costs)]:
        cpu = jobs["cpu_s"].sum()
        startup = min(len(jobs) * startup_cpu, cpu)
        rows.append(
            [
                rule,
                len(jobs),
                jobs["wall_s"].mean(),
                jobs["cpu_s"].mean(),
                startup / len(jobs),
                (cpu - startup) / len(jobs),
                f"{startup / cpu:.0%}" if cpu > 0 else "n/a",
                startup,
            ]
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="a finished run's results folder (results/<run_name>)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved probe repetitions; best is kept")
    args = p.parse_args()
    env_note = f"PYTHONPATH={os.environ.get('PYTHONPATH', '')}" if os.environ.get("PYTHONPATH") else ""
    best = probe(args.repeats)
    startup_cpu = best["start-up probe"][1]
    print(f"\n## Job start-up against work ({args.results})\n")
    print(f"Machine: {machine()} {env_note}\n")
    print(
        table(
            ["process", "wall s (best)", "CPU s (best)"],
            [[name, wall, cpu] for name, (wall, cpu) in best.items()],
        )
    )
    print()
    headers = ["rule", "jobs", "wall s / job", "CPU s / job", "start-up CPU s / job", "work CPU s / job"]
    headers += ["start-up share of CPU", "start-up CPU s (summed)"]
    print(table(headers, split_by_rule(args.results, startup_cpu)))


if __name__ == "__main__":
    main()
