"""Configuration validation: every bad input is one clear line naming the key, before compute."""

from __future__ import annotations

import pytest

from threeregime.config import ConfigError, fmt_value, load_config

from .conftest import REPO, write_config


def test_embedded_default_is_valid():
    cfg = load_config(REPO / "config.yaml")
    assert cfg.data.name == "mnist1d" and cfg.knob.name == "epochs"
    assert len(cfg.temperatures) >= 4 and len(cfg.densities) >= 4
    assert cfg.retrain_pairs == [(1, 2)]


def test_temperatures_are_sorted_cold_to_hot(tiny_config):
    tiny_config["knob"]["values"] = [1, 3, 2]
    tiny_config["train"]["epochs"] = 3
    assert load_config(tiny_config).temperatures == ["3", "2", "1"]  # fewer epochs = hotter
    tiny_config["knob"] = {"name": "sam_rho", "values": [0.4, 0.1]}
    assert load_config(tiny_config).temperatures == ["0.1", "0.4"]  # larger rho = hotter


def test_canonical_grid_strings():
    assert fmt_value(0.10) == "0.1"
    assert fmt_value(20.0) == "20"
    assert fmt_value(0.05) == "0.05"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.update(bogus=1), "Additional properties are not allowed ('bogus'"),
        (lambda c: c["train"].update(lr="fast"), "train.lr: 'fast' is not of type 'number'"),
        (lambda c: c["prune"].update(densities=[0.2, 1.5]), "prune.densities[1]: 1.5 is greater than"),
        (lambda c: c["prune"].update(densities=[0.0]), "prune.densities[0]: 0.0 is less than or equal"),
        (lambda c: c["prune"].update(densities=[-0.1]), "prune.densities[0]"),
        (lambda c: c["prune"].update(densities=[]), "prune.densities: [] should be non-empty"),
        (lambda c: c["knob"].update(values=[]), "knob.values: [] should be non-empty"),
        (lambda c: c["knob"].update(name="sam_rho", values=[]), "knob.values: [] should be non-empty"),
        (lambda c: c["knob"].update(values=[10, 10.0]), "knob.values: [10, 10.0] has non-unique elements"),
        (lambda c: c["prune"].update(densities=[0.2, 0.2]), "prune.densities: [0.2, 0.2] has non-unique"),
        (lambda c: c["model"].update(name="resnet50"), "model.name: 'resnet50' is not one of"),
        (lambda c: c["data"].update(name="imagenet"), "data.name: 'imagenet' is not one of"),
        (lambda c: c["knob"].update(name="temperature"), "knob.name: 'temperature' is not one of"),
        (lambda c: c["prune"].update(method="random"), "prune.method: 'random' is not one of"),
        (lambda c: c["seeds"].update(retrain=[1]), "seeds.retrain: [1] is too short"),
        (lambda c: c["knob"].update(values=[1, 5]), "knob.values: epochs [5] exceed train.epochs=3"),
        (lambda c: c["knob"].update(values=[1.5]), "knob.values[0]: 1.5 must be a whole number"),
        (lambda c: c["knob"].update(name="batch_size", values=[32]), "train.iterations: the batch_size knob"),
        (lambda c: c["model"].update(name="preresnet20"), "model.name: preresnet20 needs data.name in"),
        (lambda c: c["prune"].update(densities=[0.001]), "prune.densities: density 0.001 keeps no weight"),
        (lambda c: c["runtime"].update(device="tpu"), "runtime.device: 'tpu' is not one of"),
        (lambda c: c["runtime"].update(tf32="yes"), "runtime.tf32: 'yes' is not of type 'boolean'"),
        (lambda c: c["runtime"].update(retrain_pack="all"), "runtime.retrain_pack: 'all' is not one of"),
        (
            lambda c: c["metrics"].update(hessian_trace_deflation=11),
            "metrics.hessian_trace_deflation: 11 Lanczos vectors exceed hessian_max_iter=10",
        ),
        (lambda c: c["metrics"].update(hessian_trace_deflation=-1), "hessian_trace_deflation: -1 is less"),
    ],
)
def test_bad_config_gives_one_line_naming_the_key(tiny_config, edit, expected):
    edit(tiny_config)
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config, source="my.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("my.yaml: ")
    assert expected in message


def test_missing_cifar_folder_names_path(tmp_path, tiny_config):
    tiny_config["data"] = {"name": "cifar10", "root": str(tmp_path / "nowhere")}
    tiny_config["model"] = {"name": "preresnet20"}
    with pytest.raises(ConfigError, match=r"data.root: .*nowhere/cifar-10-batches-py not found"):
        load_config(tiny_config)


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("knob: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_validate_cli(tmp_path, tiny_config, capsys):
    from threeregime.cli import main

    path = write_config(tmp_path, tiny_config)
    assert main(["validate", str(path)]) == 0
    assert "2 x 2 = 4 cells" in capsys.readouterr().out
    tiny_config["prune"]["densities"] = [2]
    path = write_config(tmp_path, tiny_config)
    assert main(["validate", str(path)]) == 1
    assert "prune.densities[0]: 2 is greater than the maximum of 1" in capsys.readouterr().err


def test_tf32_enters_the_specs_only_when_on_and_sets_the_backend_flags(tiny_config):
    """Off (the default) keeps the specs of runs made before the key existed; on, it changes
    every training and metrics spec, and a job sets both TF32 flags to match."""
    import torch

    from threeregime.cli import _performance

    off = load_config(tiny_config)
    tiny_config["runtime"]["tf32"] = True
    on = load_config(tiny_config)
    assert off.performance_spec() == {"amp": "none", "channels_last": False}
    assert on.retrain_spec()["performance"] == {"amp": "none", "channels_last": False, "tf32": True}
    assert on.metrics_spec()["performance"]["tf32"] and on.dense_spec("1", 1)["performance"]["tf32"]
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for cfg, expected in ((on, True), (off, False)):
            perf = _performance(cfg.retrain_spec(), cfg.runtime)
            assert perf.tf32 is expected
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (expected,) * 2
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
