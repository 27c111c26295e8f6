"""Registrations are checked whole when a config is validated: a typo in any piece of code an
entry names, in a flag it names, or a setting that collides with another is refused in one line
naming the registry and the entry, before any job (and before torch is imported)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError
from threeregime.registry.base import Setting, reference_problem
from threeregime.registry.datasets import DATASETS, Dataset
from threeregime.registry.knobs import KNOBS, Knob
from threeregime.registry.metrics import METRICS, Metric
from threeregime.registry.models import MODELS, Model
from threeregime.registry.pruning import GRANULARITIES, PRUNING_METHODS, Granularity, PruningMethod

SIMILARITY = "threeregime.compute.landscape:output_similarity"
FLAG = (Setting("my_flag", False, {"type": "boolean"}, "turns my metric on"),)


def _knob(field: str) -> Knob:
    return Knob("x", field, "runs", 1, "why", "label", "unit", ("more", "less"), False, "retrain")


CASES = [
    (KNOBS, _knob("momentun"), "knob registry: x: field 'momentun' is not a field of the training recipe"),
    (KNOBS, _knob("dropout"), "knob registry: x: field 'dropout' is not a field of the training recipe: add"),
    (
        METRICS,
        Metric("x", "model", "threeregime.compute.landscape:output_similarty", "c"),
        "metric registry: x: computed_by 'threeregime.compute.landscape:output_similarty': "
        "threeregime.compute.landscape defines no output_similarty",
    ),
    (
        METRICS,
        Metric(
            "x",
            "model",
            SIMILARITY,
            "c",
            compute="threeregime.compute.spectra:alpha_metric",
            enabled_by="my_flag",
            settings=FLAG,
        ),  # fmt: skip
        "metric registry: x: compute 'threeregime.compute.spectra:alpha_metric': "
        "threeregime.compute.spectra defines no alpha_metric",
    ),
    (
        METRICS,
        Metric("x", "model", "threeregime.compute.hessian:KrylovBasis.spectral_densty", "c"),
        "metric registry: x: computed_by 'threeregime.compute.hessian:KrylovBasis.spectral_densty': "
        "threeregime.compute.hessian defines no KrylovBasis.spectral_densty",
    ),
    (
        METRICS,
        Metric("x", "model", SIMILARITY, "c", enabled_by="weight_alfa"),
        "metric registry: x: enabled_by 'weight_alfa' is no boolean metrics.* setting of a metric entry",
    ),
    (
        METRICS,
        Metric("x", "model", SIMILARITY, "c", settings=(Setting("cka_samples", 1, {}, "clash"),)),
        "metric registry: x: setting metrics.cka_samples is already a metrics.* key of the config's",
    ),
    (
        METRICS,
        Metric("x", "model", SIMILARITY, "c", settings=(Setting("weight_alpha", 1, {}, "clash"),)),
        "metric registry: x: setting metrics.weight_alpha is already weight_alpha's",
    ),
    (
        PRUNING_METHODS,
        PruningMethod("x", "threeregime.compute.prune:score_unifrm", "per layer", "d"),
        "pruning registry: x: scores 'threeregime.compute.prune:score_unifrm': "
        "threeregime.compute.prune defines no score_unifrm",
    ),
    (
        PRUNING_METHODS,
        PruningMethod("x", "threeregime.compute.prun:score_uniform", "per layer", "d"),
        "pruning registry: x: scores 'threeregime.compute.prun:score_uniform': module "
        "threeregime.compute.prun not found",
    ),
    (
        PRUNING_METHODS,
        PruningMethod(
            "x", "threeregime.compute.prune:score_uniform", "per layer", "d", (Setting("rate", 1, {}, "c"),)
        ),
        "pruning registry: x: setting prune.rate is already a prune.* key of the config's",
    ),
    (
        PRUNING_METHODS,
        PruningMethod("x", "threeregime.compute.prune:score_wanda", "per row", "d", calibration=True),
        "pruning registry: x: a method with calibration owns a calibration_samples setting",
    ),
    (
        GRANULARITIES,
        Granularity("x", "threeregime.compute.prune:n_of_m_mask", lambda s, d, r: 0, "d"),
        "granularity registry: x: masks 'threeregime.compute.prune:n_of_m_mask': "
        "threeregime.compute.prune defines no n_of_m_mask",
    ),
    (
        GRANULARITIES,
        Granularity("x", "threeregime.compute.prune:channel_masks", None, "d"),
        "granularity registry: x: kept must be a function of (shape, density, per_row)",
    ),
    (
        MODELS,
        Model("x", "threeregime.compute.models:CNN1D", lambda w, c: {}, ("mnist1d",), "d"),
        "model registry: x: builder 'threeregime.compute.models:CNN1D': threeregime.compute.models "
        "defines no CNN1D",
    ),
    (
        DATASETS,
        Dataset("x", (1, 10), "threeregime.compute.data:load_mnist", ("name",), "d"),
        "dataset registry: x: loader 'threeregime.compute.data:load_mnist': threeregime.compute.data "
        "defines no load_mnist",
    ),
    (
        DATASETS,
        Dataset("x", (1, 10), "threeregime.compute.data.load_mnist1d", ("name",), "d"),
        "dataset registry: x: loader must be 'module:function', got 'threeregime.compute.data.load_mnist1d'",
    ),
]


@pytest.mark.parametrize(
    ("registry", "entry", "message"), CASES, ids=[f"{r.kind}-{i}" for i, (r, _, _) in enumerate(CASES)]
)
def test_a_typo_in_an_entry_is_refused_at_validation_in_one_line(
    monkeypatch, tiny_config, registry, entry, message
):
    monkeypatch.setitem(registry, "x", entry)
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config)
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_every_shipped_entry_names_code_that_exists(tiny_config):
    load_config(tiny_config)  # the shipped registries pass the same checks
    assert reference_problem("threeregime.compute.prune:score_uniform", "scores") is None


def test_validation_resolves_references_without_importing_torch(tmp_path):
    """The Snakefile validates before it builds the DAG: torch stays unimported."""
    code = (
        "import sys, yaml\nfrom threeregime.config.load import load_config\n"
        f"load_config(yaml.safe_load(open({str(tmp_path / 'c.yaml')!r})))\n"
        "print('torch' in sys.modules)\n"
    )
    from .conftest import TINY_CONFIG, write_config

    write_config(tmp_path, TINY_CONFIG, "c.yaml")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_a_model_without_a_prunable_layer_is_refused_in_one_line(monkeypatch, tiny_config):
    """An MLP of one Linear layer has only its classifier, which is never pruned."""
    logistic = Model(
        "logistic", "threeregime.compute.models:CNN1d", lambda width, channels: {}, ("mnist1d",), "d"
    )
    monkeypatch.setitem(MODELS, "logistic", logistic)
    tiny_config["model"] = {"name": "logistic"}
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config)
    assert str(info.value) == (
        "config: model.name: logistic has no prunable layer (every convolution and every Linear "
        "layer but the last are pruned)"
    )
