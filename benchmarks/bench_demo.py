"""The embedded demo end to end: ``snakemake`` on config.yaml from an empty results folder.

Runs the workflow of this checkout in a scratch working directory (a copy of config.yaml, the
default profile's 2 cores), timing the whole process, then a second ``snakemake`` (nothing to
do) and prints the per-rule job count and the load of the machine before and after, since on a
shared machine other processes change the wall time.

``--against REV`` also runs the demo of an earlier commit (its own workflow, package and
config.yaml, extracted with ``git archive``), alternating with this checkout ``--repeats`` times,
and prints the ratio of the mean wall times: on a noisy machine a ratio measured in one run
holds where absolute times do not.

    python benchmarks/bench_demo.py
    python benchmarks/bench_demo.py --cores 2 --keep
    python benchmarks/bench_demo.py --against 06ee815 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, machine, run_snakemake, table

GOAL_S = 120.0


def demo(checkout: Path, cores: int, config: Path | None = None) -> tuple[float, int, Path]:
    """One demo run of ``checkout`` (its config.yaml, or ``config``) from an empty scratch
    folder: (wall s, jobs, the folder, which the caller removes)."""
    folder = Path(tempfile.mkdtemp(prefix="threeregime-demo-"))
    shutil.copy(config or checkout / "config.yaml", folder / "config.yaml")
    wall, done, jobs = run_snakemake(folder, "--cores", str(cores), checkout=checkout)
    if done.returncode != 0:
        sys.exit(
            f"{checkout}: snakemake failed after {wall:.0f} s:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return wall, jobs, folder


def extract(revision: str) -> Path:
    """The files of ``revision`` of this repository, in a scratch folder."""
    target = Path(tempfile.mkdtemp(prefix=f"threeregime-{revision}-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def compare(revision: str, repeats: int, cores: int) -> None:
    before = extract(revision)
    rows, walls = [], {"before": [], "after": []}
    try:
        for repeat in range(1, repeats + 1):
            for name, checkout in (("before", before), ("after", REPO)):
                wall, jobs, folder = demo(checkout, cores)
                shutil.rmtree(folder, ignore_errors=True)
                walls[name].append(wall)
                rows.append([repeat, f"{name} ({revision if name == 'before' else 'this checkout'})", jobs,
                             f"{wall:.1f}", f"{os.getloadavg()[0]:.2f}"])  # fmt: skip
    finally:
        shutil.rmtree(before, ignore_errors=True)
    mean = {name: sum(w) / len(w) for name, w in walls.items()}
    print(f"\n## Demo end to end: this checkout against {revision}\n")
    print(f"Machine: {machine()}; --cores {cores}\n")
    print(table(["repeat", "demo", "jobs", "wall s", "load after"], rows))
    print(f"\nmean wall: before {mean['before']:.1f} s, after {mean['after']:.1f} s; "
          f"ratio after / before **{mean['after'] / mean['before']:.3f}**")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--against", default="", help="also run the demo of this git revision, alternating")
    p.add_argument("--repeats", type=int, default=2, help="runs of each demo with --against")
    args = p.parse_args()
    if args.against:
        compare(args.against, args.repeats, args.cores)
        return
    load_before = os.getloadavg()[0]
    wall, jobs, folder = demo(REPO, args.cores, args.config)
    load_after = os.getloadavg()[0]
    again_s, again, _ = run_snakemake(folder, "--cores", str(args.cores))
    nothing = "Nothing to be done" in again.stdout + again.stderr
    count = str(jobs) if jobs >= 0 else "?"
    rows = [
        ["snakemake (empty results/)", f"{wall:.1f}", count, "yes" if wall < GOAL_S else "NO"],
        ["snakemake again", f"{again_s:.1f}", "nothing to be done" if nothing else "REBUILT", ""],
    ]
    print("\n## Demo end to end (config.yaml)\n")
    print(f"Machine: {machine()}; load avg before {load_before:.2f}, after {load_after:.2f}\n")
    print(table(["run", "wall s", "jobs", f"< {GOAL_S:g} s"], rows))
    if args.keep:
        print(f"\nresults kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
