"""The typed settings of every config section: one frozen dataclass each, with the schema's
defaults (a test holds them equal). Settings that a registry entry owns (a metric's flag, a
pruning method's parameter) live in the section's ``options`` and are read with ``option``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from threeregime.registry.metrics import settings as metric_settings
from threeregime.registry.pruning import DEFAULT_GRANULARITY
from threeregime.registry.pruning import settings as pruning_settings

# The fewest weights a pruned layer may keep (prune.min_layer_weights): a layer reduced to one
# weight (AlphaPruning's allocation does that at low densities) carries no signal worth measuring.
MIN_LAYER_WEIGHTS = 2


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the file and the key."""


def _option(options: dict, key: str, owned: Callable[[], dict]):
    if key in options:
        return options[key]
    settings = owned()
    if key not in settings:
        raise KeyError(f"no registry entry owns the setting {key!r}")
    return settings[key].default


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist1d"
    root: str = "data"
    download: bool = False
    num_samples: int = 5000
    generation_seed: int = 42
    augment: bool = True
    context_length: int = 64


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
    label_noise: float = 0.0
    label_noise_seed: int = 0

    def steps_per_epoch(self, num_train: int) -> int:
        """SGD steps in one pass over ``num_train`` samples (0: no full batch under drop_last)."""
        return num_train // self.batch_size if self.drop_last else -(-num_train // self.batch_size)

    def epochs_to_reach(self, iteration: int, num_train: int) -> int:
        """Whole epochs a run of this recipe trains to pass ``iteration`` (weight rewinding's
        replay stops at the end of that epoch)."""
        return -(-iteration // self.steps_per_epoch(num_train))


@dataclass(frozen=True)
class KnobConfig:
    name: str
    values: tuple[float | int, ...]


@dataclass(frozen=True)
class PruneConfig:
    """``control``: the lottery-ticket controls (Frankle & Carbin 2019). ``random_mask`` keeps
    each layer's number of weights at random positions; ``reinit`` keeps the mask and draws the
    weights afresh from the initialisation distribution. ``granularity``: the pattern of kept
    weights (threeregime.registry.pruning). ``min_layer_weights``: a mask that leaves a layer
    fewer weights is refused. ``setups``: the method axis, one mapping per setup (its name and
    the keys it overrides; threeregime.config.experiment.ExperimentConfig.for_setup)."""

    densities: tuple[float, ...]
    method: str = "uniform"
    granularity: str = DEFAULT_GRANULARITY
    min_layer_weights: int = MIN_LAYER_WEIGHTS
    control: str = "none"
    schedule: str = "oneshot"
    rate: float = 0.2
    setups: tuple[dict, ...] = ()
    options: dict = field(default_factory=dict)  # the pruning methods' own settings

    def option(self, key: str):
        """A setting a pruning method owns (threeregime.registry.pruning), or its default."""
        return _option(self.options, key, pruning_settings)

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
    options: dict = field(default_factory=dict)  # the metric entries' own settings

    def option(self, key: str):
        """A setting a metric entry owns (threeregime.registry.metrics), or its default."""
        return _option(self.options, key, metric_settings)


@dataclass(frozen=True)
class RegimeConfig:
    """How cells are classified and how the advice is checked (see threeregime.analysis.regimes).

    ``reference_temperature``: the dense model you would train anyway, from which the per-density
    advice says "raise" or "lower"; None = the base recipe's own knob value when it is on the
    grid, else the coldest grid value. ``advice_tol``: test-error differences up to this size
    count as ties when the advice is checked against test error. ``uncertainty``: how each
    label's probability is computed (threeregime.analysis.uncertainty): ``pooled`` (``draws``
    draws of the pooled noise model), ``bootstrap`` (``bootstrap`` resamples of the seeds), or
    ``none``. ``cka_split_min_cells``: a CKA split over fewer connected cells falls back to
    ``cka_cut``. ``interval``: the probability mass of each regime boundary's interval.
    ``stable_barrier`` and ``matching_tolerance``: the lottery-ticket criteria of each cell
    (threeregime.analysis.regimes.ticket_criteria).
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
    uncertainty: str = "pooled"
    draws: int = 2000
    bootstrap: int = 200
    cka_split_min_cells: int = 5
    interval: float = 0.9
    stable_barrier: float = 0.02
    matching_tolerance: float = 0.005


@dataclass(frozen=True)
class AdaptiveConfig:
    """Adaptive refinement of the grid (threeregime.analysis.adaptive); off by default."""

    enabled: bool = False
    step: int = 2
    rounds: int = 3
    budget: float = 0.5
    min_confidence: float = 0.9
    max_seeds: int = 4


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


def knob_value(knob, temperature: str | float) -> float | int:
    """A grid value as the recipe field takes it (whole numbers as int for integer knobs)."""
    return int(float(temperature)) if knob.integer else float(temperature)
