"""Adaptive refinement against a truth grid on MNIST-1D: jobs needed and labels right.

The truth is the 8 x 8 grid measured with 4 dense seeds (x 2 retrain seeds) and classified with
all of them. The contenders use what a normal run would have:

* **full grid, 2 dense seeds** (seeds 1, 2 and, separately, 3, 4): every cell, 100% of the jobs;
* **adaptive** (base seeds 1, 2): the coarse sub-grid, then rounds that add cells and dense seeds
  3 and 4 to uncertain labels, within ``adaptive.budget`` of the 2-seed grid's units (one dense
  seed of one cell: its prune, retrain and metrics jobs).

A cell's files do not depend on the round that asked for them, so every contender is computed
from the truth run's metrics files, round by round with the workflow's own planner
(threeregime.analysis.adaptive.plan_round): no training beyond the truth grid. ``--check`` then
runs the workflow's real adaptive rounds in the truth folder (every file they need exists, so only
the planning jobs run) and checks that they measure exactly what the replay measured.

Reported per contender: the share of the 2-seed grid's units it measured, the dense-training jobs
it needed, its agreement with the truth on all cells, on the cells the truth calls confident
(p_label >= 0.9), on measured and on inferred cells.

    python benchmarks/bench_adaptive.py --run --cores 2       # the truth grid (hours), then the tables
    python benchmarks/bench_adaptive.py FOLDER --check         # tables of a kept truth run, and the check
    python benchmarks/bench_adaptive.py --run --small --check  # a 3 x 4 tiny grid: checks the script
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from common import machine, read_observations, run_snakemake, table

from threeregime.analysis.adaptive import allowed_units, infer_labels, measured_labels, plan_round
from threeregime.config.experiment import Grid, coarse_cells
from threeregime.config.settings import AdaptiveConfig, RegimeConfig
from threeregime.io.files import read_json

TRUTH = {
    "run_name": "adaptive-truth",
    "data": {"name": "mnist1d", "num_samples": 5000, "generation_seed": 42},
    "model": {"name": "cnn1d", "width": 0.5},
    "train": {"epochs": 16, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
    "knob": {"name": "epochs", "values": [1, 2, 3, 4, 6, 8, 12, 16]},
    "prune": {"method": "uniform", "densities": [0.05, 0.07, 0.1, 0.14, 0.2, 0.3, 0.4, 0.6]},
    "retrain": {"mode": "rewind"},
    "seeds": {"dense": [1, 2, 3, 4], "retrain": [1, 2]},
    "metrics": {
        "cka_samples": 2000,
        "hessian_samples": 64,
        "hessian_max_iter": 10,
        "hessian_probes": 4,
        "hessian_probe_batch": 2,
        "hessian_trace_deflation": 4,
    },
    "regimes": {"eps_mode": "noise", "eps": 0.02, "cka_cut_mode": "split"},
    "runtime": {"device": "cpu", "threads": 1, "retrain_pack": "cell"},
}
SMALL = copy.deepcopy(TRUTH) | {
    "run_name": "adaptive-truth-small",
    "data": {"name": "mnist1d", "num_samples": 600, "generation_seed": 3},
    "model": {"name": "cnn1d", "width": 0.25},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05},
    "knob": {"name": "epochs", "values": [1, 2, 3]},
    "prune": {"method": "uniform", "densities": [0.2, 0.4, 0.6, 0.8]},
    "metrics": TRUTH["metrics"] | {"cka_samples": 200, "lmc_points": 5},
}
BASE_SEEDS = [1, 2]
OTHER_SEEDS = [3, 4]
CONFIDENT = 0.9
# the contenders' adaptive settings: (step, budget); rounds, min_confidence and max_seeds fixed
ROUNDS, MAX_SEEDS = 3, 4
SETTINGS = [(2, 0.4), (2, 0.5), (3, 0.3), (3, 0.4), (3, 0.5)]
# the settings --check runs through the workflow: the first of these the config checks accept
CHECKED = ((2, 0.5), (3, 0.5))
JOB = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$", re.MULTILINE)


def select(observations: pd.DataFrame, cells, seeds: list[int], extra: dict | None = None) -> pd.DataFrame:
    """The pairs of ``cells`` with dense ``seeds``, plus a cell's ``extra`` seeds ("t/d" -> seeds)."""
    extra = extra or {}
    wanted = {(c, s) for c in map(tuple, cells) for s in seeds + extra.get(f"{c[0]}/{c[1]}", [])}
    keep = [(c, int(s)) in wanted for c, s in zip(observations["cell"], observations["dense_seed"])]
    return observations[keep].drop(columns="cell").reset_index(drop=True)


def labelled(observations: pd.DataFrame, cfg: RegimeConfig, grid: Grid) -> pd.DataFrame:
    """Every grid cell's label (measured or inferred) and p_label, indexed by cell."""
    labels, p_label, _, _ = measured_labels(observations, cfg)
    out = infer_labels(labels, p_label, grid)
    out["p_label"] = [p_label.get((t, d)) for t, d in zip(out["temperature"], out["density"])]
    return out.set_index(["temperature", "density"])


def replay(grid: Grid, cfg: RegimeConfig, observations: pd.DataFrame, adaptive: AdaptiveConfig) -> tuple:
    """An adaptive run's rounds on the truth run's files: (final plan, labels of every cell)."""
    plan = {"cells": coarse_cells(grid, adaptive.step), "seeds": {}}
    for round_number in range(1, adaptive.rounds + 1):
        measured = select(observations, plan["cells"], BASE_SEEDS, plan["seeds"])
        plan = plan_round(round_number, plan, measured, grid, cfg, adaptive, BASE_SEEDS)
    final = select(observations, plan["cells"], BASE_SEEDS, plan["seeds"])
    return plan, labelled(final, cfg, grid)


def scores(labels: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Agreement with the truth on all cells, on the truth's confident cells, measured, inferred."""
    joined = labels.join(truth[["regime", "p_label"]].add_suffix("_truth"))
    joined["agree"] = joined["regime"] == joined["regime_truth"]
    confident = joined["p_label_truth"] >= CONFIDENT

    def share(rows):
        return f"{rows['agree'].mean():.1%} ({int(rows['agree'].sum())}/{len(rows)})" if len(rows) else "-"

    return {
        "all": share(joined),
        "confident": share(joined[confident]),
        "measured": share(joined[joined["label_source"] == "measured"]),
        "inferred": share(joined[joined["label_source"] == "inferred"]),
        "agree_all": joined["agree"].mean(),
        "agree_confident": joined.loc[confident, "agree"].mean(),
    }


def dense_jobs(cells, extra: dict) -> int:
    """Dense trainings a contender needs: each temperature with a measured cell, per seed."""
    temperatures = {t for t, _ in map(tuple, cells)}
    extra_runs = {(key.split("/")[0], s) for key, seeds in extra.items() for s in seeds}
    return len(temperatures) * len(BASE_SEEDS) + len(extra_runs)


def check_workflow(folder: Path, config: dict, settings: tuple, plan: dict, cores: int) -> str:
    """Run the workflow's adaptive rounds in the truth folder with ``settings`` (step, budget) and
    the base seeds: no cell job may run (every file exists) and the last plan must be the
    replay's."""
    step, budget = settings
    adaptive = {"enabled": True, "step": step, "budget": budget, "rounds": ROUNDS,
                "min_confidence": CONFIDENT, "max_seeds": MAX_SEEDS}  # fmt: skip
    overlay = copy.deepcopy(config) | {"adaptive": adaptive}
    overlay["seeds"] = config["seeds"] | {"dense": BASE_SEEDS}
    (folder / "adaptive-check.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    # the truth run's tables exist and are newer than every metrics file, so Snakemake would see
    # nothing to do: --forcerun collect makes it plan the rounds collect reads
    args = ["--cores", str(cores), "--configfile", "adaptive-check.yaml", "--forcerun", "collect"]
    _, done, _ = run_snakemake(folder, *args)
    output = done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"the workflow's adaptive run failed:\n{output[-4000:]}")
    ran = [r for r in JOB.findall(output) if r in ("dense_train", "prune", "retrain", "metrics")]
    last = read_json(folder / "results" / config["run_name"] / "adaptive" / f"round{ROUNDS}.json")
    same_cells = sorted(map(tuple, last["cells"])) == sorted(map(tuple, plan["cells"]))
    same = same_cells and last["seeds"] == plan["seeds"]
    if ran or not same:
        sys.exit(f"workflow check failed: cell jobs run {ran}; last plan equals the replay's: {same}")
    return (
        f"Checked: the workflow's own adaptive rounds (step {step}, budget {budget}) in the truth "
        f"folder planned exactly the replay's {len(plan['cells'])} cells and extra seeds, running no "
        "cell job."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", nargs="?", type=Path, help="a truth run folder (config.yaml + results)")
    p.add_argument("--run", action="store_true", help="run the truth grid first (in a scratch folder)")
    p.add_argument("--small", action="store_true", help="a 3 x 4 tiny grid (checks the script)")
    p.add_argument("--check", action="store_true", help="run the workflow's own rounds for one setting")
    p.add_argument("--cores", type=int, default=2)
    args = p.parse_args()
    config = SMALL if args.small else TRUTH
    folder = args.folder
    if args.run:
        folder = Path(tempfile.mkdtemp(prefix="threeregime-adaptive-truth-"))
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        seconds, done, _ = run_snakemake(folder, "--cores", str(args.cores))
        if done.returncode != 0:
            sys.exit(f"the truth run failed after {seconds:.0f} s:\n{(done.stdout + done.stderr)[-4000:]}")
        print(f"truth run: {seconds:.0f} s in {folder}", file=sys.stderr)
    if folder is None:
        p.error("give a truth run folder, or --run")
    run_config, cfg, observations = read_observations(folder)
    spec = run_config.adaptive_spec()
    grid = Grid(tuple(spec["temperatures"]), tuple(spec["densities"]), spec["reference"])
    seeds = sorted(int(s) for s in observations["dense_seed"].unique())
    if seeds != BASE_SEEDS + OTHER_SEEDS:
        sys.exit(f"{folder}: the truth needs dense seeds {BASE_SEEDS + OTHER_SEEDS}, found {seeds}")
    missing = len(grid.cells()) * len(seeds) * len(run_config.retrain_pairs) - len(observations)
    if missing > 0:
        sys.exit(f"{folder}: {missing} cell x seed x pair metrics files are missing; let the run finish")

    truth = labelled(select(observations, grid.cells(), seeds), cfg, grid)
    confident = int((truth["p_label"] >= CONFIDENT).sum())
    full_units = len(grid.cells()) * len(BASE_SEEDS)
    size = f"{len(grid.temperatures)} x {len(grid.densities)}"
    print(f"\n## Adaptive refinement against a {size} truth grid (MNIST-1D, 4 dense x 2 retrain seeds)\n")
    print(f"Machine: {machine()}")
    print(f"regimes: uncertainty {cfg.uncertainty}, eps {cfg.eps_mode}, CKA cut {cfg.cka_cut_mode}")
    counts = truth["regime"].value_counts().to_dict()
    print(f"Truth: {confident} of {len(truth)} cells confident (p_label >= {CONFIDENT}); labels {counts}\n")

    rows, checked_plan, checked = [], None, None
    for name, chosen in (("full grid, seeds 1, 2", BASE_SEEDS), ("full grid, seeds 3, 4", OTHER_SEEDS)):
        labels = labelled(select(observations, grid.cells(), chosen), cfg, grid)
        s = scores(labels, truth)
        dense = len(grid.temperatures) * len(chosen)
        rows.append([name, f"{full_units} (100%)", dense, s["all"], s["confident"], s["measured"], "-"])
    for step, budget in SETTINGS:
        adaptive = AdaptiveConfig(enabled=True, step=step, rounds=ROUNDS, budget=budget,
                                  min_confidence=CONFIDENT, max_seeds=MAX_SEEDS)  # fmt: skip
        name = f"adaptive, step {step}, budget {budget}"
        allowed = allowed_units(grid, BASE_SEEDS, budget)
        coarse = len(coarse_cells(grid, step)) * len(BASE_SEEDS)
        if coarse >= allowed:  # the workflow refuses this config before any job (config checks)
            rows.append([name, f"refused: the coarse sub-grid takes {coarse} of {allowed}", *["-"] * 5])
            continue
        plan, labels = replay(grid, cfg, observations, adaptive)
        units = len(plan["cells"]) * len(BASE_SEEDS) + sum(len(v) for v in plan["seeds"].values())
        s = scores(labels, truth)
        rows.append([
            name, f"{units} ({units / full_units:.0%}; allowed {allowed})",
            dense_jobs(plan["cells"], plan["seeds"]), s["all"], s["confident"], s["measured"],
            s["inferred"],
        ])  # fmt: skip
        if checked is None and (step, budget) in CHECKED:
            checked, checked_plan = (step, budget), plan
            cells = len(plan["cells"])
            replicated = sum(len(v) for v in plan["seeds"].values())
            where = len(plan["seeds"])
            print(f"{name}: {cells} cells measured, {replicated} extra dense seeds in {where} cells\n")
    headers = ["contender", "units (of the 2-seed grid)", "dense trainings", "agree, all cells",
               "agree, truth-confident cells", "measured", "inferred"]  # fmt: skip
    print(table(headers, rows))
    if args.check:
        run_settings = yaml.safe_load((folder / "config.yaml").read_text())
        if checked is None:
            sys.exit(f"--check: the config checks refuse every setting of {CHECKED} on this grid")
        print("\n" + check_workflow(folder, run_settings, checked, checked_plan, args.cores))
    print(f"\nresults in {folder}")


if __name__ == "__main__":
    main()
