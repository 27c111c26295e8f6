"""The JSON spec of every job, both ways: how a spec is written (stable JSON, only the fields that
act) and how a job reads it back as typed settings (``parse``), so that no job looks up raw keys.

The workflow builds each spec from the experiment (threeregime.config.experiment) and passes it
as the rule's ``params``; Snakemake compares the strings between runs, so a spec must change
exactly when the job's output would.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from threeregime.config.settings import (
    MIN_LAYER_WEIGHTS,
    ConfigError,
    MetricsConfig,
    ModelConfig,
    Recipe,
    RegimeConfig,
)
from threeregime.registry.pruning import DEFAULT_GRANULARITY


def to_json(spec: dict) -> str:
    """Stable JSON for a spec: Snakemake compares these strings between runs."""
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


# Recipe fields added after results existed: in a recipe spec only when they differ from their
# default, so that adding one changes no existing spec (and reruns nothing).
ADDED_LATER = ("label_noise",)


def recipe_spec(recipe: Recipe) -> dict:
    """The recipe's fields that act: no sam_rho under plain SGD, no epochs under an iteration
    budget, no label-noise seed without label noise, no field of :data:`ADDED_LATER` at its
    default, so editing an unused field reruns nothing."""
    spec = asdict(recipe)
    defaults = Recipe()
    if recipe.optimizer != "sam":
        del spec["sam_rho"]
    if not recipe.label_noise:
        del spec["label_noise_seed"]
    for name in ADDED_LATER:
        if getattr(recipe, name) == getattr(defaults, name):
            del spec[name]
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


# ----------------------------------------------------------------------------- jobs read them back
def _parsed(kind: str, text: str, build):
    """``build(raw)`` of a spec's JSON text, or one ConfigError line saying what is wrong (a job
    started by hand with another spec, say)."""
    try:
        return build(json.loads(text))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"--spec: not a {kind} spec ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class DenseSpec:
    """A dense training job (``stop_epoch``: the epochs knob's checkpoint), or weight rewinding's
    replay of one (``rewind_step``: the iteration whose state it keeps)."""

    model: ModelConfig
    recipe: Recipe
    seed: int
    performance: dict = field(default_factory=dict)
    stop_epoch: int | None = None
    rewind_step: int | None = None

    @classmethod
    def parse(cls, text: str) -> DenseSpec:
        return _parsed("dense", text, lambda raw: cls(
            ModelConfig(**raw["model"]), recipe_from_spec(raw["recipe"]), int(raw["seed"]),
            raw.get("performance", {}), raw.get("stop_epoch"), raw.get("rewind_step"),
        ))  # fmt: skip


@dataclass(frozen=True)
class PruneSpec:
    """A prune job: method, density and granularity, the method's own settings (``settings``),
    the least weights a layer keeps, iterative pruning's level, and the lottery-ticket control."""

    method: str
    density: float
    settings: dict = field(default_factory=dict)
    granularity: str = DEFAULT_GRANULARITY
    min_layer_weights: int = MIN_LAYER_WEIGHTS
    schedule: str = "oneshot"
    rate: float | None = None
    level: int | None = None
    control: str = "none"

    @classmethod
    def parse(cls, text: str) -> PruneSpec:
        known = {f.name for f in fields(cls)} - {"settings"}

        def build(raw: dict) -> PruneSpec:
            settings = {k: v for k, v in raw.items() if k not in known}
            return cls(**{k: v for k, v in raw.items() if k in known}, settings=settings)

        return _parsed("prune", text, build)


@dataclass(frozen=True)
class RetrainSpec:
    """A retrain job: the retraining recipe, and weight rewinding's step (None: the retraining
    starts from the pruned weights)."""

    recipe: Recipe
    performance: dict = field(default_factory=dict)
    rewind_step: int | None = None

    @classmethod
    def parse(cls, text: str) -> RetrainSpec:
        return _parsed("retrain", text, lambda raw: cls(
            recipe_from_spec(raw["recipe"]), raw.get("performance", {}), raw.get("rewind_step")
        ))  # fmt: skip


@dataclass(frozen=True)
class MetricsSpec:
    """A metrics job: the metrics settings (the metric entries' own ones in ``options``)."""

    metrics: MetricsConfig
    performance: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> MetricsSpec:
        core = {f.name for f in fields(MetricsConfig)} - {"options"}

        def build(raw: dict) -> MetricsSpec:
            performance = raw.pop("performance", {})
            options = {k: v for k, v in raw.items() if k not in core}
            return cls(
                MetricsConfig(**{k: v for k, v in raw.items() if k in core}, options=options), performance
            )

        return _parsed("metrics", text, build)
