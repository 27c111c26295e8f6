"""Are the regime labels' probabilities calibrated? The demo grid with many dense seeds, in more
than one numeric environment, split into disjoint seed sets.

Each run folder holds the demo config with ``seeds.dense`` extended (e.g. 1 ... 10) in one numeric
environment (e.g. ``runtime.threads`` 1 or 2: the rounding differences of another CPU, on one
machine). The script splits each run's dense seeds into disjoint sets of ``--set-size`` (the
demo's 2), classifies every set as a run of its own would (thresholds included), and checks each
label's probability ``p_label`` two ways:

* **against the truth it claims to predict**: the label of the same environment's other seeds
  together (a many-seed consensus that excludes the set's own seeds);
* **against other runs**: how often every other map (other seed sets, the same seeds in another
  environment, other seeds in another environment) gives the same label.

For labels in each probability band it prints the count, the mean claimed probability and the
share that agree; the calibration error is the count-weighted mean gap. Each uncertainty method
(``regimes.uncertainty``) is compared on the same maps.

    python benchmarks/bench_calibration.py --run --seeds 10 --threads 1 2   # runs, then the tables
    python benchmarks/bench_calibration.py FOLDER [FOLDER ...]             # tables of kept runs

A FOLDER is a run folder: its config.yaml and results/<run_name>/metrics/ (a run that is still
going contributes the cells it has finished).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from common import REPO, machine, read_observations, run_snakemake, table

from threeregime.analysis.adaptive import measured_labels
from threeregime.config.settings import RegimeConfig

BANDS = ((0.0, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.0001))
METHODS = ("pooled", "bootstrap")


@dataclass
class Map:
    """One seed set's classification in one environment: label and p_label per cell."""

    environment: str
    seeds: tuple[int, ...]
    labels: dict
    p_label: dict


def seed_sets(seeds: list[int], size: int) -> list[tuple[int, ...]]:
    """Disjoint consecutive sets of ``size`` seeds (a remainder is left out)."""
    seeds = sorted(seeds)
    return [tuple(seeds[i : i + size]) for i in range(0, len(seeds) - size + 1, size)]


def complete(observations: pd.DataFrame, seeds) -> pd.DataFrame:
    """The pairs of ``seeds`` in the cells every one of those seeds has finished."""
    rows = observations[observations["dense_seed"].isin(seeds)]
    per_cell = rows.groupby("cell")["dense_seed"].nunique()
    done = per_cell.index[per_cell == len(seeds)]
    return rows[rows["cell"].isin(done)].drop(columns="cell").reset_index(drop=True)


def classify_maps(runs: dict, size: int, cfg: RegimeConfig) -> tuple[list[Map], dict]:
    """Every seed set's map in every environment, and per environment and set the consensus of
    the environment's other seeds ({(environment, seeds): labels})."""
    maps, truth = [], {}
    for environment, observations in runs.items():
        seeds = sorted(int(s) for s in observations["dense_seed"].unique())
        for chosen in seed_sets(seeds, size):
            labels, p_label, _, _ = measured_labels(complete(observations, chosen), cfg)
            maps.append(Map(environment, chosen, labels, p_label))
            others = [s for s in seeds if s not in chosen]
            if len(others) >= size:
                point = replace(cfg, uncertainty="none")
                consensus, _, _, _ = measured_labels(complete(observations, others), point)
                truth[(environment, chosen)] = consensus
    return maps, truth


def pairs_against_runs(maps: list[Map]) -> pd.DataFrame:
    """One row per (map, cell, other map): the claimed p_label, whether the other map agrees, and
    how the two differ (seeds, environment or both)."""
    rows = []
    for a, b in itertools.permutations(maps, 2):
        kind = (
            "other seeds, same environment"
            if a.environment == b.environment
            else ("same seeds, other environment" if a.seeds == b.seeds else "other seeds, other environment")
        )
        for cell in a.labels.keys() & b.labels.keys():
            rows.append((a.p_label[cell], a.labels[cell] == b.labels[cell], kind))
    return pd.DataFrame(rows, columns=["p", "agree", "kind"])


def pairs_against_truth(maps: list[Map], truth: dict) -> pd.DataFrame:
    rows = []
    for m in maps:
        consensus = truth.get((m.environment, m.seeds), {})
        for cell in m.labels.keys() & consensus.keys():
            rows.append((m.p_label[cell], m.labels[cell] == consensus[cell], "consensus of the other seeds"))
    return pd.DataFrame(rows, columns=["p", "agree", "kind"])


def reliability(pairs: pd.DataFrame) -> tuple[list[list], float]:
    """Rows per probability band (count, mean p, agreement, gap) and the calibration error."""
    rows, error = [], 0.0
    measured = pairs.dropna(subset=["p"])
    for low, high in BANDS:
        band = measured[(measured["p"] >= low) & (measured["p"] < high)]
        if band.empty:
            continue
        gap = band["agree"].mean() - band["p"].mean()
        error += len(band) * abs(gap)
        label = f"[{low:.1f}, {min(high, 1):.1f}{']' if high > 1 else ')'}"
        claimed, agree = band["p"].mean(), band["agree"].mean()
        rows.append([label, len(band), f"{claimed:.3f}", f"{agree:.3f}", f"{gap:+.3f}"])
    return rows, error / max(len(measured), 1)


def confident_agreement(pairs: pd.DataFrame, threshold: float = 0.9) -> list[list]:
    """Agreement of labels claimed at p >= threshold, per kind of comparison."""
    confident = pairs[pairs["p"] >= threshold]
    rows = [
        [kind, len(rows), f"{rows['agree'].mean():.1%}"]
        for kind, rows in sorted(confident.groupby("kind"), key=lambda kv: kv[0])
    ]
    if len(rows) > 1:
        rows.append(["**all of them**", len(confident), f"{confident['agree'].mean():.1%}"])
    return rows


def run_environments(seeds: int, threads: list[int], cores: int) -> list[Path]:
    """The demo config with dense seeds 1..seeds, once per thread count, each in a scratch folder."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    folders = []
    for count in threads:
        config = copy.deepcopy(base)
        config["run_name"] = f"calibration-threads{count}"
        config["seeds"]["dense"] = list(range(1, seeds + 1))
        config.setdefault("runtime", {})["threads"] = count
        folder = Path(tempfile.mkdtemp(prefix=f"threeregime-calibration-t{count}-"))
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        seconds, done, _ = run_snakemake(folder, "--cores", str(cores), "-k")
        if done.returncode != 0:
            tail = (done.stdout + done.stderr)[-4000:]
            sys.exit(f"{folder}: snakemake failed after {seconds:.0f} s:\n{tail}")
        print(f"{folder}: {seconds:.0f} s", file=sys.stderr)
        folders.append(folder)
    return folders


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="*", type=Path, help="run folders (config.yaml + results)")
    p.add_argument("--run", action="store_true", help="run the demo in each environment first")
    p.add_argument("--seeds", type=int, default=10, help="dense seeds per environment (--run)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="environments (--run)")
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--set-size", type=int, default=2, help="dense seeds per map (the demo: 2)")
    args = p.parse_args()
    folders = args.folders + (run_environments(args.seeds, args.threads, args.cores) if args.run else [])
    if not folders:
        p.error("give run folders, or --run")
    runs, cfg = {}, None
    for folder in folders:
        config, regimes, observations = read_observations(folder)
        cfg = cfg or regimes
        environment = f"{config.run_name} (threads {config.runtime.threads})"
        runs[environment] = observations
    cells = {e: observations["cell"].nunique() for e, observations in runs.items()}
    seeds = {e: sorted(int(s) for s in o["dense_seed"].unique()) for e, o in runs.items()}
    print("\n## Calibration of the regime labels' probabilities\n")
    print(f"Machine: {machine()}")
    for environment in runs:
        print(f"- {environment}: {cells[environment]} cells, dense seeds {seeds[environment]}")
    print(f"- maps of {args.set_size} dense seeds each (disjoint sets); regimes settings of {folders[0]}\n")
    for method in METHODS:
        method_cfg = replace(cfg, uncertainty=method)
        maps, truth = classify_maps(runs, args.set_size, method_cfg)
        print(f"### regimes.uncertainty: {method} ({len(maps)} maps)\n")
        for title, pairs in (
            ("against the consensus of the same environment's other seeds", pairs_against_truth(maps, truth)),
            ("against every other map", pairs_against_runs(maps)),
        ):
            rows, error = reliability(pairs)
            print(f"Reliability, {title}: calibration error {error:.3f}\n")
            print(table(["p_label band", "labels", "mean p_label", "agree", "gap"], rows))
            print()
            confident = confident_agreement(pairs)
            if confident:
                print(table(["labels claimed at p >= 0.9, compared with", "comparisons", "agree"], confident))
                print()
        claimed = np.array([p for m in maps for p in m.p_label.values()], float)
        print(f"Labels with p >= 0.9: {np.mean(claimed >= 0.9):.1%} of {len(claimed)}\n")


if __name__ == "__main__":
    main()
