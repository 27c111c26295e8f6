"""Adaptive refinement against the full grid on MNIST-1D: jobs needed and label agreement.

Runs the workflow of this checkout twice in one scratch folder: first with ``adaptive.enabled``
(coarse sub-grid, then rounds of refinement), then the same config without it. A cell's files do
not depend on the round that asked for it, so the full run reuses every cell the adaptive run
measured and computes only the rest: the two runs together cost one full grid. Reports

* the share of ``retrain`` + ``metrics`` jobs the adaptive run needed (counted from Snakemake's
  own job list of each run),
* label agreement with the full grid, on measured and on inferred cells separately,
* every disagreement, with the full grid's own bootstrap confidence at that cell,
* a replay: what other coarse steps and budgets would have measured and inferred, computed by the
  workflow's own planning and classification functions from the full grid's metrics files (a
  cell's files do not depend on the round, so a replay needs no training). The replay of the run's
  own settings must plan exactly the cells the real adaptive run measured; the script checks it.

    python benchmarks/bench_adaptive.py                 # 8 x 8 grid, 2 dense x 2 retrain seeds
    python benchmarks/bench_adaptive.py --small         # 3 x 3 tiny grid: checks the script
    python benchmarks/bench_adaptive.py --keep --cores 2
    python benchmarks/bench_adaptive.py --replay /tmp/threeregime-adaptive-XXXX   # a kept folder
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

from threeregime.analysis.adaptive import (
    Grid,
    coarse_cells,
    compare_maps,
    infer_labels,
    measured_labels,
    plan_round,
)
from threeregime.config.load import load_config
from threeregime.config.settings import RegimeConfig, fmt_value
from threeregime.config.specs import regime_config_from_spec
from threeregime.io.files import read_json
from threeregime.stages.plan import pair_observation

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
REPLAYED = [(step, budget) for step in (2, 3) for budget in (0.3, 0.4, 0.5, 0.6, 0.8)]  # (step, budget)


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


def measured_grid(folder: Path) -> tuple[Grid, RegimeConfig, pd.DataFrame]:
    """A kept folder's grid, regime settings and every measured pair (read once), each pair
    keyed by its cell."""
    config = load_config(folder / "config.yaml")
    spec = config.adaptive_spec()
    grid = Grid(tuple(spec["temperatures"]), tuple(spec["densities"]), spec["reference"])
    cfg = regime_config_from_spec(spec["regimes"])
    files = sorted((folder / "results" / config.run_name / "metrics").rglob("*.json"))
    observations = pd.DataFrame([pair_observation(read_json(f), cfg.cka_metric) for f in files])
    observations["cell"] = [
        (fmt_value(t), fmt_value(d)) for t, d in zip(observations["temperature"], observations["density"])
    ]
    return grid, cfg, observations


def replay(
    grid: Grid, cfg: RegimeConfig, observations: pd.DataFrame, adaptive: dict
) -> tuple[list, pd.DataFrame]:
    """What an adaptive run with the settings ``adaptive`` would measure, round by round with the
    workflow's own planner, and the regimes it would end with: (cells measured, regimes table
    with inferred labels)."""

    def of(cells):
        return observations[observations["cell"].isin(set(cells))].drop(columns="cell").reset_index(drop=True)

    cells = coarse_cells(grid, adaptive["step"])
    for round_number in range(1, adaptive["rounds"] + 1):
        plan = plan_round(
            round_number, cells, of(cells), grid, cfg, adaptive["budget"], adaptive["min_confidence"]
        )
        cells = [tuple(c) for c in plan["cells"]]
    labels, p_label, _ = measured_labels(of(cells), cfg)
    regimes = infer_labels(labels, p_label, grid)
    regimes["temperature"] = regimes["temperature"].astype(float)
    regimes["density"] = regimes["density"].astype(float)
    return cells, regimes


def replay_table(folder: Path, config: dict) -> str:
    """Agreement with the full grid for each replayed (step, budget); checks the run's own."""
    full = pd.read_csv(folder / "results" / config["run_name"] / "regimes.csv")
    own = (config["adaptive"]["step"], config["adaptive"]["budget"])
    plans = sorted((folder / "results" / config["run_name"] / "adaptive").glob("round*.json"))
    grid, cfg, observations = measured_grid(folder)
    rows = []
    for step, budget in sorted({*REPLAYED, own}):
        settings = config["adaptive"] | {"step": step, "budget": budget}
        cells, regimes = replay(grid, cfg, observations, settings)
        if (step, budget) == own and plans:
            ran = [tuple(c) for c in read_json(plans[-1])["cells"]]
            if sorted(ran) != sorted(cells):
                sys.exit(f"replay of the run's own settings planned {len(cells)} cells, the run {len(ran)}")
        _, summary = compare_maps(full, regimes)
        rows.append([
            step, budget, f"{len(cells)} of {summary['cells']} ({len(cells) / summary['cells']:.0%})",
            f"{summary['agreement']:.1%}", f"{summary['agreement_measured']:.1%}",
            "-" if summary["agreement_inferred"] is None else f"{summary['agreement_inferred']:.1%}",
            f"{summary['disagreements']} ({summary['disagreements_uncertain_in_full']})",
            "the run's own (checked)" if (step, budget) == own and plans else "",
        ])  # fmt: skip
    headers = ["step", "budget", "cells measured", "agree all", "measured", "inferred"]
    return table(headers + ["disagreements (uncertain in full)", ""], rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="3 x 3 tiny grid (checks the script)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--replay", type=Path, help="only the replay table, of a folder this script kept")
    args = p.parse_args()
    config = SMALL if args.small else FULL
    replay_header = "\nReplay on the full grid's metrics (same rounds and min_confidence):\n"
    if args.replay:
        print(replay_header)
        print(replay_table(args.replay, config))
        return
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
    print(replay_header)
    print(replay_table(folder, config))
    if args.keep:
        print(f"\nresults kept in {folder}")
    else:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
