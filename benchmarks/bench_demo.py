"""(5) The embedded demo end to end: ``snakemake`` on config.yaml from an empty results folder.

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
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, table

GOAL_S = 300.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--config", type=Path, default=REPO / "config.yaml")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="threeregime-demo-"))
    shutil.copy(args.config, folder / "config.yaml")
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
    command += ["--directory", str(folder), "--cores", str(args.cores)]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    if done.returncode != 0:
        sys.exit(f"snakemake failed after {wall:.0f} s:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    again_start = time.perf_counter()
    again = subprocess.run(command, capture_output=True, text=True, cwd=folder)
    again_s = time.perf_counter() - again_start
    nothing = "Nothing to be done" in again.stdout + again.stderr
    jobs = re.search(r"^total\s+(\d+)", done.stdout + done.stderr, re.MULTILINE)
    count = jobs.group(1) if jobs else "?"
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
