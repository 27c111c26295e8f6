"""Configuration validation: every bad input is one clear line naming the key, before compute."""

from __future__ import annotations

import pytest

from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError, fmt_value
from threeregime.config.specs import to_json

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
        (
            lambda c: c["prune"].update(densities=[0.001]),
            "prune.densities: density 0.001 keeps 0 of 40 weights",
        ),
        (lambda c: c["runtime"].update(device="tpu"), "runtime.device: 'tpu' is not one of"),
        (lambda c: c["runtime"].update(tf32="yes"), "runtime.tf32: 'yes' is not of type 'boolean'"),
        (lambda c: c["runtime"].update(retrain_pack="all"), "runtime.retrain_pack: 'all' is not one of"),
        (
            lambda c: c["metrics"].update(hessian_trace_deflation=11),
            "metrics.hessian_trace_deflation: 11 Lanczos vectors exceed hessian_max_iter=10",
        ),
        (lambda c: c["metrics"].update(hessian_trace_deflation=-1), "hessian_trace_deflation: -1 is less"),
        (lambda c: c["train"].update(lr=float("nan")), "train.lr: nan is not a finite number"),
        (lambda c: c["regimes"].update(eps=float("inf")), "regimes.eps: inf is not a finite number"),
        (lambda c: c["train"].update(lr=1e300), "train.lr: 1e+300 is greater than the maximum of 10"),
        (lambda c: c["train"].update(weight_decay=1e300), "train.weight_decay: 1e+300 is greater than"),
        (
            lambda c: c.update(retrain={"recipe": {"lr": 1e300}}),
            "retrain.recipe.lr: 1e+300 is greater than the maximum of 10",
        ),
        (
            lambda c: c.update(retrain={"recipe": {"label_noise": 0.2}}),
            "retrain.recipe.label_noise: retraining uses clean labels",
        ),
        (lambda c: c["regimes"].update(eps_range=[0.1, float("nan")]), "regimes.eps_range[1]: nan is not"),
        (lambda c: c["train"].update(batch_size=481), "train.batch_size: batch size 481 exceeds the 480"),
        (
            lambda c: c.update(retrain={"recipe": {"batch_size": 1000}}),
            "retrain.recipe.batch_size: batch size 1000 exceeds the 480 training samples",
        ),
        (
            lambda c: c.update(knob={"name": "batch_size", "values": [32, 512]}, train={"iterations": 10}),
            "knob.values[1]: batch size 512 exceeds the 480 training samples",
        ),
        (
            lambda c: c.update(plot={"cmap": "not_a_colormap"}),
            "plot.cmap: 'not_a_colormap' is not a matplotlib",
        ),
        (lambda c: c.update(run_name="nl\n"), "run_name: 'nl\\n' does not match"),
        (lambda c: c["train"].update(lr="0.1"), "(snakemake --config passes values as strings"),
        (lambda c: c["seeds"].update(dense=[1, 2**32]), "seeds.dense[1]: 4294967296 is too large"),
        (
            lambda c: c.update(knob={"name": "epochs", "values": [1, 2, 3]}, adaptive={"enabled": True}),
            "adaptive.budget: 0.5 of the 6-cell grid allows 3 units (cells x 1 dense seeds), and the "
            "coarse sub-grid of adaptive.step 2 already takes 4: no round could add anything",
        ),
        (
            lambda c: (
                c.update(
                    knob={"name": "epochs", "values": [1, 2, 3]}, adaptive={"enabled": True, "budget": 1.0}
                )
                or c["runtime"].update(retrain_pack="temperature")
            ),
            "runtime.retrain_pack: temperature packs every density of a dense model into one job",
        ),
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

    from threeregime.compute.runtime import job_performance

    off = load_config(tiny_config)
    tiny_config["runtime"]["tf32"] = True
    on = load_config(tiny_config)
    assert off.performance_spec() == {"amp": "none", "channels_last": False}
    assert on.retrain_spec()["performance"] == {"amp": "none", "channels_last": False, "tf32": True}
    assert on.metrics_spec()["performance"]["tf32"] and on.dense_spec("1", 1)["performance"]["tf32"]
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        for cfg, expected in ((on, True), (off, False)):
            perf = job_performance(cfg.retrain_spec(), cfg.runtime, torch.device("cpu"))
            assert perf.tf32 is expected
            assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (expected,) * 2
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_numbers_are_canonical_so_equal_values_give_equal_specs_and_paths(tiny_config):
    """A seed written 1.0 would name a seed1.0 folder; epochs 3.0 and 3 must not rerun anything."""
    plain = load_config(tiny_config)
    tiny_config["seeds"]["dense"] = [1.0]
    tiny_config["train"] |= {"epochs": 3.0, "lr": 0.05, "momentum": 1}
    written = load_config(tiny_config)
    assert written.seeds.dense == (1,) and isinstance(written.seeds.dense[0], int)
    assert isinstance(written.train.epochs, int) and isinstance(written.train.momentum, float)
    tiny_config["train"]["momentum"] = 1.0
    assert to_json(written.dense_spec("3", 1)) == to_json(load_config(tiny_config).dense_spec("3", 1))
    assert to_json(plain.retrain_spec()) != to_json(written.retrain_spec())  # momentum 0.9 vs 1.0
    assert written.metrics_axes()["seed"] == ["1"]


def test_validate_merges_several_files_like_snakemake_and_names_bad_files(tmp_path, capsys):
    from threeregime.cli import main

    base = REPO / "config.yaml"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("train:\n  epochs: 40\nknob:\n  values: [5, 40]\n")
    assert main(["validate", str(base), str(overlay)]) == 0
    assert "epochs x density = 2 x 4" in capsys.readouterr().out  # lists replaced, dicts merged
    cases = {
        str(overlay): "is a required property (an overlay? validate it after its base",
        str(tmp_path): f"{tmp_path}: is a folder, expected a YAML config file",
    }
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    cases[str(binary)] = f"{binary}: not a text file (not UTF-8"
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    cases[str(empty)] = f"{empty}: empty file, expected a YAML mapping"
    broken = tmp_path / "broken.yaml"
    broken.write_text("knob: {name: epochs\nvalues: [1\n")
    cases[str(broken)] = f"{broken}: not valid YAML (line 2, column 7: expected ',' or '}}'"
    for path, expected in cases.items():
        assert main(["validate", path]) == 1
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
