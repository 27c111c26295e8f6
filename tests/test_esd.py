"""Hessian eigenvalue density by stochastic Lanczos quadrature: the quadrature's exactness on the
exact Hessian of a tiny model, and the optional metric through the workflow to its figure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from threeregime.compute.hessian import HessianOperator, HessianSettings, hessian_summary, lanczos
from threeregime.views.plot import broadened_density

from .test_metrics import _exact_hessian, _tiny_problem


@pytest.mark.parametrize("masked", [False, True])
def test_quadrature_reproduces_the_moments_of_the_exact_hessian(masked):
    """After m Lanczos steps from unit q: sum_k w_k node_k^j = q^T H^j q for j <= 2m - 1."""
    model, x, y, masks = _tiny_problem(masked, random_bn=True)
    hessian = _exact_hessian(model, x, y, masks)
    _, steps, basis = lanczos(HessianOperator(model, x, y, masks), 6, 0.0, seed=0, min_products=6)
    assert steps == 6
    nodes, weights = (torch.tensor(v, dtype=torch.float64) for v in basis.spectral_density())
    q = basis.vectors[0].double()
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    power = q.clone()
    for j in range(1, 2 * steps):
        power = hessian @ power
        exact = float(q @ power)
        assert float((weights * nodes**j).sum()) == pytest.approx(
            exact, rel=1e-6, abs=1e-9 * abs(exact) + 1e-12
        ), j


def test_a_closed_krylov_space_gives_the_exact_eigenvalues():
    model, x, y, masks = _tiny_problem(True)
    hessian = _exact_hessian(model, x, y, masks)
    settings = HessianSettings(200, 0.0, probes=2, probe_batch=2, deflation=200, density=True)
    summary = hessian_summary(model, x, y, masks, settings)
    nodes = np.array(summary["hessian_esd_nodes"])
    weights = np.array(summary["hessian_esd_weights"])
    eigenvalues = torch.linalg.eigvalsh(hessian).numpy()
    for node in nodes[weights > 1e-10]:  # every node with weight is an eigenvalue of P H P
        assert np.min(np.abs(eigenvalues - node)) < 1e-8 * max(1.0, abs(node))
    assert summary["hessian_top_eigenvalue"] == pytest.approx(nodes[np.abs(nodes).argmax()], rel=1e-10)
    plain = hessian_summary(model, x, y, masks, HessianSettings(200, 0.0, 2, 2, deflation=200))
    assert "hessian_esd_nodes" not in plain
    assert {
        k: v for k, v in summary.items() if not k.startswith("hessian_esd")
    } == plain  # nothing else moves


def test_broadened_density_integrates_to_one():
    grid = np.linspace(-5, 15, 20001)
    density = broadened_density([0.0, 10.0], [0.25, 0.75], grid, sigma=0.3)
    assert np.trapezoid(density, grid) == pytest.approx(1.0, rel=1e-6)
    assert density[np.argmin(np.abs(grid - 10))] == pytest.approx(0.75 / (0.3 * np.sqrt(2 * np.pi)), rel=1e-4)


def test_density_probes_and_steps_are_separate_lanczos_runs_averaged():
    """metrics.hessian_esd_probes x hessian_esd_steps: each probe is its own Lanczos run from its
    own random start; the nodes of all probes, weights divided by the probes."""
    model, x, y, masks = _tiny_problem(True, random_bn=True)
    hessian = _exact_hessian(model, x, y, masks)
    settings = HessianSettings(20, 1e-3, 2, 2, density=True, density_probes=3, density_steps=5)
    summary = hessian_summary(model, x, y, masks, settings)
    nodes = torch.tensor(summary["hessian_esd_nodes"], dtype=torch.float64)
    weights = torch.tensor(summary["hessian_esd_weights"], dtype=torch.float64)
    assert len(nodes) == 15 and float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    op = HessianOperator(model, x, y, masks)
    starts = [lanczos(op, 5, 0.0, seed=settings.seed + 2 + p, min_products=5)[2].vectors[0] for p in range(3)]
    for j in (1, 2, 3):  # the mean over the probes' starts q of q^T H^j q, exactly (j <= 2 x 5 - 1)
        exact = np.mean(
            [float(q.double() @ torch.linalg.matrix_power(hessian, j) @ q.double()) for q in starts]
        )
        assert float((weights * nodes**j).sum()) == pytest.approx(exact, rel=1e-6)
    default = hessian_summary(model, x, y, masks, HessianSettings(20, 1e-3, 2, 2, density=True))
    assert summary["hessian_products"] == default["hessian_products"] + 15
    assert len(default["hessian_esd_nodes"]) == default["hessian_eig_iterations"]  # the top run itself
