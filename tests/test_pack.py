"""Packed training (threeregime.compute.pack): R runs in one set of kernels are the R separate runs.

Each run of a pack has its own weights, masks, data stream and (for SAM) its own gradient norm;
the packed result must match separate ``train`` calls, for SGD and SAM, dense and masked, with
augmentation and channels_last, and across a resume.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from threeregime.compute.data import DeviceData
from threeregime.compute.evaluate import evaluate, evaluate_runs
from threeregime.compute.models import init_model
from threeregime.compute.pack import Packed, PackError
from threeregime.compute.prune import compute_masks
from threeregime.compute.runtime import Performance
from threeregime.compute.train import RunSet, train, train_runs
from threeregime.config.settings import ModelConfig, Recipe

from .test_fastpaths import cifar_payload


def _models(name: str, seeds, in_channels: int, width: float = 0.25) -> list[nn.Module]:
    return [init_model(ModelConfig(name=name, width=width), in_channels, 10, seed) for seed in seeds]


def _assert_states_close(ours: dict, reference: dict, atol: float) -> None:
    """Same epoch, iteration and history; weights and momentum within ``atol`` (rtol 1e-5)."""
    assert ours["epoch"] == reference["epoch"] and ours["iteration"] == reference["iteration"]
    pairs = [(f"model.{k}", ours["model"][k], v) for k, v in reference["model"].items()]
    buffers = zip(ours["optimizer"]["momentum_buffers"], reference["optimizer"]["momentum_buffers"])
    pairs += [(f"momentum {i}", a, b) for i, (a, b) in enumerate(buffers)]
    rtol = 1e-5 if atol else 0.0
    for name, a, b in pairs:
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    for mine, theirs in zip(ours["history"], reference["history"], strict=True):
        for field in ("train_loss", "train_error", "test_loss", "test_error", "lr"):
            assert mine[field] == pytest.approx(theirs[field], rel=rtol, abs=atol), field


@pytest.mark.parametrize("name,in_channels", [("cnn1d", 1), ("preresnet20", 3), ("vgg16_bn", 3)])
def test_packed_forward_and_backward_equal_the_separate_models(name, in_channels):
    torch.manual_seed(0)
    models = _models(name, (1, 2, 3), in_channels)
    shape = (8, in_channels, 40) if name == "cnn1d" else (8, in_channels, 32, 32)
    xs = [torch.randn(shape) for _ in models]
    packed = Packed(models)
    out = packed.logits(packed.model(packed.inputs(xs)))  # train mode: BN uses batch statistics
    out.square().sum().backward()
    for r, (model, x) in enumerate(zip(models, xs)):
        expected = model(x)
        expected.square().sum().backward()
        torch.testing.assert_close(out[r], expected, rtol=0, atol=1e-5)
        grads = packed.split(packed.model.fc.weight.grad)
        torch.testing.assert_close(grads[r], model.fc.weight.grad, rtol=0, atol=1e-5)
    for r, state in enumerate(packed.states()):  # BN running statistics moved per run
        for key, value in models[r].state_dict().items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)


def _flatten_mlp(seed: int) -> nn.Module:
    """A model with Flatten, Dropout (off in eval) and a hidden Linear layer: an MLP head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 38, 16), nn.GELU(),
        nn.Dropout(0.0), nn.Linear(16, 10),
    )  # fmt: skip


def test_models_with_flatten_and_an_mlp_head_pack_exactly():
    models = [_flatten_mlp(seed) for seed in (1, 2)]
    xs = [torch.randn(5, 1, 40) for _ in models]
    packed = Packed(models)
    out = packed.logits(packed.model(packed.inputs(xs)))
    for r, (model, x) in enumerate(zip(models, xs)):
        torch.testing.assert_close(out[r], model(x), rtol=0, atol=1e-5)
    masks = [compute_masks(m, 0.5, "uniform") for m in models]
    assert set(masks[0]) == {"0.weight", "3.weight"}  # conv and hidden Linear; the classifier is kept


def _mnist_runs(mnist1d_payload, optimizer: str):
    data = DeviceData(mnist1d_payload, "cpu")
    recipe = Recipe(epochs=2, batch_size=64, lr=0.05, optimizer=optimizer, sam_rho=0.05)
    models = _models("cnn1d", (1, 1, 2), 1)  # two runs share an init, as a cell's retrain seeds do
    masks = [compute_masks(m, d, "uniform") for m, d in zip(models, (0.2, 0.5, 1.0))]
    masks[2] = None  # a dense run packed with sparse ones
    streams = [(1, 1), (1, 2), (1, 3)]
    return data, recipe, models, masks, streams


@pytest.mark.parametrize("optimizer", ["sgd", "sam"])
def test_packed_training_equals_separate_runs(mnist1d_payload, optimizer):
    data, recipe, models, masks, streams = _mnist_runs(mnist1d_payload, optimizer)
    originals = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    packed_states = train_runs(RunSet(models, streams, masks), data, recipe, eval_batch_size=128)
    for model, original in zip(models, originals):  # packing trains a copy
        assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())
    for r, (model, mask, stream) in enumerate(zip(models, masks, streams)):
        reference = train(model, data, recipe, stream, masks=mask, eval_batch_size=128)
        _assert_states_close(packed_states[r], reference, atol=2e-5)
        for name, m in (mask or {}).items():
            assert not packed_states[r]["model"][name][~m].any(), f"run {r}: pruned weights of {name} moved"
    assert packed_states[0]["history"][-1]["train_loss"] != packed_states[1]["history"][-1]["train_loss"]


def test_packed_image_runs_with_augmentation_and_channels_last():
    """PreResNet on CIFAR-shaped data: device augmentation per stream, channels_last packing."""
    payload = cifar_payload(128)
    recipe = Recipe(epochs=1, iterations=1, batch_size=32, lr=0.05)
    streams = [(1, 1), (1, 2)]
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        data = DeviceData(payload, "cpu", channels_last)
        models = [m.to(memory_format=fmt) for m in _models("preresnet20", (4, 4), 3)]
        masks = [compute_masks(models[0], 0.3, "lamp")] * 2
        perf = Performance(channels_last=channels_last)
        packed = train_runs(RunSet(models, streams, masks), data, recipe, perf=perf)
        references = [
            train(copy.deepcopy(m), data, recipe, s, masks=k, perf=perf)
            for m, s, k in zip(models, streams, masks)
        ]
        # One step, compared with atol 1e-3: the plain fp32 conv1 weight gradient of run 1's
        # batch is itself 2.2e-4 away from float64 (oneDNN; the packed one is 1e-8 away), while
        # another run's batch or augmentation moves the gradients by more than 1e-2.
        for r in range(2):
            _assert_states_close(packed[r], references[r], atol=1e-3)
        with pytest.raises(AssertionError, match="not close"):
            _assert_states_close(packed[1], references[0], atol=1e-2)


def test_packed_resume_is_bit_identical(mnist1d_payload):
    data, recipe, models, masks, streams = _mnist_runs(mnist1d_payload, "sgd")
    whole = train_runs(RunSet(models, streams, masks), data, recipe)
    halves = train_runs(RunSet(models, streams, masks), data, recipe, stop_epoch=1)
    resumed = train_runs(RunSet(models, streams, masks, states=halves), data, recipe)
    for a, b in zip(whole, resumed):
        _assert_states_close(b, a, atol=0)
    for mixed in ([halves[0], None, halves[2]], [None, halves[1], halves[2]]):
        with pytest.raises(ValueError, match="same epoch and iteration"):
            train_runs(RunSet(models, streams, masks, states=mixed), data, recipe)


def test_evaluate_runs_matches_evaluate(mnist1d_payload):
    data = DeviceData(mnist1d_payload, "cpu")
    models = _models("cnn1d", (1, 2), 1)
    batches = lambda: data.eval_batches("test", 50)  # noqa: E731
    packed = evaluate_runs(Packed(models), batches())
    for model, (loss, error) in zip(models, packed):
        expected_loss, expected_error = evaluate(model, batches())
        assert loss == pytest.approx(expected_loss, abs=1e-6) and error == expected_error


def test_packed_bf16_autocast_keeps_the_dtypes_of_separate_models():
    models = _models("preresnet20", (1, 2), 3)
    xs = [torch.randn(4, 3, 32, 32) for _ in models]
    packed = Packed(models)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = packed.logits(packed.model(packed.inputs(xs)))
        separate = [model(x) for model, x in zip(models, xs)]
    assert out.dtype == separate[0].dtype == torch.bfloat16
    for r, expected in enumerate(separate):  # bf16 rounding of the logits, not a different model
        torch.testing.assert_close(out[r].float(), expected.float(), rtol=0.02, atol=0.02)


def test_a_given_packed_model_is_trained_in_place(mnist1d_payload):
    data, recipe, models, masks, streams = _mnist_runs(mnist1d_payload, "sgd")
    packed = Packed(models)
    states = train_runs(RunSet(packed, streams, masks), data, recipe)
    for state, current in zip(states, packed.states()):
        assert all(torch.equal(state["model"][k], v) for k, v in current.items())
    _assert_states_close(states[1], train_runs(RunSet(models, streams, masks), data, recipe)[1], atol=0)


def test_unpackable_models_are_refused():
    class WithLayerNorm(nn.Module):  # normalises across features: run r would see run s's
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.norm = nn.LayerNorm(4)

        def forward(self, x):
            return self.fc(self.norm(x))

    refusal = "cannot pack the model's LayerNorm layer .*set runtime.retrain_pack: none"
    with pytest.raises(PackError, match=refusal):
        Packed([WithLayerNorm(), WithLayerNorm()])
    with pytest.raises(ValueError, match="model 1 is not the architecture of model 0"):
        Packed(_models("cnn1d", (1,), 1) + _models("cnn1d", (1,), 1, width=0.5))
    with pytest.raises(ValueError, match="2 models need as many streams"):
        train_runs(RunSet(_models("cnn1d", (1, 2), 1), [(1, 1)]), None, Recipe())


def test_retrain_command_refuses_two_runs_with_one_output(capsys):
    from threeregime.cli import main

    runs = ["--run", "p.pt", "out.pt", "1", "--run", "p.pt", "out.pt", "2"]
    assert main(["retrain", "--spec", "{}", "--data", "d.pt", *runs]) == 1
    assert "retrain: error: two --run flags write the same output" in capsys.readouterr().err
