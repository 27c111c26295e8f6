"""CIFAR-shaped data, models, knobs and pruning scores through the real code path, on CPU.

Nothing is downloaded: ``write_fake_cifar`` writes a tiny dataset in torchvision's on-disk
format (python pickles under cifar-10-batches-py/ or cifar-100-python/), and a test checks that
torchvision's own reader parses it exactly as ours does.
"""

from __future__ import annotations

import copy
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from threeregime.compute.data import CIFAR_STATS, DataError, DeviceData, data_generator, load_cifar
from threeregime.compute.models import build_model, init_model, prunable_layers
from threeregime.compute.train import make_schedule, train
from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError, DataConfig, ModelConfig, Recipe
from threeregime.registry.datasets import CIFAR_LAYOUT
from threeregime.registry.models import weight_shapes as conv_weight_shapes

CLASSES = {"cifar10": 10, "cifar100": 100}


def write_fake_cifar(
    root: Path, name: str = "cifar10", train: int = 64, test: int = 32, seed: int = 0
) -> Path:
    """A tiny ``name`` dataset in torchvision's python-pickle layout under ``root``; returns root.

    CIFAR-10: data_batch_1..5 + test_batch + batches.meta, labels under "labels". CIFAR-100: train
    + test + meta, labels under "fine_labels" (and "coarse_labels"). Each batch holds "data", an
    N x 3072 uint8 array of R, G, B planes of 32 x 32 pixels. Labels cycle through every class.
    """
    rng = np.random.default_rng(seed)
    layout = CIFAR_LAYOUT[name]
    folder = Path(root) / layout["folder"]
    folder.mkdir(parents=True, exist_ok=True)
    classes = CLASSES[name]
    train_split = np.array_split(np.arange(train), len(layout["train"]))
    files = [(f, len(part)) for f, part in zip(layout["train"], train_split)] + [(layout["test"][0], test)]
    offset = 0
    for file_name, count in files:
        labels = [(offset + i) % classes for i in range(count)]
        offset += count
        batch = {
            "batch_label": f"fake {file_name}",
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "filenames": [f"fake_{offset + i}.png" for i in range(count)],
            layout["label_key"]: labels,
        }
        if name == "cifar100":
            batch["coarse_labels"] = [label // 5 for label in labels]
        (folder / file_name).write_bytes(pickle.dumps(batch, protocol=2))
    if name == "cifar10":
        meta = {
            "label_names": [f"class{i}" for i in range(10)],
            "num_cases_per_batch": 10000,
            "num_vis": 3072,
        }
    else:
        meta = {
            "fine_label_names": [f"f{i}" for i in range(100)],
            "coarse_label_names": [f"c{i}" for i in range(20)],
        }
    (folder / layout["meta"]).write_bytes(pickle.dumps(meta, protocol=2))
    return Path(root)


@pytest.fixture(scope="module")
def fake_cifar10(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("cifar"))


# ----------------------------------------------------------------------------- data
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fake_dataset_is_what_torchvision_reads_and_we_read_the_same(tmp_path, monkeypatch, name):
    import torchvision
    import torchvision.datasets.cifar as tv_cifar

    root = write_fake_cifar(tmp_path, name, train=40, test=12)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)  # fake md5s
    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    payload = load_cifar(DataConfig(name=name, root=str(root)))
    for split, train_flag in (("train", True), ("test", False)):
        reference = cls(str(root), train=train_flag, download=False)
        ours_x = payload[f"{split}_x"]
        assert ours_x.dtype == torch.uint8 and ours_x.shape[1:] == (3, 32, 32)
        assert np.array_equal(ours_x.permute(0, 2, 3, 1).numpy(), reference.data)  # torchvision: NHWC
        assert payload[f"{split}_y"].tolist() == list(reference.targets)
    assert payload["num_classes"] == CLASSES[name] and payload["in_channels"] == 3
    assert len(payload["train_y"]) == 40 and len(payload["test_y"]) == 12


def test_paper_normalization_constants():
    assert CIFAR_STATS["cifar10"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


def _config(root: Path | str, **edits) -> dict:
    config = {
        "run_name": "fake",
        "data": {"name": "cifar10", "root": str(root)},
        "model": {"name": "preresnet20", "width": 0.25},
        "train": {"epochs": 2, "batch_size": 16, "lr": 0.05},
        "knob": {"name": "epochs", "values": [1, 2]},
        "prune": {"method": "uniform", "densities": [0.3]},
        "seeds": {"dense": [1], "retrain": [1, 2]},
        "runtime": {"device": "cpu", "threads": 1},
    }
    return config | edits


def test_missing_dataset_fails_at_validation_naming_path_and_remedy(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path / "nowhere"), source="run.yaml")
    message = str(info.value)
    assert message.startswith("run.yaml: data.root: ") and "\n" not in message
    assert f"{tmp_path / 'nowhere' / 'cifar-10-batches-py'} not found" in message
    assert f"python -m threeregime fetch-data --name cifar10 --root {tmp_path / 'nowhere'}" in message
    assert "data.download: true" in message
    # an incomplete folder is caught at validation too, naming the missing files
    root = write_fake_cifar(tmp_path / "partial")
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py lacks data_batch_3, test_batch .*fetch-data"):
        load_config(_config(root))
    # download: true leaves the folder to torchvision (not contacted during validation)
    load_config(_config(tmp_path / "nowhere", data={"name": "cifar10", "root": "x", "download": True}))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "malformed CIFAR batch"),
        (lambda p: p.write_bytes(b"not a pickle"), "malformed CIFAR batch"),
        (
            lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4})),
            "4, 100",
        ),
        (
            lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]})),
            "0..9",
        ),
        (lambda p: p.write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8)})), "KeyError"),
        (lambda p: p.unlink(), "missing CIFAR file"),
    ],
    ids=["truncated", "not-a-pickle", "wrong-shape", "label-out-of-range", "no-labels", "missing-file"],
)
def test_malformed_dataset_fails_naming_file_and_remedy(tmp_path, damage, expected):
    root = write_fake_cifar(tmp_path)
    target = root / "cifar-10-batches-py" / "data_batch_2"
    damage(target)
    with pytest.raises(DataError) as info:
        load_cifar(DataConfig(name="cifar10", root=str(root)))
    message = str(info.value)
    assert message.startswith(str(target)) and expected in message and "fetch-data" in message


def test_prepare_data_cli_reports_bad_data_in_one_line(tmp_path, capsys):
    from threeregime.cli import main

    root = write_fake_cifar(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80garbage")
    spec, location = json.dumps({"name": "cifar10"}), json.dumps({"root": str(root)})
    assert (
        main(["prepare-data", "--spec", spec, "--location", location, "--out", str(tmp_path / "d.pt")]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("threeregime prepare-data: error: ") and "test_batch: malformed CIFAR batch" in err
    assert "\n" not in err and not (tmp_path / "d.pt").exists()


def test_batches_are_normalized_and_augmented_as_the_paper(fake_cifar10):
    payload = load_cifar(DataConfig(name="cifar10", root=str(fake_cifar10)))
    data = DeviceData(payload, "cpu")
    mean = torch.tensor(CIFAR_STATS["cifar10"][0]).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STATS["cifar10"][1]).view(1, 3, 1, 1)
    x, y = next(data.eval_batches("train", 10))
    torch.testing.assert_close(x, (payload["train_x"][:10].float() / 255 - mean) / std)
    assert torch.equal(y, payload["train_y"][:10])
    # training batches: each image is a 32x32 crop of the zero-padded (4 px) image, maybe mirrored
    generator = data_generator(torch.device("cpu"), 0, 1, 0)
    order = torch.randperm(data.num_train, generator=data_generator(torch.device("cpu"), 0, 1, 0))
    batch, labels = next(data.train_batches(16, generator))
    raw = payload["train_x"][order[:16]]
    assert torch.equal(labels, payload["train_y"][order[:16]])
    padded = (F.pad(raw.float() / 255, (4, 4, 4, 4)) - mean) / std  # zero pixels, then normalized
    saw_padding = False
    for i in range(16):
        windows = [padded[i, :, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(
            torch.allclose(batch[i], w, atol=1e-5) or torch.allclose(batch[i], w.flip(-1), atol=1e-5)
            for w in windows
        ), i
        saw_padding |= bool(torch.isclose(batch[i], -mean[0] / std[0], atol=1e-5).all(0).any())
    assert saw_padding, "zero padding must show up in some crops"


def test_drop_last_switch(fake_cifar10):
    data = DeviceData(load_cifar(DataConfig(name="cifar10", root=str(fake_cifar10))), "cpu")
    gen = lambda: data_generator(torch.device("cpu"), 3)  # noqa: E731
    assert [len(y) for _, y in data.train_batches(24, gen())] == [24, 24]
    assert [len(y) for _, y in data.train_batches(24, gen(), drop_last=False)] == [24, 24, 16]
    assert make_schedule(Recipe(batch_size=24), 64).steps_per_epoch == 2
    assert make_schedule(Recipe(batch_size=24, drop_last=False), 64).steps_per_epoch == 3
    # the paper's numbers: 782 steps of 64 per CIFAR-10 epoch (epochs knob), 62400 / 390 = 160
    assert make_schedule(Recipe(batch_size=64, drop_last=False), 50000).total_iterations == 160 * 782
    assert make_schedule(Recipe(batch_size=128, iterations=62400), 50000).total_epochs == 160


# ----------------------------------------------------------------------------- models
def _reference_preresnet_forward(model, x):
    """PreResNet written out with functional ops: pre-activation blocks, shortcut on block input."""

    def bn(m, t):
        return F.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    out = F.conv2d(x, model.conv1.weight, padding=1)
    for block in model.blocks:
        stride = block.conv1.stride
        h = F.conv2d(F.relu(bn(block.bn1, out)), block.conv1.weight, stride=stride, padding=1)
        h = F.conv2d(F.relu(bn(block.bn2, h)), block.conv2.weight, padding=1)
        shortcut = out if block.downsample is None else F.conv2d(out, block.downsample.weight, stride=stride)
        out = h + shortcut
    out = F.avg_pool2d(F.relu(bn(model.bn, out)), 8).flatten(1)
    return F.linear(out, model.fc.weight, model.fc.bias)


def test_preresnet20_is_the_papers_architecture():
    model = init_model(ModelConfig("preresnet20", 1.0), 3, 10, seed=0)
    convs = prunable_layers(model)
    assert len(convs) == 21
    shapes = [tuple(w.shape) for w in convs.values()]
    assert shapes[0] == (16, 3, 3, 3)
    assert {s[0] for s in shapes} == {16, 32, 64}
    downsample = {n: tuple(w.shape) for n, w in convs.items() if "downsample" in n}
    assert list(downsample.values()) == [(32, 16, 1, 1), (64, 32, 1, 1)]
    assert sum(s[2:] == (3, 3) for s in shapes) == 19
    assert (model.fc.in_features, model.fc.out_features) == (64, 10)
    assert sum(p.numel() for p in model.parameters()) == 272_282  # ~0.27M, as PreResNet-20
    with torch.no_grad():  # random BN statistics and affines, so the check is not trivial
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model(x), _reference_preresnet_forward(model, x), rtol=1e-4, atol=1e-5)
    # He-normal (fan_out) init as the paper's code: std sqrt(2 / (k * k * out_channels))
    w = init_model(ModelConfig("preresnet20", 1.0), 3, 10, seed=1).blocks[8].conv2.weight
    assert abs(w.std().item() / (2 / (9 * 64)) ** 0.5 - 1) < 0.05


def test_vgg16_bn_for_cifar():
    model = init_model(ModelConfig("vgg16_bn", 1.0), 3, 100, seed=0)
    convs = prunable_layers(model)
    assert len(convs) == 13
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 4
    assert (model.fc.in_features, model.fc.out_features) == (512, 100)
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0, 1.5])
@pytest.mark.parametrize(
    ("name", "data"), [("preresnet20", "cifar10"), ("vgg16_bn", "cifar100"), ("cnn1d", "mnist1d")]
)
def test_width_multiplier_and_torch_free_shapes_agree_with_the_modules(name, data, width):
    in_channels, classes = {"cifar10": (3, 10), "cifar100": (3, 100), "mnist1d": (1, 10)}[data]
    model = build_model(ModelConfig(name, width), in_channels, classes)
    actual = {n: tuple(w.shape) for n, w in prunable_layers(model).items()}
    assert conv_weight_shapes(name, width, data) == actual
    if name == "preresnet20":
        assert [actual[k][0] for k in ("conv1.weight", "blocks.3.conv1.weight", "blocks.6.conv1.weight")] == [
            max(1, round(c * width)) for c in (16, 32, 64)
        ]
    assert model.fc.out_features == classes


def test_model_names_are_validated(fake_cifar10):
    with pytest.raises(
        ValueError, match="unknown model 'resnet50'; choose one of cnn1d, preresnet20, resnet20, vgg16_bn"
    ):
        build_model(ModelConfig("resnet50"), 3, 10)
    root = fake_cifar10
    with pytest.raises(ConfigError, match="model.name: 'resnet32' is not one of"):
        load_config(_config(root, model={"name": "resnet32"}))
    with pytest.raises(
        ConfigError, match=re.escape("model.name: vgg16_bn needs data.name in {cifar10, cifar100}")
    ):
        load_config(_config(root, model={"name": "vgg16_bn"}, data={"name": "mnist1d"}))


# ----------------------------------------------------------------------------- SAM
def test_sam_step_is_non_adaptive_sam_over_sgd_with_frozen_bn_second_pass(fake_cifar10):
    """train(optimizer=sam) against SAM written out over torch.optim.SGD, batch by batch."""
    torch.set_num_threads(1)
    payload = load_cifar(DataConfig(name="cifar10", root=str(fake_cifar10)))
    data = DeviceData(payload, "cpu")
    recipe = Recipe(epochs=1, batch_size=16, lr=0.05, optimizer="sam", sam_rho=0.3, lr_milestones=())
    ours = init_model(ModelConfig("preresnet20", 0.25), 3, 10, seed=4)
    reference = copy.deepcopy(ours)
    train(ours, data, recipe, stream=(0, 9), eval_batch_size=64)

    sgd = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    norms = [m for m in reference.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    reference.train()
    for x, y in data.train_batches(16, data_generator(torch.device("cpu"), 0, 9, 0)):
        sgd.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        params = [p for p in reference.parameters()]
        with torch.no_grad():
            grad_norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
            steps = [0.3 * p.grad / (grad_norm + 1e-12) for p in params]
            for p, e in zip(params, steps):
                p.add_(e)
        stats = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
        sgd.zero_grad()
        F.cross_entropy(reference(x), y).backward()  # gradient at w + e(w)
        with torch.no_grad():
            for p, e in zip(params, steps):
                p.sub_(e)
            for m, (mean, var) in zip(norms, stats):  # the second pass leaves BN statistics alone
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
        sgd.step()
    for (name, a), b in zip(ours.state_dict().items(), reference.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=name)


# ----------------------------------------------------------------------------- smoke: knobs x scores
KNOB_CASES = {
    # knob: (knob section, train overrides, retrain recipe)
    "epochs": ({"name": "epochs", "values": [1, 2]}, {"epochs": 2, "drop_last": False}, {"epochs": 1}),
    "batch_size": ({"name": "batch_size", "values": [16, 32]}, {"iterations": 6}, {"iterations": 4}),
    "sam_rho": ({"name": "sam_rho", "values": [0.2]}, {"epochs": 1}, {"epochs": 1}),
}


@pytest.mark.parametrize("knob", list(KNOB_CASES))
def test_smoke_each_knob_and_each_pruning_score_through_the_cli(tmp_path, fake_cifar10, knob, capsys):
    """One tiny cell per knob, pruned with uniform, global and LAMP scores: the commands the rules run.

    The specs are the ones the Snakefile passes (ExperimentConfig.*_spec), the files are real
    checkpoints, and the epochs knob continues its dense run from the previous grid epoch.
    """
    from threeregime.cli import main
    from threeregime.io.files import load_checkpoint

    knob_section, train_edits, retrain_recipe = KNOB_CASES[knob]
    config = _config(
        fake_cifar10,
        knob=knob_section,
        train={"batch_size": 16, "lr": 0.05, **train_edits},
        retrain={"mode": "rewind", "recipe": retrain_recipe},
        metrics={
            "hessian_samples": 16,
            "hessian_max_iter": 3,
            "hessian_probes": 2,
            "hessian_probe_batch": 2,
            "hessian_trace_deflation": 2,
        },
    )
    cfgs = {
        m: load_config(config | {"prune": {"method": m, "densities": [0.3]}})
        for m in ("uniform", "global", "lamp")
    }
    cfg = cfgs["uniform"]
    compute = ["--runtime", json.dumps({"device": "cpu"}), "--threads", "1"]
    data = str(tmp_path / "data.pt")
    location = ["--location", json.dumps(cfg.data_location())]
    assert main(["prepare-data", "--spec", json.dumps(cfg.data_spec()), *location, "--out", data]) == 0

    dense, previous = {}, ""
    for temperature in sorted(cfg.temperatures, key=float):
        out = str(tmp_path / f"dense-{temperature}.pt")
        init = previous if cfg.dense_parent(temperature) else ""
        spec = json.dumps(cfg.dense_spec(temperature, 1))
        assert main(["dense", "--spec", spec, "--data", data, "--init", init, "--out", out, *compute]) == 0
        dense[temperature], previous = out, out
    checkpoint = load_checkpoint(dense[cfg.temperatures[0]], "dense")
    if knob == "epochs":  # the coldest (2 epochs) continued the 1-epoch checkpoint
        assert [h["epoch"] for h in checkpoint["state"]["history"]] == [1, 2]
        assert checkpoint["state"]["iteration"] == 2 * 4  # 64 images, batch 16
    if knob == "batch_size":  # fixed iteration budget whatever the batch size
        for temperature, path in dense.items():
            saved = load_checkpoint(path, "dense")
            assert saved["state"]["iteration"] == 6 and saved["spec"]["recipe"]["batch_size"] == int(
                temperature
            )
            assert saved["spec"]["recipe"]["lr"] == 0.05  # the same lr for every batch size
    if knob == "sam_rho":
        assert (
            checkpoint["spec"]["recipe"]["optimizer"] == "sam"
            and checkpoint["spec"]["recipe"]["sam_rho"] == 0.2
        )

    temperature = cfg.temperatures[-1]
    for method, mcfg in cfgs.items():
        pruned = str(tmp_path / f"pruned-{method}.pt")
        spec = json.dumps(mcfg.prune_spec("0.3"))
        assert main(["prune", "--spec", spec, "--dense", dense[temperature], "--out", pruned]) == 0
        payload = load_checkpoint(pruned, "pruned")
        assert payload["density_actual"] == pytest.approx(0.3, abs=0.01)
        assert len(payload["masks"]) == 21 and not any(k.startswith("fc") for k in payload["masks"])
        retrained = []
        for seed in cfg.seeds.retrain:
            out = str(tmp_path / f"retrain-{method}-{seed}.pt")
            spec = json.dumps(mcfg.retrain_spec())
            assert (
                main(["retrain", "--spec", spec, "--data", data, "--run", pruned, out, str(seed), *compute])
                == 0
            )
            model = load_checkpoint(out, "retrain")
            assert model["spec"]["recipe"]["optimizer"] == "sgd"  # retraining is plain SGD
            for name, mask in model["masks"].items():
                assert not model["model"][name][~mask].any(), f"{name}: pruned weights moved"
            retrained.append(out)
        labels = [f"knob={knob}", f"temperature={temperature}", "density=0.3", "dense_seed=1"]
        labels += ["seed_a=1", "seed_b=2"]
        flags = [arg for label in labels for arg in ("--label", label)]
        out = tmp_path / f"metrics-{method}.json"
        spec = json.dumps(mcfg.metrics_spec())
        args = ["metrics", "--spec", spec, "--data", data, "--a", retrained[0], "--b", retrained[1]]
        assert main([*args, *flags, "--out", str(out), *compute]) == 0
        result = json.loads(out.read_text())
        assert len(result["lmc_t"]) == 11 and len(result["lmc_train_error"]) == 11
        errors = result["lmc_train_error"]
        midpoint = (errors[0] + errors[-1]) / 2
        assert result["mc"] == pytest.approx(max((midpoint - e for e in errors), key=abs))
        assert 0 < result["cka_softmax"] <= 1 + 1e-9 and result["cka_samples"] == 64
        for model in result["models"]:
            assert 0 <= model["test_error"] <= 1 and np.isfinite(model["hessian_trace"])
    capsys.readouterr()
