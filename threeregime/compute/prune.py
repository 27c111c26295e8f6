"""Pruning masks: a method's scores (uniform and global magnitude, LAMP, AlphaPruning's
alpha-allocated magnitude, Wanda) turned into masks by a granularity (unstructured, N:M,
channel), each registered in threeregime.registry.pruning.

A method returns :class:`LayerScores`: a score per weight (higher is kept first) and the fraction
of each layer to keep. A granularity keeps that fraction of each layer in its own pattern. Masks
are boolean tensors keyed by parameter name. Scores are ranked with a stable sort, so ties are
broken by position and the result is deterministic.
"""

from __future__ import annotations

import importlib
import logging
from typing import NamedTuple

import torch
from torch import nn

from threeregime.compute.models import prunable_layers
from threeregime.registry.pruning import (
    DEFAULT_GRANULARITY,
    GRANULARITIES,
    PRUNING_METHODS,
    Granularity,
    keep_count,
)
from threeregime.registry.pruning import settings as pruning_settings

log = logging.getLogger("threeregime")


class PruneError(ValueError):
    """A density that cannot be realised (for example one that empties a layer)."""


class LayerScores(NamedTuple):
    """What a pruning method says: a score per weight (the weight's shape; higher is kept first)
    and the fraction of each layer to keep, by parameter name."""

    scores: dict[str, torch.Tensor]
    densities: dict[str, float]


def _resolve(reference: str):
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


def _top_k_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    order = torch.argsort(scores, descending=True, stable=True)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[order[:keep]] = True
    return mask


def _top_k_rows(rows: torch.Tensor, keep: int) -> torch.Tensor:
    """Each row of a matrix keeps its ``keep`` highest scores."""
    order = torch.argsort(rows, dim=1, descending=True, stable=True)
    mask = torch.zeros_like(rows, dtype=torch.bool)
    return mask.scatter_(1, order[:, :keep], True)


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
    model: nn.Module,
    density: float,
    method: str,
    settings: dict | None = None,
    granularity: str = DEFAULT_GRANULARITY,
    min_layer_weights: int = 1,
    inputs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Masks of the model's prunable weights by a registered method and granularity
    (threeregime.registry.pruning) at overall ``density``; ``settings``: the method's prune.*
    settings; ``inputs``: a batch of training inputs, for a method that calibrates on them
    (Wanda). A layer left fewer than ``min_layer_weights`` weights is a PruneError naming it."""
    entry = PRUNING_METHODS.get(method)
    if entry is None:
        raise PruneError(f"prune.method: unknown pruning method {method!r}")
    structure = GRANULARITIES.get(granularity)
    if structure is None:
        raise PruneError(f"prune.granularity: unknown granularity {granularity!r}")
    layers = {name: w.detach() for name, w in prunable_layers(model).items()}
    score = _resolve(entry.scores)
    if entry.calibration:
        if inputs is None:
            raise PruneError(f"prune.method {method} needs calibration inputs (the prune job's --data)")
        ranked = score(layers, density, settings or {}, model=model, inputs=inputs)
    else:
        ranked = score(layers, density, settings or {})
    masks = _resolve(structure.masks)(ranked.scores, ranked.densities, entry.ranking == "per row", structure)
    what = f"prune.method {method}" + (f" ({granularity})" if granularity != DEFAULT_GRANULARITY else "")
    check_layer_counts(masks, min_layer_weights, f"{what} at density {density:g}")
    return masks


def check_layer_counts(masks: dict[str, torch.Tensor], minimum: int, what: str) -> None:
    """Every layer keeps at least ``minimum`` weights (prune.min_layer_weights); else one line
    naming the first layer that does not."""
    for name, mask in masks.items():
        kept = int(mask.sum())
        if kept < minimum:
            raise PruneError(
                f"{what} keeps {kept} of {mask.numel()} weights of layer {name}, fewer than "
                f"prune.min_layer_weights = {minimum}; use a higher density or another method"
            )


# ----------------------------------------------------------------------------- granularities
def unstructured_masks(scores: dict, densities: dict, per_row: bool, granularity: Granularity) -> dict:
    """Each layer keeps round(d * n) of its highest scores; per row: every output row keeps
    round(d * row length) of its own."""
    masks = {}
    for name, score in scores.items():
        if per_row:
            rows = score.reshape(score.shape[0], -1)
            masks[name] = _top_k_rows(rows, keep_count(rows.shape[1], densities[name])).view(score.shape)
        else:
            keep = keep_count(score.numel(), densities[name])
            masks[name] = _top_k_mask(score.flatten(), keep).view(score.shape)
    return masks


def n_of_m_masks(scores: dict, densities: dict, per_row: bool, granularity: Granularity) -> dict:
    """N:M: every group of M consecutive weights of an output row (a Linear row's inputs, a
    convolution filter flattened as in_channels x kernel, PyTorch's order) keeps its N highest
    scores, whatever the method's layer densities. A layer whose rows are not a multiple of M long
    has no such groups and stays dense."""
    n, m = granularity.group
    masks = {}
    for name, score in scores.items():
        rows = score.reshape(score.shape[0], -1)
        if rows.shape[1] % m:
            masks[name] = torch.ones_like(score, dtype=torch.bool)
            continue
        masks[name] = _top_k_rows(rows.reshape(-1, m), n).view(score.shape)
    return masks


def channel_masks(scores: dict, densities: dict, per_row: bool, granularity: Granularity) -> dict:
    """Whole output filters (a convolution's) or neurons (a Linear layer's): each layer keeps the
    round(d * filters) filters with the highest summed scores (for |w|, the filter's L1 norm).
    Only the filter's weights are masked: its BatchNorm and the next layer's weights stay."""
    masks = {}
    for name, score in scores.items():
        rows = score.reshape(score.shape[0], -1)
        kept = _top_k_mask(rows.double().sum(dim=1), keep_count(rows.shape[0], densities[name]))
        masks[name] = kept[:, None].expand(rows.shape).reshape(score.shape).clone()
    return masks


# ----------------------------------------------------------------------------- methods
def score_uniform(layers: dict[str, torch.Tensor], density: float, settings: dict) -> LayerScores:
    """|w|, the same density in every layer."""
    return LayerScores({name: w.abs() for name, w in layers.items()}, dict.fromkeys(layers, density))


def score_global(layers: dict[str, torch.Tensor], density: float, settings: dict) -> LayerScores:
    """|w|, the layer densities of one ranking over all layers."""
    scores = {name: w.abs().double() for name, w in layers.items()}
    return LayerScores(scores, global_densities(scores, density))


def score_lamp(layers: dict[str, torch.Tensor], density: float, settings: dict) -> LayerScores:
    """LAMP scores, the layer densities of one ranking over all layers."""
    scores = {name: lamp_scores(w).view(w.shape) for name, w in layers.items()}
    return LayerScores(scores, global_densities(scores, density))


def global_densities(scores: dict[str, torch.Tensor], density: float) -> dict[str, float]:
    """The fraction of each layer among the top ``density`` of all layers' scores ranked
    together (ties by position, layers in order): each layer's own top that many is the
    global ranking's choice in it."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    kept = _top_k_mask(flat, keep_count(flat.numel(), density))
    densities, start = {}, 0
    for name, score in scores.items():
        densities[name] = int(kept[start : start + score.numel()].sum()) / score.numel()
        start += score.numel()
    return densities


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


def score_alpha(layers: dict[str, torch.Tensor], density: float, settings: dict) -> LayerScores:
    """|w| within each layer, at the densities :func:`alpha_densities` allocates from the
    layers' heavy-tail exponents (threeregime.compute.spectra)."""
    from threeregime.compute.spectra import layer_alphas

    defaults = pruning_settings()
    option = lambda key: settings.get(key, defaults[key].default)  # noqa: E731
    alphas = layer_alphas(layers, option("alpha_xmin"))
    sizes = {name: w.numel() for name, w in layers.items()}
    epsilon = option("alpha_epsilon")
    scores = {name: w.abs() for name, w in layers.items()}
    return LayerScores(scores, alpha_densities(sizes, alphas, density, epsilon))


def score_wanda(
    layers: dict[str, torch.Tensor], density: float, settings: dict, model: nn.Module, inputs: torch.Tensor
) -> LayerScores:
    """Wanda (Sun et al. 2023): S_ij = |W_ij| ||X_j||_2, with X_j the j-th input of the layer's
    rows over the calibration ``inputs`` (threeregime.compute.calibration.input_norms), the same
    density in every layer (the ranking is per output row: its registry entry)."""
    from threeregime.compute.calibration import input_norms

    norms = input_norms(model, inputs, list(layers))
    scores = {}
    for name, w in layers.items():
        rows = w.reshape(w.shape[0], -1).double().abs()
        scores[name] = (rows * norms[name][None, :]).view(w.shape)
    return LayerScores(scores, dict.fromkeys(layers, density))


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


def kept_counts(masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """Weights each mask keeps, by layer (plain data: recorded in pruned checkpoints)."""
    return {name: int(m.sum()) for name, m in masks.items()}


def nonzero_counts(state: dict, masks: dict[str, torch.Tensor], source: str) -> dict[str, int]:
    """Nonzero weights of each masked layer of a model's ``state`` (plain data: recorded in
    retrained checkpoints and audited by the metrics job). A nonzero weight outside its mask is
    one PruneError line naming ``source``: retraining must keep pruned weights at zero
    (:class:`MaskApplier`)."""
    counts = {}
    for name, mask in masks.items():
        weight = state[name].detach()
        outside = int(torch.count_nonzero(weight[~mask.to(weight.device)]))
        if outside:
            raise PruneError(
                f"{source}: {outside} weights of {name} outside its pruning mask are nonzero; "
                "retraining must keep pruned weights at zero"
            )
        counts[name] = int(torch.count_nonzero(weight))
    return counts


def retrained_density(payload: dict, source: str) -> dict:
    """The density audit of a retrained model: its nonzero prunable weights over all of them
    (``density_retrained``), which retraining keeps equal to its mask's ``density_actual``; a
    nonzero pruned weight is one line naming the file (threeregime.compute.prune.nonzero_counts)."""
    masks = payload["masks"]
    kept = nonzero_counts(payload["model"], masks, source)
    density = sum(kept.values()) / sum(m.numel() for m in masks.values())
    if abs(density - payload["density_actual"]) > 0.5 / sum(m.numel() for m in masks.values()):
        log.warning(
            "%s: %.6f of its prunable weights are nonzero, its mask keeps %.6f (kept weights "
            "trained to exactly zero)", source, density, payload["density_actual"],
        )  # fmt: skip
    return {"density_retrained": density}
