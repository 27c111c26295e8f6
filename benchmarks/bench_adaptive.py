"""(9) Adaptive refinement against the full grid on MNIST-1D: jobs needed and label agreement.

Runs the workflow of this checkout twice in one scratch folder: first with ``adaptive.enabled``
(coarse sub-grid, then rounds of refinement), then the same config without it. A cell's files do
not depend on the round that asked for it, so the full run reuses every cell the adaptive run
measured and computes only the rest: the two runs together cost one full grid. Reports

* the share of ``retrain`` + ``metrics`` jobs the adaptive run needed (counted from Snakemake's
  own job list of each run),
* label agreement with the full grid, on measured and on inferred cells separately,
* every disagreement, with the full grid's own bootstrap confidence at that cell.

    python benchmarks/bench_adaptive.py                 # 8 x 8 grid, 2 dense x 2 retrain seeds
    python benchmarks/bench_adaptive.py --small         # 3 x 3 tiny grid: checks the script
    python benchmarks/bench_adaptive.py --keep --cores 2
"""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from common import machine, run_snakemake, table

from threeregime.adaptive import compare_maps

FULL = {
    "run_name": "adaptive-bench",
    "data": {"name": "mnist1d", "num_samples": 5000, "generation_seed": 42},
    "model": {"name": "cnn1d", "width": 0.5},
    "train": {"epochs": 16, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "knob": {"name": "epochs", "values": [1, 2, 3, 4, 6, 8, 12, 16]},
    "prune": {"method": "uniform", "densities": [0.05, 0.07, 0.1, 0.14, 0.2, 0.3, 0.4, 0.6]},
    "retrain": {"mode": "rewind"},
    "seeds": {"dense": [1, 2], "retrain": [1, 2]},
    "metrics": {
        "cka_samples": 2000,
        "hessian_samples": 64,
        "hessian_max_iter": 10,
        "hessian_probes": 4,
        "hessian_probe_batch": 2,
        "hessian_trace_deflation": 4,
    },
    "regimes": {"eps_mode": "noise", "eps": 0.02, "cka_cut_mode": "split", "bootstrap": 200},
    "adaptive": {"enabled": True, "step": 3, "rounds": 3, "budget": 0.5, "min_confidence": 0.8},
    "runtime": {"device": "cpu", "threads": 1, "retrain_pack": "cell"},
}
SMALL = copy.deepcopy(FULL) | {
    "data": {"name": "mnist1d", "num_samples": 600, "generation_seed": 3},
    "model": {"name": "cnn1d", "width": 0.25},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    "knob": {"name": "epochs", "values": [1, 2, 3]},
    "prune": {"method": "uniform", "densities": [0.2, 0.4, 0.6]},
    "seeds": {"dense": [1], "retrain": [1, 2, 3]},
    "metrics": FULL["metrics"] | {"cka_samples": 200, "lmc_points": 5},
    "runtime": {"device": "cpu", "threads": 1},
}
SMALL["adaptive"] = FULL["adaptive"] | {"step": 2, "budget": 0.7, "rounds": 2}
JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$", re.MULTILINE)
COUNTED = ("retrain", "metrics")


def run(folder: Path, config: dict, cores: int) -> tuple[float, dict]:
    """One snakemake run; wall seconds and the number of jobs of each rule it ran."""
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    wall, done, _ = run_snakemake(folder, "--cores", str(cores))
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"snakemake failed after {wall:.0f} s:\n{output[-4000:]}")
    counts = {}
    for rule in JOB.findall(output):
        counts[rule] = counts.get(rule, 0) + 1
    return wall, counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="3 x 3 tiny grid (checks the script)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = p.parse_args()
    config = SMALL if args.small else FULL
    folder = Path(tempfile.mkdtemp(prefix="threeregime-adaptive-"))
    results = folder / "results" / config["run_name"]
    adaptive_s, adaptive_jobs = run(folder, config, args.cores)
    adaptive = pd.read_csv(results / "regimes.csv")
    plans = sorted((results / "adaptive").glob("round*.json"))
    full_config = copy.deepcopy(config)
    full_config["adaptive"] = {"enabled": False}
    rest_s, rest_jobs = run(folder, full_config, args.cores)
    full = pd.read_csv(results / "regimes.csv")
    cells, summary = compare_maps(full, adaptive)

    needed = sum(adaptive_jobs.get(r, 0) for r in COUNTED)
    total = needed + sum(rest_jobs.get(r, 0) for r in COUNTED)
    grid = f"{len(config['knob']['values'])} x {len(config['prune']['densities'])}"
    replicates = f"{len(config['seeds']['dense'])} dense x {len(config['seeds']['retrain'])} retrain seeds"
    print(f"\n## Adaptive refinement vs the full grid (MNIST-1D, {grid}, {replicates})\n")
    print(f"Machine: {machine()}; adaptive settings {config['adaptive']}\n")

    def share(x):
        return "-" if x is None else f"{x:.1%}"

    rows = [
        ["retrain + metrics jobs", f"{needed} of {total}", f"{needed / total:.1%}"],
        ["cells measured", f"{summary['measured']} of {summary['cells']}", ""],
        ["rounds run (plans)", str(len(plans)), ""],
        ["agreement, all cells", "", share(summary["agreement"])],
        ["agreement, measured cells", "", share(summary["agreement_measured"])],
        ["agreement, inferred cells", "", share(summary["agreement_inferred"])],
        ["disagreements (uncertain in full grid)",
         f"{summary['disagreements']} ({summary['disagreements_uncertain_in_full']})", ""],
        ["wall s: adaptive run, then the rest of the grid", f"{adaptive_s:.0f}, {rest_s:.0f}", ""],
    ]  # fmt: skip
    print(table(["", "count", "share"], rows))
    disagree = cells[~cells["agree"]]
    if len(disagree):
        print("\nDisagreements (full grid's bootstrap p_label and confidence at the cell):\n")
        columns = ["temperature", "density", "full_regime", "adaptive_regime", "label_source"]
        columns += [c for c in ("full_p_label", "full_confidence") if c in disagree]
        print(table(columns, disagree[columns].astype(str).values.tolist()))
    if args.keep:
        print(f"\nresults kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
