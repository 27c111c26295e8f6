"""Regenerate docs/regime_map.png, the README's picture, from a finished demo run.

It calls the workflow's own plot function on the run's tables (regimes.csv, selection.csv,
boundaries.csv) and the demo's plot settings, at a lower resolution so the committed file stays small.

    snakemake                       # the embedded demo: results/demo/
    python docs/make_figures.py     # or: python docs/make_figures.py path/to/results/demo
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DPI = 80  # small enough to commit, large enough to read


def main() -> None:
    import pandas as pd

    from threeregime.config.load import load_config
    from threeregime.views.plot import regime_map

    results = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "demo"
    tables = [results / "regimes.csv", results / "selection.csv", results / "boundaries.csv"]
    missing = [str(t) for t in tables if not t.is_file()]
    if missing:
        sys.exit(f"{', '.join(missing)} not found: run `snakemake` (the demo) first")
    cfg = replace(load_config(REPO / "config.yaml").plot, dpi=DPI)
    out = REPO / "docs" / "regime_map.png"
    regimes, selection, boundaries = (pd.read_csv(t) for t in tables)
    regime_map(regimes, cfg, [str(out)], selection, boundaries)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
