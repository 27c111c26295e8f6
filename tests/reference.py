"""PyHessian 0.1, the paper's Hessian tool, as the reference the tests compare the project's
Hessian to (needs the ``reference`` extra, included in ``dev``: pip install -e '.[dev]')."""

from __future__ import annotations

import math

import torch
from torch import nn


def pyhessian_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_iter: int, tol: float, probes: int
) -> dict:
    """PyHessian 0.1 (the paper's tool): double-backward HVPs, one vector at a time.

    Its trace loop runs exactly ``probes`` probes when given tol=-inf (with tol=0 it still stops
    as soon as the running mean is negative), so both estimators can be compared at the same
    probe count.
    """
    from pyhessian import hessian as PyHessian

    model.eval()
    engine = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda)
    eigenvalues, _ = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
    samples = engine.trace(maxIter=probes, tol=-math.inf)
    for p in model.parameters():  # PyHessian leaves graph-carrying .grad behind
        p.grad = None
    samples = torch.tensor([float(s) for s in samples], dtype=torch.float64)
    return {
        "hessian_top_eigenvalue": float(eigenvalues[0]),
        "hessian_trace": float(samples.mean()),
        "hessian_trace_stderr": float(samples.std() / math.sqrt(len(samples))),
    }
