"""Typed experiment configuration: schema validation, defaults, semantic checks, job specs.

The Snakefile turns ``config.yaml`` into an :class:`ExperimentConfig` before it builds the DAG,
so a bad key fails in one line before any job starts. Each rule gets a JSON *spec* holding only
the settings that change its output; Snakemake compares specs between runs (``params:``), so a
config edit reruns exactly the jobs it affects.
"""

from __future__ import annotations

import dataclasses
import glob
import json
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import yaml

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


@dataclass(frozen=True)
class KnobConfig:
    name: str
    values: tuple[float | int, ...]


@dataclass(frozen=True)
class PruneConfig:
    densities: tuple[float, ...]
    method: str = "uniform"


@dataclass(frozen=True)
class RetrainConfig:
    mode: str = "rewind"
    recipe: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SeedConfig:
    dense: tuple[int, ...]
    retrain: tuple[int, ...]


@dataclass(frozen=True)
class MetricsConfig:
    test_error_last: int = 5
    lmc_points: int = 11
    lmc_bn_samples: int = 0
    cka_samples: int = 6464
    hessian_samples: int = 200
    hessian_max_iter: int = 100
    hessian_tol: float = 1e-3
    hessian_probes: int = 20
    hessian_probe_batch: int = 10
    hessian_trace_deflation: int = 10
    eval_batch_size: int = 1000


@dataclass(frozen=True)
class RegimeConfig:
    """How cells are classified and how the advice is checked (see threeregime.regimes).

    ``reference_temperature``: the dense model you would train anyway, from which the per-density
    advice says "raise" or "lower"; None = the base recipe's own knob value when it is on the
    grid, else the coldest grid value. ``advice_tol``: test-error differences up to this size
    count as ties when the advice is checked against test error. ``bootstrap``: resamples of
    the seeds behind each cell's label probabilities (threeregime.confidence); 0 = off.
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


@dataclass(frozen=True)
class KnobInfo:
    """How a knob maps to temperature: ``hotter`` is +1 if a larger value is hotter."""

    label: str
    unit: str
    hotter: int
    integer: bool


KNOBS = {
    "epochs": KnobInfo("dense training epochs", "epochs", hotter=-1, integer=True),
    "batch_size": KnobInfo("dense batch size", "samples per step", hotter=-1, integer=True),
    "sam_rho": KnobInfo("SAM rho", "neighbourhood radius", hotter=+1, integer=False),
}

MODEL_DATA = {"cnn1d": {"mnist1d"}, "preresnet20": {"cifar10", "cifar100"}}
MODEL_DATA["vgg16_bn"] = MODEL_DATA["preresnet20"]


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
        return [fmt_value(d) for d in sorted(self.prune.densities)]

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
    def dense_recipe(self, temperature: str) -> Recipe:
        """The dense recipe at one temperature: the knob overrides one field."""
        value = float(temperature)
        if self.knob.name == "batch_size":
            return replace(self.train, batch_size=int(value))
        if self.knob.name == "sam_rho":
            return replace(self.train, optimizer="sam", sam_rho=value)
        return self.train  # epochs: one run, checkpoints are the temperatures

    def retrain_recipe(self) -> Recipe:
        """LR rewinding replays the dense recipe; fine-tuning uses a small constant lr."""
        base = replace(self.train, optimizer="sgd")
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

    def dense_parent(self, temperature: str) -> str | None:
        """Epochs knob: the checkpoint at the previous grid epoch seeds this one."""
        if self.knob.name != "epochs":
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
        if self.data.name == "mnist1d":
            keys = ("name", "num_samples", "generation_seed")
        else:
            keys = ("name", "augment")
        return {key: getattr(self.data, key) for key in keys}

    def data_location(self) -> dict:
        return {"root": self.data.root, "download": self.data.download}

    def dense_spec(self, temperature: str, seed: int) -> dict:
        stop = int(float(temperature)) if self.knob.name == "epochs" else None
        return {
            "model": asdict(self.model),
            "recipe": recipe_spec(self.dense_recipe(temperature)),
            "seed": int(seed),
            "stop_epoch": stop,
            "performance": self.performance_spec(),
        }

    def prune_spec(self, density: str) -> dict:
        return {"method": self.prune.method, "density": float(density)}

    def retrain_spec(self) -> dict:
        """Shared by every retraining; each run's seed comes from its output path (wildcard)."""
        return {"recipe": recipe_spec(self.retrain_recipe()), "performance": self.performance_spec()}

    def metrics_spec(self) -> dict:
        return asdict(self.metrics) | {"performance": self.performance_spec()}

    def analysis_spec(self) -> dict:
        """Regime settings with the advice's reference temperature resolved to a grid value."""
        regimes = asdict(self.regimes)
        grid = [float(t) for t in self.temperatures]  # coldest first
        reference = regimes["reference_temperature"]
        if reference is None:
            base = {"epochs": self.train.epochs, "batch_size": self.train.batch_size}
            own = float(base.get(self.knob.name, self.train.sam_rho))
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
    budget, so editing an unused field reruns nothing."""
    spec = asdict(recipe)
    if recipe.optimizer != "sam":
        del spec["sam_rho"]
    if recipe.iterations is not None:
        del spec["epochs"]
    return spec


def recipe_from_spec(spec: dict) -> Recipe:
    """Inverse of :func:`recipe_spec` (JSON lists back to tuples; dropped fields at defaults)."""
    return Recipe(**{**spec, "lr_milestones": tuple(spec["lr_milestones"])})


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


@cache
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "<top level>"


def validate_schema(raw: Any, source: str) -> None:
    """Raise ConfigError naming the first offending key, per the JSON schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(raw))
    if error is not None:
        raise ConfigError(f"{source}: {_key_path(error)}: {error.message}")


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
        try:
            raw = yaml.safe_load(Path(raw).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML ({exc})".replace("\n", " ")) from None
    source = source or "config"
    validate_schema(raw, source)
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

    if cfg.data.name not in MODEL_DATA[cfg.model.name]:
        allowed = ", ".join(sorted(MODEL_DATA[cfg.model.name]))
        fail("model.name", f"{cfg.model.name} needs data.name in {{{allowed}}}, got {cfg.data.name}")
    info = KNOBS[cfg.knob.name]
    for i, value in enumerate(cfg.knob.values):
        if info.integer and not float(value).is_integer():
            fail(f"knob.values[{i}]", f"{value} must be a whole number for knob {cfg.knob.name}")
    canonical = [fmt_value(v) for v in cfg.knob.values]
    if len(set(canonical)) != len(canonical):
        fail("knob.values", f"duplicate grid values {canonical}")
    if len(set(cfg.densities)) != len(cfg.densities):
        fail("prune.densities", f"duplicate grid values {cfg.densities}")
    if cfg.knob.name == "epochs":
        if cfg.train.iterations is not None:
            fail("train.iterations", "the epochs knob needs an epoch budget; remove iterations")
        too_long = [v for v in cfg.knob.values if v > cfg.train.epochs]
        if too_long:
            fail("knob.values", f"epochs {too_long} exceed train.epochs={cfg.train.epochs}")
    if cfg.knob.name == "batch_size" and cfg.train.iterations is None:
        fail("train.iterations", "the batch_size knob needs a fixed iteration budget (paper: 62400)")
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
    if cfg.prune.method == "uniform":
        check_uniform_density(cfg, fail)


def check_uniform_density(cfg: ExperimentConfig, fail) -> None:
    """Uniform pruning keeps round(d * n) weights per conv layer; zero would empty a layer."""
    from threeregime.catalog import conv_layer_sizes  # no torch import at DAG time

    sizes = conv_layer_sizes(cfg.model.name, cfg.model.width, cfg.data.name)
    smallest_name, smallest = min(sizes.items(), key=lambda kv: kv[1])
    for density in cfg.prune.densities:
        if round(density * smallest) < 1:
            fail(
                "prune.densities",
                f"density {fmt_value(density)} keeps no weight of layer {smallest_name} "
                f"({smallest} weights); use a density >= {1 / smallest:.3g}",
            )
