"""The knob registry: every knob fact derives from one entry; new knobs run end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import yaml

from threeregime.analysis.advice import knob_action
from threeregime.compute.data import noisy_labels
from threeregime.config.load import load_config
from threeregime.config.schema import schema as _schema
from threeregime.config.settings import ConfigError
from threeregime.config.specs import to_json
from threeregime.registry.knobs import KNOBS, Knob

from .conftest import REPO, SNAKEFILE, TINY_CONFIG, snakemake, write_config

# Each new knob, a tiny grid and the base recipe value it must leave alone in retraining.
NEW_KNOBS = {
    "lr": [0.02, 0.05],
    "weight_decay": [0.0001, 0.01],
    "label_noise": [0, 0.5],
}


def _config(name: str, values: list) -> dict:
    config = json.loads(json.dumps(TINY_CONFIG))
    config["knob"] = {"name": name, "values": values}
    return config


def test_schema_knob_enum_is_the_registry():
    assert _schema()["properties"]["knob"]["properties"]["name"]["enum"] == list(KNOBS)
    assert {"epochs", "batch_size", "sam_rho", "lr", "weight_decay", "label_noise"} <= set(KNOBS)


@pytest.mark.parametrize("name", list(NEW_KNOBS))
def test_each_temperature_is_its_own_dense_run_with_the_field_set(name):
    values = NEW_KNOBS[name]
    cfg = load_config(_config(name, values))
    assert cfg.temperatures == [str(v) if v else "0" for v in values]  # larger = hotter
    specs = {t: cfg.dense_spec(t, 1) for t in cfg.temperatures}
    for t, spec in specs.items():
        assert cfg.dense_parent(t) is None and spec["stop_epoch"] is None
        assert spec["recipe"].get(name, 0.0) == float(t)
        assert spec["recipe"]["optimizer"] == "sgd"
    assert to_json(specs[cfg.temperatures[0]]) != to_json(specs[cfg.temperatures[1]])
    retrain = cfg.retrain_spec()["recipe"]
    base = {"lr": 0.05, "weight_decay": 1e-4}
    if name == "label_noise":  # dense training only: retraining keeps clean labels
        assert "label_noise" not in retrain and "label_noise_seed" not in retrain
        assert specs["0"]["recipe"].keys() == retrain.keys()  # no noise: no noise keys at all
        assert specs["0.5"]["recipe"]["label_noise_seed"] == 0
    else:
        assert retrain[name] == base[name]


def test_reference_temperature_is_the_base_recipes_value():
    cfg = load_config(_config("lr", [0.02, 0.05, 0.2]))  # train.lr = 0.05 in the tiny config
    assert cfg.analysis_spec()["regimes"]["reference_temperature"] == 0.05
    cfg = load_config(_config("weight_decay", [0.001, 0.01]))  # 1e-4 not on the grid: coldest
    assert cfg.analysis_spec()["regimes"]["reference_temperature"] == 0.001
    cfg = load_config(_config("label_noise", [0.2, 0, 0.1]))
    assert cfg.temperatures == ["0", "0.1", "0.2"]
    assert cfg.analysis_spec()["regimes"]["reference_temperature"] == 0.0


def test_advice_words_come_from_the_entry():
    assert knob_action("lr", "raise") == "larger lr" and knob_action("lr", "lower") == "smaller lr"
    assert knob_action("weight_decay", "raise") == "stronger weight decay"
    assert knob_action("label_noise", "lower") == "less label noise"


@pytest.mark.parametrize(
    ("name", "values", "message"),
    [
        ("label_noise", [0.1, 1], "[1]: 1 is not a valid train.label_noise: 1.0 is greater than or equal"),
        ("lr", [0, 0.1], "[0]: 0 is not a valid train.lr: 0.0 is less than or equal to the minimum of 0"),
        ("epochs", [0, 1], "[0]: 0 is not a valid train.epochs: 0 is less than the minimum of 1"),
        ("batch_size", [2.5], "[0]: 2.5 must be a whole number for knob batch_size"),
    ],
)
def test_knob_values_are_checked_as_values_of_their_field(name, values, message):
    config = _config(name, values)
    if name == "batch_size":
        config["train"]["iterations"] = 5
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert f"config: knob.values{message}" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"field": "learning_rate"}, "half: field 'learning_rate' is not a field of the training recipe"),
        ({"hotter": 0}, "half: hotter must be +1 or -1, got 0"),
        ({"words": ("more",)}, "half: words must be two phrases"),
        ({"schedule": "checkpoints"}, "half: only the epochs field can be read from checkpoints"),
        ({"why": ""}, "half: why is empty"),
    ],
)
def test_a_half_registered_knob_fails_validation_in_one_line(monkeypatch, tiny_config, entry, message):
    fields = dict(
        name="half", field="momentum", schedule="runs", hotter=1, why="w", label="l", unit="u",
        words=("a", "b"), integer=False, retrain="r",
    )  # fmt: skip
    monkeypatch.setitem(KNOBS, "half", Knob(**(fields | entry)))
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config)  # any config: a broken registry is never used silently
    assert str(info.value).startswith(f"knob registry: {message}") and "\n" not in str(info.value)


def test_noisy_labels_are_exact_nested_and_seeded():
    labels = torch.arange(1000) % 10
    noisy = {f: noisy_labels(labels, f, seed=3, num_classes=10) for f in (0.0, 0.1, 0.3)}
    assert torch.equal(noisy[0.0], labels)
    wrong = {f: noisy[f] != labels for f in noisy}
    assert int(wrong[0.1].sum()) == 100 and int(wrong[0.3].sum()) == 300  # never the true class
    assert torch.equal(noisy[0.3][wrong[0.1]], noisy[0.1][wrong[0.1]])  # nested, same classes
    assert torch.equal(noisy_labels(labels, 0.3, 3, 10), noisy[0.3])
    assert not torch.equal(noisy_labels(labels, 0.3, 4, 10), noisy[0.3])
    counts = torch.bincount(noisy[0.3][wrong[0.3]], minlength=10)
    assert counts.min() >= 15  # spread over the classes (30 expected each)


def test_training_with_label_noise_is_training_on_the_noisy_labels(mnist1d_payload):
    """The recipe's label noise reaches the training loop: the same run as one given the noisy
    labels by hand, and a different run from the clean one."""
    from threeregime.compute.data import DeviceData
    from threeregime.compute.models import init_model
    from threeregime.compute.train import train
    from threeregime.config.settings import ModelConfig, Recipe

    data = DeviceData(mnist1d_payload, "cpu")
    recipe = Recipe(epochs=1, batch_size=64, lr=0.05)
    noisy = Recipe(epochs=1, batch_size=64, lr=0.05, label_noise=0.4, label_noise_seed=7)
    by_hand = DeviceData(mnist1d_payload, "cpu")
    by_hand.train_y = noisy_labels(data.train_y, 0.4, 7, data.num_classes)
    assert int((by_hand.train_y != data.train_y).sum()) == round(0.4 * data.num_train)
    states = [
        train(init_model(ModelConfig(width=0.25), 1, 10, 1), d, r, stream=(0, 1))
        for d, r in ((data, noisy), (by_hand, recipe), (data, recipe))
    ]
    for name, value in states[0]["model"].items():
        torch.testing.assert_close(value, states[1]["model"][name], rtol=0, atol=0, msg=name)
    assert states[0]["history"][0]["train_loss"] == states[1]["history"][0]["train_loss"]
    assert abs(states[0]["history"][0]["train_loss"] - states[2]["history"][0]["train_loss"]) > 1e-3
    assert torch.equal(data.train_y, torch.as_tensor(mnist1d_payload["train_y"]))  # clean copy kept


# ----------------------------------------------------------------------------- a throw-away knob
REGISTER_AND_RUN = """
import sys
from threeregime.registry.knobs import Knob, register
register(Knob(
    name="momentum", field="momentum", schedule="runs", hotter=-1,
    why="throw-away test knob", label="dense momentum", unit="beta",
    words=("more momentum", "less momentum"), integer=False, retrain="the base momentum",
))
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


def test_a_knob_registered_in_one_place_validates_and_dry_runs(tmp_path):
    """One register() call, nothing else: validation, specs and the DAG follow from the entry."""
    config = _config("momentum", [0.5, 0.9])
    config["prune"]["densities"] = [0.5]
    write_config(tmp_path, config)
    command = [sys.executable, "-c", REGISTER_AND_RUN, "-s", str(SNAKEFILE), "--directory", str(tmp_path)]
    plan = subprocess.run([*command, "-n", "--cores", "1"], capture_output=True, text=True, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr[-2000:]
    counts = {line.split()[0]: line.split()[1] for line in plan.stdout.splitlines() if len(line.split()) == 2}
    assert counts.get("dense_train") == "2" and counts.get("retrain") == "4" and counts.get("metrics") == "2"
    assert "dense/momentum-0.9/seed1/model.pt" in plan.stdout
    # without the registration the same config is refused in one line, naming the key
    refused = snakemake(tmp_path, "-n", check=False)
    assert refused.returncode != 0
    assert "knob.name: 'momentum' is not one of" in refused.stdout + refused.stderr


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.parametrize("name", list(NEW_KNOBS))
def test_new_knob_runs_end_to_end_through_the_workflow(tmp_path, name):
    """Two temperatures x one density through every rule; the dense runs got their field."""
    from threeregime.io.files import load_checkpoint

    values = NEW_KNOBS[name]
    config = _config(name, values)
    config["prune"]["densities"] = [0.5]
    write_config(tmp_path, config)
    snakemake(tmp_path)
    results = tmp_path / "results" / "tiny"
    cells = pd.read_csv(results / "cells.csv")
    assert sorted(cells["temperature"]) == sorted(float(v) for v in values) and set(cells["knob"]) == {name}
    assert (results / "phase_diagram.png").stat().st_size > 1000
    advice = pd.read_csv(results / "advice.csv")
    words = set(KNOBS[name].words) | {"keep"}
    assert set(advice["advice_knob"]) <= words
    dense = {
        v: load_checkpoint(results / "dense" / f"{name}-{v}" / "seed1" / "model.pt", "dense") for v in values
    }
    for value, payload in dense.items():
        assert payload["spec"]["recipe"].get(name, 0.0) == value
        history = payload["state"]["history"]
        assert len(history) == 3 and history[-1]["lr"] > 0
    if name == "label_noise":  # dense training only: retraining had the clean labels
        retrained = load_checkpoint(next((results / "retrain").rglob("model.pt")), "retrain")
        assert "label_noise" not in retrained["spec"]["recipe"]
    summary = yaml.safe_load((results / "summary.json").read_text())
    assert summary["advice"]["reference_temperature"] == pytest.approx(
        {"lr": 0.05, "weight_decay": 0.0001, "label_noise": 0.0}[name]
    )


def test_overlays_of_the_new_knobs_validate_over_the_demo():
    from snakemake.utils import update_config

    for name, knob in [("lr", "lr"), ("weight-decay", "weight_decay"), ("label-noise", "label_noise")]:
        merged = yaml.safe_load((REPO / "config.yaml").read_text())
        overlay = REPO / "presets" / "overlays" / f"mnist1d-{name}.yaml"
        update_config(merged, yaml.safe_load(overlay.read_text()))
        cfg = load_config(merged, source=name)
        assert cfg.knob.name == knob and cfg.run_name == f"mnist1d-{name}"
        specs = {to_json(cfg.dense_spec(t, 1)) for t in cfg.temperatures}
        assert len(cfg.temperatures) == 4 and len(specs) == 4
        reference = cfg.analysis_spec()["regimes"]["reference_temperature"]
        assert reference == float(getattr(cfg.train, knob))  # the demo's own value is on the grid
