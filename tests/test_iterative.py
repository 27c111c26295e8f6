"""Iterative magnitude pruning: levels and their densities, nested masks, the chain of jobs (each
level prunes the previous level's retrained model), and exactly which jobs an edit adds."""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import torch

from threeregime.cli import main
from threeregime.compute.landscape import summarize_test_error
from threeregime.compute.prune import PruneError, check_nested
from threeregime.config.load import load_config, merge_configs, read_config_file
from threeregime.config.settings import ConfigError, DataConfig
from threeregime.config.specs import to_json
from threeregime.io.files import load_checkpoint, save_checkpoint

from .conftest import REPO, TINY_CONFIG, write_config
from .test_incremental import job, plan, run

IMP = REPO / "presets" / "overlays" / "mnist1d-imp.yaml"


def _iterative(rate: float = 0.5, densities=(0.5, 0.25), **prune) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["prune"] = {"method": "uniform", "densities": list(densities), "schedule": "iterative"}
    config["prune"] |= {"rate": rate, **prune}
    return config


def test_each_requested_density_is_measured_at_its_closest_level():
    demo = read_config_file(REPO / "config.yaml")
    cfg = load_config(merge_configs(demo, read_config_file(IMP)))
    # 0.64**l: the demo's 0.05, 0.1, 0.2, 0.4 are closest (log scale) to levels 7, 5, 4, 2
    assert cfg.densities == ["0.04398", "0.1074", "0.1678", "0.4096"]
    assert cfg.pruned_densities == ["0.04398", "0.06872", "0.1074", "0.1678", "0.2621", "0.4096", "0.64"]
    assert [cfg.prune_parent(d) for d in cfg.pruned_densities] == [
        "0.06872", "0.1074", "0.1678", "0.2621", "0.4096", "0.64", None,
    ]  # fmt: skip
    spec = cfg.prune_spec("0.04398")  # the exact level density; the label has 4 digits
    assert spec == {
        "method": "uniform",
        "density": 0.64**7,
        "schedule": "iterative",
        "rate": 0.36,
        "level": 7,
    }
    oneshot = load_config(demo)  # one-shot specs and grids carry none of it
    assert oneshot.prune_spec("0.05") == {"method": "uniform", "density": 0.05}
    assert oneshot.densities == oneshot.pruned_densities == ["0.05", "0.1", "0.2", "0.4"]
    assert oneshot.prune_parent("0.05") is None


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (_iterative(method="alpha"), "prune.method: alpha does not nest its masks level after level"),
        (_iterative(control="reinit"), "prune.control: reinit applies to one-shot masks"),
        (_iterative(densities=(0.5, 0.45)), "prune.densities: 0.5 and 0.45 are both closest to level 1"),
        (_iterative(rate=0.2, densities=(0.95,)), "prune.densities: 0.95 is closest to level 0"),
        (_iterative(rate=1.0), "prune.rate: 1.0 is greater than or equal to the maximum of 1"),
        (
            _iterative() | {"runtime": {"retrain_pack": "temperature"}},
            "runtime.retrain_pack: temperature packs",
        ),
        (_iterative(rate=1e-5, densities=(0.99998,)), "prune.rate: 1e-05 is too small"),
    ],
)
def test_bad_iterative_pruning_is_one_line(config, expected):
    with pytest.raises(ConfigError) as info:
        load_config(config, source="imp.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_check_nested_refuses_a_revived_weight():
    previous = {"conv.weight": torch.tensor([True, False, True])}
    check_nested({"conv.weight": torch.tensor([True, False, False])}, previous, "global")
    with pytest.raises(PruneError, match="1 weights of conv.weight pruned at the previous level"):
        check_nested({"conv.weight": torch.tensor([False, True, True])}, previous, "global")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from threeregime.compute.data import prepare_dataset

    path = tmp_path_factory.mktemp("imp") / "dataset.pt"
    save_checkpoint(path, prepare_dataset(DataConfig(num_samples=600, generation_seed=3)), "dataset")
    return path


@pytest.mark.parametrize("method", ["uniform", "global", "lamp"])
def test_levels_nest_and_keep_exactly_their_density(method, dataset, tmp_path):
    """Three levels through the CLI: each prunes the previous level's retrained model, keeps a
    subset of its weights, and keeps round((1 - rate)**level * n) of them (per layer for uniform,
    over all conv layers for the global rankings)."""
    cfg = load_config(_iterative(rate=0.4, densities=(0.216,), method=method))
    assert cfg.pruned_densities == ["0.216", "0.36", "0.6"]
    dense = tmp_path / "dense.pt"
    args = ["--spec", to_json(cfg.dense_spec("3", 1)), "--data", str(dataset)]
    assert main(["dense", *args, "--out", str(dense)]) == 0
    previous, source = None, []
    for level, density in enumerate(reversed(cfg.pruned_densities), start=1):
        pruned, retrained = tmp_path / f"pruned{level}.pt", tmp_path / f"retrain{level}.pt"
        flags = ["--spec", to_json(cfg.prune_spec(density)), "--dense", str(dense), *source]
        assert main(["prune", *flags, "--out", str(pruned)]) == 0
        masks = load_checkpoint(pruned, "pruned")["masks"]
        exact = 0.6**level
        if method == "uniform":
            for name, mask in masks.items():
                assert int(mask.sum()) == round(exact * mask.numel()), (level, name)
        else:
            total = sum(m.numel() for m in masks.values())
            assert sum(int(m.sum()) for m in masks.values()) == round(exact * total), level
        if previous is not None:
            for name, mask in masks.items():
                assert not (mask & ~previous[name]).any(), (level, name)
                assert (mask != previous[name]).any(), (level, name)  # and it did prune more
        spec = to_json(cfg.retrain_spec())
        assert (
            main(
                ["retrain", "--spec", spec, "--data", str(dataset), "--run", str(pruned), str(retrained), "1"]
            )
            == 0
        )
        previous, source = masks, [str(retrained)]
    # level 3 pruned level 2's retrained weights: the weights it kept are exactly those
    kept = load_checkpoint(tmp_path / "pruned3.pt", "pruned")
    parent = load_checkpoint(tmp_path / "retrain2.pt", "retrain")["model"]
    for name, mask in kept["masks"].items():
        assert torch.equal(kept["model"][name], parent[name] * mask), name


# One temperature, levels 1 and 2 (rate 0.5) measured, weight rewinding to step 2.
RUN = _iterative()
RUN["knob"]["values"] = [1]
RUN["retrain"] = {"mode": "rewind_weights", "rewind_step": 2}
CELL = {"temperature": "1", "seed": "1"}


def _level(density: str, *rseeds: str, measured: bool = True) -> set:
    jobs = {job("prune", **CELL, density=density)}
    jobs |= {job("retrain", **CELL, density=density, rseed=r) for r in rseeds}
    if measured:
        jobs.add(job("metrics", **CELL, density=density, a="1", b="2"))
    return jobs


ANALYSIS = {job("collect"), job("classify"), job("plot"), job("plot_instability")}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iterative")
    write_config(folder, RUN)
    return folder, run(folder)


def test_a_chain_runs_level_after_level(chain):
    folder, output = chain
    results = folder / "results/tiny"
    first = load_checkpoint(results / "pruned/epochs-1/density-0.5/seed1/model.pt", "pruned")
    second = load_checkpoint(results / "pruned/epochs-1/density-0.25/seed1/model.pt", "pruned")
    for name, mask in second["masks"].items():
        assert not (mask & ~first["masks"][name]).any(), name
    assert second["density_actual"] == pytest.approx(0.25, abs=0.01)
    # both levels restart from the dense run's weights at step 2, replayed once
    assert load_checkpoint(results / "rewind/epochs-1/seed1/model.pt", "rewind")["rewind"]["iteration"] == 2
    assert (results / "instability.png").read_bytes()[:4] == b"\x89PNG"
    log = (results / "logs/prune/epochs-1/density-0.25/seed1.log").read_text()
    assert "level 2: pruning results/tiny/retrain/epochs-1/density-0.5/seed1/retrain1/model.pt" in log
    metrics = pd.read_csv(results / "metrics.csv")
    assert sorted(metrics["density"]) == [0.25, 0.5]
    # the matching criterion's reference: the dense run's test error, by the sparse models' rule
    history = load_checkpoint(results / "dense/epochs-1/seed1/model.pt", "dense")["state"]["history"]
    dense_error = summarize_test_error(history, 5)["test_error"]
    assert metrics["dense_test_error"].tolist() == pytest.approx([dense_error] * 2, abs=1e-12)
    regimes = pd.read_csv(results / "regimes.csv")
    expected = regimes["test_error_mean"] <= regimes["dense_test_error_mean"] + 0.005
    assert regimes["matching"].tolist() == expected.tolist()
    assert regimes["stable"].tolist() == (regimes["barrier_mean"] < 0.02).tolist()


def test_adding_a_level_appends_its_jobs_and_reruns_nothing(chain):
    """Level 4 (density 0.0625) needs level 3 as a link: pruned and retrained once."""
    folder, _ = chain
    expected = _level("0.125", "1", measured=False) | _level("0.0625", "1", "2") | ANALYSIS
    assert plan(folder, {"prune": {"densities": [0.5, 0.25, 0.0625]}}) == expected


def test_changing_the_rewind_step_reruns_the_replay_and_the_retrainings_only(chain):
    """The rewind job replays the dense run's first k steps: a new k keeps the dense model and
    level 1's mask, and retrains every level (level 2 prunes level 1's new retraining)."""
    folder, _ = chain
    retrainings = {job("retrain", **CELL, density=d, rseed=r) for d in ("0.5", "0.25") for r in "12"}
    metrics = {job("metrics", **CELL, density=d, a="1", b="2") for d in ("0.5", "0.25")}
    expected = {job("rewind", **CELL), job("prune", **CELL, density="0.25")} | retrainings | metrics
    expected |= ANALYSIS
    assert plan(folder, {"retrain": {"rewind_step": 3}}) == expected


def test_imp_overlay_plans_its_chain_on_the_demo(tmp_path):
    """The MNIST-1D IMP overlay: 7 levels pruned per temperature, the 4 measured levels retrained
    twice and the 3 links once (runtime.retrain_pack none), one rewind replay per temperature."""
    folder = tmp_path / "demo"
    write_config(folder, read_config_file(REPO / "config.yaml"))
    jobs = plan(folder, read_config_file(IMP))
    counts = Counter(rule for rule, _ in jobs)
    assert counts == {
        "prepare_data": 1, "dense_train": 4, "rewind": 4, "prune": 28, "retrain": 44, "metrics": 16,
        "collect": 1, "classify": 1, "plot": 1, "plot_instability": 1,
    }  # fmt: skip
    # the cost projection counts the same jobs (threeregime cost)
    from threeregime.views.cost import target_units

    cfg = load_config(merge_configs(read_config_file(REPO / "config.yaml"), read_config_file(IMP)))
    computed = ("prepare_data", "dense_train", "rewind", "prune", "retrain", "metrics")
    projected = {rule: jobs for rule, (jobs, _) in target_units(cfg).items()}
    assert projected == {rule: counts[rule] for rule in computed}
