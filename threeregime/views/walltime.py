"""Expected wall time of a run: its job graph (from Snakemake's own dry run), each job's seconds
(measured where the job was measured, else projected from its rule's measured rate), and a
simulation of how Snakemake packs them onto ``--cores N`` locally or onto a cluster profile's
concurrent jobs.

Model (stated where the number is shown): a job holds ``threads`` cores (at most N) from start to
end; ready jobs start as soon as their cores are free, those with the longest chain of work
after them first (Snakemake's scheduler is greedy too, with its own priorities); local jobs
(collect, classify, plot, adaptive rounds) run where snakemake runs; on a cluster every other job
is its own allocation, at most ``jobs`` at once, with no queue wait. Snakemake's own start (reading
the workflow, building the DAG) is the time of the dry run itself.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from threeregime.views.cost import KEYS

MODEL = (
    "each job takes its measured seconds (or its rule's measured rate x its units); a job holds "
    "its threads (at most --cores) from start to end; ready jobs start when cores are free, "
    "longest remaining chain first; on a cluster each job is its own allocation (job groups not "
    "modelled) with no queue wait; Snakemake's start is the dry run's own time"
)
# Local analysis jobs with no benchmark of their own yet (runs from before they had one): assumed.
LOCAL_DEFAULT_S = {"collect": 5.0, "classify": 30.0, "plot": 20.0}
_JOB_HEAD = re.compile(r"^(local)?(rule|checkpoint) (\w+):$")
_RULE_HEAD = re.compile(r"^\s*(?:rule|checkpoint) (\w+):", re.MULTILINE)
WORKFLOW = Path(__file__).resolve().parents[2] / "workflow"
_FIELD = re.compile(r"^    (\w+): (.*)$")


@dataclass(frozen=True)
class Job:
    """One job of a dry run: its rule, wildcards, files, threads and whether it is local."""

    jobid: int
    rule: str
    wildcards: dict = field(hash=False)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    threads: int = 1
    local: bool = False

    def keys(self) -> dict:
        """The wildcards as the cost table keys them (threeregime.views.cost.KEYS)."""
        return {k: v for k, v in self.wildcards.items() if k in KEYS}


def parse_dry_run(text: str) -> list[Job]:
    """The jobs ``snakemake -n`` printed (rule blocks with their input, output, jobid, threads,
    wildcards); the target rule ``all`` is left out."""
    jobs, current = [], None

    def close():
        if current and current["rule"] != "all" and "jobid" in current:
            jobs.append(
                Job(int(current["jobid"]), current["rule"], current.get("wildcards", {}),
                    tuple(current.get("input", ())), tuple(current.get("output", ())),
                    int(current.get("threads", 1)), current["local"])
            )  # fmt: skip

    for line in text.splitlines():
        head = _JOB_HEAD.match(line.strip()) if not line.startswith("    ") else None
        if head:
            close()
            current = {"rule": head.group(3), "local": bool(head.group(1))}
            continue
        found = _FIELD.match(line)
        if current is None or not found:
            if line and not line.startswith("    "):
                close()
                current = None
            continue
        name, value = found.groups()
        if name in ("input", "output"):
            current[name] = [v.strip() for v in value.split(",") if v.strip()]
        elif name == "wildcards":
            current[name] = dict(part.strip().split("=", 1) for part in value.split(", ") if "=" in part)
        elif name in ("jobid", "threads"):
            current[name] = value.strip()
    close()
    return jobs


def local_rules(rules_dir: Path = WORKFLOW / "rules") -> set[str]:
    """The rules the workflow declares ``localrule: True`` (a dry run does not mark them; a run
    on one machine marks every job local)."""
    local = set()
    for path in sorted(rules_dir.glob("*.smk")):
        text = path.read_text()
        heads = list(_RULE_HEAD.finditer(text))
        for head, following in zip(heads, [*heads[1:], None]):
            body = text[head.end() : following.start() if following else len(text)]
            if re.search(r"^\s*localrule: True\s*$", body, re.MULTILINE):
                local.add(head.group(1))
    return local


def dependencies(jobs: list[Job]) -> dict[int, set[int]]:
    """For each job, the jobs of the plan that make one of its inputs."""
    maker = {path: job.jobid for job in jobs for path in job.outputs}
    return {job.jobid: {maker[p] for p in job.inputs if p in maker} - {job.jobid} for job in jobs}


def job_seconds(jobs: list[Job], costs: pd.DataFrame, rates: dict[str, float], units) -> dict[int, float]:
    """Seconds of every job: its own measured wall time when the job was measured (same rule and
    wildcards), else its rule's measured seconds per unit times its units (``units(rule,
    keys)``), else the local default. Rules with neither are 0 (and reported missing)."""
    measured = {}
    for row in costs.itertuples(index=False):
        values = {k: getattr(row, k) for k in KEYS}
        keys = tuple((k, str(v)) for k, v in values.items() if pd.notna(v) and str(v) != "")
        measured[(row.rule, keys)] = float(row.wall_s)
    seconds = {}
    for job in jobs:
        keys = tuple(sorted(job.keys().items(), key=lambda kv: KEYS.index(kv[0])))
        if (job.rule, keys) in measured:
            seconds[job.jobid] = measured[(job.rule, keys)]
        elif job.rule in rates and rates[job.rule] == rates[job.rule]:  # not NaN
            seconds[job.jobid] = rates[job.rule] * units(job.rule, job.keys())
        else:
            seconds[job.jobid] = LOCAL_DEFAULT_S.get(job.rule, 0.0)
    return seconds


def simulate(
    jobs: list[Job], needs: dict[int, set[int]], seconds: dict[int, float], cores: int, cluster_jobs: int = 0
) -> float:
    """Makespan of the jobs: locally on ``cores`` (``cluster_jobs`` 0), or on a cluster with at
    most ``cluster_jobs`` non-local jobs at once (local jobs then use the submit host's cores)."""
    by_id = {job.jobid: job for job in jobs}
    after: dict[int, list[int]] = {j: [] for j in by_id}
    for j, before in needs.items():
        for b in before:
            after[b].append(j)
    chain: dict[int, float] = {}
    for j in reversed(_topological(by_id, needs)):  # the longest work from a job to the end
        chain[j] = seconds[j] + max((chain[k] for k in after[j]), default=0.0)
    waiting = {j: len(needs[j]) for j in by_id}
    ready = [(-chain[j], j) for j in by_id if waiting[j] == 0]
    heapq.heapify(ready)
    running: list[tuple[float, int]] = []
    now, free_cores, free_slots = 0.0, cores, cluster_jobs
    while ready or running:
        held = []
        while ready:
            item = heapq.heappop(ready)
            job = by_id[item[1]]
            on_cluster = cluster_jobs > 0 and not job.local
            need = 1 if on_cluster else min(job.threads, cores)
            if (on_cluster and free_slots >= 1) or (not on_cluster and free_cores >= need):
                if on_cluster:
                    free_slots -= 1
                else:
                    free_cores -= need
                heapq.heappush(running, (now + seconds[job.jobid], job.jobid))
            else:
                held.append(item)
        for item in held:
            heapq.heappush(ready, item)
        now, done = heapq.heappop(running)
        job = by_id[done]
        if cluster_jobs > 0 and not job.local:
            free_slots += 1
        else:
            free_cores += min(job.threads, cores)
        for k in after[done]:
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, (-chain[k], k))
    return now


def _topological(by_id: dict, needs: dict[int, set[int]]) -> list[int]:
    order, seen = [], set()

    def visit(j):
        if j in seen:
            return
        seen.add(j)
        for b in sorted(needs[j]):
            visit(b)
        order.append(j)

    for j in sorted(by_id):
        visit(j)
    return order


def dry_run(configfiles: list[str], workdir: str = ".", remaining: bool = False) -> tuple[list[Job], float]:
    """The jobs of this checkout's workflow for the config (every job, or with ``remaining``
    only those not done yet) from ``snakemake -n``, and how long that took (Snakemake's own
    start: reading the workflow and building the DAG, which a real run spends too)."""
    import subprocess
    import sys
    import time

    snakefile = WORKFLOW / "Snakefile"
    command = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-n"]
    command += [] if remaining else ["-F"]
    if configfiles:
        command += ["--configfile", *configfiles]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"snakemake -n failed: {tail[0]}")
    local = local_rules()
    jobs = [
        replace(job, local=job.local or job.rule in local) for job in parse_dry_run(done.stdout + done.stderr)
    ]
    return jobs, seconds
