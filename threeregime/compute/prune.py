"""One-shot unstructured pruning of conv weights: uniform L1, global L1, LAMP and AlphaPruning's
alpha-allocated L1 (each registered in threeregime.registry.pruning).

Masks are boolean tensors keyed by parameter name. Scores are ranked with a stable sort, so ties
are broken by position and the result is deterministic.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from threeregime.compute.models import prunable_layers
from threeregime.registry.pruning import PRUNING_METHODS
from threeregime.registry.pruning import settings as pruning_settings


class PruneError(ValueError):
    """A density that cannot be realised (for example one that empties a layer)."""


def _top_k_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): w_u^2 / sum of w_v^2 over weights v at least as large as u."""
    squared = weight.detach().flatten().double() ** 2
    order = torch.argsort(squared, stable=True)
    ascending = squared[order]
    tail_sums = ascending.flip(0).cumsum(0).flip(0)
    scores = torch.empty_like(squared)
    scores[order] = ascending / tail_sums.clamp_min(torch.finfo(torch.float64).tiny)
    return scores


def compute_masks(
    model: nn.Module, density: float, method: str, settings: dict | None = None
) -> dict[str, torch.Tensor]:
    """Masks of the model's prunable conv weights by a registered method
    (threeregime.registry.pruning) at overall ``density``; ``settings``: its prune.* settings."""
    entry = PRUNING_METHODS.get(method)
    if entry is None:
        raise PruneError(f"prune.method: unknown pruning method {method!r}")
    module, _, function = entry.masks.partition(":")
    masks_of = getattr(importlib.import_module(module), function)
    layers = {name: w.detach() for name, w in prunable_layers(model).items()}
    return masks_of(layers, density, settings or {})


def _per_layer_masks(layers: dict[str, torch.Tensor], densities: dict[str, float]) -> dict:
    """Keep round(d * n) largest |w| of each layer."""
    masks = {}
    for name, weight in layers.items():
        keep = round(densities[name] * weight.numel())
        if keep < 1:
            raise PruneError(f"density {densities[name]:g} keeps no weight of layer {name}")
        masks[name] = _top_k_mask(weight.abs().flatten(), keep).view_as(weight)
    return masks


def uniform_masks(layers: dict[str, torch.Tensor], density: float, settings: dict) -> dict:
    return _per_layer_masks(layers, dict.fromkeys(layers, density))


def global_magnitude_masks(layers: dict[str, torch.Tensor], density: float, settings: dict) -> dict:
    return _global_masks(
        layers, density, {name: w.abs().flatten().double() for name, w in layers.items()}, "global"
    )


def lamp_masks(layers: dict[str, torch.Tensor], density: float, settings: dict) -> dict:
    return _global_masks(layers, density, {name: lamp_scores(w) for name, w in layers.items()}, "lamp")


def _global_masks(layers: dict, density: float, scores: dict, method: str) -> dict:
    """One ranking of all layers' scores; the top ``density`` fraction is kept."""
    flat = torch.cat(list(scores.values()))
    keep = round(density * flat.numel())
    if keep < 1:
        raise PruneError(f"density {density:g} keeps no weight at all")
    flat_mask = _top_k_mask(flat, keep)
    masks, start = {}, 0
    for name, weight in layers.items():
        masks[name] = flat_mask[start : start + weight.numel()].view_as(weight)
        start += weight.numel()
        if not masks[name].any():
            raise PruneError(
                f"{method} pruning at density {density:g} empties layer {name}; "
                "use a higher density or prune.method: uniform/lamp"
            )
    return masks


def alpha_densities(sizes: dict[str, int], alphas: dict[str, float], density: float, epsilon: float) -> dict:
    """AlphaPruning's layer densities (Lu et al., NeurIPS 2024, and its public code).

    Each layer's pruning ratio is linear in its alpha, from ``1 - epsilon`` at the smallest alpha
    (heaviest tail: best trained, pruned least) to ``1 + epsilon`` at the largest, then all ratios
    are scaled by one factor so that the pruned weights total ``(1 - density)`` of all weights:
    the global density is the target's. Equal alphas give uniform pruning. A layer without an
    alpha (too few eigenvalues to fit, threeregime.compute.spectra) gets the mean alpha. Beyond the paper
    (whose LLM ratios never leave [0, 1]): a layer whose density would fall below one weight or
    exceed 1 is clipped there and the others are rescaled to keep the total.
    """
    names = list(sizes)
    n = torch.tensor([sizes[k] for k in names], dtype=torch.float64)
    mean = sum(alphas.values()) / len(alphas) if alphas else 1.0
    a = torch.tensor([alphas.get(k, mean) for k in names], dtype=torch.float64)
    spread = float(a.max() - a.min())
    ratios = (a - a.min()) / spread * 2 * epsilon + (1 - epsilon) if spread > 0 else torch.ones_like(a)
    target = (1 - density) * float(n.sum())  # weights to prune
    low, high = torch.zeros_like(n), 1 - 1 / n  # pruned fraction: at least one weight kept
    fixed = torch.zeros(len(names), dtype=torch.bool)
    pruned = torch.zeros_like(n)
    for _ in range(len(names)):
        free_target = target - float((n * pruned)[fixed].sum())
        scale = free_target / float((n * ratios)[~fixed].sum())
        pruned[~fixed] = ratios[~fixed] * scale
        clipped = ~fixed & ((pruned < low) | (pruned > high))
        if not clipped.any():
            break
        pruned = torch.where(clipped, pruned.clamp(low, high), pruned)
        fixed |= clipped
    return {k: float(1 - p) for k, p in zip(names, pruned)}


def alpha_masks(layers: dict[str, torch.Tensor], density: float, settings: dict) -> dict:
    """Magnitude pruning inside each layer at the densities :func:`alpha_densities` allocates
    from the layers' heavy-tail exponents (threeregime.compute.spectra)."""
    from threeregime.compute.spectra import layer_alphas

    defaults = pruning_settings()
    option = lambda key: settings.get(key, defaults[key].default)  # noqa: E731
    alphas = layer_alphas(layers, option("alpha_xmin"))
    sizes = {name: w.numel() for name, w in layers.items()}
    epsilon = option("alpha_epsilon")
    return _per_layer_masks(layers, alpha_densities(sizes, alphas, density, epsilon))


class MaskApplier:
    """Re-zeroes pruned weights after each optimiser step with one fused foreach multiply."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        params = dict(model.named_parameters())
        self.weights = [params[name] for name in masks]
        self.factors = [masks[name].to(w.device, w.dtype) for name, w in zip(masks, self.weights)]

    @torch.no_grad()
    def __call__(self) -> None:
        if self.weights:
            torch._foreach_mul_(self.weights, self.factors)


def check_nested(masks: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], method: str) -> None:
    """Iterative pruning keeps a subset of the previous level's weights in every layer."""
    for name, mask in masks.items():
        revived = int((mask & ~previous[name]).sum())
        if revived:
            raise PruneError(
                f"prune.method {method}: {revived} weights of {name} pruned at the previous level "
                "would come back; iterative pruning needs nested masks"
            )


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    MaskApplier(model, masks)()


def mask_density(masks: dict[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / total


def layer_densities(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(m.float().mean()) for name, m in masks.items()}
