"""The adaptive-plan stage: one round of adaptive refinement from the files of the cells measured
so far (threeregime.analysis.adaptive.plan_round decides; this reads and writes)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from threeregime.analysis.adaptive import Grid, coarse_cells, plan_round
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
    adaptive = spec["adaptive"]
    if previous:
        planned = [tuple(c) for c in read_json(previous)["cells"]]
    else:
        planned = coarse_cells(grid, adaptive["step"])
    paths = [path for path in metrics if path != previous]
    observations = pd.DataFrame([pair_observation(read_json(path), cfg.cka_metric) for path in paths])
    return plan_round(
        round_number, planned, observations, grid, cfg, adaptive["budget"], adaptive["min_confidence"]
    )


def plan(round_number: int, spec: dict, previous: str, metrics: list[str], out: str) -> dict:
    """Plan one round and write it to ``out``."""
    found = plan_from_files(round_number, spec, previous, metrics)
    write_json(out, found)
    log.info("round %d: %d cells measured, %d added (%s), %d of %d planned", round_number,
             found["measured_before"], len(found["added"]), ", ".join("/".join(a) for a in found["added"]),
             len(found["cells"]), found["grid_cells"])  # fmt: skip
    return found
