"""``snakemake -n`` wall time on the paper presets (the full Figure-2-sized DAGs).

Each preset runs in a fresh scratch directory holding an empty stand-in for torchvision's
CIFAR-10 files (config validation only checks that they exist), twice: a cold run (new
``.snakemake`` folder) and a warm one. Both the plain dry run (which prints every job) and
``--quiet`` are timed, as whole processes from start to exit. Each preset is planned as shipped
and with ``runtime.retrain_pack: none`` (one job per retraining: its largest DAG).

    python benchmarks/bench_dryrun.py                       # presets/base.yaml + each knob overlay
    python benchmarks/bench_dryrun.py presets/epochs.yaml
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import REPO, machine, run_snakemake, table

CIFAR_FILES = {
    "cifar-10-batches-py": [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"],
    "cifar-100-python": ["train", "test", "meta"],
}
GOAL_S = 15.0
BASE = REPO / "presets" / "base.yaml"


def scratch() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="threeregime-dryrun-"))
    for sub, names in CIFAR_FILES.items():
        (folder / "data" / sub).mkdir(parents=True)
        for name in names:
            (folder / "data" / sub / name).touch()
    return folder


def dry_run(preset: Path, folder: Path, *extra: str, overlays: tuple[Path, ...] = ()) -> tuple[float, int]:
    configs = [str(BASE), str(preset.resolve()), *map(str, overlays)]
    seconds, done, jobs = run_snakemake(folder, "--configfile", *configs, "-n", "--cores", "2", *extra)
    if done.returncode != 0:
        sys.exit(f"{preset}: snakemake -n failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return seconds, jobs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("presets", nargs="*", type=Path, help="knob overlays (default: all)")
    args = p.parse_args()
    presets = args.presets or sorted(set((REPO / "presets").glob("*.yaml")) - {BASE})
    if not presets:
        sys.exit("no presets found; pass preset paths")
    rows = []
    for preset in presets:
        for pack in ("as shipped", "none"):
            folder = scratch()
            overlays = ()
            if pack == "none":
                overlays = (folder / "unpacked.yaml",)
                overlays[0].write_text("runtime: {retrain_pack: none}\n")
            cold, jobs = dry_run(preset, folder, overlays=overlays)
            warm, _ = dry_run(preset, folder, overlays=overlays)
            quiet, _ = dry_run(preset, folder, "--quiet", overlays=overlays)
            worst = max(cold, warm, quiet)
            rows.append([preset.name, pack, jobs, cold, warm, quiet, "yes" if worst < GOAL_S else "NO"])
    print("\n## snakemake -n on the paper presets\n")
    print(f"Machine: {machine()}\n")
    headers = ["preset", "retrain_pack", "jobs", "-n cold s", "-n warm s", "-n --quiet s", f"< {GOAL_S:g} s"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
