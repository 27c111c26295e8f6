"""The adaptive-plan stage: one round of adaptive refinement from the files of the cells measured
so far (threeregime.analysis.adaptive.plan_round decides; this reads and writes)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from threeregime.analysis.adaptive import plan_round
from threeregime.config.experiment import Grid, coarse_cells
from threeregime.config.settings import AdaptiveConfig
from threeregime.config.specs import regime_config_from_spec
from threeregime.io.files import read_json, write_json

log = logging.getLogger("threeregime")


def pair_observation(record: dict, cka_metric: str) -> dict:
    """The fields of one metrics file that classification needs (test error: the pair's mean)."""
    keys = ["knob", "temperature", "density", "dense_seed", "seed_a", "seed_b", "mc", cka_metric]
    row = {k: record[k] for k in keys}
    row["test_error"] = float(np.mean([m["test_error"] for m in record["models"]]))
    return row


def plan_from_files(round_number: int, spec: dict, previous: str, metrics: list[str]) -> dict:
    """:func:`plan_round` of an adaptive-plan job: its ``spec`` (grid, regimes, adaptive
    settings), the previous round's plan file ("": none, start from the coarse grid) and the
    metrics files of the cells planned so far (the previous plan, an input too, is skipped)."""
    grid = Grid(tuple(spec["temperatures"]), tuple(spec["densities"]), spec["reference"])
    cfg = regime_config_from_spec(spec["regimes"])
    adaptive = AdaptiveConfig(**spec["adaptive"])
    if previous:
        planned = read_json(previous)
    else:
        planned = {"cells": coarse_cells(grid, adaptive.step), "seeds": {}}
    paths = [path for path in metrics if path != previous]
    observations = pd.DataFrame([pair_observation(read_json(path), cfg.cka_metric) for path in paths])
    return plan_round(round_number, planned, observations, grid, cfg, adaptive, spec["dense_seeds"])


def plan(round_number: int, spec: dict, previous: str, metrics: list[str], out: str) -> dict:
    """Plan one round and write it to ``out``."""
    found = plan_from_files(round_number, spec, previous, metrics)
    write_json(out, found)
    units = found["units"]
    log.info(
        "round %d: %d cells measured, %d of %d units of work used (the coarse sub-grid included)",
        round_number, found["measured_before"], units["used_before"], units["allowed"],
    )  # fmt: skip
    for t, d, reason in found["added"]:
        log.info("  added cell %s / %s (%s)", t, d, reason)
    for t, d, seed, reason in found["replicated"]:
        log.info("  added dense seed %d to cell %s / %s (%s)", seed, t, d, reason)
    if found["why_nothing"]:
        log.info("  added nothing: %s", found["why_nothing"])
    return found
