"""Typed experiment configuration: schema validation, defaults, semantic checks, job specs.

The Snakefile turns ``config.yaml`` into an :class:`ExperimentConfig` before it builds the DAG,
so a bad key fails in one line before any job starts. Each rule gets a JSON *spec* holding only
the settings that change its output; Snakemake compares specs between runs (``params:``), so a
config edit reruns exactly the jobs it affects.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from threeregime.catalog import DATASETS, MODELS
from threeregime.catalog import registry_problems as catalog_problems
from threeregime.knobs import KNOBS, registry_problems
from threeregime.metric_registry import registry_problems as metric_registry_problems
from threeregime.pruning_methods import PRUNING_METHODS
from threeregime.pruning_methods import registry_problems as pruning_registry_problems

SCHEMA_PATH = Path(__file__).parent / "schema" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the file and the key."""


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist1d"
    root: str = "data"
    download: bool = False
    num_samples: int = 5000
    generation_seed: int = 42
    augment: bool = True


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn1d"
    width: float = 1.0


@dataclass(frozen=True)
class Recipe:
    """One SGD training schedule; the paper's dense CIFAR-10 recipe by default."""

    epochs: int = 160
    iterations: int | None = None
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    optimizer: str = "sgd"
    sam_rho: float = 0.05
    drop_last: bool = True

    def steps_per_epoch(self, num_train: int) -> int:
        """SGD steps in one pass over ``num_train`` samples (0: no full batch under drop_last)."""
        return num_train // self.batch_size if self.drop_last else -(-num_train // self.batch_size)

    def epochs_to_reach(self, iteration: int, num_train: int) -> int:
        """Whole epochs a run of this recipe trains to pass ``iteration`` (weight rewinding's
        replay stops at the end of that epoch)."""
        return -(-iteration // self.steps_per_epoch(num_train))

    label_noise: float = 0.0
    label_noise_seed: int = 0


@dataclass(frozen=True)
class KnobConfig:
    name: str
    values: tuple[float | int, ...]


@dataclass(frozen=True)
class PruneConfig:
    """``control``: the lottery-ticket controls (Frankle & Carbin 2019). ``random_mask`` keeps
    each layer's number of weights at random positions; ``reinit`` keeps the mask and draws the
    weights afresh from the initialisation distribution."""

    densities: tuple[float, ...]
    method: str = "uniform"
    alpha_epsilon: float = 0.2
    control: str = "none"
    schedule: str = "oneshot"
    rate: float = 0.2

    @property
    def iterative(self) -> bool:
        """Iterative magnitude pruning (Frankle & Carbin 2019): level l prunes ``rate`` of what
        level l-1 kept, from level l-1's retrained weights, so level l keeps (1 - rate)**l."""
        return self.schedule == "iterative"

    def level_of(self, density: float) -> int:
        """The level whose density (1 - rate)**level is closest to ``density`` in log scale."""
        return round(math.log(density) / math.log(1 - self.rate))

    def level_density(self, level: int) -> float:
        return (1 - self.rate) ** level

    def level_label(self, level: int) -> str:
        """A level's density to 4 significant digits: its wildcard and table value (the prune
        spec holds the exact density)."""
        return fmt_value(float(f"{self.level_density(level):.4g}"))


# Retraining after pruning (Renda et al. 2020): fine-tuning at a small constant lr; LR rewinding
# (the dense schedule again from the pruned weights; "rewind" is its older name); weight
# rewinding (unpruned weights reset to the dense run's state at iteration rewind_step, the
# schedule continued from there; rewind_step 0 is the original lottery ticket).


@dataclass(frozen=True)
class RetrainConfig:
    mode: str = "rewind"
    recipe: dict = field(default_factory=dict)
    rewind_step: int = 0

    @property
    def rewinds_weights(self) -> bool:
        return self.mode == "rewind_weights"


@dataclass(frozen=True)
class SeedConfig:
    dense: tuple[int, ...]
    retrain: tuple[int, ...]


@dataclass(frozen=True)
class MetricsConfig:
    test_error_last: int = 5
    lmc_points: int = 11
    lmc_bn_samples: int = 0
    lmc_bn_batch_size: int | None = None  # None: eval_batch_size
    cka_samples: int = 6464
    hessian_samples: int = 200
    hessian_max_iter: int = 100
    hessian_tol: float = 1e-3
    hessian_probes: int = 20
    hessian_probe_batch: int = 10
    hessian_trace_deflation: int = 10
    eval_batch_size: int = 1000
    weight_alpha: bool = False
    hessian_esd: bool = False


@dataclass(frozen=True)
class RegimeConfig:
    """How cells are classified and how the advice is checked (see threeregime.regimes).

    ``reference_temperature``: the dense model you would train anyway, from which the per-density
    advice says "raise" or "lower"; None = the base recipe's own knob value when it is on the
    grid, else the coldest grid value. ``advice_tol``: test-error differences up to this size
    count as ties when the advice is checked against test error. ``bootstrap``: resamples of
    the seeds behind each cell's label probabilities (threeregime.confidence); 0 = off.
    ``stable_barrier`` and ``matching_tolerance``: the lottery-ticket criteria of each cell
    (threeregime.regimes.ticket_criteria).
    """

    eps_mode: str = "noise"
    eps: float = 0.02
    eps_z: float = 2.0
    cka_metric: str = "cka_softmax"
    cka_cut_mode: str = "fixed"
    cka_cut: float = 0.9
    eps_range: tuple[float, ...] = ()
    cka_cut_range: tuple[float, ...] = ()
    reference_temperature: float | None = None
    advice_tol: float = 0.0
    bootstrap: int = 200
    stable_barrier: float = 0.02
    matching_tolerance: float = 0.005


@dataclass(frozen=True)
class AdaptiveConfig:
    """Adaptive refinement of the grid (threeregime.adaptive); off by default."""

    enabled: bool = False
    step: int = 2
    rounds: int = 3
    budget: float = 0.5
    min_confidence: float = 0.8


@dataclass(frozen=True)
class PlotConfig:
    dpi: int = 150
    cmap: str = "viridis"
    annotate: bool = True
    ncols: int = 3


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"
    require_gpu: bool = False
    threads: int = 1
    checkpoint_every: int = 1
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    tf32: bool = False
    retrain_pack: str = "none"


def fmt_value(value: float | int) -> str:
    """Canonical string of a grid value, used in paths and wildcards (0.10 -> '0.1', 20.0 -> '20')."""
    number = float(value)
    if number.is_integer():
        return str(int(number))
    return f"{number:.10g}"


@dataclass(frozen=True)
class ExperimentConfig:
    knob: KnobConfig
    prune: PruneConfig
    seeds: SeedConfig
    run_name: str = "demo"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: Recipe = Recipe()
    retrain: RetrainConfig = RetrainConfig()
    metrics: MetricsConfig = MetricsConfig()
    regimes: RegimeConfig = RegimeConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    plot: PlotConfig = PlotConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    # ----- grids as canonical strings (wildcard values) -----
    @property
    def temperatures(self) -> list[str]:
        """Knob values sorted from coldest to hottest."""
        info = KNOBS[self.knob.name]
        ordered = sorted(self.knob.values, key=lambda v: info.hotter * float(v))
        return [fmt_value(v) for v in ordered]

    @property
    def densities(self) -> list[str]:
        """The measured densities: the requested ones, or under iterative pruning the density of
        the level closest to each (every level above the deepest is pruned and retrained too, as
        the chain's links: :attr:`pruned_densities`)."""
        if not self.prune.iterative:
            return [fmt_value(d) for d in sorted(self.prune.densities)]
        levels = sorted({self.prune.level_of(d) for d in self.prune.densities}, reverse=True)
        return [self.prune.level_label(level) for level in levels]

    @property
    def pruned_densities(self) -> list[str]:
        """Every density a prune job makes: the measured ones, and under iterative pruning all
        the levels down to the deepest."""
        if not self.prune.iterative:
            return self.densities
        deepest = max(self.prune.level_of(d) for d in self.prune.densities)
        return [self.prune.level_label(level) for level in range(deepest, 0, -1)]

    def prune_level(self, density: str) -> int | None:
        """The iterative level of a pruned density (None for one-shot pruning)."""
        if not self.prune.iterative:
            return None
        levels = self.pruned_densities  # deepest first
        return len(levels) - levels.index(density)

    def prune_parent(self, density: str) -> str | None:
        """Iterative pruning: the density of the previous level, whose retrained model
        (retrain seed :attr:`chain_seed`) this level prunes; None at level 1 and for one-shot."""
        level = self.prune_level(density)
        return None if level is None or level == 1 else self.prune.level_label(level - 1)

    @property
    def chain_seed(self) -> int:
        """The retrain seed whose model continues an iterative chain to the next level."""
        return min(self.seeds.retrain)

    def metrics_axes(self) -> dict:
        """The axes of the per-pair metrics files (expanded by :func:`grid_cells`)."""
        seeds = [str(s) for s in self.seeds.dense]
        pairs = [list(p) for p in self.retrain_pairs]
        return {"temperature": self.temperatures, "density": self.densities, "seed": seeds, "pair": pairs}

    @property
    def retrain_pairs(self) -> list[tuple[int, int]]:
        seeds = sorted(self.seeds.retrain)
        return [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]

    def gpus_per_job(self) -> int:
        """GPUs a training or metrics job reserves: cuda 1, cpu 0, auto 1 only if this machine
        shows an NVIDIA device (so on a CPU-only machine auto jobs do not queue for a GPU)."""
        if self.runtime.device == "auto":
            return 1 if glob.glob("/dev/nvidia[0-9]*") else 0
        return int(self.runtime.device == "cuda")

    # ----- recipes -----
    @property
    def knob_entry(self):
        """The registry entry of this config's knob (threeregime.knobs)."""
        return KNOBS[self.knob.name]

    @property
    def shared_dense(self) -> bool:
        """A knob of the retraining (rewind_step): one dense run per seed serves every
        temperature (its jobs and files carry no temperature)."""
        return self.knob_entry.schedule == "retrain"

    def dense_folder(self, temperature: str) -> str:
        """The folder of a temperature's dense run under dense/ and logs/dense/ ("shared" when
        one run serves every temperature)."""
        return "shared" if self.shared_dense else f"{self.knob.name}-{temperature}"

    def dense_recipe(self, temperature: str | None) -> Recipe:
        """The dense recipe at one temperature: the knob's entry sets its field (and any fields it
        always sets); a knob read from checkpoints of one run, or a knob of the retraining, keeps
        the base recipe."""
        knob = self.knob_entry
        if knob.schedule in ("checkpoints", "retrain"):
            return self.train
        return replace(self.train, **knob.also_set, **{knob.field: knob_value(knob, temperature)})

    def retrain_recipe(self) -> Recipe:
        """LR rewinding replays the dense recipe; fine-tuning uses a small constant lr. SAM and
        label noise belong to dense training only (threeregime.knobs)."""
        base = replace(self.train, optimizer="sgd", label_noise=0.0)
        if self.retrain.mode == "finetune":
            base = replace(
                base,
                lr=base.lr * 0.01,
                lr_milestones=(),
                epochs=max(1, base.epochs // 4),
                iterations=None,
            )
        overrides = dict(self.retrain.recipe)
        if "lr_milestones" in overrides:
            overrides["lr_milestones"] = tuple(overrides["lr_milestones"])
        return replace(base, **overrides)

    def rewind_step(self, temperature: str | None) -> int:
        """The dense iteration weight rewinding restarts from: the grid value under the
        rewind_step knob, else retrain.rewind_step."""
        if not self.shared_dense:
            return self.retrain.rewind_step
        if temperature is None:
            raise ValueError(f"the {self.knob.name} knob's rewind step is its temperature; name one")
        return knob_value(self.knob_entry, temperature)

    def dense_stop_epoch(self, temperature: str | None) -> int | None:
        """A checkpoints knob (epochs) stops each dense job at its temperature's epoch."""
        return int(float(temperature)) if self.knob_entry.schedule == "checkpoints" else None

    def dense_parent(self, temperature: str | None) -> str | None:
        """A checkpoints knob (epochs): the checkpoint at the previous grid epoch seeds this one."""
        if self.knob_entry.schedule != "checkpoints":
            return None
        epochs = sorted(int(float(t)) for t in self.temperatures)
        index = epochs.index(int(float(temperature)))
        return None if index == 0 else str(epochs[index - 1])

    # ----- per-rule specs: exactly what changes each rule's output -----
    def performance_spec(self) -> dict:
        """The numeric settings that change results; tf32 appears only when on, so that runs
        made before the key existed (true fp32) keep their specs."""
        spec = {"amp": self.runtime.amp, "channels_last": self.runtime.channels_last}
        return spec | {"tf32": True} if self.runtime.tf32 else spec

    def data_spec(self) -> dict:
        """What defines the dataset's content. Where CIFAR lives (root, download) does not: it
        travels separately (:meth:`data_location`), so moving the data reruns nothing."""
        keys = DATASETS[self.data.name].content_keys
        return {key: getattr(self.data, key) for key in keys}

    def data_location(self) -> dict:
        return {"root": self.data.root, "download": self.data.download}

    def dense_spec(self, temperature: str | None, seed: int) -> dict:
        """``temperature`` None: the shared dense run of a knob of the retraining."""
        return {
            "model": asdict(self.model),
            "recipe": recipe_spec(self.dense_recipe(temperature)),
            "seed": int(seed),
            "stop_epoch": self.dense_stop_epoch(temperature),
            "performance": self.performance_spec(),
        }

    def rewind_spec(self, temperature: str, seed: int) -> dict:
        """Weight rewinding's start: the first k iterations of the dense run at this temperature
        replayed (same initialisation, recipe and data order), so a new k never retrains the
        dense model."""
        dense = self.dense_spec(None if self.shared_dense else temperature, seed)
        del dense["stop_epoch"]
        return dense | {"rewind_step": self.rewind_step(temperature)}

    def prune_spec(self, density: str) -> dict:
        """Method, density, the prune.* settings the method's registry entry says act, and the
        lottery-ticket control when there is one."""
        method = PRUNING_METHODS[self.prune.method]
        settings = {key: getattr(self.prune, key) for key in method.settings}
        spec = {"method": self.prune.method, "density": float(density)} | settings
        if self.prune.iterative:  # the exact level density, not its printed label
            level = self.prune_level(density)
            spec |= {"density": self.prune.level_density(level), "schedule": "iterative"}
            spec |= {"rate": self.prune.rate, "level": level}
        return spec | {"control": self.prune.control} if self.prune.control != "none" else spec

    def retrain_spec(self, temperature: str | None = None) -> dict:
        """Each run's seed comes from its output path (wildcard). Weight rewinding adds its step
        (the temperature's under the rewind_step knob); LR rewinding under either name has the
        same spec."""
        spec = {"recipe": recipe_spec(self.retrain_recipe()), "performance": self.performance_spec()}
        if self.retrain.rewinds_weights:
            return spec | {"rewind_step": self.rewind_step(temperature)}
        return spec

    def metrics_spec(self) -> dict:
        """Optional metrics, and lmc_bn_batch_size, appear only when on or set, so that specs
        written before they existed stay."""
        spec = asdict(self.metrics)
        for optional in ("weight_alpha", "hessian_esd"):
            if not spec[optional]:
                del spec[optional]
        if spec["lmc_bn_batch_size"] is None:
            del spec["lmc_bn_batch_size"]
        return spec | {"performance": self.performance_spec()}

    def analysis_spec(self) -> dict:
        """Regime settings with the advice's reference temperature resolved to a grid value."""
        regimes = asdict(self.regimes)
        grid = [float(t) for t in self.temperatures]  # coldest first
        reference = regimes["reference_temperature"]
        if reference is None:  # the base recipe's (or retraining's) own value of the knob's field
            owner = self.retrain if self.shared_dense else self.train
            own = float(getattr(owner, self.knob_entry.field))
            reference = own if own in grid else grid[0]
        regimes["reference_temperature"] = float(reference)
        return {"knob": self.knob.name, "regimes": regimes}

    def adaptive_spec(self) -> dict:
        """What an adaptive planning round depends on: the grid, the regime settings and the
        refinement settings (threeregime.adaptive)."""
        analysis = self.analysis_spec()
        return {
            "temperatures": self.temperatures,
            "densities": self.densities,
            "reference": fmt_value(analysis["regimes"]["reference_temperature"]),
            "regimes": analysis["regimes"],
            "adaptive": asdict(self.adaptive),
        }

    def plot_spec(self) -> dict:
        return {"knob": self.knob.name, "plot": asdict(self.plot)}


def recipe_spec(recipe: Recipe) -> dict:
    """The recipe's fields that act: no sam_rho under plain SGD, no epochs under an iteration
    budget, no label-noise seed without label noise, so editing an unused field reruns nothing
    (and specs written before label noise existed stay the same)."""
    spec = asdict(recipe)
    if recipe.optimizer != "sam":
        del spec["sam_rho"]
    if not recipe.label_noise:
        del spec["label_noise"], spec["label_noise_seed"]
    if recipe.iterations is not None:
        del spec["epochs"]
    return spec


def recipe_from_spec(spec: dict) -> Recipe:
    """Inverse of :func:`recipe_spec` (JSON lists back to tuples; dropped fields at defaults)."""
    return Recipe(**{**spec, "lr_milestones": tuple(spec["lr_milestones"])})


def regime_config_from_spec(spec: dict) -> RegimeConfig:
    """A spec's ``regimes`` settings (JSON lists back to tuples) as a RegimeConfig."""
    return RegimeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()})


def grid_cells(axes: dict) -> list[dict]:
    """Every (temperature, density, seed, a, b) of ``metrics_axes``: one metrics file each."""
    return [
        {"temperature": t, "density": d, "seed": s, "a": a, "b": b}
        for t in axes["temperature"]
        for d in axes["density"]
        for s in axes["seed"]
        for a, b in axes["pair"]
    ]


def to_json(spec: dict) -> str:
    """Stable JSON for a spec: Snakemake compares these strings between runs."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def knob_value(knob, temperature: str | float) -> float | int:
    """A grid value as the recipe field takes it (whole numbers as int for integer knobs)."""
    return int(float(temperature)) if knob.integer else float(temperature)


@cache
def _schema_file() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _schema() -> dict:
    """The config schema with its registry-derived enums filled in (``knob.name``): the file
    describes the keys, the registries say which names exist."""
    schema = copy.deepcopy(_schema_file())
    schema["properties"]["knob"]["properties"]["name"]["enum"] = list(KNOBS)
    schema["properties"]["prune"]["properties"]["method"]["enum"] = list(PRUNING_METHODS)
    schema["properties"]["model"]["properties"]["name"]["enum"] = list(MODELS)
    schema["properties"]["data"]["properties"]["name"]["enum"] = list(DATASETS)
    return schema


def check_registries() -> None:
    """Raise ConfigError with one line for the first incomplete registry entry."""
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    schema_fields = set(_schema_file()["$defs"]["recipe"]["properties"])
    retrain_fields = {f.name for f in dataclasses.fields(RetrainConfig)}
    problems = registry_problems(recipe_fields, schema_fields, retrain_fields) + metric_registry_problems()
    problems += pruning_registry_problems({f.name for f in dataclasses.fields(PruneConfig)})
    problems += catalog_problems({f.name for f in dataclasses.fields(DataConfig)})
    if problems:
        raise ConfigError(problems[0])


def _key_path(error) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "<top level>"


def validate_schema(raw: Any, source: str) -> None:
    """Raise ConfigError naming the first offending key, per the JSON schema."""
    import jsonschema

    check_registries()
    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is not None:
        hint = ""
        if error.validator in ("type", "minimum", "exclusiveMinimum") and isinstance(error.instance, str):
            hint = " (snakemake --config passes values as strings: use an overlay file with --configfile)"
        raise ConfigError(f"{source}: {_key_path(error)}: {error.message}{hint}")


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


MAX_SEED = 2**32

# Grid values keep their YAML type: they reach paths and specs as canonical strings (fmt_value).
GRID_KEYS = ("knob.values", "prune.densities")


def canonical_values(
    raw: Any, source: str, node: dict | None = None, key: str = "", root: dict | None = None
) -> Any:
    """The config with numbers as the schema types them, checked where a JSON schema cannot.

    ``5.0`` for an integer key becomes ``5`` and ``1`` for a number key ``1.0``, so that equal
    values give equal specs (and paths: a seed written ``1.0`` would name a ``seed1.0`` folder);
    NaN and infinity are refused; a ``pattern`` must match the whole string (Python's ``$``
    also matches before a final newline).
    """
    root = _schema() if root is None else root
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
    if node.get("type") == "number" and not key.startswith(GRID_KEYS):
        return float(raw)
    return raw


def merge_configs(*raws: dict) -> dict:
    """Several config files merged as Snakemake merges ``--configfile a b``: later files win,
    nested mappings are merged key by key, lists are replaced whole."""
    merged: dict = {}
    for raw in raws:
        merged = _merge(merged, raw)
    return merged


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict:
    """One YAML config file as a mapping, or ConfigError naming the file."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (not UTF-8: {exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        raise ConfigError(f"{path}: not valid YAML ({where}{problem})") from None
    if raw is None:
        raise ConfigError(f"{path}: empty file, expected a YAML mapping of config keys")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of config keys, found {type(raw).__name__}")
    return raw


def check_config_file(path: str | Path) -> None:
    """Before Snakemake reads ``path`` (if it exists): a broken or empty file gets one line
    naming it, as a WorkflowError, instead of Snakemake's nameless message."""
    if not Path(path).exists():
        return
    try:
        read_config_file(path)
    except ConfigError as exc:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(f"invalid configuration: {exc}") from None


def _build(cls, raw: dict | None):
    raw = dict(raw or {})
    for f in dataclasses.fields(cls):
        if f.name in raw and isinstance(raw[f.name], list):
            raw[f.name] = tuple(raw[f.name])
    return cls(**raw)


def load_config(raw: dict | str | Path, source: str | None = None, check_paths: bool = True):
    """Validate a config (dict or YAML path) and return an ExperimentConfig, or raise ConfigError."""
    if isinstance(raw, (str, Path)):
        source = source or str(raw)
        raw = read_config_file(raw)
    source = source or "config"
    validate_schema(raw, source)
    raw = canonical_values(raw, source)
    sections = {
        "data": DataConfig,
        "model": ModelConfig,
        "train": Recipe,
        "retrain": RetrainConfig,
        "metrics": MetricsConfig,
        "regimes": RegimeConfig,
        "adaptive": AdaptiveConfig,
        "plot": PlotConfig,
        "runtime": RuntimeConfig,
        "knob": KnobConfig,
        "prune": PruneConfig,
        "seeds": SeedConfig,
    }
    kwargs = {name: _build(cls, raw.get(name)) for name, cls in sections.items() if name in raw}
    if "run_name" in raw:
        kwargs["run_name"] = raw["run_name"]
    cfg = ExperimentConfig(**kwargs)
    check_semantics(cfg, source, check_paths=check_paths)
    return cfg


def check_semantics(cfg: ExperimentConfig, source: str, check_paths: bool = True) -> None:
    """Checks a JSON schema cannot express; each raises one ConfigError line."""

    def fail(key: str, message: str):
        raise ConfigError(f"{source}: {key}: {message}")

    if cfg.data.name not in MODELS[cfg.model.name].datasets:
        allowed = ", ".join(sorted(MODELS[cfg.model.name].datasets))
        fail("model.name", f"{cfg.model.name} needs data.name in {{{allowed}}}, got {cfg.data.name}")
    knob = KNOBS[cfg.knob.name]
    for i, value in enumerate(cfg.knob.values):
        if knob.integer and not float(value).is_integer():
            fail(f"knob.values[{i}]", f"{value} must be a whole number for knob {cfg.knob.name}")
        section = "retrain" if knob.schedule == "retrain" else "train"
        problem = _value_problem(section, knob.field, knob_value(knob, value))
        if problem:
            fail(f"knob.values[{i}]", f"{value} is not a valid {section}.{knob.field}: {problem}")
    for key in ("label_noise", "label_noise_seed"):
        if key in cfg.retrain.recipe:
            fail(
                f"retrain.recipe.{key}",
                "retraining uses clean labels: label noise belongs to dense training "
                "(train.label_noise, or the label_noise knob)",
            )
    canonical = [fmt_value(v) for v in cfg.knob.values]
    if len(set(canonical)) != len(canonical):
        fail("knob.values", f"duplicate grid values {canonical}")
    if len(set(cfg.densities)) != len(cfg.densities):
        fail("prune.densities", f"duplicate grid values {cfg.densities}")
    if knob.budget == "epochs" and cfg.train.iterations is not None:
        fail("train.iterations", f"the {knob.name} knob needs an epoch budget; remove iterations")
    if knob.budget == "iterations" and cfg.train.iterations is None:
        fail(
            "train.iterations",
            f"the {knob.name} knob needs a fixed iteration budget, the same at every temperature "
            "(paper: 62400)",
        )
    if knob.schedule == "checkpoints":
        budget = getattr(cfg.train, knob.field)
        too_long = [v for v in cfg.knob.values if v > budget]
        if too_long:
            fail("knob.values", f"{knob.field} {too_long} exceed train.{knob.field}={budget}")
    reference = cfg.regimes.reference_temperature
    if reference is not None and fmt_value(reference) not in cfg.temperatures:
        fail("regimes.reference_temperature", f"{fmt_value(reference)} is not one of the knob values")
    if check_paths and cfg.data.name.startswith("cifar") and not cfg.data.download:
        from threeregime.catalog import cifar_folder, cifar_howto, cifar_missing

        folder = Path(cfg.data.root) / cifar_folder(cfg.data.name)
        howto = cifar_howto(cfg.data.name, cfg.data.root)
        if not folder.is_dir():
            fail("data.root", f"{folder} not found; {howto}")
        missing = cifar_missing(cfg.data.name, cfg.data.root)
        if missing:
            names = ", ".join(m.name for m in missing)
            fail("data.root", f"{folder} lacks {names} (torchvision's {cfg.data.name} layout); {howto}")
    if cfg.metrics.hessian_trace_deflation > cfg.metrics.hessian_max_iter:
        fail(
            "metrics.hessian_trace_deflation",
            f"{cfg.metrics.hessian_trace_deflation} Lanczos vectors exceed hessian_max_iter="
            f"{cfg.metrics.hessian_max_iter}, the most Lanczos products allowed",
        )
    if cfg.prune.iterative:
        check_iterative(cfg, fail)
    if cfg.prune.method == "uniform":
        check_uniform_density(cfg, fail)
    check_rewind_step(cfg, fail)
    seeds = {f"seeds.dense[{i}]": s for i, s in enumerate(cfg.seeds.dense)}
    seeds |= {f"seeds.retrain[{i}]": s for i, s in enumerate(cfg.seeds.retrain)}
    seeds["data.generation_seed"] = cfg.data.generation_seed
    for key, seed in seeds.items():
        if seed >= MAX_SEED:
            fail(key, f"{seed} is too large; seeds must be below 2**32 (NumPy's and MNIST-1D's limit)")
    check_batch_sizes(cfg, fail)
    check_colormap(cfg.plot.cmap, fail)


def check_batch_sizes(cfg: ExperimentConfig, fail) -> None:
    """A batch larger than the training set leaves an epoch without a step (drop_last)."""
    from threeregime.catalog import train_samples

    samples = train_samples(cfg.data.name, cfg.data.num_samples)
    if samples is None:
        return
    recipes = {"train.batch_size": cfg.train}
    if cfg.knob_entry.field == "batch_size":
        recipes = {f"knob.values[{i}]": cfg.dense_recipe(fmt_value(v)) for i, v in enumerate(cfg.knob.values)}
    recipes["retrain.recipe.batch_size"] = cfg.retrain_recipe()
    for key, recipe in recipes.items():
        if recipe.steps_per_epoch(samples) < 1:
            fail(
                key,
                f"batch size {recipe.batch_size} exceeds the {samples} training samples of "
                f"{cfg.data.name}; no full batch to train on",
            )


def check_colormap(name: str, fail) -> None:
    import matplotlib

    if name not in matplotlib.colormaps:
        close = [c for c in sorted(matplotlib.colormaps) if c.lower().startswith(name.lower()[:3])][:5]
        fail(
            "plot.cmap",
            f"{name!r} is not a matplotlib colormap" + (f" (close: {', '.join(close)})" if close else ""),
        )


def check_rewind_step(cfg: ExperimentConfig, fail) -> None:
    """Weight rewinding needs the state at rewind_step: inside every dense run and before the
    end of the retraining schedule it continues."""
    from threeregime.catalog import train_samples

    if cfg.shared_dense and not cfg.retrain.rewinds_weights:
        fail("knob.name", f"{cfg.knob.name} sets the rewind step: it needs retrain.mode rewind_weights")
    if not cfg.retrain.rewinds_weights:
        return
    samples = train_samples(cfg.data.name, cfg.data.num_samples)
    if samples is None:
        return
    budget = _iterations(cfg.retrain_recipe(), samples, None)
    for t in cfg.temperatures:
        dense = _iterations(cfg.dense_recipe(t), samples, cfg.dense_stop_epoch(t))
        step = cfg.rewind_step(t)
        if step > dense or step >= budget:
            key = "knob.values" if cfg.shared_dense else "retrain.rewind_step"
            fail(
                key,
                f"{step} is past the dense run ({dense} iterations) or the retraining schedule "
                f"({budget} iterations)",
            )


def _iterations(recipe: Recipe, samples: int, stop_epoch: int | None) -> int:
    steps = recipe.steps_per_epoch(samples)
    total = recipe.iterations or recipe.epochs * steps
    return total if stop_epoch is None else min(total, stop_epoch * steps)


def _value_problem(section: str, field_name: str, value) -> str | None:
    """Why ``value`` is not valid for one recipe field (``section`` train) or one retrain.*
    setting per the schema (the one place their bounds are written), or None."""
    import jsonschema

    schema = _schema_file()
    if section == "retrain":
        rule = schema["properties"]["retrain"]["properties"][field_name]
    else:
        rule = schema["$defs"]["recipe"]["properties"][field_name]
    validator = jsonschema.Draft202012Validator({"$defs": schema["$defs"], **rule})
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    return None if error is None else error.message


def check_iterative(cfg: ExperimentConfig, fail) -> None:
    """Iterative pruning: each requested density names its own level (level 1 or deeper), the
    method nests its masks, and every level is its own job (the chain runs level after level)."""
    rate = fmt_value(cfg.prune.rate)
    by_level: dict[int, list[str]] = {}
    for density in sorted(cfg.prune.densities, reverse=True):
        level = cfg.prune.level_of(density)
        if level < 1:
            fail(
                "prune.densities",
                f"{fmt_value(density)} is closest to level 0 (the dense model) at prune.rate {rate}",
            )
        by_level.setdefault(level, []).append(fmt_value(density))
    for level, requested in by_level.items():
        if len(requested) > 1:
            fail(
                "prune.densities",
                f"{' and '.join(requested)} are both closest to level {level} (density "
                f"{cfg.prune.level_label(level)}) at prune.rate {rate}; keep one",
            )
    if len(set(cfg.pruned_densities)) < len(cfg.pruned_densities):
        fail("prune.rate", f"{rate} is too small: levels' densities agree to 4 significant digits")
    if not PRUNING_METHODS[cfg.prune.method].nests:
        nesting = sorted(name for name, m in PRUNING_METHODS.items() if m.nests)
        fail(
            "prune.method",
            f"{cfg.prune.method} does not nest its masks level after level; iterative pruning "
            f"needs one of {nesting}",
        )
    if cfg.prune.control != "none":
        fail("prune.control", f"{cfg.prune.control} applies to one-shot masks; use prune.schedule oneshot")
    if cfg.runtime.retrain_pack == "temperature":
        fail(
            "runtime.retrain_pack",
            "temperature packs every level into one job, but iterative pruning retrains level "
            "after level; use none or cell",
        )
    if cfg.adaptive.enabled:
        fail("adaptive.enabled", "adaptive refinement plans one-shot cells; use prune.schedule oneshot")


def check_uniform_density(cfg: ExperimentConfig, fail) -> None:
    """Uniform pruning keeps round(d * n) weights per conv layer; zero would empty a layer."""
    from threeregime.catalog import conv_layer_sizes  # no torch import at DAG time

    sizes = conv_layer_sizes(cfg.model.name, cfg.model.width, cfg.data.name)
    smallest_name, smallest = min(sizes.items(), key=lambda kv: kv[1])
    for density in (cfg.prune_spec(d)["density"] for d in cfg.pruned_densities):
        if round(density * smallest) < 1:
            fail(
                "prune.densities",
                f"density {fmt_value(density)} keeps no weight of layer {smallest_name} "
                f"({smallest} weights); use a density >= {1 / smallest:.3g}",
            )
