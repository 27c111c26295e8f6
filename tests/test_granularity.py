"""Granularities and Wanda through the config and the jobs: validation in one line, specs that
change only when a new setting is used, the overlays' exact plans, and the prune, retrain and
metrics jobs' density audit."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from threeregime.cli import main
from threeregime.config.load import load_config, merge_configs, read_config_file
from threeregime.config.settings import ConfigError, DataConfig
from threeregime.config.specs import PruneSpec, to_json
from threeregime.io.files import load_checkpoint, save_checkpoint

from .conftest import REPO, TINY_CONFIG, snakemake, write_config
from .test_incremental import jobs_in

OVERLAYS = REPO / "presets" / "overlays"
LABELS = ["knob=epochs", "temperature=3", "density=0.5", "dense_seed=1", "seed_a=1", "seed_b=2"]


def _config(**prune) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config["prune"] |= prune
    return config


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            _config(granularity="2:4"),
            "prune.densities: 0.2 is not 2:4's density: 2:4 keeps a fixed 0.5 of the weights it "
            "structures; use prune.densities: [0.5]",
        ),
        (_config(granularity="3:4", densities=[0.75]), "prune.granularity: '3:4' is not one of"),
        (
            _config(granularity=124, densities=[0.5]),
            "prune.granularity: 124 is not one of ['unstructured', '2:4', '4:8', 'channel'] (YAML "
            "reads 2:4 unquoted as the number 124: write '2:4')",
        ),
        (
            _config(granularity="4:8", densities=[0.5], schedule="iterative"),
            "prune.granularity: 4:8 does not nest its masks level after level",
        ),
        (
            _config(granularity="channel", control="random_mask"),
            "prune.control: random_mask draws each layer's kept weights at unstructured positions",
        ),
        (
            # tiny cnn1d: 8 filters of 1 x 5 in the first conv; round(0.05 x 8) = 0 filters
            _config(granularity="channel", densities=[0.05]),
            "prune.densities: density 0.05 keeps 0 of 40 weights of layer features.0.weight, fewer "
            "than prune.min_layer_weights = 2",
        ),
        (
            # Wanda compares each 5-weight row of the first conv: round(0.1 x 5) = 0 per row
            _config(method="wanda", densities=[0.1]),
            "prune.densities: density 0.1 keeps 0 of 40 weights of layer features.0.weight",
        ),
        (
            _config(densities=[0.03]),  # round(0.03 x 40) = 1 weight of the first conv
            "prune.densities: density 0.03 keeps 1 of 40 weights of layer features.0.weight, fewer "
            "than prune.min_layer_weights = 2",
        ),
        (_config(min_layer_weights=0), "prune.min_layer_weights: 0 is less than the minimum of 1"),
        (
            _config(method="wanda", calibration_samples=481),
            "prune.calibration_samples: 481 exceeds the 480 training samples of mnist1d",
        ),
    ],
)
def test_a_structure_that_cannot_be_met_is_one_line(config, expected):
    with pytest.raises(ConfigError) as info:
        load_config(config, source="x.yaml")
    assert str(info.value).startswith(f"x.yaml: {expected}"), str(info.value)
    assert "\n" not in str(info.value)


def test_unquoted_2_of_4_in_a_yaml_file_gets_the_quoting_hint(tmp_path):
    path = tmp_path / "overlay.yaml"
    path.write_text("prune:\n  granularity: 2:4\n  densities: [0.5]\n")
    raw = merge_configs(TINY_CONFIG, read_config_file(path))
    with pytest.raises(ConfigError, match=r"YAML reads 2:4 unquoted as the number 124: write '2:4'"):
        load_config(raw)


def test_new_settings_enter_the_prune_spec_only_when_used():
    plain = load_config(TINY_CONFIG)
    assert plain.prune_spec("0.2") == {"method": "uniform", "density": 0.2}
    assert not plain.prune_calibrates
    for value in (1, 2):  # the default, 2, stays out of the spec
        cfg = load_config(_config(min_layer_weights=value))
        assert ("min_layer_weights" in cfg.prune_spec("0.2")) == (value != 2)
    structured = load_config(_config(granularity="channel", min_layer_weights=3))
    spec = structured.prune_spec("0.2")
    assert spec == {"method": "uniform", "density": 0.2, "granularity": "channel", "min_layer_weights": 3}
    parsed = PruneSpec.parse(to_json(spec))
    assert (parsed.granularity, parsed.min_layer_weights, parsed.settings) == ("channel", 3, {})
    wanda = load_config(_config(method="wanda", densities=[0.4]))
    assert wanda.prune_calibrates
    assert wanda.prune_spec("0.4") == {"method": "wanda", "density": 0.4, "calibration_samples": 128}
    assert PruneSpec.parse(to_json(wanda.prune_spec("0.4"))).settings == {"calibration_samples": 128}


# ----------------------------------------------------------------------------- the overlays
def _counts(output: str) -> Counter:
    return Counter(rule for rule, _ in jobs_in(output))


@pytest.mark.parametrize(
    ("overlay", "granularity", "method", "densities", "prunes"),
    [("mnist1d-2of4", "2:4", "uniform", ["0.5"], 8), ("mnist1d-wanda", "unstructured", "wanda", None, 8)],
)
def test_overlays_validate_and_dry_run_over_the_demo(
    tmp_path, overlay, granularity, method, densities, prunes
):
    path = OVERLAYS / f"{overlay}.yaml"
    demo = read_config_file(REPO / "config.yaml")
    cfg = load_config(merge_configs(demo, read_config_file(path)))
    assert (cfg.prune.granularity, cfg.prune.method) == (granularity, method)
    if densities:
        assert cfg.densities == densities
    write_config(tmp_path, demo)
    result = snakemake(tmp_path, "-n", "-p", "--configfile", str(path))
    counts = _counts(result.stdout)
    assert counts == {
        "prepare_data": 1, "dense_train": 8, "prune": prunes, "retrain": 8, "metrics": prunes,
        "collect": 1, "classify": 1, "plot": 1,
    }, result.stdout[-2000:]  # fmt: skip
    commands = [line for line in result.stdout.splitlines() if "python -m threeregime prune" in line]
    assert len(commands) == prunes
    data = f"--data results/{cfg.run_name}/data/dataset.pt"
    assert all((data in c) == cfg.prune_calibrates for c in commands)
    assert not (tmp_path / "results").exists(), "a dry run computes nothing"


def test_the_demos_prune_commands_carry_no_data(tmp_path):
    """A method without calibration keeps the prune command (and inputs) it always had: one
    per dense model under the demo's retrain_pack temperature, each writing every density."""
    write_config(tmp_path, read_config_file(REPO / "config.yaml"))
    result = snakemake(tmp_path, "-n", "-p")
    commands = [line for line in result.stdout.splitlines() if "python -m threeregime prune" in line]
    assert len(commands) == 8 and all(c.count("/model.pt") == 1 + 4 for c in commands)
    assert all(" --data " not in c and "--dense results/demo/dense/" in c for c in commands)


# ----------------------------------------------------------------------------- the jobs
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny config's dataset and one dense model (3 epochs)."""
    from threeregime.compute.data import prepare_dataset

    folder = tmp_path_factory.mktemp("granularity")
    dataset = folder / "dataset.pt"
    save_checkpoint(dataset, prepare_dataset(DataConfig(num_samples=600, generation_seed=3)), "dataset")
    cfg = load_config(TINY_CONFIG)
    dense = folder / "dense.pt"
    spec = to_json(cfg.dense_spec("3", 1))
    assert main(["dense", "--spec", spec, "--data", str(dataset), "--out", str(dense)]) == 0
    return dataset, dense


def _prune(config: dict, density: str, dense: Path, out: Path, data: Path | None = None) -> int:
    spec = to_json(load_config(config).prune_spec(density))
    flags = ["--data", str(data)] if data else []
    return main(["prune", "--spec", spec, "--dense", str(dense), *flags, "--out", str(out)])


def test_wanda_prunes_from_the_first_training_samples_and_records_its_counts(trained, tmp_path, capsys):
    from threeregime.compute.calibration import input_norms
    from threeregime.compute.checkpoints import load, load_dataset, model_from

    dataset, dense = trained
    config = _config(method="wanda", densities=[0.4], calibration_samples=64)
    assert _prune(config, "0.4", dense, tmp_path / "no-data.pt") == 1
    assert "prune: method wanda calibrates on training samples; give --data" in capsys.readouterr().err
    assert _prune(config, "0.4", dense, tmp_path / "wanda.pt", dataset) == 0
    pruned = load_checkpoint(tmp_path / "wanda.pt", "pruned")
    model = model_from(load(dense, "dense"))
    inputs, _ = next(load_dataset(dataset, "cpu", False).eval_batches("train", 64, 64))
    norms = input_norms(model, inputs, list(pruned["masks"]))
    for name, mask in pruned["masks"].items():
        rows = mask.reshape(mask.shape[0], -1)
        assert (rows.sum(dim=1) == round(0.4 * rows.shape[1])).all(), name  # per output row
        assert pruned["kept"][name] == int(mask.sum())
        weight = model.state_dict()[name].reshape(rows.shape).double().abs()
        scores = weight * norms[name][None, :]  # kept weights outrank the pruned ones of their row
        kept_min = torch.where(rows, scores, torch.inf).min(dim=1).values
        assert (kept_min >= torch.where(rows, -torch.inf, scores).max(dim=1).values).all(), name
    assert pruned["density_actual"] == sum(pruned["kept"].values()) / sum(
        m.numel() for m in pruned["masks"].values()
    )


def test_structured_masks_survive_retraining_and_the_metrics_job_audits_them(trained, tmp_path):
    dataset, dense = trained
    config = _config(granularity="2:4", densities=[0.5])
    pruned = tmp_path / "pruned.pt"
    assert _prune(config, "0.5", dense, pruned) == 0
    cfg = load_config(config)
    spec = to_json(cfg.retrain_spec())
    outs = [tmp_path / f"retrain{seed}.pt" for seed in (1, 2)]
    runs = [arg for seed, out in zip((1, 2), outs) for arg in ("--run", str(pruned), str(out), str(seed))]
    assert main(["retrain", "--spec", spec, "--data", str(dataset), *runs]) == 0
    masks = load_checkpoint(pruned, "pruned")["masks"]
    for out in outs:
        retrained = load_checkpoint(out, "retrain")
        assert retrained["kept"] == load_checkpoint(pruned, "pruned")["kept"]
        for name, mask in masks.items():
            rows = mask.reshape(mask.shape[0], -1)
            if rows.shape[1] % 4 == 0:
                assert (rows.reshape(-1, 4).sum(dim=1) == 2).all()
            assert torch.count_nonzero(retrained["model"][name][~mask]) == 0
    metrics = tmp_path / "pair.json"
    command = ["metrics", "--spec", to_json(cfg.metrics_spec()), "--data", str(dataset)]
    command += ["--a", str(outs[0]), "--b", str(outs[1]), "--out", str(metrics)]
    assert main(command + [arg for label in LABELS for arg in ("--label", label)]) == 0
    result = json.loads(metrics.read_text())
    assert result["chance_error"] == pytest.approx(0.9)
    for model in result["models"]:
        assert model["density_retrained"] == model["density_actual"] > 0.5  # the dense first conv


def test_the_metrics_job_refuses_a_retrained_model_with_a_pruned_weight_back(trained, tmp_path, capsys):
    dataset, dense = trained
    config = _config(densities=[0.5])
    pruned = tmp_path / "pruned.pt"
    assert _prune(config, "0.5", dense, pruned) == 0
    cfg = load_config(config)
    outs = [tmp_path / f"retrain{seed}.pt" for seed in (1, 2)]
    runs = [arg for seed, out in zip((1, 2), outs) for arg in ("--run", str(pruned), str(out), str(seed))]
    assert main(["retrain", "--spec", to_json(cfg.retrain_spec()), "--data", str(dataset), *runs]) == 0
    damaged = load_checkpoint(outs[1], "retrain")
    name = "features.3.weight"
    position = torch.nonzero(~damaged["masks"][name].reshape(-1))[0]
    damaged["model"][name].view(-1)[position] = 0.25
    save_checkpoint(outs[1], damaged, "retrain")
    command = ["metrics", "--spec", to_json(cfg.metrics_spec()), "--data", str(dataset)]
    command += ["--a", str(outs[0]), "--b", str(outs[1]), "--out", str(tmp_path / "pair.json")]
    capsys.readouterr()
    assert main(command + [arg for label in LABELS for arg in ("--label", label)]) == 1
    err = capsys.readouterr().err
    assert f"{outs[1]}: 1 weights of {name} outside its pruning mask are nonzero" in err
    assert not (tmp_path / "pair.json").exists()
