"""Calibration of data-aware pruning (Wanda): the l2 norm of every input feature of each prunable
layer over a few training samples, collected with forward hooks in eval mode.

A layer's input features are the columns its weight rows multiply: a Linear layer's inputs; for
a convolution, the entries of its unfolded input patches (im2col), one per (input channel, kernel
offset) in the order of the weight flattened as PyTorch stores it (``weight.view(out, -1)``),
with the zero padding counted as inputs. ||X_j||^2 sums the squares of feature j over every
sample and every output position (a Linear layer's leading dimensions, a convolution's output
positions), as Wanda sums over every token.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn


class CalibrationError(ValueError):
    """A layer whose inputs this calibration cannot unfold (grouped or non-zero-padded convs)."""


def input_norms(model: nn.Module, inputs: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """||X_j||_2 of every input feature j of each layer whose weight is named in ``names``
    (parameter names, ``<module>.weight``), over one forward pass of ``inputs`` in eval mode
    (float64, one value per column of ``weight.view(out, -1)``). The model's mode is restored."""
    modules = {f"{name}.weight": module for name, module in model.named_modules()}
    squares: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def accumulate(module, args, output):
            columns = input_squares(module, args[0].detach(), output.shape)
            squares[name] = squares[name] + columns if name in squares else columns

        return accumulate

    handles = [modules[name].register_forward_hook(hook(name)) for name in names]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    missing = [name for name in names if name not in squares]
    if missing:
        raise CalibrationError(f"layers {missing} saw no input in the calibration forward pass")
    return {name: squares[name].sqrt() for name in names}


def input_squares(module: nn.Module, x: torch.Tensor, output_shape: torch.Size) -> torch.Tensor:
    """Sum of squares of each input feature of one call of a Linear or convolution layer."""
    if isinstance(module, nn.Linear):
        return (x.double() ** 2).reshape(-1, module.in_features).sum(dim=0)
    if not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        raise CalibrationError(f"{type(module).__name__}: only Linear and convolution inputs are calibrated")
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise CalibrationError(
            f"{module}: calibration unfolds ungrouped convolutions with numeric zero padding only"
        )
    pad = [p for p in reversed(module.padding) for _ in range(2)]
    squared = F.pad(x.double() ** 2, pad)
    out_sizes = output_shape[2:]
    spatial = tuple(range(2, x.dim()))
    columns = torch.empty((x.shape[1], *module.kernel_size), dtype=torch.float64)
    for offset in itertools.product(*(range(k) for k in module.kernel_size)):
        window = [
            slice(o * d, o * d + s * (n - 1) + 1, s)
            for o, d, s, n in zip(offset, module.dilation, module.stride, out_sizes)
        ]
        columns[(slice(None), *offset)] = squared[(slice(None), slice(None), *window)].sum(dim=(0, *spatial))
    return columns.reshape(-1)
