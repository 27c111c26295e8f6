"""The config schema (``schema/config.schema.yaml`` plus what the registries own), validation
against it with one line naming the key, and the canonical form of the values it accepts."""

from __future__ import annotations

import copy
import math
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from threeregime.config.settings import ConfigError
from threeregime.registry.datasets import DATASETS
from threeregime.registry.knobs import KNOBS
from threeregime.registry.metrics import METRICS
from threeregime.registry.models import MODELS
from threeregime.registry.pruning import GRANULARITIES, PRUNING_METHODS

SCHEMA_PATH = Path(__file__).parent / "schema" / "config.schema.yaml"


@cache
def schema_file() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def schema() -> dict:
    """The config schema with what the registries own filled in: the file describes the keys,
    the registries say which names exist (the ``name`` enums) and add their entries' own
    settings (``metrics.*``, ``prune.*``; threeregime.registry.base.Setting)."""
    full = copy.deepcopy(schema_file())
    sections = full["properties"]
    sections["knob"]["properties"]["name"]["enum"] = list(KNOBS)
    sections["prune"]["properties"]["method"]["enum"] = list(PRUNING_METHODS)
    sections["prune"]["properties"]["granularity"]["enum"] = list(GRANULARITIES)
    sections["model"]["properties"]["name"]["enum"] = list(MODELS)
    sections["data"]["properties"]["name"]["enum"] = list(DATASETS)
    for section, entries in (("metrics", METRICS), ("prune", PRUNING_METHODS)):
        for entry in entries.values():
            for setting in entry.settings:
                owner = f"owned by {entries.kind} {entry.name}"
                prop = setting.schema() | {"description": f"{setting.description} ({owner})"}
                sections[section]["properties"].setdefault(setting.key, prop)
    prune = sections["prune"]["properties"]
    setup = prune["setups"]["items"]["properties"]
    for key in setup_keys():  # a setup overrides these prune.* keys, with their own schema
        setup[key] = copy.deepcopy(prune[key])
    prune["setups"]["description"] += f"; a setup's keys: name, {', '.join(setup_keys())}"
    return full


# The prune.* keys a setup of prune.setups may set (besides its name), in the order documented:
# what a mask is made of. The schedule, the lottery-ticket control and the rate stay the run's.
SETUP_CORE_KEYS = ("method", "granularity", "densities", "min_layer_weights")


def setup_keys() -> list[str]:
    """The keys of a prune.setups entry besides ``name``: the mask's own prune.* keys and every
    pruning method's settings (threeregime.registry.pruning)."""
    owned = [s.key for m in PRUNING_METHODS.values() for s in m.settings]
    return [*SETUP_CORE_KEYS, *dict.fromkeys(owned)]


def section_fields(section: str) -> set[str]:
    """The keys the schema file itself gives a config section (not the registries' settings)."""
    return set(schema_file()["properties"][section]["properties"])


def _key_path(error) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "<top level>"


def validate_schema(raw: Any, source: str) -> None:
    """Raise ConfigError naming the first offending key, per the JSON schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is not None:
        hint = ""
        if error.validator in ("type", "minimum", "exclusiveMinimum") and isinstance(error.instance, str):
            hint = " (snakemake --config passes values as strings: use an overlay file with --configfile)"
        if error.validator == "enum" and isinstance(error.instance, int):
            meant = [v for v in error.validator_value if _sexagesimal(v) == error.instance]
            if meant:
                hint = f" (YAML reads {meant[0]} unquoted as the number {error.instance}: write '{meant[0]}')"
        raise ConfigError(f"{source}: {_key_path(error)}: {error.message}{hint}")


def _sexagesimal(value) -> int | None:
    """The number YAML 1.1 (PyYAML, Snakemake) reads an unquoted ``"2:4"`` as (base 60: 124)."""
    if not isinstance(value, str) or not re.fullmatch(r"[1-9][0-9]*(:[0-5]?[0-9])+", value):
        return None
    number = 0
    for part in value.split(":"):
        number = number * 60 + int(part)
    return number


def resolve_ref(node: dict, root: dict) -> dict:
    """A schema node with its local ``$ref`` followed (the node's own keys win)."""
    while "$ref" in node:
        target = root
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _matching_branch(node: dict, value, root: dict) -> dict:
    """For a ``oneOf`` node, the branch whose type fits ``value`` (the schema accepted it)."""
    for branch in node.get("oneOf", []):
        branch = resolve_ref(branch, root)
        kind = branch.get("type")
        if kind == "null" and value is None:
            return branch
        if kind in ("integer", "number") and isinstance(value, (int, float)) and value is not None:
            return branch
    return node


# Grid values keep their YAML type: they reach paths and specs as canonical strings (fmt_value).
GRID_KEYS = ("knob.values", "prune.densities")
SETUP_GRID_KEY = re.compile(r"prune\.setups\[\d+\]\.densities")  # a setup's own densities


def canonical_values(
    raw: Any, source: str, node: dict | None = None, key: str = "", root: dict | None = None
) -> Any:
    """The config with numbers as the schema types them, checked where a JSON schema cannot.

    ``5.0`` for an integer key becomes ``5`` and ``1`` for a number key ``1.0``, so that equal
    values give equal specs (and paths: a seed written ``1.0`` would name a ``seed1.0`` folder);
    NaN and infinity are refused; a ``pattern`` must match the whole string (Python's ``$``
    also matches before a final newline).
    """
    root = schema() if root is None else root
    node = resolve_ref(node if node is not None else root, root)
    node = _matching_branch(node, raw, root)
    where = key or "<top level>"
    if isinstance(raw, dict):
        properties = node.get("properties", {})
        return {
            k: canonical_values(v, source, properties.get(k, {}), f"{key}.{k}".lstrip("."), root)
            for k, v in raw.items()
        }
    if isinstance(raw, list):
        items = node.get("items", {})
        return [canonical_values(v, source, items, f"{key}[{i}]", root) for i, v in enumerate(raw)]
    if isinstance(raw, float) and not math.isfinite(raw):
        raise ConfigError(f"{source}: {where}: {raw} is not a finite number")
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        if isinstance(raw, str) and "pattern" in node and not re.fullmatch(node["pattern"], raw):
            raise ConfigError(f"{source}: {where}: {raw!r} does not match '{node['pattern']}'")
        return raw
    if node.get("type") == "integer":
        return int(raw)
    if node.get("type") == "number" and not (key.startswith(GRID_KEYS) or SETUP_GRID_KEY.match(key)):
        return float(raw)
    return raw


def value_problem(section: str, field_name: str, value) -> str | None:
    """Why ``value`` is not valid for one recipe field (``section`` train) or one retrain.*
    setting per the schema (the one place their bounds are written), or None."""
    import jsonschema

    schema = schema_file()
    if section == "retrain":
        rule = schema["properties"]["retrain"]["properties"][field_name]
    else:
        rule = schema["$defs"]["recipe"]["properties"][field_name]
    validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], **rule})
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    return None if error is None else error.message
