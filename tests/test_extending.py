"""docs/extending.md's examples, run: each registers a throw-away entry exactly as the document
writes it, with its code placed in the module the document names, then validation and a dry run
(and, where the document shows the function, the function itself) behave as the document says."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import pytest
import torch
import yaml

from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError, PlotConfig

from .conftest import REPO, SNAKEFILE, TINY_CONFIG, write_config

DOC = (REPO / "docs" / "extending.md").read_text()
EXAMPLES = dict(re.findall(r"<!-- example: (\w+) -->\n```python\n(.*?)```", DOC, re.S))
CODE = dict(re.findall(r"<!-- code: (\w+) -->\n```python\n(.*?)```", DOC, re.S))
CONFIGS = {
    k: yaml.safe_load(v) for k, v in re.findall(r"<!-- config: (\w+) -->\n```yaml\n(.*?)```", DOC, re.S)
}
NEEDS = {"dataset": ["dataset", "model"], "model": ["dataset", "model"]}  # they refer to each other
# where the document says each example's code goes
HOME = {
    "metric": "threeregime.compute.spectra",
    "pruning": "threeregime.compute.prune",
    "model": "threeregime.compute.models",
}
RUN_SNAKEMAKE = (
    "\nimport sys\nfrom snakemake.cli import main\nsys.argv = ['snakemake', *sys.argv[1:]]\nmain()\n"
)


def test_the_document_has_every_example():
    assert sorted(EXAMPLES) == ["dataset", "granularity", "knob", "metric", "model", "pruning"]
    assert sorted(CODE) == ["metric", "model", "pruning"]


def _config(name: str) -> dict:
    config = json.loads(json.dumps(TINY_CONFIG))
    config["prune"]["densities"] = [0.5]
    for key, value in CONFIGS.get(name, {}).items():
        config[key] = {**config.get(key, {}), **value} if key != "knob" else value
    return config


def _placed(name: str) -> str:
    """Python that puts an example's code into the module the document names (as pasting it at
    the end of that file does) and registers its entry."""
    names = NEEDS.get(name, [name])
    code = "".join(f"import {HOME[n]} as _home\nexec({CODE[n]!r}, vars(_home))\n" for n in names if n in CODE)
    # the dataset's loader is not shown in the document: a stand-in keeps the reference valid
    if "dataset" in names:
        code += "import threeregime.compute.data as _data\n_data.load_blobs = lambda cfg: None\n"
    return code + "\n".join(EXAMPLES[n] for n in names)


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
        ("metric", "metrics: Additional properties", {"dense_train": 2, "retrain": 4, "metrics": 2}),
        ("pruning", "prune.method: 'random' is not one of", {"prune": 4, "retrain": 8, "metrics": 4}),
        ("granularity", "prune.granularity: '1:4' is not one of", {"prune": 2, "retrain": 4, "metrics": 2}),
        ("model", "model.name: 'tiny_cnn1d' is not one of", {"dense_train": 2, "prune": 2}),
        ("dataset", "is not one of", {"prepare_data": 1, "dense_train": 2}),
    ],
)
def test_each_example_validates_and_dry_runs_once_registered(tmp_path, name, refusal, jobs):
    write_config(tmp_path, _config(name))
    plan = _dry_run(tmp_path, _placed(name))
    assert plan.returncode == 0, plan.stderr[-2000:]
    counts = _counts(plan.stdout)
    assert {rule: counts.get(rule) for rule in jobs} == jobs, plan.stdout[-1500:]
    # the same config without the entry: one line naming the key
    unregistered = _dry_run(tmp_path, "")
    assert unregistered.returncode != 0 and refusal in unregistered.stdout + unregistered.stderr


@pytest.fixture
def registered(monkeypatch):
    """Place an example's code in its module and register its entry, for one test only: the
    registries and the module are restored afterwards."""
    from threeregime.registry.datasets import DATASETS
    from threeregime.registry.knobs import KNOBS
    from threeregime.registry.metrics import METRICS
    from threeregime.registry.models import MODELS
    from threeregime.registry.pruning import GRANULARITIES, PRUNING_METHODS

    registries = (DATASETS, KNOBS, METRICS, MODELS, PRUNING_METHODS, GRANULARITIES)
    saved = [dict(registry) for registry in registries]

    def place(example: str) -> dict:
        namespace = {}
        if example in CODE:
            home = importlib.import_module(HOME[example])
            namespace = dict(vars(home))
            exec(CODE[example], namespace)  # pasted at the end of the module: its names in scope
            for key in set(namespace) - set(vars(home)):
                monkeypatch.setattr(home, key, namespace[key], raising=False)
        exec(EXAMPLES[example], {})
        return namespace

    yield place
    for registry, entries in zip(registries, saved):
        registry.clear()
        registry.update(entries)


def test_adding_a_metric_is_its_entry_and_its_function(registered):
    """Two edits: nothing else (no config field, schema entry or spec code) is needed for the
    setting to validate, enter the spec, appear in the docs and turn the metric on."""
    from threeregime.compute.landscape import model_metrics
    from threeregime.compute.models import prunable_layers
    from threeregime.config import docs
    from threeregime.views.plot import phase_figure

    from .test_plot import _regimes
    from .test_prune import _model

    registered("metric")
    config = _config("metric")
    cfg = load_config(config)
    assert cfg.metrics.option("weight_norm") is True
    assert cfg.metrics_spec()["weight_norm"] is True
    assert "weight_norm" not in load_config(_config("")).metrics_spec(), "off: no spec change"
    assert "| `metrics.weight_norm` | boolean | `false` | also measure conv_weight_norm" in docs.render()
    model = _model("cnn1d")
    expected = torch.cat([w.detach().flatten() for w in prunable_layers(model).values()]).norm()
    payload = {"masks": {}, "state": {"history": [{"test_error": 0.5}]}, "density_actual": 1.0}
    from .conftest import vector_payload

    data_payload = vector_payload(torch.randn(32, 1, 40), torch.randint(0, 10, (32,)), 10)
    from threeregime.compute.data import DeviceData

    measured = model_metrics(payload, model, DeviceData(data_payload, "cpu"), cfg.metrics, _performance())
    assert measured["conv_weight_norm"] == pytest.approx(float(expected), rel=1e-6)
    regimes = _regimes()
    regimes["conv_weight_norm_mean"] = [float(expected) * (i + 1) for i in range(len(regimes))]
    axes = {ax.get_gid(): ax for ax in phase_figure(regimes, PlotConfig()).axes if ax.get_gid()}
    image = axes["conv_weight_norm_mean"].images[0]
    assert image.get_cmap().name == "magma" and type(image.norm).__name__ == "LogNorm"


def _performance():
    from threeregime.compute.runtime import Performance

    return Performance()


def test_the_pruning_example_keeps_exact_counts(registered):
    from threeregime.compute import prune

    from .test_prune import _model

    registered("pruning")
    masks = prune.compute_masks(_model("preresnet20"), 0.2, "random")
    assert {k: int(m.sum()) for k, m in masks.items()} == {
        k: round(0.2 * m.numel()) for k, m in masks.items()
    }
    channels = prune.compute_masks(_model("preresnet20"), 0.2, "random", granularity="channel")
    for mask in channels.values():
        rows = mask.reshape(mask.shape[0], -1)
        assert torch.equal(rows.any(dim=1), rows.all(dim=1))
        assert int(rows.all(dim=1).sum()) == round(0.2 * rows.shape[0])


def test_the_granularity_example_keeps_one_of_every_four(registered):
    from threeregime.compute import prune

    from .test_prune import _model

    registered("granularity")
    masks = prune.compute_masks(_model("preresnet20"), 0.25, "uniform", granularity="1:4")
    for name, mask in masks.items():
        rows = mask.reshape(mask.shape[0], -1)
        if rows.shape[1] % 4 == 0:
            assert (rows.reshape(-1, 4).sum(dim=1) == 1).all(), name
        else:  # the first conv: 3 x 3 x 3 inputs per filter
            assert mask.all(), name
    assert load_config(_config("granularity")).prune_spec("0.25")["granularity"] == "1:4"


def test_the_model_example_pasted_into_its_module_matches_its_shapes(registered):
    from threeregime.compute.models import prunable_layers
    from threeregime.registry import models

    namespace = registered("model")
    for width in (0.5, 1.0, 2.0):
        model = namespace["tiny_cnn1d"](1, 10, width)
        actual = {k: tuple(w.shape) for k, w in prunable_layers(model).items()}
        assert models.MODELS["tiny_cnn1d"].weight_shapes(width, 1) == actual
    assert model(torch.randn(5, 1, 40)).shape == (5, 10)


def test_a_half_registered_model_or_dataset_fails_in_one_line(registered, tiny_config):
    from threeregime.registry import models

    half = models.Model("half", "threeregime.compute.models:CNN1d", lambda w, c: {}, ("imagenet",), "d")
    models.register(half)
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config)
    assert str(info.value) == "model registry: half: datasets must name registered datasets, got ['imagenet']"
