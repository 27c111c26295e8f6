"""Lottery tickets: weight rewinding restores the dense weights at step k and the schedule there;
the random-mask and reinit controls keep the ticket's per-layer densities."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from threeregime.cli import main
from threeregime.config import ConfigError, DataConfig, ModelConfig, load_config, recipe_from_spec, to_json
from threeregime.data import DeviceData
from threeregime.io import load_checkpoint, save_checkpoint
from threeregime.models import init_model
from threeregime.tickets import control_seed, fresh_weights, rewind_state
from threeregime.train import RunSet, make_schedule, train_runs

from .conftest import TINY_CONFIG

STEPS = 7  # TINY_CONFIG: 600 MNIST-1D samples, 480 train, batch 64, drop_last


def _config(**retrain) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["retrain"] = {"mode": "rewind_weights", **retrain}
    return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from threeregime.data import prepare_dataset

    path = tmp_path_factory.mktemp("tickets") / "dataset.pt"
    save_checkpoint(path, prepare_dataset(DataConfig(num_samples=600, generation_seed=3)), "dataset")
    return path


def _prune(spec: dict, dense: Path, out: Path) -> int:
    return main(["prune", "--spec", to_json(spec), "--dense", str(dense), "--out", str(out)])


def _retrain(spec: dict, dataset: Path, pruned: Path, out: Path) -> int:
    return main(
        ["retrain", "--spec", to_json(spec), "--data", str(dataset), "--run", str(pruned), str(out), "1"]
    )


def _dense(cfg, dataset: Path, out: Path, temperature: str = "3") -> dict:
    spec = to_json(cfg.dense_spec(temperature, 1))
    assert main(["dense", "--spec", spec, "--data", str(dataset), "--out", str(out)]) == 0
    return load_checkpoint(out, "dense")


def test_lr_rewinding_keeps_its_old_name_and_every_spec():
    old = load_config(TINY_CONFIG | {"retrain": {"mode": "rewind"}})
    new = load_config(TINY_CONFIG | {"retrain": {"mode": "rewind_lr"}})
    for spec in ("retrain_spec", "metrics_spec", "analysis_spec"):
        assert to_json(getattr(old, spec)()) == to_json(getattr(new, spec)())
    assert to_json(old.dense_spec("3", 1)) == to_json(new.dense_spec("3", 1))
    weights = load_config(_config(rewind_step=5))
    assert weights.dense_spec("3", 1)["rewind_step"] == 5 and weights.retrain_spec()["rewind_step"] == 5
    assert weights.retrain_recipe() == old.retrain_recipe()  # the dense schedule, from step k


@pytest.mark.parametrize(
    ("retrain", "expected"),
    [
        ({"rewind_step": 8}, "retrain.rewind_step: 8 is past the shortest dense run (7 iterations)"),
        ({"rewind_step": -1}, "retrain.rewind_step: -1 is less than the minimum of 0"),
        ({"mode": "rewind_weight"}, "retrain.mode: 'rewind_weight' is not one of"),
    ],
)
def test_bad_rewinding_is_one_line(retrain, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(_config(**retrain), source="lt.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_dense_keeps_the_weights_at_step_k(dataset, tmp_path):
    """k = 0 is the initialisation; k at an epoch boundary is the run stopped there."""
    at_init = _dense(load_config(_config(rewind_step=0)), dataset, tmp_path / "k0.pt")
    init = init_model(ModelConfig(width=0.25), 1, 10, seed=1).state_dict()
    assert at_init["state"]["rewind"]["iteration"] == 0
    for key, value in init.items():
        assert torch.equal(at_init["state"]["rewind"]["model"][key], value), key

    cfg = load_config(_config(rewind_step=STEPS))
    kept = _dense(cfg, dataset, tmp_path / "k7.pt")["state"]["rewind"]
    stopped = _dense(load_config(TINY_CONFIG), dataset, tmp_path / "e1.pt", temperature="1")
    assert kept["iteration"] == STEPS == stopped["state"]["iteration"]
    for key, value in stopped["model"].items():
        assert torch.equal(kept["model"][key], value), key
    # the epochs knob chains dense runs: the state kept in epoch 1's job travels on to epoch 3
    first = _dense(cfg, dataset, tmp_path / "chain1.pt", temperature="1")
    assert first["state"]["rewind"]["iteration"] == STEPS
    out = tmp_path / "chain3.pt"
    args = ["dense", "--spec", to_json(cfg.dense_spec("3", 1)), "--data", str(dataset), "--out", str(out)]
    assert main([*args, "--init", str(tmp_path / "chain1.pt")]) == 0
    carried = load_checkpoint(out, "dense")["state"]["rewind"]
    assert all(torch.equal(carried["model"][k], v) for k, v in kept["model"].items())


def test_rewound_run_continues_the_schedule_from_k_exactly(dataset, tmp_path):
    """From the rewind state, with the dense data stream, no mask and no momentum (fresh
    momentum is then irrelevant), the rest of the schedule reproduces the dense run bit for bit:
    so the weights, the iteration and the learning rate at k are the dense run's."""
    config = _config(rewind_step=10)  # mid-epoch, past the first lr milestone (step 8 of 21)
    config["train"] |= {"momentum": 0.0, "lr_milestones": [0.4, 0.75]}
    config["knob"]["values"] = [3]
    cfg = load_config(config)
    dense = _dense(cfg, dataset, tmp_path / "dense.pt")
    data = DeviceData(load_checkpoint(dataset, "dataset"), "cpu")
    recipe = recipe_from_spec(cfg.dense_spec("3", 1)["recipe"])
    schedule = make_schedule(recipe, data.num_train)
    start = rewind_state({"rewind": dense["state"]["rewind"]}, "dense.pt", schedule.steps_per_epoch)
    assert (start["iteration"], start["epoch"]) == (10, 1) and schedule.lr_at(10) == pytest.approx(0.005)
    model = init_model(ModelConfig(width=0.25), 1, 10, seed=99)  # overwritten by the state
    (final,) = train_runs(RunSet([model], [(0, 1)], states=[start]), data, recipe)
    assert final["iteration"] == schedule.total_iterations == 21
    for key, value in dense["model"].items():
        assert torch.equal(final["model"][key], value), key


def test_retraining_with_rewinding_starts_from_masked_weights_at_k(dataset, tmp_path, capsys):
    cfg = load_config(_config(rewind_step=3))
    dense = tmp_path / "dense.pt"
    _dense(cfg, dataset, dense)
    pruned = tmp_path / "pruned.pt"
    assert _prune(cfg.prune_spec("0.2"), dense, pruned) == 0
    payload = load_checkpoint(pruned, "pruned")
    kept = load_checkpoint(dense, "dense")["state"]["rewind"]
    assert all(torch.equal(payload["rewind"]["model"][k], v) for k, v in kept["model"].items())
    retrained = tmp_path / "retrain.pt"
    assert _retrain(cfg.retrain_spec(), dataset, pruned, retrained) == 0
    out = load_checkpoint(retrained, "retrain")
    assert out["state"]["iteration"] == 21 and len(out["state"]["history"]) == 3  # steps 3-21
    for name, mask in payload["masks"].items():
        assert not out["model"][name][~mask].any(), name
    # a pruned model made without rewinding cannot be rewound: one line naming it
    plain = load_config(TINY_CONFIG)
    other = tmp_path / "plain.pt"
    _dense(plain, dataset, other)
    assert _prune(plain.prune_spec("0.2"), other, pruned) == 0
    capsys.readouterr()
    assert _retrain(cfg.retrain_spec(), dataset, pruned, retrained) == 1
    assert f"{pruned}: holds no rewind state" in capsys.readouterr().err


def test_controls_keep_the_tickets_per_layer_densities(dataset, tmp_path):
    cfg = load_config(_config(rewind_step=0))
    dense = tmp_path / "dense.pt"
    _dense(cfg, dataset, dense)
    pruned = {}
    for control in ("none", "random_mask", "reinit"):
        raw = _config(rewind_step=0)
        raw["prune"]["control"] = control
        out = tmp_path / f"{control}.pt"
        assert _prune(load_config(raw).prune_spec("0.2"), dense, out) == 0
        pruned[control] = load_checkpoint(out, "pruned")
    ticket, shuffled, reinit = pruned["none"], pruned["random_mask"], pruned["reinit"]
    seed = control_seed(1, 0.2)
    for name, mask in ticket["masks"].items():
        assert int(shuffled["masks"][name].sum()) == int(mask.sum())  # same count per layer
        assert not torch.equal(shuffled["masks"][name], mask)  # at other positions
        assert torch.equal(reinit["masks"][name], mask)
    fresh = fresh_weights(ticket["model_cfg"], 1, 10, seed)
    for name, mask in ticket["masks"].items():
        assert torch.equal(reinit["rewind"]["model"][name], fresh[name])
        assert not torch.equal(fresh[name], ticket["rewind"]["model"][name])
        assert torch.equal(reinit["model"][name], fresh[name] * mask)
    assert reinit["density_actual"] == shuffled["density_actual"] == ticket["density_actual"]
