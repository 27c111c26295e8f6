"""Metric definitions: LMC (mc sign convention, BN recalibration), linear CKA, Hessian."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from threeregime.compute.data import DeviceData
from threeregime.compute.hessian import (
    HessianOperator,
    HessianSettings,
    hessian_summary,
    top_eigenvalue,
    trace,
)
from threeregime.compute.landscape import (
    barrier_height,
    linear_cka,
    linear_mode_connectivity,
    mode_connectivity,
    recalibrate_batchnorm,
    summarize_test_error,
)
from threeregime.compute.models import init_model
from threeregime.compute.prune import compute_masks
from threeregime.config.settings import ModelConfig

from .conftest import vector_payload
from .reference import pyhessian_reference


def test_mode_connectivity_sign_convention():
    assert mode_connectivity([0.1, 0.1, 0.1]) == (0.0, 0)
    mc, u = mode_connectivity([0.0, 0.3, 0.5, 0.2, 0.0])
    assert mc == pytest.approx(-0.5) and u == 2  # a barrier is negative
    mc, _ = mode_connectivity([0.2, 0.1, 0.2])
    assert mc == pytest.approx(0.1)  # a better midpoint is positive


def test_mode_connectivity_endpoint_ties_follow_the_paper_and_barrier_has_no_artefact():
    ts = [0.0, 0.5, 1.0]
    # no bump: the endpoints tie; like the paper's np.argmax the first wins, mc = (e1 - e0) / 2
    assert mode_connectivity([0.5, 0.25, 0.0]) == (pytest.approx(-0.25), 0)
    assert mode_connectivity([0.0, 0.25, 0.5]) == (pytest.approx(0.25), 0)
    # rounding must not flip the tie: 0.3 and 0.1 are not exact in binary
    for e0, e1 in [(0.3, 0.1), (0.7, 0.1), (0.1, 0.3)]:
        mc, u = mode_connectivity([e0, (e0 + e1) / 2, e1])
        assert u == 0 and mc == pytest.approx((e1 - e0) / 2)
    assert barrier_height([0.5, 0.25, 0.0], ts) == pytest.approx(0.0)
    assert barrier_height([0.1, 0.6, 0.0], ts) == pytest.approx(0.55)
    assert barrier_height([0.2, 0.1, 0.2], ts) == pytest.approx(0.0)  # better midpoint: no barrier


def test_lmc_is_zero_for_identical_endpoints(mnist1d_payload):
    model = init_model(ModelConfig(width=0.25), 1, 10, seed=0)
    data = DeviceData(mnist1d_payload, "cpu")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = linear_mode_connectivity(model, state, state, data, points=5, bn_samples=0, batch_size=256)
    assert result["mc"] == 0.0
    assert len(set(result["lmc_train_error"])) == 1 and len(result["lmc_t"]) == 5


def test_lmc_detects_a_planted_barrier():
    # Two networks computing the same function with their hidden units swapped: both endpoints
    # are perfect, the midpoint has all-zero first-layer weights and predicts one class only.
    x = torch.linspace(-1, 1, 200).view(-1, 1)
    x = x[x.abs().flatten() > 0.05]
    y = (x.flatten() > 0).long()
    data = DeviceData(vector_payload(x, y, 2), "cpu")
    model = nn.Sequential(nn.Linear(1, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    a = {"0.weight": torch.tensor([[1.0], [-1.0]]), "2.weight": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}
    b = {"0.weight": torch.tensor([[-1.0], [1.0]]), "2.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]])}
    result = linear_mode_connectivity(model, a, b, data, points=11, bn_samples=0, batch_size=64)
    assert result["lmc_train_error"][0] == 0.0 and result["lmc_train_error"][-1] == 0.0
    assert result["mc_t"] == pytest.approx(0.5)
    assert result["mc"] == pytest.approx(-0.5)
    assert result["barrier"] == pytest.approx(0.5)


def test_batchnorm_recalibration_gives_exact_training_statistics():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    x = torch.randn(300, 3) * 4 + 2
    batches = [(x[i : i + 64], None) for i in range(0, 300, 64)]
    recalibrate_batchnorm(model, batches)
    hidden = model[0](x).detach()
    bn = model[1]
    torch.testing.assert_close(bn.running_mean, hidden.mean(0))  # exact despite a short last batch
    torch.testing.assert_close(bn.running_var, hidden.var(0), rtol=0.05, atol=0)
    assert not bn.training and bn.momentum == 0.1


def test_cka_identity_scaling_and_rotation():
    torch.manual_seed(0)
    x = torch.randn(500, 10)
    y = torch.randn(500, 10)
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3.7 * x) == pytest.approx(1.0)
    assert linear_cka(x, y) == pytest.approx(linear_cka(2 * x, 0.5 * y))
    rotation, _ = torch.linalg.qr(torch.randn(10, 10))
    assert linear_cka(x, x @ rotation) == pytest.approx(1.0)
    assert linear_cka(x, y) < 0.1  # independent representations are dissimilar
    assert 0.0 <= linear_cka(x, x + 0.5 * y) <= 1.0


def test_test_error_is_mean_of_last_epochs():
    history = [{"test_error": e} for e in (0.9, 0.5, 0.3, 0.2, 0.1, 0.2, 0.3)]
    summary = summarize_test_error(history, last=5)
    assert summary["test_error"] == pytest.approx((0.3 + 0.2 + 0.1 + 0.2 + 0.3) / 5)
    assert summary["test_error_final"] == 0.3


def _exact_hessian(model, x, y, masks=None):
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    shapes = [p.shape for p in params]

    def loss(flat):
        chunks, start = {}, 0
        for name, shape in zip(names, shapes):
            chunks[name] = flat[start : start + shape.numel()].view(shape)
            start += shape.numel()
        out = torch.func.functional_call(model, chunks, (x,))
        return nn.functional.cross_entropy(out, y)

    hessian = torch.autograd.functional.hessian(loss, torch.cat([p.flatten() for p in params]))
    if masks:
        keep = torch.cat(
            [
                masks[n].flatten().double() if n in masks else torch.ones(s.numel())
                for n, s in zip(names, shapes)
            ]
        )
        hessian = hessian * keep[:, None] * keep[None, :]
    return hessian


def _tiny_problem(masked: bool, random_bn: bool = False):
    """A 75-parameter float64 conv net whose exact Hessian is cheap; optionally half pruned, and
    with random BatchNorm running statistics (not the identity map of a fresh BN)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 6, 3)
    ).double()
    if random_bn:
        with torch.no_grad():
            model[1].running_mean.normal_()
            model[1].running_var.uniform_(0.5, 2.0)
    model.eval()
    x, y = torch.randn(40, 1, 8, dtype=torch.double), torch.randint(0, 3, (40,))
    masks = compute_masks(model, 0.5, "uniform") if masked else None
    return model, x, y, masks


@pytest.mark.parametrize("masked", [False, True])
def test_hessian_matches_exact_hessian_on_tiny_model(masked):
    model, x, y, masks = _tiny_problem(masked)
    exact = _exact_hessian(model, x, y, masks)
    eigenvalues = torch.linalg.eigvalsh(exact)
    top = eigenvalues[eigenvalues.abs().argmax()]
    op = HessianOperator(model, x, y, masks)
    estimate, _ = top_eigenvalue(op, max_iter=500, tol=1e-10, seed=0)
    assert estimate == pytest.approx(float(top), rel=1e-4)
    value, stderr = trace(op, probes=4000, probe_batch=500, seed=1)
    assert abs(value - float(exact.trace())) < 4 * stderr
    assert stderr < 0.05 * abs(float(exact.trace()))
    # the probe batch is a speed setting only: the same probes, the same estimate
    assert trace(op, probes=12, probe_batch=5, seed=3) == pytest.approx(trace(op, 12, 1, seed=3), rel=1e-12)


def test_hessian_agrees_with_pyhessian():
    torch.manual_seed(1)
    model = init_model(ModelConfig(width=0.25), 1, 10, seed=3).double().eval()
    x, y = torch.randn(64, 1, 40, dtype=torch.double), torch.randint(0, 10, (64,))
    settings = HessianSettings(max_iter=200, tol=1e-8, probes=400, probe_batch=50)
    ours = hessian_summary(model, x, y, None, settings)
    reference = pyhessian_reference(model, x, y, max_iter=200, tol=1e-8, probes=400)
    assert ours["hessian_top_eigenvalue"] == pytest.approx(reference["hessian_top_eigenvalue"], rel=1e-3)
    assert abs(ours["hessian_trace"] - reference["hessian_trace"]) < 6 * ours["hessian_trace_stderr"]
    # the deflated estimator (the presets' default) estimates the same trace as PyHessian's
    deflated = hessian_summary(model, x, y, None, HessianSettings(200, 1e-8, 50, 50, deflation=10))
    assert deflated["hessian_top_eigenvalue"] == pytest.approx(reference["hessian_top_eigenvalue"], rel=1e-3)
    spread = math.hypot(deflated["hessian_trace_stderr"], ours["hessian_trace_stderr"])
    assert abs(deflated["hessian_trace"] - reference["hessian_trace"]) < 6 * spread


def _two_bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2), nn.BatchNorm1d(2))


def test_lmc_recomputes_batchnorm_in_bn_batch_size_batches():
    """metrics.lmc_bn_batch_size: train-mode passes use it, evaluation keeps eval_batch_size; a
    second BN sees inputs normalised per batch, so its recomputed statistics depend on it."""
    torch.manual_seed(1)
    x = torch.randn(200, 2) * 3 + 1
    data = DeviceData(vector_payload(x, (x[:, 0] > 1).long(), 2), "cpu")
    model = _two_bn_net()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[tuple[bool, int]] = []
    model[1].register_forward_hook(lambda m, inputs, out: seen.append((m.training, len(inputs[0]))))

    default = linear_mode_connectivity(model, state, state, data, points=3, bn_samples=0, batch_size=100)
    assert set(seen) == {(True, 100), (False, 100)}
    same = linear_mode_connectivity(model, state, state, data, 3, 0, 100, bn_batch_size=100)
    assert same == default
    seen.clear()
    small = linear_mode_connectivity(model, state, state, data, 3, 0, 100, bn_batch_size=30)
    assert [n for training, n in seen if training] == ([30] * 6 + [20]) * 3
    assert {n for training, n in seen if not training} == {100}
    stats_small = model[4].running_mean.clone()
    linear_mode_connectivity(model, state, state, data, 3, 0, 100)
    assert not torch.allclose(stats_small, model[4].running_mean, atol=1e-4)
    assert small["lmc_train_loss"] != default["lmc_train_loss"]
