"""One-shot unstructured pruning of conv weights: uniform L1, global L1, and LAMP.

Masks are boolean tensors keyed by parameter name. Scores are ranked with a stable sort, so ties
are broken by position and the result is deterministic.
"""

from __future__ import annotations

import torch
from torch import nn

from threeregime.models import prunable_layers


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


def compute_masks(model: nn.Module, density: float, method: str) -> dict[str, torch.Tensor]:
    layers = {name: w.detach() for name, w in prunable_layers(model).items()}
    if method == "uniform":
        masks = {}
        for name, weight in layers.items():
            keep = round(density * weight.numel())
            if keep < 1:
                raise PruneError(f"density {density:g} keeps no weight of layer {name}")
            masks[name] = _top_k_mask(weight.abs().flatten(), keep).view_as(weight)
        return masks
    if method == "global":
        scores = {name: w.abs().flatten().double() for name, w in layers.items()}
    elif method == "lamp":
        scores = {name: lamp_scores(w) for name, w in layers.items()}
    else:
        raise PruneError(f"prune.method: unknown pruning method {method!r}")
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


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    MaskApplier(model, masks)()


def mask_density(masks: dict[str, torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return kept / total


def layer_densities(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(m.float().mean()) for name, m in masks.items()}
