"""Hessian top eigenvalue (Lanczos or power iteration) and trace (Hutchinson) of the training loss.

The gradient graph is built once (``create_graph=True``) and every Hessian-vector product is a
backward pass through it. On a GPU, Hutchinson probes go through that pass several at a time
(``is_grads_batched``, a vmap over the backward); on the CPU a vmapped backward is slower than a
loop, so probes go one by one there (same probes, same numbers up to rounding). Eval-mode
BatchNorm enters the graph as the affine map it is ((x - mean) * scale + bias): the same
function, with a cheaper and, in float32, more accurate double backward than ``batch_norm``'s.
The model is in eval mode on one fixed batch, as in PyHessian. For a pruned model every vector
is projected onto the unpruned coordinates, so the numbers describe the Hessian of the sparse
model, P H P.

The top eigenvalue comes from Lanczos by default: with the same stopping rule as PyHessian's
power iteration (relative change below ``tol``) it typically needs no more products (far
fewer when the top eigenvalues are close) and is more accurate, since its Krylov space contains
every power-iteration vector.

The trace is Hutchinson's estimator, optionally deflated by the Lanczos vectors Q (orthonormal,
drawn independently of the probes): tr(H) = tr(Q^T H Q) + tr((I - QQ^T) H (I - QQ^T)). The first
term is exact (the sum of the Lanczos diagonal), the second is estimated from probes projected
off Q. The estimate stays unbiased for any Q. A trained network's Hessian typically has a few
outlying eigenvalues that carry most of Hutchinson's variance, and Lanczos finds them first, so
far fewer probes reach a given standard error (not guaranteed: for a nearly diagonal H, plain
Rademacher probes are already exact and deflation can add variance).

``HessianOperator(..., mode="forward")`` computes products forward-over-reverse with
``torch.func`` (jvp of grad, vmapped over probes); it imports ``torch._dynamo`` (about a second
of start-up), so it is opt-in, for GPU runs where it pays.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

Vector = list[torch.Tensor]


class _AffineBatchNorm(nn.Module):
    """An eval-mode BatchNorm written as (x - mean) * scale + bias: the same parameters and the
    same function as ``batch_norm`` (subtracting the mean first avoids the cancellation of a
    folded x * scale + shift when the mean is large)."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        view = (1, -1) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        centred = x - norm.running_mean.view(view)
        if norm.bias is None:
            return centred * scale.view(view)
        return torch.addcmul(norm.bias.view(view), centred, scale.view(view))


@contextmanager
def _affine_batchnorm(model: nn.Module):
    """Temporarily swap every eval-mode BatchNorm with tracked statistics for its affine form."""
    swapped = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.modules.batchnorm._BatchNorm)
        and not child.training
        and child.running_mean is not None
    ]
    for parent, name, child in swapped:
        setattr(parent, name, _AffineBatchNorm(child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class HessianOperator:
    """v -> P H P v for the cross-entropy loss of ``model`` on (x, y).

    ``mode``: "reverse" (double backward, the default and the reference) or "forward"
    (torch.func jvp of grad). ``batched``: push stacked probes through one vmapped pass; None =
    only on a GPU. ``fold_bn``: differentiate eval-mode BatchNorm as its affine map.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        masks: dict | None = None,
        mode: str = "reverse",
        batched: bool | None = None,
        fold_bn: bool = True,
    ):
        if mode not in ("reverse", "forward"):
            raise ValueError(f"unknown Hessian-vector product mode {mode!r}")
        model.eval()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        masks = masks or {}
        self.masks = [masks[n].to(p.dtype) if n in masks else None for n, p in named]
        self.mode = mode
        self.batched = x.device.type != "cpu" if batched is None else batched
        if mode == "forward":
            self._func_hvp = _forward_over_reverse(model, x, y, [n for n, _ in named])
            return
        with _affine_batchnorm(model) if fold_bn else nullcontext():
            loss = F.cross_entropy(model(x), y)
        self.grads = torch.autograd.grad(loss, self.params, create_graph=True)

    def project(self, v: Vector) -> Vector:
        return [t if m is None else t * m for t, m in zip(v, self.masks)]

    def hvp(self, v: Vector) -> Vector:
        v = self.project(v)
        if self.mode == "forward":
            return self.project(self._func_hvp(self.params, v, batched=False))
        hv = torch.autograd.grad(self.grads, self.params, v, retain_graph=True)
        return self.project(list(hv))

    def hvp_batch(self, vs: Vector) -> Vector:
        """H v for a batch of vectors stacked on dim 0 (one vmapped pass, or a loop)."""
        if not self.batched:
            rows = [self.hvp([t[i] for t in vs]) for i in range(len(vs[0]))]
            return [torch.stack(parts) for parts in zip(*rows)]
        vs = self.project(vs)
        if self.mode == "forward":
            return self.project(self._func_hvp(self.params, vs, batched=True))
        hv = torch.autograd.grad(self.grads, self.params, vs, retain_graph=True, is_grads_batched=True)
        return self.project(list(hv))

    def random(self, generator: torch.Generator, batch: int | None = None, rademacher=False) -> Vector:
        """One random vector, or ``batch`` of them stacked on dim 0. Vectors are drawn one after
        another, so the k-th probe is the same whatever the batch size (batching is speed only)."""
        if batch is not None:
            draws = [self.random(generator, rademacher=rademacher) for _ in range(batch)]
            return [torch.stack(parts) for parts in zip(*draws)]
        out = []
        for p in self.params:
            if rademacher:
                draw = torch.randint(0, 2, p.shape, generator=generator, device=p.device)
                out.append(draw.to(p.dtype) * 2 - 1)
            else:
                out.append(torch.randn(p.shape, generator=generator, device=p.device, dtype=p.dtype))
        return self.project(out)


def _forward_over_reverse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]):
    """(params, v, batched) -> H v as jvp(grad(loss)), vmapped over a leading probe dim if batched."""
    from torch.func import functional_call, grad, jvp, vmap

    buffers = dict(model.named_buffers())

    def loss(weights: tuple) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, (dict(zip(names, weights)), buffers), (x,)), y)

    gradient = grad(loss)

    def hvp(params: Vector, v: Vector, batched: bool) -> Vector:
        primals = tuple(p.detach() for p in params)

        def one(tangents):
            return jvp(gradient, (primals,), (tangents,))[1]

        return list(vmap(one)(tuple(v)) if batched else one(tuple(v)))

    return hvp


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


@dataclass(frozen=True)
class KrylovBasis:
    """Orthonormal Lanczos vectors (rows of ``vectors``, flat, zero on pruned weights), the
    exact tr(Q^T H Q) over them (the sum of the Lanczos diagonal), and the tridiagonal matrix
    T = Q^T H Q itself (``diagonal``, ``off_diagonal``)."""

    vectors: torch.Tensor
    trace: float
    diagonal: tuple[float, ...] = ()
    off_diagonal: tuple[float, ...] = ()

    def spectral_density(self) -> tuple[list[float], list[float]]:
        """Stochastic Lanczos quadrature (Golub & Meurant; Ghorbani et al. 2019) from this run:
        nodes = eigenvalues of T, weights = squared first components of its eigenvectors. The
        weights sum to 1 and sum_k w_k f(node_k) = q^T f(H) q for the random unit start q,
        exactly for polynomials f up to degree 2m - 1 after m steps; over random q its mean is
        tr f(H) / n, so the nodes and weights estimate the eigenvalue density of P H P (the
        Hessian on the kept weights). One run is one probe."""
        nodes, vectors = torch.linalg.eigh(_tridiagonal(list(self.diagonal), list(self.off_diagonal)))
        return nodes.tolist(), (vectors[0] ** 2).tolist()

    def deflate(self, vs: Vector) -> Vector:
        """Project a batch of vectors stacked on dim 0 off the basis: v - Q^T (Q v)."""
        flat = torch.cat([t.flatten(1) for t in vs], dim=1)
        flat = flat - (flat @ self.vectors.T) @ self.vectors
        sizes = [t[0].numel() for t in vs]
        return [part.view(t.shape) for part, t in zip(flat.split(sizes, dim=1), vs)]


def lanczos_top_eigenvalue(op: HessianOperator, max_iter: int, tol: float, seed: int) -> tuple[float, int]:
    """Dominant eigenvalue by Lanczos (see ``lanczos``); returns (value, products)."""
    eigenvalue, products, _ = lanczos(op, max_iter, tol, seed)
    return eigenvalue, products


def lanczos(
    op: HessianOperator, max_iter: int, tol: float, seed: int, min_products: int = 0
) -> tuple[float, int, KrylovBasis]:
    """Lanczos with full reorthogonalisation; returns (dominant eigenvalue, products, basis).

    Starts from the same random vector as ``top_eigenvalue`` and stops by the same rule: the
    dominant Ritz value (largest in magnitude, what power iteration converges to) changes by
    less than ``tol`` relative, but not before ``min_products`` products (to grow the basis that
    deflates the trace), and never after ``max_iter``. After k products the Krylov space holds
    every vector power iteration would have reached, so the estimate is never worse at equal
    cost. Memory: one flat copy of the parameters per product.
    """
    if max_iter < 1:
        raise ValueError(f"Lanczos needs max_iter >= 1, got {max_iter}")
    generator = torch.Generator(device=op.params[0].device).manual_seed(seed)
    start = op.random(generator)
    shapes = [p.shape for p in op.params]
    sizes = [p.numel() for p in op.params]

    def unflatten(flat: torch.Tensor) -> Vector:
        return [t.view(shape) for t, shape in zip(flat.split(sizes), shapes)]

    q = torch.cat([t.flatten() for t in start])
    q = q / torch.linalg.vector_norm(q)
    basis, alphas, betas = [q], [], []
    estimate = None
    for _ in range(max_iter):
        w = torch.cat([t.flatten() for t in op.hvp(unflatten(q))])
        alpha = torch.dot(w, q)
        w = w - alpha * q
        if betas:
            w = w - betas[-1] * basis[-2]
        for _ in range(2):  # full reorthogonalisation, twice is enough (Kahan)
            stacked = torch.stack(basis)
            w = w - stacked.T @ (stacked @ w)
        beta = torch.linalg.vector_norm(w)
        alphas.append(float(alpha))
        ritz = torch.linalg.eigvalsh(_tridiagonal(alphas, betas))
        previous, estimate = estimate, float(ritz[ritz.abs().argmax()])
        converged = previous is not None and abs(estimate - previous) / (abs(previous) + 1e-6) < tol
        invariant = float(beta) <= 1e-10 * (abs(estimate) + 1e-12)  # the Krylov space is closed
        if invariant or (converged and len(alphas) >= min_products):
            break
        if len(alphas) == max_iter:
            break
        betas.append(float(beta))
        q = w / beta
        basis.append(q)
    off = tuple(betas[: len(alphas) - 1])
    return estimate, len(alphas), KrylovBasis(torch.stack(basis), math.fsum(alphas), tuple(alphas), off)


def spectral_density(op: HessianOperator, probes: int, steps: int, seed: int) -> tuple[list, list]:
    """Stochastic Lanczos quadrature over ``probes`` random unit starts of ``steps`` Lanczos
    steps each (fewer where the Krylov space closes): every probe's nodes, and its weights
    divided by the number of probes, so that the weights sum to 1. More steps resolve the
    density's shape (small and negative eigenvalues included), more probes average its noise."""
    nodes, weights = [], []
    for probe in range(probes):
        _, _, basis = lanczos(op, steps, 0.0, seed + probe, min_products=steps)
        probe_nodes, probe_weights = basis.spectral_density()
        nodes += probe_nodes
        weights += [w / probes for w in probe_weights]
    return nodes, weights


def _tridiagonal(alphas: list[float], betas: list[float]) -> torch.Tensor:
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def trace(
    op: HessianOperator, probes: int, probe_batch: int, seed: int, basis: KrylovBasis | None = None
) -> tuple[float, float]:
    """Hutchinson estimate from ``probes`` Rademacher probes, ``probe_batch`` per backward pass;
    with ``basis``, deflated: tr(Q^T H Q) exactly plus probes projected off Q.

    A fixed probe count, unlike PyHessian's stop on a small change of the running mean (which
    can end after two probes); the standard error tells how accurate the estimate is. The
    probes are the same with or without a basis. Returns (trace, standard error).
    """
    generator = torch.Generator(device=op.params[0].device).manual_seed(seed)
    samples = []
    while sum(len(s) for s in samples) < probes:
        count = min(probe_batch, probes - sum(len(s) for s in samples))
        vectors = op.random(generator, batch=count, rademacher=True)
        if basis is not None:
            vectors = basis.deflate(vectors)
        samples.append(_batched_dot(vectors, op.hvp_batch(vectors)))
    values = torch.cat(samples).double()
    stderr = float(values.std() / len(values) ** 0.5) if len(values) > 1 else float("nan")
    exact_part = basis.trace if basis is not None else 0.0
    return exact_part + float(values.mean()), stderr


@dataclass(frozen=True)
class HessianSettings:
    """How :func:`hessian_summary` estimates the Hessian metrics.

    ``max_iter``/``tol``: the top-eigenvalue iteration (``eig_method``: "lanczos" or "power");
    ``probes`` Hutchinson probes, ``probe_batch`` per backward pass, the trace deflated by at
    least ``deflation`` Lanczos vectors (0: plain, as PyHessian); ``density``: also the
    eigenvalue density's quadrature, from ``density_probes`` random starts of ``density_steps``
    Lanczos steps each (1 and 0: the top-eigenvalue run itself, no extra products); ``seed``: the
    random start and probes; ``mode``: how Hessian-vector products are taken
    (:class:`HessianOperator`).
    """

    max_iter: int
    tol: float
    probes: int
    probe_batch: int
    deflation: int = 0
    density: bool = False
    seed: int = 0
    eig_method: str = "lanczos"
    mode: str = "reverse"
    density_probes: int = 1
    density_steps: int = 0

    def __post_init__(self):
        if self.eig_method not in ("lanczos", "power"):
            raise ValueError(f"unknown eigenvalue method {self.eig_method!r}")
        if (self.deflation or self.density) and self.eig_method != "lanczos":
            raise ValueError("a deflated trace and the density need eig_method='lanczos' (its basis)")

    @classmethod
    def from_config(cls, metrics) -> HessianSettings:
        """The settings of a metrics job (config ``metrics.hessian_*``; ``metrics`` a
        threeregime.config.settings.MetricsConfig)."""
        return cls(
            max_iter=metrics.hessian_max_iter,
            tol=metrics.hessian_tol,
            probes=metrics.hessian_probes,
            probe_batch=metrics.hessian_probe_batch,
            deflation=metrics.hessian_trace_deflation,
            density=metrics.option("hessian_esd"),
            density_probes=metrics.option("hessian_esd_probes"),
            density_steps=metrics.option("hessian_esd_steps"),
        )


def hessian_summary(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: dict | None, settings: HessianSettings
) -> dict:
    """Top eigenvalue and Hutchinson trace of P H P (see :class:`HessianSettings`); with
    ``settings.density``, also the eigenvalue density's quadrature nodes and weights from the
    same Lanczos run (:meth:`KrylovBasis.spectral_density`, no extra Hessian products)."""
    op = HessianOperator(model, x, y, masks, mode=settings.mode)
    basis, quadrature, density_products = None, {}, 0
    if settings.eig_method == "power":
        eigenvalue, iterations = top_eigenvalue(op, settings.max_iter, settings.tol, settings.seed)
    else:
        eigenvalue, iterations, krylov = lanczos(
            op, settings.max_iter, settings.tol, settings.seed, min_products=settings.deflation
        )
        basis = krylov if settings.deflation else None
        if settings.density:
            if settings.density_probes == 1 and settings.density_steps == 0:
                nodes, weights = krylov.spectral_density()  # the run above is the one probe
            else:
                steps = settings.density_steps or settings.max_iter
                nodes, weights = spectral_density(op, settings.density_probes, steps, settings.seed + 2)
                density_products = len(nodes)  # one node per Lanczos step
            quadrature = {"hessian_esd_nodes": nodes, "hessian_esd_weights": weights}
    trace_value, trace_stderr = trace(op, settings.probes, settings.probe_batch, settings.seed + 1, basis)
    return {
        "hessian_top_eigenvalue": eigenvalue,
        "hessian_eig_iterations": iterations,
        "hessian_trace": trace_value,
        "hessian_trace_stderr": trace_stderr,
        "hessian_trace_probes": settings.probes,
        "hessian_trace_deflation": 0 if basis is None else len(basis.vectors),
        "hessian_products": iterations + settings.probes + density_products,
        "hessian_samples": len(y),
    } | quadrature
