"""Regenerate docs/lottery.md's figure and print its tables from three finished MNIST-1D runs.

    snakemake --cores 2 --configfile presets/overlays/mnist1d-rewind.yaml
    snakemake --cores 2 --configfile presets/overlays/mnist1d-rewind.yaml \
        presets/overlays/mnist1d-rewind-random.yaml
    snakemake --cores 2 --configfile presets/overlays/mnist1d-rewind.yaml \
        presets/overlays/mnist1d-rewind-reinit.yaml
    python docs/make_lottery_findings.py      # or: ... path/to/results

It draws the ticket run's instability figure with the workflow's own plot function, at a lower
resolution so the committed file stays small, and prints two Markdown tables from the runs'
regimes.csv: the barrier against the rewind step, and the tickets against their controls.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DPI = 80  # small enough to commit, large enough to read
RUNS = {"ticket": "mnist1d-rewind", "random mask": "mnist1d-rewind-random", "reinit": "mnist1d-rewind-reinit"}


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    import pandas as pd

    from threeregime.config.settings import RegimeConfig
    from threeregime.views.plot import instability_diagram

    results = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results"
    tables = {name: results / run / "regimes.csv" for name, run in RUNS.items()}
    missing = [str(t) for t in tables.values() if not t.is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: run the three overlays first (see this file's docstring)")
    runs = {name: pd.read_csv(path) for name, path in tables.items()}
    ticket = runs["ticket"]
    out = REPO / "docs" / "instability_mnist1d.png"
    instability_diagram(ticket, RegimeConfig().stable_barrier, [str(out)], DPI)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)\n")

    steps = sorted(ticket["temperature"].unique())
    rows = []
    for density, column in ticket.groupby("density"):
        cells = column.set_index("temperature")
        rows.append([f"{density:g}"] + [f"{cells.loc[k, 'barrier_mean']:.3f}" for k in steps])
    print(_table(["density"] + [f"k = {k:g}" for k in steps], rows) + "\n")

    rows = []
    for k in sorted(runs["random mask"]["temperature"].unique()):
        for density in sorted(ticket["density"].unique()):
            row = [f"{k:g}", f"{density:g}"]
            for name in RUNS:
                cell = runs[name].set_index(["temperature", "density"]).loc[(k, density)]
                row.append(f"{cell['test_error_mean']:.3f} / {cell['barrier_mean']:.3f}")
            rows.append(row)
    dense = ticket["dense_test_error_mean"].iloc[0]
    header = ["k", "density"] + [f"{name}: test error / barrier" for name in RUNS]
    print(_table(header, rows))
    print(f"\ndense model's test error: {dense:.4f}")


if __name__ == "__main__":
    main()
