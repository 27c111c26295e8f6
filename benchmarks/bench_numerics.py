"""Do the fast numerics move the regime map? One MNIST-1D grid through the real workflow in
fp32 (the presets' numerics) and in each faster setting, compared cell by cell against the
seed-to-seed noise.

Each setting is a ``snakemake`` run of this checkout's workflow in its own scratch folder, on the
same grid config plus one overlay (``presets/overlays/gpu-fast.yaml`` for ``fast``), so every
number comes from the project's own jobs. The settings run concurrently, splitting the cores.

For every (temperature, density) cell and metric (mc, barrier and CKA per retrain pair; test and
train error and the Hessian per retrained model), with n observations per cell (dense seeds x
pairs or x retrain seeds) in each run:

* ``effect`` = |mean difference| / pooled seed-to-seed sd (0.5: half a seed's spread);
* ``z`` = difference / (pooled sd x sqrt(1/n_ref + 1/n)), the difference in standard errors.

A metric is flagged when a cell has |z| > ``--z-cell`` (default 4) or its cells are shifted one
way (mean z x sqrt(cells) beyond ``--z-bias``, default 3). A cell whose regime differs counts as
within noise when, in either run, its mean mc or CKA lies within 2 standard errors of the cut that
decides it (eps, the CKA cut of that run's summary.json). The verdict is AGREE only when no metric
is flagged and every regime change is within noise. Runs with the same seeds are paired, so the
noise yardstick is conservative for spotting a difference only in that pairs share seeds.

``--control`` adds a setting that changes the science on purpose (fp32, dense and retraining lr
x 0.2): the comparison must report it as DIFFER, which checks that the script can say so.

    python benchmarks/bench_numerics.py --device cpu --tiny --no-compile --control   # ~4 min here
    python benchmarks/bench_numerics.py --device cuda --cores 16      # the full grid, one GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import REPO, machine, table

FAST_OVERLAY = REPO / "presets" / "overlays" / "gpu-fast.yaml"
CELL = ["temperature", "density"]
PAIR_METRICS = ["mc", "barrier", "cka_softmax", "cka_logits"]  # metrics.csv: one row per pair
MODEL_METRICS = ["test_error", "train_error", "hessian_top_eigenvalue", "hessian_trace"]  # models.csv

# MNIST-1D grid with 2 dense seeds x 3 retrain seeds (6 models, 6 pairs per cell): the demo's data
# and model, a wider density axis so that connected and poorly connected cells both appear.
FULL_GRID = {
    "data": {"name": "mnist1d", "num_samples": 5000, "generation_seed": 42},
    "model": {"name": "cnn1d", "width": 0.5},
    "train": {"epochs": 20, "batch_size": 128, "lr": 0.1, "lr_milestones": [0.5, 0.75]},
    "knob": {"name": "epochs", "values": [2, 5, 10, 20]},
    "prune": {"method": "uniform", "densities": [0.02, 0.05, 0.1, 0.2, 0.4]},
    "retrain": {"mode": "rewind"},
    "seeds": {"dense": [1, 2], "retrain": [1, 2, 3]},
    "metrics": {"cka_samples": 4000, "hessian_probes": 20},
    "regimes": {"eps_mode": "noise", "eps": 0.02, "cka_cut_mode": "split", "cka_cut": 0.9},
}
# The same shape at CPU-test size: 2 x 2 cells, 2 dense x 3 retrain seeds.
TINY_GRID = FULL_GRID | {
    "data": {"name": "mnist1d", "num_samples": 600, "generation_seed": 3},
    "model": {"name": "cnn1d", "width": 0.25},
    "train": {"epochs": 3, "batch_size": 64, "lr": 0.05, "lr_milestones": [0.5, 0.75]},
    "knob": {"name": "epochs", "values": [1, 3]},
    "prune": {"method": "uniform", "densities": [0.1, 0.4]},
    "metrics": {"cka_samples": 400, "hessian_samples": 64, "hessian_probes": 4, "hessian_max_iter": 20},
}
REFERENCE = {"runtime": {"amp": "none", "channels_last": False, "compile": False, "tf32": False,
                         "retrain_pack": "cell"}}  # fmt: skip  # the presets as shipped


def settings(args, grid: dict) -> dict[str, dict]:
    """name: overlay; the first is the reference."""
    fast = yaml.safe_load(FAST_OVERLAY.read_text())
    if args.no_compile:
        fast["runtime"]["compile"] = False
    chosen = {"fp32": REFERENCE, "fast": fast}
    if args.tf32:
        chosen["tf32"] = {"runtime": REFERENCE["runtime"] | {"tf32": True, "compile": not args.no_compile,
                                                             "retrain_pack": "temperature"}}  # fmt: skip
    if args.control:
        chosen["control-lr"] = REFERENCE | {"train": grid["train"] | {"lr": grid["train"]["lr"] * 0.2}}
    return chosen


def run_workflow(folder: Path, grid: dict, name: str, overlay: dict, args) -> subprocess.Popen:
    """Start ``snakemake`` on the grid + overlay in ``folder`` (run name ``numerics-<name>``)."""
    folder.mkdir(parents=True, exist_ok=True)
    runtime = {"device": args.device, "threads": 1} | overlay.get("runtime", {})
    config = grid | overlay | {"run_name": f"numerics-{name}", "runtime": runtime}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
    command += ["--directory", str(folder), "--configfile", str(folder / "config.yaml")]
    command += ["--cores", str(args.cores_each), "--resources", f"gpu={args.cores_each}"]
    log = open(folder / "snakemake.log", "w")
    # its own process group, so that a stop (a time limit) ends its jobs too: see stop_on_term
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)


def stop_on_term(running: dict[str, subprocess.Popen]) -> None:
    """On SIGTERM (``timeout``), end every snakemake and its jobs before exiting, so that nothing
    keeps running into the next benchmark's timings."""

    def stop(signum, frame):
        for process in running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in running.values():
            process.wait()
        sys.exit(f"stopped by signal {signum}; snakemake runs ended")

    signal.signal(signal.SIGTERM, stop)


def progress(folder: Path) -> str:
    """The last "k of n steps (p%) done" line of a run's snakemake log."""
    lines = re.findall(r"\d+ of \d+ steps \(\d+%\) done", (folder / "snakemake.log").read_text())
    return lines[-1] if lines else "starting"


def results(folder: Path, name: str):
    import pandas as pd

    base = folder / "results" / f"numerics-{name}"
    summary = json.loads((base / "summary.json").read_text())
    return {
        "pairs": pd.read_csv(base / "metrics.csv"),
        "models": pd.read_csv(base / "models.csv"),
        "regimes": pd.read_csv(base / "regimes.csv"),
        "eps": summary["thresholds"]["eps"],
        "cka_cut": summary["thresholds"]["cka_cut"],
        "cka_metric": summary["cka_metric"],
        "counts": summary["regime_counts"],
    }


def save_tables(root: Path, names: list[str], out: Path) -> None:
    """Each setting's metrics/models/cells/regimes CSV, summary.json and snakemake log, as logs."""
    for name in names:
        target = out / name
        target.mkdir(parents=True, exist_ok=True)
        base = root / name / "results" / f"numerics-{name}"
        for file in ("metrics.csv", "models.csv", "cells.csv", "regimes.csv", "summary.json"):
            shutil.copy(base / file, target / file)
        shutil.copy(root / name / "snakemake.log", target / "snakemake.log")


def cell_stats(observations, metric: str):
    """mean, sd (ddof 1) and n of ``metric`` per cell."""
    grouped = observations.groupby(CELL)[metric]
    return grouped.agg(["mean", "std", "count"])


def compare_metric(ref, other, metric: str) -> list[dict]:
    """One row per cell: both means, the difference in pooled seed sds and in standard errors."""
    a, b = cell_stats(ref, metric), cell_stats(other, metric)
    rows = []
    for cell in a.index.intersection(b.index):
        (m1, s1, n1), (m2, s2, n2) = a.loc[cell], b.loc[cell]
        pooled = math.sqrt(((n1 - 1) * s1**2 + (n2 - 1) * s2**2) / max(n1 + n2 - 2, 1))
        delta = m2 - m1
        if pooled > 0:
            effect, z = abs(delta) / pooled, delta / (pooled * math.sqrt(1 / n1 + 1 / n2))
        else:  # no spread at all: any difference is infinitely many sds
            effect = z = 0.0 if delta == 0 else math.copysign(math.inf, delta)
        row = dict(zip(CELL, cell)) | {"metric": metric, "reference": m1, "other": m2, "delta": delta}
        rows.append(
            row | {"seed_sd": pooled, "n_reference": int(n1), "n_other": int(n2), "effect": effect, "z": z}
        )
    return rows


def regime_margin(run: dict, cell: tuple, connected_both: bool) -> float:
    """How many standard errors the cell's deciding mean lies from its cut in this run: the CKA
    mean from the CKA cut when both runs call the cell connected (II-A vs II-B), else the mc mean
    from -eps (Regime I vs II)."""
    row = run["regimes"].set_index(CELL).loc[cell]
    n = max(float(row["n"]), 1.0)
    if connected_both:
        metric = run["cka_metric"]
        distance, sd = row[f"{metric}_mean"] - run["cka_cut"], row[f"{metric}_std"]
    else:
        distance, sd = row["mc_mean"] + run["eps"], row["mc_std"]
    return abs(distance) / max(sd / math.sqrt(n), 1e-12)


def compare(ref: dict, other: dict, z_cell: float, z_bias: float) -> dict:
    """Per-cell rows, a per-metric summary, the regime changes and the verdict."""
    rows = []
    for metric in PAIR_METRICS:
        rows += compare_metric(ref["pairs"], other["pairs"], metric)
    for metric in MODEL_METRICS:
        rows += compare_metric(ref["models"], other["models"], metric)
    summary, reasons = [], []
    for metric in PAIR_METRICS + MODEL_METRICS:
        zs = [r["z"] for r in rows if r["metric"] == metric]
        effects = [r["effect"] for r in rows if r["metric"] == metric]
        if not zs:
            continue
        bias = sum(zs) / len(zs) * math.sqrt(len(zs))
        worst = max(abs(z) for z in zs)
        flagged = worst > z_cell or abs(bias) > z_bias
        summary.append([metric, len(zs), sorted(effects)[len(effects) // 2], max(effects), worst,
                        bias, sum(abs(z) > 2 for z in zs), "FLAGGED" if flagged else "ok"])  # fmt: skip
        if flagged:
            reasons.append(f"{metric}: max |z| {worst:.3g}, one-way shift {bias:.3g}")
    a = ref["regimes"].set_index(CELL)["regime"]
    b = other["regimes"].set_index(CELL)["regime"]
    changes = []
    for cell in a.index.intersection(b.index):
        if a[cell] != b[cell]:
            connected = a[cell] != "I" and b[cell] != "I"
            margin = min(regime_margin(ref, cell, connected), regime_margin(other, cell, connected))
            changes.append([*cell, a[cell], b[cell], margin, "within noise" if margin < 2 else "REAL"])
    reasons += [f"regime of {c[0]}, {c[1]}: {c[2]} -> {c[3]} ({c[4]:.3g} se from its cut)"
                for c in changes if c[5] == "REAL"]  # fmt: skip
    return {"rows": rows, "summary": summary, "changes": changes, "agree": not reasons, "reasons": reasons}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--tiny", action="store_true", help="the 2 x 2 test grid (CPU testing)")
    p.add_argument("--cores", type=int, default=2, help="cores for all settings together")
    p.add_argument("--no-compile", action="store_true", help="fast setting without compile")
    p.add_argument("--tf32", action="store_true", help="also compare fp32 + TF32 + compile, packed")
    p.add_argument("--control", action="store_true", help="also a setting with lr x 0.2 (must DIFFER)")
    p.add_argument("--z-cell", type=float, default=4.0)
    p.add_argument("--z-bias", type=float, default=3.0)
    p.add_argument("--csv", default="", help="write the per-cell comparison here")
    p.add_argument("--keep", default="", help="run in this folder and keep it (default: a scratch one)")
    p.add_argument("--save-tables", default="", help="copy each setting's CSV tables and summary here")
    args = p.parse_args()
    grid = TINY_GRID if args.tiny else FULL_GRID
    chosen = settings(args, grid)
    args.cores_each = max(1, args.cores // len(chosen))
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.keep or scratch)
        started = time.perf_counter()
        running = {
            name: run_workflow(root / name, grid, name, overlay, args) for name, overlay in chosen.items()
        }
        stop_on_term(running)
        walls = {}
        while len(walls) < len(running):
            for name, process in running.items():
                if name not in walls and process.poll() is not None:
                    walls[name] = time.perf_counter() - started
                    print(
                        f"  {name}: snakemake exit {process.returncode} after {walls[name]:.0f} s", flush=True
                    )
            time.sleep(1)
            if int(time.perf_counter() - started) % 30 == 0:  # progress: each run's "k of n steps"
                print("  " + "; ".join(f"{n}: {progress(root / n)}" for n in running), flush=True)
        failed = [name for name, process in running.items() if process.returncode != 0]
        if failed:
            tails = {name: (root / name / "snakemake.log").read_text()[-2000:] for name in failed}
            sys.exit("snakemake failed for " + ", ".join(f"{n}:\n{t}" for n, t in tails.items()))
        runs = {name: results(root / name, name) for name in chosen}
        if args.save_tables:
            save_tables(root, list(chosen), Path(args.save_tables))
    reference, *others = chosen
    print("\n## Numerics vs fp32 on one MNIST-1D grid, cell by cell\n")
    print(f"Machine: {machine(args.device)}; device {args.device}\n")
    walls_line = ", ".join(f"{n} {w:.0f}" for n, w in walls.items())
    print(
        f"grid: {len(grid['knob']['values'])} {grid['knob']['name']} x {len(grid['prune']['densities'])} "
        f"densities, {len(grid['seeds']['dense'])} dense x {len(grid['seeds']['retrain'])} retrain seeds; "
        f"snakemake wall s per setting (all at once, {args.cores_each} cores each): {walls_line}"
    )
    print("\nregime counts: " + "; ".join(f"{n} {r['counts']}" for n, r in runs.items()))
    present = [r for r, count in runs[reference]["counts"].items() if count]
    print(f"regimes present in {reference}: {', '.join(present)}" + ("" if len(present) == 3 else
          " (NOT all three: widen the grid for a full test)"))  # fmt: skip
    all_rows, verdicts = [], {}
    for name in others:
        result = compare(runs[reference], runs[name], args.z_cell, args.z_bias)
        headers = ["metric", "cells", "median effect (|d|/seed sd)", "max effect", "max |z|",
                   "one-way shift (mean z x sqrt(cells))", "cells |z| > 2", "flag"]  # fmt: skip
        print(f"\n### {name} vs {reference}\n\n" + table(headers, result["summary"]))
        if result["changes"]:
            print(
                "\n"
                + table(
                    ["temperature", "density", reference, name, "se from cut", "change"], result["changes"]
                )
            )
        else:
            print("\nregimes: identical in every cell")
        verdicts[name] = "AGREE" if result["agree"] else "DIFFER: " + "; ".join(result["reasons"])
        all_rows += [{"setting": name} | row for row in result["rows"]]
    print()
    for name, verdict in verdicts.items():
        print(f"verdict {name} vs {reference}: {verdict}")
    if args.csv:
        import pandas as pd

        pd.DataFrame(all_rows).to_csv(args.csv, index=False)
        print(f"per-cell comparison: {args.csv}")


if __name__ == "__main__":
    main()
