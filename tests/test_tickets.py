"""Lottery tickets: weight rewinding restores the dense weights at step k (replayed by the rewind
job) and the schedule there; the rewind_step knob shares one dense run between its rewind steps;
the random-mask and reinit controls keep the ticket's per-layer densities."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from threeregime.cli import main
from threeregime.compute.data import DeviceData
from threeregime.compute.models import init_model
from threeregime.compute.tickets import control_seed, fresh_weights, rewind_state
from threeregime.compute.train import RunSet, make_schedule, train_runs
from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError, DataConfig, ModelConfig
from threeregime.config.specs import recipe_from_spec, to_json
from threeregime.io.files import load_checkpoint, save_checkpoint

from .conftest import TINY_CONFIG

STEPS = 7  # TINY_CONFIG: 600 MNIST-1D samples, 480 train, batch 64, drop_last


def _config(**retrain) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["retrain"] = {"mode": "rewind_weights", **retrain}
    return config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from threeregime.compute.data import prepare_dataset

    path = tmp_path_factory.mktemp("tickets") / "dataset.pt"
    save_checkpoint(path, prepare_dataset(DataConfig(num_samples=600, generation_seed=3)), "dataset")
    return path


def _prune(spec: dict, dense: Path, out: Path) -> int:
    return main(["prune", "--spec", to_json(spec), "--dense", str(dense), "--out", str(out)])


def _retrain(spec: dict, dataset: Path, pruned: Path, out: Path, rewind: Path | None = None) -> int:
    flags = ["--rewind", str(rewind)] if rewind else []
    return main(
        [
            "retrain",
            "--spec",
            to_json(spec),
            "--data",
            str(dataset),
            "--run",
            str(pruned),
            str(out),
            "1",
            *flags,
        ]
    )


def _rewind(cfg, dataset: Path, out: Path, temperature: str = "3") -> dict:
    spec = to_json(cfg.rewind_spec(temperature, 1))
    assert main(["rewind", "--spec", spec, "--data", str(dataset), "--out", str(out)]) == 0
    return load_checkpoint(out, "rewind")


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
    # the dense run does not depend on k: the rewind job replays its first k steps
    assert to_json(weights.dense_spec("3", 1)) == to_json(old.dense_spec("3", 1))
    assert weights.rewind_spec("3", 1) == {
        key: value for key, value in old.dense_spec("3", 1).items() if key != "stop_epoch"
    } | {"rewind_step": 5}
    assert weights.retrain_spec()["rewind_step"] == 5
    assert weights.retrain_recipe() == old.retrain_recipe()  # the dense schedule, from step k


@pytest.mark.parametrize(
    ("retrain", "expected"),
    [
        ({"rewind_step": 8}, "retrain.rewind_step: 8 is past the dense run (7 iterations)"),
        ({"rewind_step": -1}, "retrain.rewind_step: -1 is less than the minimum of 0"),
        ({"mode": "rewind_weight"}, "retrain.mode: 'rewind_weight' is not one of"),
    ],
)
def test_bad_rewinding_is_one_line(retrain, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(_config(**retrain), source="lt.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_the_rewind_job_replays_the_dense_run_to_step_k(dataset, tmp_path):
    """k = 0 is the initialisation; k at an epoch boundary is the dense run stopped there."""
    at_init = _rewind(load_config(_config(rewind_step=0)), dataset, tmp_path / "k0.pt")["rewind"]
    init = init_model(ModelConfig(width=0.25), 1, 10, seed=1).state_dict()
    assert at_init["iteration"] == 0
    for key, value in init.items():
        assert torch.equal(at_init["model"][key], value), key
    kept = _rewind(load_config(_config(rewind_step=STEPS)), dataset, tmp_path / "k7.pt")["rewind"]
    stopped = _dense(load_config(TINY_CONFIG), dataset, tmp_path / "e1.pt", temperature="1")
    assert kept["iteration"] == STEPS == stopped["state"]["iteration"]
    for key, value in stopped["model"].items():
        assert torch.equal(kept["model"][key], value), key


def test_rewound_run_continues_the_schedule_from_k_exactly(dataset, tmp_path):
    """From the rewind state, with the dense data stream, no mask and no momentum (fresh
    momentum is then irrelevant), the rest of the schedule reproduces the dense run bit for bit:
    so the weights, the iteration and the learning rate at k are the dense run's."""
    config = _config(rewind_step=10)  # mid-epoch, past the first lr milestone (step 8 of 21)
    config["train"] |= {"momentum": 0.0, "lr_milestones": [0.4, 0.75]}
    config["knob"]["values"] = [3]
    cfg = load_config(config)
    dense = _dense(cfg, dataset, tmp_path / "dense.pt")
    replayed = _rewind(cfg, dataset, tmp_path / "rewind.pt")  # stops mid-epoch, at step 10
    data = DeviceData(load_checkpoint(dataset, "dataset"), "cpu")
    recipe = recipe_from_spec(cfg.dense_spec("3", 1)["recipe"])
    schedule = make_schedule(recipe, data.num_train)
    start = rewind_state(replayed, "rewind.pt", 10, schedule.steps_per_epoch, {})
    assert (start["iteration"], start["epoch"]) == (10, 1) and schedule.lr_at(10) == pytest.approx(0.005)
    model = init_model(ModelConfig(width=0.25), 1, 10, seed=99)  # overwritten by the state
    (final,) = train_runs(RunSet([model], [(0, 1)], states=[start]), data, recipe)
    assert final["iteration"] == schedule.total_iterations == 21
    for key, value in dense["model"].items():
        assert torch.equal(final["model"][key], value), key


def test_retraining_with_rewinding_starts_from_masked_weights_at_k(dataset, tmp_path, capsys):
    cfg = load_config(_config(rewind_step=3))
    dense, rewind, pruned = tmp_path / "dense.pt", tmp_path / "rewind.pt", tmp_path / "pruned.pt"
    _dense(cfg, dataset, dense)
    _rewind(cfg, dataset, rewind)
    assert _prune(cfg.prune_spec("0.2"), dense, pruned) == 0
    payload = load_checkpoint(pruned, "pruned")
    retrained = tmp_path / "retrain.pt"
    assert _retrain(cfg.retrain_spec(), dataset, pruned, retrained, rewind) == 0
    out = load_checkpoint(retrained, "retrain")
    assert out["state"]["iteration"] == 21 and len(out["state"]["history"]) == 3  # steps 3-21
    for name, mask in payload["masks"].items():
        assert not out["model"][name][~mask].any(), name
    # weight rewinding without its state, or with the state of another step: one line each
    capsys.readouterr()
    assert _retrain(cfg.retrain_spec(), dataset, pruned, retrained) == 1
    assert "retrain: weight rewinding to step 3 needs --rewind" in capsys.readouterr().err
    _rewind(load_config(_config(rewind_step=5)), dataset, tmp_path / "k5.pt")
    capsys.readouterr()
    assert _retrain(cfg.retrain_spec(), dataset, pruned, retrained, tmp_path / "k5.pt") == 1
    assert f"{tmp_path / 'k5.pt'}: holds the dense state at iteration 5, not 3" in capsys.readouterr().err


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
    assert reinit["reinit"] and not ticket.get("reinit")  # weight rewinding keeps these weights
    for name, mask in ticket["masks"].items():
        assert not torch.equal(fresh[name], ticket["model"][name])
        assert torch.equal(reinit["model"][name], fresh[name] * mask)
    assert reinit["density_actual"] == shuffled["density_actual"] == ticket["density_actual"]


def test_rewind_step_knob_shares_one_dense_run_between_its_steps(tmp_path):
    from .test_incremental import jobs_in, run

    config = _config()
    config["knob"] = {"name": "rewind_step", "values": [0, 3, 7]}
    cfg = load_config(config)
    assert cfg.temperatures == ["7", "3", "0"]  # coldest first: a later rewind is colder
    assert cfg.shared_dense and cfg.dense_spec(None, 1)["stop_epoch"] is None
    more = load_config(config | {"knob": {"name": "rewind_step", "values": [0, 3, 7, 5]}})
    assert to_json(more.dense_spec(None, 1)) == to_json(cfg.dense_spec(None, 1))  # a new k: same run
    assert [cfg.retrain_spec(t)["rewind_step"] for t in cfg.temperatures] == [7, 3, 0]
    assert cfg.rewind_spec("3", 1)["rewind_step"] == 3
    assert cfg.analysis_spec()["regimes"]["reference_temperature"] == 0.0  # retrain.rewind_step's
    folder = tmp_path / "knob"
    from .conftest import write_config

    write_config(folder, config)
    jobs = jobs_in(run(folder, "-n"))
    dense = [wildcards for rule, wildcards in jobs if rule == "dense_train"]
    assert dense == [frozenset({("seed", "1")})]  # one dense run for the three rewind steps
    assert {dict(w)["temperature"] for rule, w in jobs if rule == "rewind"} == {"0", "3", "7"}
    counts = {rule: sum(1 for r, _ in jobs if r == rule) for rule, _ in jobs}
    assert counts == {
        "prepare_data": 1, "dense_train": 1, "rewind": 3, "prune": 6, "retrain": 12, "metrics": 6,
        "collect": 1, "classify": 1, "plot": 1, "plot_instability": 1,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("knob", "retrain", "expected"),
    [
        ({"values": [0, 3]}, {"mode": "rewind_lr"}, "knob.name: rewind_step sets the rewind step"),
        ({"values": [0, 22]}, {"mode": "rewind_weights"}, "knob.values: 22 is past the dense run"),
        ({"values": [0, 1.5]}, {"mode": "rewind_weights"}, "knob.values[1]: 1.5 must be a whole number"),
    ],
)
def test_bad_rewind_step_knob_is_one_line(knob, retrain, expected):
    config = copy.deepcopy(TINY_CONFIG) | {"retrain": retrain, "knob": {"name": "rewind_step", **knob}}
    with pytest.raises(ConfigError) as info:
        load_config(config, source="k.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)
