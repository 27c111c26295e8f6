"""Heavy-tailed weight spectra: the power-law exponent alpha of each layer's eigenvalue spectrum.

Heavy-Tailed Self-Regularisation (Martin & Mahoney) reads a layer's training quality from the
empirical spectral density (ESD) of W^T W: a heavier tail (smaller alpha) is a better-trained
layer. This is the metric AlphaPruning (Lu et al., NeurIPS 2024) allocates layer densities from.

* **Matrices.** A conv weight of shape (out, in, k1, k2, ...) is k1*k2*... matrices of shape
  (out, in), one per kernel position, whose eigenvalues are pooled into one ESD (the
  weightwatcher package's default for Conv2d, and AlphaPruning's ``net_esd_estimator``; Conv1d
  here the same way). A Linear weight is one matrix. Eigenvalues of W^T W are the squared
  singular values.
* **Fit.** Continuous power law p(x) ~ x^-alpha above xmin, alpha by maximum likelihood
  (Clauset, Shalizi & Newman 2009): alpha = 1 + n / sum(log(x_i / xmin)) over the n eigenvalues
  >= xmin. Eigenvalues below 1e-10 of the largest (a pruned layer's exact zeros) are left out
  first. A layer with fewer than 8 such eigenvalues (weightwatcher's ``min_evals``; here a 1D
  CNN's first conv, one input channel) has no tail to fit and gets no alpha.
* **xmin**, three rules (:data:`XMIN_RULES`; they move alpha far more than any other detail):
  ``search``, weightwatcher's default (``fix_fingers=None``): every eigenvalue but the largest is
  tried and the fit with the smallest Kolmogorov-Smirnov distance between the fitted and the
  empirical tail CDF wins. ``xmin_mid``, AlphaPruning's rule for image classifiers: xmin is the
  upper median, the top half of the spectrum is the tail, no search. ``xmin_peak``,
  AlphaPruning's rule for language models (weightwatcher's ``fix_fingers="xmin_peak"``): the
  search only over xmin <= 1.5 x the peak of a 100-bin histogram of log10 eigenvalues (the left
  edge of its fullest bin); the published code's lower bound, log10(0.95 x peak), compares a
  logarithm with eigenvalues and is kept as written, so that allocations match its numbers.

weightwatcher finds no layer in a Conv1d model with kernels under 8 (it treats the (out, in, k)
tensor as one matrix and skips it when min(out, in, k) < 8), so its numbers for the MNIST-1D
demo's CNN do not exist to compare with; the per-position matrices here are its Conv2d rule.

The weightwatcher package itself is not used: it pulls in scikit-learn, powerlaw and matplotlib
for what is a few lines of torch here, and its small-spectrum branch (fewer than 20 eigenvalues)
changes the estimator. tests/test_spectra.py checks this code against a hand computation and
against samples of a known power law.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ZERO_FRACTION = 1e-10
MIN_EIGENVALUES = 8
XMIN_RULES = {
    "search": "xmin by the smallest KS distance over every eigenvalue (weightwatcher's default)",
    "xmin_mid": "xmin the upper median: the top half is the tail (AlphaPruning, image classifiers)",
    "xmin_peak": "KS search up to 1.5 x the log-histogram peak (AlphaPruning, language models)",
}


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float
    xmin: float
    ks_distance: float
    tail: int  # eigenvalues >= xmin


def layer_matrices(weight: torch.Tensor) -> torch.Tensor:
    """(positions, out, in): one (out, in) matrix per kernel position (a Linear weight: one)."""
    weight = weight.detach().double()
    if weight.dim() == 2:
        return weight.unsqueeze(0)
    return weight.flatten(2).permute(2, 0, 1)


def layer_eigenvalues(weight: torch.Tensor) -> torch.Tensor:
    """The pooled eigenvalues of W^T W over a layer's matrices, ascending (float64)."""
    return torch.sort((torch.linalg.svdvals(layer_matrices(weight)) ** 2).flatten()).values


def fit_power_law(eigenvalues: torch.Tensor, xmin_rule: str = "search") -> PowerLawFit:
    """Power-law tail fit with xmin chosen by ``xmin_rule`` (module docstring)."""
    if xmin_rule not in XMIN_RULES:
        raise ValueError(f"xmin rule {xmin_rule!r} is not one of {sorted(XMIN_RULES)}")
    x = torch.sort(eigenvalues.double().flatten()).values
    x = x[x > ZERO_FRACTION * x[-1]]
    n_all = len(x)
    if n_all < 3:
        raise ValueError(f"a power-law fit needs at least 3 nonzero eigenvalues, got {n_all}")
    logs = torch.log(x)
    tail_log_sums = logs.flip(0).cumsum(0).flip(0)  # sum of log x_j for j >= i
    best = None
    for i in _candidates(x, xmin_rule):
        n = n_all - i
        denominator = float(tail_log_sums[i] - n * logs[i])
        if denominator <= 0:
            continue  # all of the tail equals xmin
        alpha = 1 + n / denominator
        fitted = 1 - (x[i:] / x[i]) ** (1 - alpha)
        empirical = torch.arange(n, dtype=torch.float64) / n
        distance = float((fitted - empirical).abs().max())
        if best is None or distance < best.ks_distance:
            best = PowerLawFit(alpha, float(x[i]), distance, n)
    if best is None:
        raise ValueError("a power-law fit needs distinct eigenvalues")
    return best


def _candidates(x: torch.Tensor, xmin_rule: str) -> list[int]:
    """Indices of the sorted eigenvalues ``x`` tried as xmin."""
    if xmin_rule == "xmin_mid":
        return [len(x) // 2]
    every = range(len(x) - 1)
    if xmin_rule == "search":
        return list(every)
    log10 = torch.log10(x)
    counts = torch.histc(log10, bins=100, min=float(log10[0]), max=float(log10[-1]))
    edges = torch.linspace(float(log10[0]), float(log10[-1]), 101, dtype=torch.float64)
    peak = 10 ** float(edges[int(torch.argmax(counts))])
    low, high = math.log10(0.95 * peak), 1.5 * peak  # the published bounds, as written
    return [i for i in every if low <= float(x[i]) <= high]


def layer_alphas(layers: dict[str, torch.Tensor], xmin_rule: str = "search") -> dict[str, float]:
    """alpha of every given weight with at least MIN_EIGENVALUES nonzero eigenvalues, by name
    (insertion order kept); smaller layers are left out."""
    alphas = {}
    for name, weight in layers.items():
        eigenvalues = layer_eigenvalues(weight)
        if int((eigenvalues > ZERO_FRACTION * eigenvalues[-1]).sum()) >= MIN_EIGENVALUES:
            alphas[name] = fit_power_law(eigenvalues, xmin_rule).alpha
    return alphas


def alpha_metrics(model: nn.Module, data=None, settings=None) -> dict:
    """The weight_alpha metrics of one model (threeregime.registry.metrics): the layer mean and
    the per-layer alphas, xmin by ``metrics.weight_alpha_xmin``."""
    rule = settings.option("weight_alpha_xmin") if settings is not None else "search"
    alphas = list(model_alphas(model, rule).values())
    if not alphas:
        raise ValueError("metrics.weight_alpha: no prunable layer has enough eigenvalues to fit alpha")
    return {"weight_alpha": sum(alphas) / len(alphas), "weight_alpha_layers": alphas}


def model_alphas(model: nn.Module, xmin_rule: str = "search") -> dict[str, float]:
    """alpha of every prunable layer of a model large enough to fit: the layers pruning
    allocates over."""
    from threeregime.compute.models import prunable_layers

    return layer_alphas(prunable_layers(model), xmin_rule)
