"""Lottery-ticket pieces: weight rewinding and the random-mask and reinitialisation controls.

Frankle & Carbin (2019) compare a winning ticket (the magnitude mask with the weights the dense
run had at initialisation, or at iteration k: Frankle et al. 2020) against two controls at the
same per-layer densities: the same number of weights per layer at random positions, and the
ticket's mask with weights drawn afresh from the initialisation distribution.
"""

from __future__ import annotations

import numpy as np
import torch

from threeregime.compute.models import init_model
from threeregime.config.settings import ModelConfig

CONTROLS = ("none", "random_mask", "reinit")
CONTROL_STREAM = 3  # seeds of the controls, apart from the data streams (0: dense, 1: retrain)


class TicketError(ValueError):
    """A rewinding or control request the inputs cannot satisfy."""


def control_seed(dense_seed: int, density: float) -> int:
    """A seed that depends only on the cell (dense seed, density), never on the data streams."""
    parts = [CONTROL_STREAM, int(dense_seed), round(float(density) * 1e9)]
    return int(np.random.SeedSequence(parts).generate_state(1, dtype=np.uint64)[0] >> 1)


def random_masks(masks: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Each layer keeps as many weights as its mask does, at uniformly random positions."""
    generator = torch.Generator().manual_seed(seed)
    shuffled = {}
    for name, mask in masks.items():
        keep = int(mask.sum())
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[torch.randperm(mask.numel(), generator=generator)[:keep]] = True
        shuffled[name] = flat.view_as(mask)
    return shuffled


def fresh_weights(model_cfg: dict, in_channels: int, num_classes: int, seed: int) -> dict:
    """The state of a newly initialised model of the same architecture (the reinit control)."""
    model = init_model(ModelConfig(**model_cfg), in_channels, num_classes, seed)
    return {key: value.clone() for key, value in model.state_dict().items()}


def rewind_state(kept: dict, source: str, step: int, steps_per_epoch: int, pruned: dict) -> dict:
    """The training state a weight-rewound retraining starts from: the dense run's weights at
    iteration k from ``kept`` (a rewind checkpoint; the ``pruned`` model's own weights instead
    under the reinit control), masked when training starts, the learning-rate schedule at k, and
    fresh momentum (open_lth's rewinding keeps no optimiser state either)."""
    iteration = kept["rewind"]["iteration"]
    if iteration != step:
        raise TicketError(f"{source}: holds the dense state at iteration {iteration}, not {step}")
    return {
        "model": pruned["model"] if pruned.get("reinit") else kept["rewind"]["model"],
        "optimizer": {"momentum_buffers": None},
        "epoch": iteration // steps_per_epoch,
        "iteration": iteration,
        "history": [],
    }
