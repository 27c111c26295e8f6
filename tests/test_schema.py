"""The schema is the one reference: every key described, its default the dataclass default, and
docs/configuration.md generated from it. Keys added later are checked the same way."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import yaml

from threeregime.config import docs as schema_docs
from threeregime.config.experiment import ExperimentConfig
from threeregime.config.schema import schema as _schema
from threeregime.registry.metrics import settings as metric_settings
from threeregime.registry.pruning import settings as pruning_settings

KEYS = list(schema_docs.walk(_schema()))
OWNED = {f"metrics.{k}": s for k, s in metric_settings().items()}
OWNED |= {f"prune.{k}": s for k, s in pruning_settings().items()}  # the registries' own settings


def _dataclass_default(key: str):
    """The dataclass field behind a dotted key, or the registry setting that owns it: (default
    as YAML would spell it, required?)."""
    if key in OWNED:
        return OWNED[key].default, False
    cls = ExperimentConfig
    *sections, name = key.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return None, True
    return (list(value) if isinstance(value, tuple) else value), False


def test_the_walk_sees_every_section_and_key():
    keys = [key for key, _, _ in KEYS]
    assert {"run_name", "train.lr", "retrain.recipe", "knob.name", "metrics.lmc_bn_batch_size"} <= set(keys)
    assert "retrain.recipe.lr" not in keys, "retrain.recipe is one key (a mapping), not a section"
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("key,node,required", KEYS, ids=[k for k, _, _ in KEYS])
def test_every_key_has_a_description(key, node, required):
    assert node.get("description", "").strip(), f"{key}: add a description to the schema"


@pytest.mark.parametrize(
    "key,node,required",
    [k for k in KEYS if not schema_docs.is_section(k[1])],
    ids=[k[0] for k in KEYS if not schema_docs.is_section(k[1])],
)
def test_schema_default_is_the_dataclass_default(key, node, required):
    default, dataclass_required = _dataclass_default(key)
    assert required == dataclass_required, f"{key}: required in the schema iff the dataclass has no default"
    if required:
        assert "default" not in node, f"{key}: a required key has no default"
    else:
        assert "default" in node, f"{key}: add `default: {default!r}` to the schema"
        assert node["default"] == default and type(node["default"]) is type(default), (
            f"{key}: schema default {node['default']!r} != dataclass default {default!r}"
        )


def test_schema_sections_and_dataclasses_have_the_same_keys():
    sections = {"": ExperimentConfig}
    for key, node, _ in KEYS:
        if schema_docs.is_section(node):
            parent = sections[key.rpartition(".")[0]]
            sections[key] = typing.get_type_hints(parent)[key.rpartition(".")[2]]
    for section, cls in sections.items():
        prefix = f"{section}." if section else ""
        in_schema = {k.removeprefix(prefix) for k, _, _ in KEYS if k.startswith(prefix)}
        in_schema = {k for k in in_schema if "." not in k and f"{prefix}{k}" not in OWNED}
        fields = {f.name for f in dataclasses.fields(cls)} - {"options"}  # options: the owned ones
        if cls is ExperimentConfig:  # which prune.setups entry a config is: set by for_setup, no key
            fields -= {"setup"}
        assert in_schema == fields, f"section {section or '<top>'}"


def test_configuration_page_is_up_to_date():
    page = schema_docs.DOCS_PAGE
    assert page.exists(), "run python -m threeregime.config.docs"
    assert page.read_text() == schema_docs.render(), (
        "docs/configuration.md is out of date: run python -m threeregime.config.docs"
    )


def test_page_rows_show_type_default_and_description():
    from threeregime.registry.knobs import KNOBS

    page = schema_docs.render()
    assert "| `metrics.lmc_bn_batch_size` | null or positive integer | `null` |" in page
    assert "| `train.lr_milestones` | list of number > 0, < 1, no repeats | `[0.5, 0.75]` |" in page
    knobs = ", ".join(f"`{name}`" for name in KNOBS)  # the enum comes from the knob registry
    assert f"| `knob.name` | one of {knobs} | required |" in page
    assert knobs.startswith("`epochs`, `batch_size`, `sam_rho`, `lr`")
    from threeregime.registry.datasets import DATASETS

    datasets = ", ".join(f"`{name}`" for name in DATASETS)  # the enum comes from the dataset registry
    assert f"| `data.name` | one of {datasets} | `mnist1d` |" in page
    assert datasets.startswith("`mnist1d`, `cifar10`, `cifar100`")


def test_lmc_bn_batch_size_enters_the_metrics_spec_only_when_set():
    """Metrics made before the key existed (BN recomputed in eval_batch_size batches) keep their spec."""
    from threeregime.config.load import load_config

    from .conftest import REPO

    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    assert load_config(raw).metrics_spec()["lmc_bn_batch_size"] == 64  # the demo sets it
    del raw["metrics"]["lmc_bn_batch_size"]
    unset = load_config(raw).metrics_spec()
    assert "lmc_bn_batch_size" not in unset and unset["eval_batch_size"] == 1000
    raw["metrics"]["lmc_bn_batch_size"] = 64
    assert load_config(raw).metrics_spec() == unset | {"lmc_bn_batch_size": 64}
