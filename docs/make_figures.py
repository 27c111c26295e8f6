"""Regenerate docs/regime_map.png, the README's picture, from a finished demo run, and the
figures of docs/methods.md from a finished run of presets/overlays/mnist1d-methods.yaml.

It calls the workflow's own plot functions on the runs' tables (regimes.csv, selection.csv,
boundaries.csv; the setups' tables, compared as the workflow compares them) at a lower resolution
so the committed files stay small.

    snakemake                       # the embedded demo: results/demo/
    snakemake --configfile presets/overlays/mnist1d-methods.yaml   # results/mnist1d-methods/
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
    results = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "results" / "demo"
    demo_figure(results)
    methods_figures(results.parent / "mnist1d-methods" / "setups")


def demo_figure(results: Path) -> None:
    """docs/regime_map.png from the demo's tables (skipped, saying so, before the demo's run)."""
    import pandas as pd

    from threeregime.config.load import load_config
    from threeregime.views.plot import regime_map

    tables = [results / "regimes.csv", results / "selection.csv", results / "boundaries.csv"]
    missing = [str(t) for t in tables if not t.is_file()]
    if missing:
        print(f"skipped docs/regime_map.png: {', '.join(missing)} not found: run `snakemake` first")
        return
    cfg = replace(load_config(REPO / "config.yaml").plot, dpi=DPI)
    out = REPO / "docs" / "regime_map.png"
    regimes, selection, boundaries = (pd.read_csv(t) for t in tables)
    regime_map(regimes, cfg, [str(out)], selection, boundaries)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


def methods_figures(setups: Path) -> None:
    """docs/methods_maps.png and docs/methods_difference.png: the comparison of the setups of
    presets/overlays/mnist1d-methods.yaml (skipped, saying so, before that run)."""
    from threeregime import api
    from threeregime.views.compare import draw_comparison

    overlay = REPO / "presets" / "overlays" / "mnist1d-methods.yaml"
    names = [entry["name"] for entry in load_setups(overlay)]
    if not all((setups / name / "summary.json").is_file() for name in names):
        print(f"skipped docs/methods_*.png: no finished run in {setups}")
        return
    comparison = api.compare(*(setups / name for name in names))
    maps, difference = REPO / "docs" / "methods_maps.png", REPO / "docs" / "methods_difference.png"
    draw_comparison(comparison, [str(maps)], [str(difference)], DPI)
    for out in (maps, difference):
        print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB)")


def load_setups(overlay: Path) -> list[dict]:
    import yaml

    return yaml.safe_load(overlay.read_text())["prune"]["setups"]


if __name__ == "__main__":
    main()
