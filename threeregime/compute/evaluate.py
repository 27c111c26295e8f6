"""Loss and error of a model, or of every run of a packed model, over batches in eval mode: the
per-epoch test error of training and the train loss and error of the metrics. A sequence model
(logits (batch, classes, positions), targets (batch, positions)) counts every position as one
prediction: its loss is the mean over tokens, its error the fraction of tokens mispredicted."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from threeregime.compute.pack import Packed
from threeregime.compute.runtime import Performance


@torch.no_grad()
def evaluate(model: nn.Module, batches, perf: Performance = Performance()) -> tuple[float, float]:
    """Mean cross-entropy and error rate over the given (x, y) batches, in eval mode."""
    return evaluate_runs(Packed([model]), batches, perf)[0]


@torch.no_grad()
def evaluate_runs(packed: Packed, batches, perf: Performance = Performance()) -> list[tuple[float, float]]:
    """:func:`evaluate` for each run of a packed model, all on the same batches."""
    packed.model.eval()
    loss_sum, errors, count = None, None, 0
    for x, y in batches:
        with perf.autocast(x.device):
            logits = packed.logits(packed.model(packed.replicate(x))).float()
        targets = y.expand(packed.runs, *y.shape)
        batch_loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(0, 1), reduction="none")
        batch_loss = batch_loss.view(packed.runs, -1).sum(1)
        batch_errors = (logits.argmax(2) != targets).flatten(1).sum(1)
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        errors = batch_errors if errors is None else errors + batch_errors
        count += y.numel()
    return [(float(loss) / count, float(error) / count) for loss, error in zip(loss_sum, errors)]
