"""The paper's experiments as presets: settings, isolation from config.yaml, and their DAGs.

A preset is presets/base.yaml (the shared setup) plus one knob overlay (presets/<knob>.yaml),
run as ``snakemake --configfile presets/base.yaml presets/<knob>.yaml``; the lottery-ticket
preset stands alone (``--configfile presets/lottery.yaml``). There is no real CIFAR
here. Each test writes a tiny fake CIFAR-10 in torchvision's on-disk format into
``<working directory>/data``, where the base's ``data.root: data`` finds it (or into any folder
named by one more overlay file), so config validation and ``snakemake -n`` run exactly as they
would on a cluster with the real files.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml

from threeregime.compute.train import Schedule
from threeregime.config.load import load_config

from .conftest import REPO, snakemake, write_config
from .test_cifar import write_fake_cifar

PRESETS = REPO / "presets"
BASE = PRESETS / "base.yaml"
NAMES = ["epochs", "batchsize", "sam"]  # knob overlays over BASE
PAPER_DENSITIES = [0.05, 0.06, 0.07, 0.08, 0.10, 0.14, 0.20, 0.40, 0.80]
PAPER_GRIDS = {
    "epochs": list(range(10, 161, 10)),
    "batch_size": [16, 32, 64, 128, 256, 512],
    "sam_rho": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
}
DRY_RUN_LIMIT_S = 15.0


def _files(name: str) -> list[str]:
    """The --configfile arguments of a preset: the base, then its knob overlay."""
    return [str(BASE), str(PRESETS / f"{name}.yaml")]


def _raw(name: str) -> dict:
    return _merged(*(yaml.safe_load(Path(f).read_text()) for f in _files(name)))


def _merged(*layers: dict) -> dict:
    """Layer configs the way Snakemake does (config.yaml first, then each --configfile)."""
    from snakemake.utils import update_config

    merged: dict = {}
    for layer in layers:
        update_config(merged, copy.deepcopy(layer))
    return merged


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return write_fake_cifar(tmp_path_factory.mktemp("cifar-root"))


def _load(name: str, root: Path):
    return load_config(_merged(_raw(name), {"data": {"root": str(root)}}), source=name)


def test_every_preset_is_present():
    assert sorted(p.stem for p in PRESETS.glob("*.yaml")) == sorted([*NAMES, "base", "lottery"])


@pytest.mark.parametrize("name", NAMES)
def test_knob_overlays_are_short_and_the_base_holds_the_rest(name):
    overlay = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    assert overlay["run_name"] == f"cifar10-preresnet20-{name}" and "knob" in overlay
    assert set(overlay) <= {"run_name", "knob", "train", "retrain"}
    base = yaml.safe_load(BASE.read_text())
    assert "knob" not in base and "run_name" not in base


@pytest.mark.parametrize("name", NAMES)
def test_preset_is_the_papers_setup(name, fake_root):
    cfg = _load(name, fake_root)
    assert cfg.run_name == f"cifar10-preresnet20-{name}"
    assert (cfg.data.name, cfg.data.root, cfg.data.download, cfg.data.augment) == (
        "cifar10",
        str(fake_root),
        False,
        True,
    )
    assert _raw(name)["data"]["root"] == "data"  # torchvision's default layout under ./data
    assert (cfg.model.name, cfg.model.width) == ("preresnet20", 1.0)
    assert cfg.prune.method == "uniform" and cfg.prune.densities == tuple(PAPER_DENSITIES)
    assert cfg.seeds.dense == (1, 2, 3) and cfg.seeds.retrain == (1, 2, 3)
    assert cfg.retrain_pairs == [(1, 2), (1, 3), (2, 3)]
    m = cfg.metrics
    assert (m.lmc_points, m.lmc_bn_samples, m.cka_samples, m.test_error_last) == (11, 0, 6464, 5)
    assert m.lmc_bn_batch_size == 64  # BN recomputed in batches of 64, as the paper's LMC code
    assert (m.hessian_samples, m.hessian_max_iter, m.hessian_tol) == (200, 100, 1e-3)
    assert (m.hessian_probes, m.hessian_trace_deflation) == (20, 10)  # deflated Hutchinson
    assert cfg.regimes.cka_metric == "cka_softmax"
    assert cfg.runtime.device == "cuda" and cfg.runtime.require_gpu and cfg.runtime.amp == "none"
    assert [float(v) for v in cfg.knob.values] == PAPER_GRIDS[cfg.knob.name]
    base = cfg.train
    assert (base.lr, base.momentum, base.weight_decay, base.lr_gamma) == (0.1, 0.9, 1e-4, 0.1)
    assert base.lr_milestones == (0.5, 0.75) and base.optimizer == "sgd"
    retrain = cfg.retrain_recipe()
    assert cfg.retrain.mode == "rewind" and retrain.optimizer == "sgd" and retrain.lr == 0.1
    assert retrain.lr_milestones == (0.5, 0.75)
    if cfg.knob.name == "epochs":
        assert (base.epochs, base.batch_size, base.iterations, base.drop_last) == (160, 64, None, False)
        for t in cfg.temperatures:
            assert cfg.dense_recipe(t) == base and cfg.dense_spec(t, 1)["stop_epoch"] == int(t)
            assert cfg.dense_parent(t) == (None if t == "10" else str(int(t) - 10))
        assert retrain == base  # LR rewinding: the full 160-epoch dense schedule
        schedule = Schedule(base, steps_per_epoch=782)  # 50000 images, last partial batch kept
        assert schedule.lr_at(80 * 782 - 1) == 0.1 and schedule.lr_at(80 * 782) == pytest.approx(0.01)
        assert schedule.lr_at(120 * 782) == pytest.approx(0.001)
    if cfg.knob.name == "batch_size":
        assert base.iterations == 62400 and base.drop_last
        for t in cfg.temperatures:
            recipe = cfg.dense_recipe(t)
            assert recipe == base.__class__(**{**base.__dict__, "batch_size": int(t)})  # only the batch
            assert cfg.dense_parent(t) is None and cfg.dense_spec(t, 1)["stop_epoch"] is None
            schedule = Schedule(recipe, steps_per_epoch=50000 // int(t))
            assert schedule.total_iterations == 62400
            assert schedule.lr_at(31199) == 0.1 and schedule.lr_at(31200) == pytest.approx(0.01)
            assert schedule.lr_at(46800) == pytest.approx(0.001)
        assert (retrain.batch_size, retrain.iterations) == (128, 62400)
        assert Schedule(retrain, steps_per_epoch=50000 // 128).total_epochs == 160
    if cfg.knob.name == "sam_rho":
        assert (base.epochs, base.batch_size, base.drop_last) == (160, 64, False)
        for t in cfg.temperatures:
            recipe = cfg.dense_recipe(t)
            assert (recipe.optimizer, recipe.sam_rho) == ("sam", float(t))
            assert recipe.momentum == 0.9 and recipe.epochs == 160
        assert retrain == base  # retraining is plain SGD with the dense schedule


def test_finetune_mode_is_a_small_constant_lr_for_fewer_epochs(fake_root):
    raw = _merged(_raw("epochs"), {"data": {"root": str(fake_root)}})
    raw["retrain"] = {"mode": "finetune"}
    recipe = load_config(raw).retrain_recipe()
    assert (recipe.lr, recipe.lr_milestones, recipe.epochs, recipe.optimizer) == (0.001, (), 40, "sgd")
    raw["retrain"] = {"mode": "finetune", "recipe": {"lr": 0.01, "epochs": 20}}
    recipe = load_config(raw).retrain_recipe()
    assert (recipe.lr, recipe.epochs, recipe.lr_milestones) == (0.01, 20, ())


@pytest.mark.parametrize("name", NAMES)
def test_embedded_config_yaml_does_not_leak_into_a_preset(name, fake_root):
    """Snakemake merges config.yaml under --configfile; the jobs must be those of the preset alone."""
    overlay = {"data": {"root": str(fake_root)}}
    embedded = yaml.safe_load((REPO / "config.yaml").read_text())
    alone = load_config(_merged(_raw(name), overlay))
    merged = load_config(_merged(embedded, _raw(name), overlay))

    assert _specs(merged) == _specs(alone)


def _specs(cfg) -> dict:
    """Everything that decides a configuration's jobs and their outputs."""
    out = {
        "run_name": cfg.run_name,
        "data": cfg.data_spec(),
        "runtime": cfg.runtime,
        "metrics": cfg.metrics_spec(),
        "analysis": cfg.analysis_spec(),
        "plot": cfg.plot_spec(),
        "grids": (cfg.temperatures, cfg.densities, cfg.pruned_densities, cfg.seeds, cfg.retrain_pairs),
    }
    out |= {f"dense {t}": cfg.dense_spec(t, 1) for t in cfg.temperatures}
    out |= {f"prune {d}": (cfg.prune_spec(d), cfg.prune_parent(d)) for d in cfg.pruned_densities}
    out |= {"retrain": cfg.retrain_spec()}
    return out


def _expected_jobs(cfg) -> dict[str, int]:
    cells = len(cfg.temperatures) * len(cfg.densities) * len(cfg.seeds.dense)
    jobs = {
        "prepare_data": 1,
        "dense_train": len(cfg.temperatures) * len(cfg.seeds.dense),
        "prune": cells,
        "retrain": {  # runs per packed retrain job: runtime.retrain_pack
            "none": cells * len(cfg.seeds.retrain),
            "cell": cells,
            "temperature": len(cfg.temperatures) * len(cfg.seeds.dense),
        }[cfg.runtime.retrain_pack],
        "metrics": cells * len(cfg.retrain_pairs),
    }
    return jobs


def _job_stats(text: str) -> dict[str, int]:
    table = text[text.index("Job stats:") :]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.MULTILINE)}


@pytest.mark.parametrize("name", NAMES)
def test_dry_run_plans_the_papers_jobs(name, tmp_path, fake_root, capsys):
    """`snakemake -n --configfile presets/base.yaml presets/<name>.yaml` from a folder holding data/
    and config.yaml."""
    write_fake_cifar(tmp_path / "data")
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")  # as when run from the checkout
    started = time.perf_counter()
    result = snakemake(tmp_path, "-n", "--configfile", *_files(name))
    seconds = time.perf_counter() - started
    stats = _job_stats(result.stdout)
    expected = _expected_jobs(_load(name, fake_root))
    assert {k: stats[k] for k in expected} == expected
    assert stats["total"] == sum(expected.values()) + 4  # collect, classify, plot, all
    assert not (tmp_path / "results").exists(), "a dry run computes nothing"
    with capsys.disabled():
        print(f"\n{name}: snakemake -n plans {stats['total']} jobs {expected} in {seconds:.1f} s")
    assert seconds < 4 * DRY_RUN_LIMIT_S, "dry run far slower than the 15 s target"


def test_gpu_fast_overlay_packs_each_dense_models_retrainings_into_one_job(tmp_path, fake_root):
    """presets/overlays/gpu-fast.yaml: bf16 + channels_last + compile, 27 retrainings per job."""
    fast = PRESETS / "overlays" / "gpu-fast.yaml"
    data = {"data": {"root": str(fake_root)}}
    cfg = load_config(_merged(_raw("epochs"), yaml.safe_load(fast.read_text()), data))
    assert (cfg.runtime.amp, cfg.runtime.channels_last, cfg.runtime.compile) == ("bf16", True, True)
    assert cfg.runtime.retrain_pack == "temperature" and cfg.runtime.device == "cuda"
    overlays = [*_files("epochs"), str(fast), str(write_config(tmp_path, data, "my-data.yaml"))]
    result = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", *overlays)
    stats = _job_stats(result.stdout)
    # one prune, retrain and metrics job per dense model (16 epochs x 3 seeds): every density,
    # retraining and pair of it
    assert stats["retrain"] == stats["prune"] == stats["metrics"] == 16 * 3


def test_overlay_points_a_preset_at_another_data_folder(tmp_path, fake_root):
    overlay = write_config(tmp_path, {"data": {"root": str(fake_root)}}, "my-data.yaml")
    result = snakemake(tmp_path, "-n", "--quiet", "rules", "--configfile", *_files("sam"), str(overlay))
    assert _job_stats(result.stdout)["dense_train"] == 8 * 3


def test_preset_without_data_fails_before_any_job_naming_path_and_remedy(tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", *_files("epochs"), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "invalid configuration:" in output
    assert "data.root: data/cifar-10-batches-py not found" in output
    assert "python -m threeregime fetch-data --name cifar10 --root data" in output
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_preset_runs_end_to_end_on_fake_cifar(tmp_path):
    """The epochs preset, shrunk by an overlay, through the real workflow: Figure-2 tables and plots."""
    write_fake_cifar(tmp_path / "data", train=48, test=16)
    tiny = {
        "run_name": "tiny-cifar",
        "model": {"width": 0.25},
        "train": {"epochs": 2, "batch_size": 16},
        "knob": {"values": [1, 2]},
        "prune": {"densities": [0.3]},
        "seeds": {"dense": [1, 2], "retrain": [1, 2]},
        "metrics": {
            "lmc_points": 5,
            "hessian_samples": 16,
            "hessian_max_iter": 3,
            "hessian_probes": 2,
            "hessian_trace_deflation": 2,
        },
        "runtime": {"device": "cpu", "require_gpu": False, "threads": 1},
    }
    overlay = write_config(tmp_path, tiny, "tiny.yaml")
    snakemake(tmp_path, "--configfile", *_files("epochs"), str(overlay))
    import pandas as pd

    results = tmp_path / "results" / "tiny-cifar"
    metrics = pd.read_csv(results / "metrics.csv")
    assert len(metrics) == 2 * 1 * 2 * 1  # temperatures x densities x dense seeds x retrain pairs
    cells = pd.read_csv(results / "cells.csv")
    assert len(cells) == 2 and set(cells["temperature"]) == {1, 2}
    assert (cells["n"] == 2).all(), "each cell averages 2 dense seeds x 1 retrain pair"
    assert cells["normalized_test_error"].min() == 0
    assert (results / "phase_diagram.png").stat().st_size > 1000


# ----------------------------------------------------------------------------- lottery tickets
LOTTERY = PRESETS / "lottery.yaml"  # a preset of its own: snakemake --configfile presets/lottery.yaml
LEVEL_RATE = 0.2  # open_lth's pruning_fraction for cifar_resnet_20
MEASURED_LEVELS = list(range(2, 21, 2))  # every second level, down to 0.8**20 = 1.15%


def _lottery(root: Path | None = None, *below: dict):
    """The lottery preset's config, merged over ``below`` (config.yaml) as Snakemake does."""
    raw = _merged(*below, yaml.safe_load(LOTTERY.read_text()))
    return load_config(_merged(raw, {"data": {"root": str(root)}}) if root else raw, source="lottery")


def test_lottery_preset_has_frankle_et_al_2020s_settings(fake_root):
    """The numbers cited in presets/lottery.yaml: open_lth's cifar_resnet_20 defaults, IMP at
    rate 0.2 with weight rewinding to iteration 2000, the densities of every second level."""
    cfg = _lottery(fake_root)
    raw = yaml.safe_load(LOTTERY.read_text())
    assert cfg.run_name == "cifar10-resnet20-lottery" and raw["data"]["root"] == "data"
    assert (cfg.data.name, cfg.data.download, cfg.data.augment) == ("cifar10", False, True)
    assert (cfg.model.name, cfg.model.width) == ("resnet20", 1.0)
    train = cfg.train
    assert (train.epochs, train.iterations, train.batch_size, train.drop_last) == (160, None, 128, False)
    assert (train.lr, train.momentum, train.weight_decay, train.lr_gamma) == (0.1, 0.9, 1e-4, 0.1)
    assert (train.optimizer, train.lr_milestones) == ("sgd", (0.5, 0.75))
    # open_lth: ceil(50000 / 128) = 391 iterations per epoch; lr x0.1 at epochs 80 and 120
    assert train.steps_per_epoch(50_000) == 391
    schedule = Schedule(train, steps_per_epoch=391)
    assert schedule.total_iterations == 160 * 391 == 62_560
    assert schedule.lr_at(80 * 391 - 1) == 0.1 and schedule.lr_at(80 * 391) == pytest.approx(0.01)
    assert schedule.lr_at(120 * 391 - 1) == pytest.approx(0.01)
    assert schedule.lr_at(120 * 391) == pytest.approx(0.001)
    assert cfg.temperatures == ["160"] and cfg.knob.name == "epochs"
    assert cfg.dense_recipe("160") == train and cfg.dense_spec("160", 1)["stop_epoch"] == 160

    prune = cfg.prune
    assert (prune.schedule, prune.rate, prune.method, prune.control) == (
        "iterative",
        LEVEL_RATE,
        "global",
        "none",
    )
    assert cfg.densities == [f"{(1 - LEVEL_RATE) ** k:.4g}" for k in reversed(MEASURED_LEVELS)]
    assert [prune.level_of(d) for d in prune.densities] == MEASURED_LEVELS
    assert len(cfg.pruned_densities) == 20 and cfg.pruned_densities[-1] == "0.8"
    deepest = cfg.prune_spec("0.01153")
    assert deepest["level"] == 20 and deepest["density"] == pytest.approx(0.8**20, rel=1e-12)
    assert cfg.prune_parent("0.01153") == "0.01441" and cfg.prune_parent("0.8") is None

    assert (cfg.retrain.mode, cfg.retrain.rewind_step) == ("rewind_weights", 2000)
    assert cfg.retrain_recipe() == train  # weight rewinding continues the dense schedule from k
    assert cfg.retrain_spec()["rewind_step"] == 2000 and cfg.rewind_spec("160", 1)["rewind_step"] == 2000
    assert cfg.seeds.dense == (1, 2, 3) and cfg.seeds.retrain == (1, 2)
    assert cfg.retrain_pairs == [(1, 2)] and cfg.chain_seed == 1
    r = cfg.runtime
    assert (r.device, r.require_gpu, r.amp, r.tf32, r.retrain_pack) == ("cuda", True, "none", False, "none")
    # the three-regime paper's metrics and regime rules, so lottery tickets land on its phase diagram
    base = _load("epochs", fake_root)
    assert cfg.metrics == base.metrics and cfg.regimes == base.regimes


def test_embedded_config_yaml_does_not_leak_into_the_lottery_preset(fake_root):
    embedded = yaml.safe_load((REPO / "config.yaml").read_text())
    assert _specs(_lottery(fake_root, embedded)) == _specs(_lottery(fake_root))
    # the comparison sees a leak: without metrics.cka_samples the demo's 4000 would win
    lottery = yaml.safe_load(LOTTERY.read_text())
    del lottery["metrics"]["cka_samples"]
    leaky = load_config(_merged(embedded, lottery, {"data": {"root": str(fake_root)}}))
    assert leaky.metrics.cka_samples == 4000 and _specs(leaky) != _specs(_lottery(fake_root))


def _lottery_jobs() -> dict[str, int]:
    """The lottery preset's jobs counted from its YAML: level l keeps 0.8**l, so a requested
    density d is level round(log d / log 0.8); every level down to the deepest is pruned; a
    measured level is retrained once per retrain seed, a link of the chain once; each chain's
    dense run has one rewind replay."""
    raw = yaml.safe_load(LOTTERY.read_text())
    rate, densities = raw["prune"]["rate"], raw["prune"]["densities"]
    measured = {round(math.log(d) / math.log(1 - rate)) for d in densities}
    levels = max(measured)
    temperatures, dense_seeds = len(raw["knob"]["values"]), len(raw["seeds"]["dense"])
    retrain_seeds = len(raw["seeds"]["retrain"])
    pairs = retrain_seeds * (retrain_seeds - 1) // 2
    chains = temperatures * dense_seeds
    return {
        "prepare_data": 1,
        "dense_train": chains,
        "rewind": chains,
        "prune": chains * levels,
        "retrain": chains * (len(measured) * retrain_seeds + (levels - len(measured))),
        "metrics": chains * len(measured) * pairs,
    }


def test_lottery_preset_dry_run_plans_its_chains(tmp_path, capsys):
    """`snakemake -n --configfile presets/lottery.yaml` from a folder holding data/ and config.yaml."""
    expected = _lottery_jobs()
    assert expected == {
        "prepare_data": 1, "dense_train": 3, "rewind": 3, "prune": 60, "retrain": 90, "metrics": 30,
    }  # fmt: skip
    write_fake_cifar(tmp_path / "data")
    shutil.copy(REPO / "config.yaml", tmp_path / "config.yaml")
    started = time.perf_counter()
    result = snakemake(tmp_path, "-n", "--configfile", str(LOTTERY))
    seconds = time.perf_counter() - started
    stats = _job_stats(result.stdout)
    assert {k: stats[k] for k in expected} == expected
    assert stats["total"] == sum(expected.values()) + 5  # collect, classify, plot, plot_instability, all
    assert not (tmp_path / "results").exists(), "a dry run computes nothing"
    with capsys.disabled():
        print(f"\nlottery: snakemake -n plans {stats['total']} jobs {expected} in {seconds:.1f} s")
    assert seconds < 4 * DRY_RUN_LIMIT_S
