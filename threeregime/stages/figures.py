"""The figure stages: the phase diagram and regime map, the Hessian eigenvalue density of every
cell, and the instability figure, from the regimes table; each titled with the run described
(run, setup, knob, model, pruning method: --describe)."""

from __future__ import annotations

import json
import logging

import pandas as pd

from threeregime.config.settings import PlotConfig
from threeregime.views.plot import esd_diagram, instability_diagram, phase_diagram, regime_map

log = logging.getLogger("threeregime")


def regime_figures(
    spec_json: str,
    regimes_csv: str,
    selection_csv: str,
    boundaries_csv: str,
    phase: list[str],
    maps: list[str],
    description: dict | None = None,
) -> None:
    """Figure 2's phase diagram and the regime map (``selection_csv``: mark the best and picked
    cells; ``boundaries_csv``: draw the boundaries' intervals; "": none), each written to every
    path given (one per format) and titled with ``description``."""
    cfg = PlotConfig(**json.loads(spec_json)["plot"])
    regimes = pd.read_csv(regimes_csv)
    selection = pd.read_csv(selection_csv) if selection_csv else None
    boundaries = (
        pd.read_csv(boundaries_csv, keep_default_na=False, na_values=[""]) if boundaries_csv else None
    )
    phase_diagram(regimes, cfg, phase, boundaries, description)
    regime_map(regimes, cfg, maps, selection, boundaries, description)
    log.info("figures: %s", ", ".join(phase + maps))


def esd_figure(spec_json: str, regimes_csv: str, outs: list[str], description: dict | None = None) -> None:
    """The Hessian eigenvalue density of every cell (metrics.hessian_esd)."""
    esd_diagram(pd.read_csv(regimes_csv), PlotConfig(**json.loads(spec_json)["plot"]), outs, description)
    log.info("figures: %s", ", ".join(outs))


def instability_figure(
    spec_json: str, regimes_csv: str, outs: list[str], description: dict | None = None
) -> None:
    """Frankle et al. 2020's instability figure: the error barrier against the temperature."""
    spec = json.loads(spec_json)
    regimes = pd.read_csv(regimes_csv)
    instability_diagram(regimes, spec["stable_barrier"], outs, spec["plot"]["dpi"], description)
    log.info("figures: %s", ", ".join(outs))
