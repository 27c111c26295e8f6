"""Regenerate docs/mnist.md's figures and print its tables from the four real-MNIST lottery runs.

    snakemake --cores 2 --configfile presets/overlays/mnist-lottery.yaml
    for control in oneshot reinit random; do
        snakemake --cores 1 --configfile presets/overlays/mnist-lottery.yaml \
            presets/overlays/mnist-lottery-$control.yaml
    done
    python docs/make_mnist_findings.py      # or: ... path/to/results

Per density it reads each run's regimes.csv (the workflow's test error: the mean of the last
five epochs, the pair's barrier, the `stable` and `matching` verdicts) and, from the retrained
models' own histories, Frankle & Carbin's early-stopping point: the iteration of the minimum
test loss (evaluated once per epoch, 66 iterations here, on the test set: there is no validation
split) and the test error there. "Weights remaining" counts every weight (not the biases), the
unpruned output layer included.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DPI = 80  # small enough to commit, large enough to read
TICKS = [50, 20, 10, 5, 2]  # percent of weights remaining
RUNS = {
    "IMP ticket": "mnist-lottery",
    "one-shot ticket": "mnist-lottery-oneshot",
    "reinit (one-shot mask)": "mnist-lottery-reinit",
    "random mask": "mnist-lottery-random",
}
CELL = "rewind_step-0/density-{density}/seed1"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def early_stop(history: list[dict]) -> tuple[int, float]:
    """(iteration, test error) at the epoch of minimum test loss (the first, on a tie)."""
    best = min(history, key=lambda record: record["test_loss"])
    return best["iteration"], best["test_error"]


def run_rows(results: Path, run: str) -> list[dict]:
    """One dict per measured density: the regimes.csv cell and the two retrainings' early stops."""
    import pandas as pd

    from threeregime.config.settings import fmt_value
    from threeregime.io.files import load_checkpoint

    rows = []
    for cell in pd.read_csv(results / run / "regimes.csv").itertuples():
        folder = CELL.format(density=fmt_value(cell.density))
        pruned = load_checkpoint(results / run / "pruned" / folder / "model.pt", "pruned")
        weights = sum(w.numel() for name, w in pruned["model"].items() if name.endswith("weight"))
        classifier = sum(w.numel() for name, w in pruned["model"].items() if name == "fc3.weight")
        stops = []
        for seed in (1, 2):
            path = results / run / "retrain" / folder / f"retrain{seed}" / "model.pt"
            stops.append(early_stop(load_checkpoint(path, "retrain")["state"]["history"]))
        rows.append(
            {
                "density": cell.density,
                "remaining": (sum(pruned["kept"].values()) + classifier) / weights,
                "test_error": cell.test_error_mean,
                "barrier": cell.barrier_mean,
                "stable": bool(cell.stable),
                "matching": bool(cell.matching),
                "dense_test_error": cell.dense_test_error_mean,
                "stop_iteration": sum(s[0] for s in stops) / len(stops),
                "stop_error": sum(s[1] for s in stops) / len(stops),
            }
        )
    return sorted(rows, key=lambda row: -row["density"])


def figure(runs: dict[str, list[dict]], dense: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in runs.items():
        x = [100 * row["remaining"] for row in rows]
        left.plot(x, [100 * row["test_error"] for row in rows], marker="o", label=name)
        right.plot(x, [row["stop_iteration"] for row in rows], marker="o", label=name)
    left.axhline(100 * dense["test_error"], color="black", ls="--", lw=1, label="dense")
    right.axhline(dense["stop_iteration"], color="black", ls="--", lw=1, label="dense")
    for ax, label in ((left, "test error (%), mean of the last 5 epochs"), (right, "early-stop iteration")):
        ax.set_xscale("log")
        ax.set_xticks(TICKS, [f"{t:g}" for t in TICKS])
        ax.minorticks_off()
        ax.invert_xaxis()
        ax.set_xlabel("percent of weights remaining")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("LeNet-300-100 on 5,000 real MNIST digits: tickets against their controls", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def main() -> None:
    import pandas as pd

    from threeregime.config.load import load_config, merge_configs, read_config_file
    from threeregime.io.files import load_checkpoint
    from threeregime.views.plot import phase_diagram

    results = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results"
    tables = [results / run / "regimes.csv" for run in RUNS.values()]
    missing = [str(t) for t in tables if not t.is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: run the four overlays first (see this file's docstring)")
    runs = {name: run_rows(results, run) for name, run in RUNS.items()}
    history = load_checkpoint(results / "mnist-lottery" / "dense" / "shared" / "seed1" / "model.pt", "dense")
    history = history["state"]["history"]
    stop_iteration, stop_error = early_stop(history)
    dense_error = runs["IMP ticket"][0]["dense_test_error"]
    dense = {"test_error": dense_error, "stop_iteration": stop_iteration, "stop_error": stop_error}

    out = REPO / "docs" / "mnist_lottery.png"
    figure(runs, dense, out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")
    files = [REPO / "config.yaml", REPO / "presets" / "overlays" / "mnist-lottery.yaml"]
    cfg = load_config(merge_configs(*(read_config_file(f) for f in files)), check_paths=False).plot
    phase = REPO / "docs" / "mnist_phase_diagram.png"
    phase_diagram(pd.read_csv(tables[0]), replace(cfg, dpi=DPI), [str(phase)])
    print(f"wrote {phase} ({phase.stat().st_size / 1024:.0f} KiB)\n")

    print(
        f"dense: test error {dense_error:.4f} (mean of the last 5 epochs); early stop at iteration "
        f"{stop_iteration}, test error there {stop_error:.4f}\n"
    )
    header = ["% remaining", "hidden density"] + [f"{name}: test error / early stop" for name in RUNS]
    rows = []
    for index, ticket in enumerate(runs["IMP ticket"]):
        row = [f"{100 * ticket['remaining']:.1f}", f"{ticket['density']:g}"]
        for name in RUNS:
            cell = runs[name][index]
            row.append(f"{100 * cell['test_error']:.2f}% / {cell['stop_iteration']:.0f}")
        rows.append(row)
    print(_table(header, rows) + "\n")
    header = ["% remaining"] + [f"{name}: barrier, stable, matching" for name in RUNS]
    rows = []
    for index, ticket in enumerate(runs["IMP ticket"]):
        row = [f"{100 * ticket['remaining']:.1f}"]
        for name in RUNS:
            cell = runs[name][index]
            stable = "stable" if cell["stable"] else "unstable"
            matching = "matching" if cell["matching"] else "not matching"
            row.append(f"{cell['barrier']:.3f}, {stable}, {matching}")
        rows.append(row)
    print(_table(header, rows) + "\n")
    header = ["% remaining"] + [f"{name}: test error at early stop" for name in RUNS]
    rows = [
        [f"{100 * ticket['remaining']:.1f}"]
        + [f"{100 * runs[name][index]['stop_error']:.2f}%" for name in RUNS]
        for index, ticket in enumerate(runs["IMP ticket"])
    ]
    print(_table(header, rows))


if __name__ == "__main__":
    main()
