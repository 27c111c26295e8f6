"""(4) ``snakemake -n`` wall time on the paper presets (the full Figure-2-sized DAGs).

Each preset runs in a fresh scratch directory holding an empty stand-in for torchvision's
CIFAR-10 files (config validation only checks that they exist), twice: a cold run (new
``.snakemake`` folder) and a warm one. Both the plain dry run (which prints every job) and
``--quiet`` are timed, as whole processes from start to exit.

    python benchmarks/bench_dryrun.py                       # every presets/*.yaml
    python benchmarks/bench_dryrun.py presets/cifar10-preresnet20-epochs.yaml
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, table

CIFAR_FILES = {
    "cifar-10-batches-py": [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"],
    "cifar-100-python": ["train", "test", "meta"],
}
GOAL_S = 15.0


def scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="threeregime-dryrun-"))
    for sub, names in CIFAR_FILES.items():
        (folder / "data" / sub).mkdir(parents=True)
        for name in names:
            (folder / "data" / sub / name).touch()
    return folder


def dry_run(preset: Path, folder: Path, *extra: str) -> tuple[float, int, str]:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
    command += ["--directory", str(folder), "--configfile", str(preset.resolve()), "-n", "--cores", "2"]
    start = time.perf_counter()
    done = subprocess.run([*command, *extra], capture_output=True, text=True, cwd=folder)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{preset}: snakemake -n failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    match = re.search(r"^total\s+(\d+)", done.stdout + done.stderr, re.MULTILINE)
    return seconds, int(match.group(1)) if match else -1, done.stdout + done.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="*", type=Path, help="preset files (default: presets/*.yaml)")
    args = p.parse_args()
    presets = args.presets or sorted((REPO / "presets").glob("*.yaml"))
    if not presets:
        sys.exit("no presets found; pass preset paths")
    rows = []
    for preset in presets:
        folder = scratch()
        cold, jobs, _ = dry_run(preset, folder)
        warm, _, _ = dry_run(preset, folder)
        quiet, _, _ = dry_run(preset, folder, "--quiet")
        worst = max(cold, warm, quiet)
        rows.append([preset.name, jobs, cold, warm, quiet, "yes" if worst < GOAL_S else "NO"])
    print("\n## snakemake -n on the paper presets\n")
    print(f"Machine: {machine()}\n")
    print(table(["preset", "jobs", "-n cold s", "-n warm s", "-n --quiet s", f"< {GOAL_S:g} s"], rows))


if __name__ == "__main__":
    main()
