"""docs/extending.md's examples, run: each registers a throw-away entry exactly as the document
writes it, then validation and a dry run (and, where the document shows the function, the
function itself) behave as the document says."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
import yaml

from threeregime.config import ConfigError, PlotConfig, load_config

from .conftest import REPO, SNAKEFILE, TINY_CONFIG, write_config

DOC = (REPO / "docs" / "extending.md").read_text()
EXAMPLES = dict(re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", DOC, re.S))
CODE = dict(re.findall(r"<!-- code: (\w+) -->\n```python\n(.*?)```", DOC, re.S))
CONFIGS = {
    k: yaml.safe_load(v) for k, v in re.findall(r"<!-- config: (\w+) -->\n```yaml\n(.*?)```", DOC, re.S)
}
NEEDS = {"dataset": ["dataset", "model"], "model": ["dataset", "model"]}  # they refer to each other
RUN_SNAKEMAKE = (
    "\nimport sys\nfrom snakemake.cli import main\nsys.argv = ['snakemake', *sys.argv[1:]]\nmain()\n"
)


def test_the_document_has_every_example():
    assert sorted(EXAMPLES) == ["dataset", "knob", "metric", "model", "pruning"]
    assert sorted(CODE) == ["metric", "model", "pruning"]


def _config(name: str) -> dict:
    config = json.loads(json.dumps(TINY_CONFIG))
    config["prune"]["densities"] = [0.5]
    for key, value in CONFIGS.get(name, {}).items():
        config[key] = {**config.get(key, {}), **value} if key != "knob" else value
    return config


def _dry_run(folder, registrations: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", registrations + RUN_SNAKEMAKE, "-s", str(SNAKEFILE)]
    command += ["--directory", str(folder), "-n", "--cores", "1"]
    return subprocess.run(command, capture_output=True, text=True, cwd=folder)


def _counts(stdout: str) -> dict[str, int]:
    rows = [line.split() for line in stdout.splitlines()]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[1].isdigit()}


@pytest.mark.parametrize(
    ("name", "refusal", "jobs"),
    [
        ("knob", "knob.name: 'momentum' is not one of", {"dense_train": 2, "retrain": 4, "metrics": 2}),
        ("metric", None, {"dense_train": 2, "retrain": 4, "metrics": 2, "plot": 1}),
        ("pruning", "prune.method: 'random' is not one of", {"prune": 4, "retrain": 8, "metrics": 4}),
        ("model", "model.name: 'tiny_cnn1d' is not one of", {"dense_train": 2, "prune": 2}),
        ("dataset", "is not one of", {"prepare_data": 1, "dense_train": 2}),
    ],
)
def test_each_example_validates_and_dry_runs_once_registered(tmp_path, name, refusal, jobs):
    write_config(tmp_path, _config(name))
    registrations = "\n".join(EXAMPLES[n] for n in NEEDS.get(name, [name]))
    plan = _dry_run(tmp_path, registrations)
    assert plan.returncode == 0, plan.stderr[-2000:]
    counts = _counts(plan.stdout)
    assert {rule: counts.get(rule) for rule in jobs} == jobs, plan.stdout[-1500:]
    if refusal:  # the same config without the entry: one line naming the key
        unregistered = _dry_run(tmp_path, "")
        assert unregistered.returncode != 0 and refusal in unregistered.stdout + unregistered.stderr


def test_the_metric_example_gets_its_panel(monkeypatch):
    from threeregime import metric_registry
    from threeregime.plot import phase_figure

    from .test_plot import _regimes

    monkeypatch.setattr(metric_registry, "METRICS", dict(metric_registry.METRICS))
    exec(EXAMPLES["metric"], {})
    load_config(json.loads(json.dumps(TINY_CONFIG)))  # the registry stays sound
    namespace = {}
    exec(CODE["metric"], namespace)
    from .test_prune import _model

    model = _model("cnn1d")
    value = namespace["weight_norm"](model, None, {})["conv_weight_norm"]
    from threeregime.models import prunable_layers

    expected = torch.cat([w.detach().flatten() for w in prunable_layers(model).values()]).norm()
    assert value == pytest.approx(float(expected), rel=1e-6)
    regimes = _regimes()
    regimes["conv_weight_norm_mean"] = [value * (i + 1) for i in range(len(regimes))]
    axes = {ax.get_gid(): ax for ax in phase_figure(regimes, PlotConfig()).axes if ax.get_gid()}
    image = axes["conv_weight_norm_mean"].images[0]
    assert image.get_cmap().name == "magma" and type(image.norm).__name__ == "LogNorm"


def test_the_pruning_example_keeps_exact_counts(monkeypatch):
    from threeregime import prune, pruning_methods

    from .test_prune import _model

    monkeypatch.setattr(pruning_methods, "PRUNING_METHODS", dict(pruning_methods.PRUNING_METHODS))
    monkeypatch.setattr(prune, "PRUNING_METHODS", pruning_methods.PRUNING_METHODS)
    exec(EXAMPLES["pruning"], {})
    namespace = {"torch": torch}
    exec(CODE["pruning"], namespace)
    monkeypatch.setattr(prune, "random_masks", namespace["random_masks"], raising=False)
    masks = prune.compute_masks(_model("preresnet20"), 0.2, "random")
    assert {k: int(m.sum()) for k, m in masks.items()} == {
        k: round(0.2 * m.numel()) for k, m in masks.items()
    }


def test_the_model_example_shapes_match_its_module(monkeypatch):
    from threeregime import catalog
    from threeregime.catalog import scaled
    from threeregime.models import prunable_layers

    monkeypatch.setattr(catalog, "MODELS", dict(catalog.MODELS))
    namespace = {}
    exec(EXAMPLES["model"], namespace)
    module_namespace = {"nn": torch.nn, "scaled": scaled}
    exec(CODE["model"], module_namespace)
    for width in (0.5, 1.0, 2.0):
        model = module_namespace["tiny_cnn1d"](1, 10, width)
        actual = {k: tuple(w.shape) for k, w in prunable_layers(model).items()}
        assert catalog.MODELS["tiny_cnn1d"].conv_shapes(width, 1) == actual
    assert model(torch.randn(5, 1, 40)).shape == (5, 10)


def test_a_half_registered_model_or_dataset_fails_in_one_line(monkeypatch, tiny_config):
    from threeregime import catalog

    monkeypatch.setattr(catalog, "MODELS", dict(catalog.MODELS))
    monkeypatch.setitem(
        catalog.MODELS,
        "half",
        catalog.Model("half", "threeregime.models:x", lambda w, c: {}, ("imagenet",), "d"),
    )
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config)
    assert str(info.value) == "model registry: half: datasets must name registered datasets, got ['imagenet']"
