"""The embedded demo end to end: ``snakemake`` on config.yaml from an empty results folder.

Runs the workflow of this checkout in a scratch working directory (a copy of config.yaml, the
default profile's 2 cores), timing the whole process, then a second ``snakemake`` (nothing to
do) and prints the per-rule job count and the load of the machine before and after, since on a
shared machine other processes change the wall time.

    python benchmarks/bench_demo.py
    python benchmarks/bench_demo.py --cores 2 --keep
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from common import REPO, machine, run_snakemake, table

GOAL_S = 300.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="threeregime-demo-"))
    shutil.copy(args.config, folder / "config.yaml")
    load_before = os.getloadavg()[0]
    wall, done, jobs = run_snakemake(folder, "--cores", str(args.cores))
    load_after = os.getloadavg()[0]
    if done.returncode != 0:
        sys.exit(f"snakemake failed after {wall:.0f} s:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
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
