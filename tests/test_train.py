"""Training loop: reference SGD semantics, LR schedule, augmentation, resume, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from threeregime.compute.data import DeviceData, crop_flip, data_generator
from threeregime.compute.models import init_model
from threeregime.compute.train import MomentumSGD, NonFiniteLossError, Schedule, train
from threeregime.config.settings import ModelConfig, Recipe


def test_momentum_sgd_matches_torch_optim():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    b = init_copy = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU(), torch.nn.Linear(7, 3))
    init_copy.load_state_dict(a.state_dict())
    ours = MomentumSGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    reference = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for step in range(6):
        x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
        for model, opt in ((a, ours), (b, reference)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if step == 3:  # a learning-rate change mid-run, as the schedule does
                opt.lr = 0.01 if opt is ours else None
                if opt is reference:
                    opt.param_groups[0]["lr"] = 0.01
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_schedule_steps_at_fractions_of_budget():
    schedule = Schedule(Recipe(epochs=160, lr=0.1, lr_milestones=(0.5, 0.75)), steps_per_epoch=10)
    assert schedule.total_iterations == 1600 and schedule.total_epochs == 160
    assert schedule.lr_at(799) == pytest.approx(0.1)
    assert schedule.lr_at(800) == pytest.approx(0.01)  # epoch 80
    assert schedule.lr_at(1200) == pytest.approx(0.001)  # epoch 120
    by_iterations = Schedule(Recipe(iterations=62400, batch_size=16), steps_per_epoch=3125)
    assert by_iterations.total_epochs == 20
    assert by_iterations.lr_at(31199) == pytest.approx(0.1) and by_iterations.lr_at(31200) == pytest.approx(
        0.01
    )


def test_crop_flip_is_a_padded_crop_or_its_mirror():
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = crop_flip(images, data_generator(torch.device("cpu"), 5), padding=2)
    padded = F.pad(images, (2, 2, 2, 2))
    for i in range(len(images)):
        windows = [padded[i, :, r : r + 8, c : c + 8] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(-1)) for w in windows)
    assert (out == 0).any(), "zero padding must show up in some crops"
    again = crop_flip(images, data_generator(torch.device("cpu"), 5), padding=2)
    assert torch.equal(out, again), "same generator seed, same augmentation"


def _run(payload, state=None, stop_epoch=None, epochs=4):
    model = init_model(ModelConfig(width=0.25), 1, 10, seed=7)
    data = DeviceData(payload, "cpu")
    saved = []
    final = train(
        model,
        data,
        Recipe(epochs=epochs, batch_size=64, lr=0.05),
        stream=(0, 7),
        state=state,
        stop_epoch=stop_epoch,
        on_epoch_end=lambda s: saved.append({k: v for k, v in s.items()}),
    )
    return final, saved


def test_resuming_from_an_epoch_reproduces_the_uninterrupted_run(mnist1d_payload):
    torch.set_num_threads(1)
    full, _ = _run(mnist1d_payload)
    first, snapshots = _run(mnist1d_payload, stop_epoch=2)
    # a fresh process would load the epoch-2 state from disk; deep-copy to be sure nothing is shared
    state = {k: v for k, v in snapshots[-1].items()}
    state["model"] = {k: v.clone() for k, v in state["model"].items()}
    state["optimizer"] = {"momentum_buffers": [b.clone() for b in state["optimizer"]["momentum_buffers"]]}
    resumed, _ = _run(mnist1d_payload, state=state)
    assert resumed["epoch"] == full["epoch"] == 4
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert [h["test_error"] for h in resumed["history"]] == [h["test_error"] for h in full["history"]]


def test_same_seed_same_numbers_different_seed_different(mnist1d_payload):
    a, _ = _run(mnist1d_payload, epochs=2)
    b, _ = _run(mnist1d_payload, epochs=2)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    model = init_model(ModelConfig(width=0.25), 1, 10, seed=7)
    other = train(
        model, DeviceData(mnist1d_payload, "cpu"), Recipe(epochs=2, batch_size=64, lr=0.05), stream=(0, 8)
    )
    assert not torch.equal(other["model"]["fc.weight"], a["model"]["fc.weight"])


def test_divergence_stops_with_a_clear_error(mnist1d_payload):
    model = init_model(ModelConfig(width=0.25), 1, 10, seed=7)
    with pytest.raises(NonFiniteLossError, match="training loss is (nan|inf) at epoch 1"):
        train(
            model, DeviceData(mnist1d_payload, "cpu"), Recipe(epochs=2, batch_size=64, lr=1e6), stream=(0, 1)
        )
