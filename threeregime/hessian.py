"""Hessian top eigenvalue (power iteration) and trace (Hutchinson) of the training loss.

The gradient graph is built once (``create_graph=True``) and every Hessian-vector product is a
backward pass through it; Hutchinson probes go through that pass several at a time
(``is_grads_batched``, a vmap over the backward). The model is in eval mode on one fixed batch,
as in PyHessian. For a pruned model every vector is projected onto the unpruned coordinates, so
the numbers describe the Hessian of the sparse model, P H P.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Vector = list[torch.Tensor]


class HessianOperator:
    """v -> P H P v for the cross-entropy loss of ``model`` on (x, y)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: dict | None = None):
        model.eval()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        masks = masks or {}
        self.masks = [masks[n].to(p.dtype) if n in masks else None for n, p in named]
        loss = F.cross_entropy(model(x), y)
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)

    def project(self, v: Vector) -> Vector:
        return [t if m is None else t * m for t, m in zip(v, self.masks)]

    def hvp(self, v: Vector) -> Vector:
        hv = torch.autograd.grad(self.grads, self.params, self.project(v), retain_graph=True)
        return self.project(list(hv))

    def hvp_batch(self, vs: Vector) -> Vector:
        """H v for a batch of vectors stacked on dim 0 (one vmapped backward pass)."""
        hv = torch.autograd.grad(
            self.grads, self.params, self.project(vs), retain_graph=True, is_grads_batched=True
        )
        return self.project(list(hv))

    def random(self, generator: torch.Generator, batch: int | None = None, rademacher=False) -> Vector:
        out = []
        for p in self.params:
            shape = p.shape if batch is None else (batch, *p.shape)
            if rademacher:
                draw = torch.randint(0, 2, shape, generator=generator, device=p.device)
                out.append(draw.to(p.dtype) * 2 - 1)
            else:
                out.append(torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype))
        return self.project(out)


def _dot(a: Vector, b: Vector) -> torch.Tensor:
    return sum((s * t).sum() for s, t in zip(a, b))


def _batched_dot(a: Vector, b: Vector) -> torch.Tensor:
    """One inner product per vector of a batch stacked on dim 0."""
    return sum((s * t).flatten(1).sum(1) for s, t in zip(a, b))


def _scale(v: Vector, factor) -> Vector:
    return [t * factor for t in v]


def top_eigenvalue(op: HessianOperator, max_iter: int, tol: float, seed: int) -> tuple[float, int]:
    """Power iteration as in PyHessian: stop when the Rayleigh quotient changes by < tol (relative)."""
    generator = torch.Generator(device=op.params[0].device).manual_seed(seed)
    v = op.random(generator)
    v = _scale(v, 1 / torch.sqrt(_dot(v, v)))
    eigenvalue = None
    for iteration in range(1, max_iter + 1):
        hv = op.hvp(v)
        estimate = float(_dot(v, hv))
        v = _scale(hv, 1 / (torch.sqrt(_dot(hv, hv)) + 1e-12))
        if eigenvalue is not None and abs(estimate - eigenvalue) / (abs(eigenvalue) + 1e-6) < tol:
            return estimate, iteration
        eigenvalue = estimate
    return eigenvalue, max_iter


def trace(op: HessianOperator, probes: int, probe_batch: int, seed: int) -> tuple[float, float]:
    """Hutchinson estimate from ``probes`` Rademacher probes, ``probe_batch`` per backward pass.

    A fixed probe count, unlike PyHessian's stop on a small change of the running mean (which
    can end after two probes); the standard error tells how accurate the estimate is.
    Returns (trace, standard error).
    """
    generator = torch.Generator(device=op.params[0].device).manual_seed(seed)
    samples = []
    while sum(len(s) for s in samples) < probes:
        count = min(probe_batch, probes - sum(len(s) for s in samples))
        vectors = op.random(generator, batch=count, rademacher=True)
        samples.append(_batched_dot(vectors, op.hvp_batch(vectors)))
    values = torch.cat(samples).double()
    stderr = float(values.std() / len(values) ** 0.5) if len(values) > 1 else float("nan")
    return float(values.mean()), stderr


def hessian_summary(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: dict | None,
    max_iter: int,
    tol: float,
    probes: int,
    probe_batch: int,
    seed: int = 0,
) -> dict:
    op = HessianOperator(model, x, y, masks)
    eigenvalue, iterations = top_eigenvalue(op, max_iter, tol, seed)
    trace_value, trace_stderr = trace(op, probes, probe_batch, seed + 1)
    return {
        "hessian_top_eigenvalue": eigenvalue,
        "hessian_eig_iterations": iterations,
        "hessian_trace": trace_value,
        "hessian_trace_stderr": trace_stderr,
        "hessian_trace_probes": probes,
        "hessian_samples": len(y),
    }


def pyhessian_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_iter: int, tol: float, probes: int
) -> dict:
    """PyHessian 0.1 (the paper's tool): double-backward HVPs, one vector at a time.

    Its trace loop runs exactly ``probes`` probes when given tol=0, so both estimators can be
    compared at the same probe count.
    """
    from pyhessian import hessian as PyHessian

    model.eval()
    engine = PyHessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=x.is_cuda)
    eigenvalues, _ = engine.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
    samples = engine.trace(maxIter=probes, tol=0.0)
    for p in model.parameters():  # PyHessian leaves graph-carrying .grad behind
        p.grad = None
    return {
        "hessian_top_eigenvalue": float(eigenvalues[0]),
        "hessian_trace": float(sum(samples) / len(samples)),
    }
