"""The experiment a config describes: its grids as canonical strings, the dense and retraining
recipes at each temperature, iterative pruning's chain, and the JSON spec of every job (each
rule's ``params``: exactly the settings that change its output, so that a config edit reruns
exactly the jobs it affects).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from threeregime.config.settings import (
    MIN_LAYER_WEIGHTS,
    AdaptiveConfig,
    DataConfig,
    KnobConfig,
    MetricsConfig,
    ModelConfig,
    PlotConfig,
    PruneConfig,
    Recipe,
    RegimeConfig,
    RetrainConfig,
    RuntimeConfig,
    SeedConfig,
    fmt_value,
    knob_value,
)
from threeregime.config.specs import recipe_spec
from threeregime.registry.datasets import DATASETS
from threeregime.registry.knobs import KNOBS
from threeregime.registry.metrics import settings as metric_settings
from threeregime.registry.pruning import DEFAULT_GRANULARITY, PRUNING_METHODS

Cell = tuple[str, str]  # (temperature, density) as canonical grid strings


@dataclass(frozen=True)
class Grid:
    """The full grid (temperatures coldest first, densities ascending) and the advice's
    reference temperature, all canonical strings."""

    temperatures: tuple[str, ...]
    densities: tuple[str, ...]
    reference: str

    def cells(self) -> list[Cell]:
        return [(t, d) for t in self.temperatures for d in self.densities]

    def index(self, cell: Cell) -> tuple[int, int]:
        return self.temperatures.index(cell[0]), self.densities.index(cell[1])


def _every(n: int, step: int) -> list[int]:
    """Indices 0, step, 2 step, ... and always the last one."""
    return sorted({*range(0, n, step), n - 1})


def coarse_cells(grid: Grid, step: int) -> list[Cell]:
    """Adaptive refinement's first round: every ``step``-th temperature and density (corners
    included) and the reference temperature at each of those densities."""
    temps = {grid.temperatures[i] for i in _every(len(grid.temperatures), step)} | {grid.reference}
    dens = [grid.densities[j] for j in _every(len(grid.densities), step)]
    return [(t, d) for t in grid.temperatures for d in dens if t in temps]


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
    setup: str = ""  # the prune.setups entry this config is (:meth:`for_setup`); "" for a run's own

    # ----- the method axis (prune.setups) -----
    @property
    def setup_names(self) -> list[str]:
        """The setups of prune.setups in config order ([] without the method axis)."""
        return [entry["name"] for entry in self.prune.setups]

    def for_setup(self, name: str) -> ExperimentConfig:
        """The experiment of one setup: the run with its prune section overridden by the setup's
        keys (method, granularity, densities, min_layer_weights, the methods' settings). Its
        specs are those of a run configured with that prune section alone."""
        entries = {entry["name"]: entry for entry in self.prune.setups}
        if name not in entries:
            raise ValueError(f"no setup {name!r} in prune.setups (setups: {', '.join(entries) or 'none'})")
        entry = entries[name]
        core = {key: entry[key] for key in ("method", "granularity", "min_layer_weights") if key in entry}
        if "densities" in entry:
            core["densities"] = tuple(entry["densities"])
        owned = {key: value for key, value in entry.items() if key not in core and key != "name"}
        prune = replace(self.prune, **core, setups=(), options={**self.prune.options, **owned})
        return replace(self, prune=prune, setup=name)

    def setup_configs(self) -> list[ExperimentConfig]:
        """One experiment per setup, or this one alone without prune.setups."""
        return [self.for_setup(name) for name in self.setup_names] or [self]

    def method_label(self) -> str:
        """The pruning this config does, in words: method, and the granularity, schedule and
        lottery-ticket control where they are not the defaults (e.g. 'uniform, 2:4')."""
        parts = [self.prune.method]
        if self.prune.granularity != DEFAULT_GRANULARITY:
            parts.append(self.prune.granularity)
        if self.prune.iterative:
            parts.append(f"iterative (rate {fmt_value(self.prune.rate)})")
        if self.prune.control != "none":
            parts.append(f"control {self.prune.control}")
        return ", ".join(parts)

    def description(self) -> dict:
        """What names this run in every figure's title and in its summary: the run, the setup
        (under prune.setups), the knob, the model and its dataset, and the pruning method."""
        described = {"run": self.run_name, "knob": self.knob.name, "model": self.model.name}
        described |= {"data": self.data.name, "method": self.method_label()}
        return described | {"setup": self.setup} if self.setup else described

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
        axes = {"temperature": self.temperatures, "density": self.densities, "seed": seeds, "pair": pairs}
        return axes | {"setup": self.setup} if self.setup else axes

    @property
    def retrain_pairs(self) -> list[tuple[int, int]]:
        seeds = sorted(self.seeds.retrain)
        return [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]

    # ----- recipes -----
    @property
    def knob_entry(self):
        """The registry entry of this config's knob (threeregime.registry.knobs)."""
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
        label noise belong to dense training only (threeregime.registry.knobs)."""
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

    def units_per_epoch(self) -> int | None:
        """A checkpoints knob counted in another unit (tokens): its units in one epoch of the base
        recipe on this data (None: the knob counts epochs, or the data has no such unit)."""
        per_epoch = self.knob_entry.per_epoch
        return None if per_epoch is None else per_epoch(self.data, self.train)

    def checkpoint_epoch(self, temperature: str) -> float:
        """The epoch of a checkpoints knob's grid value (a whole number for a valid config)."""
        per_epoch = self.units_per_epoch()
        return float(temperature) / per_epoch if per_epoch else float(temperature)

    def dense_stop_epoch(self, temperature: str | None) -> int | None:
        """A checkpoints knob (epochs, tokens) stops each dense job at its temperature's epoch."""
        if self.knob_entry.schedule != "checkpoints":
            return None
        return int(round(self.checkpoint_epoch(temperature)))

    def dense_parent(self, temperature: str | None) -> str | None:
        """A checkpoints knob: the checkpoint at the previous grid value seeds this one."""
        if self.knob_entry.schedule != "checkpoints":
            return None
        values = sorted(self.temperatures, key=float)
        index = values.index(temperature)
        return None if index == 0 else values[index - 1]

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

    @property
    def prune_calibrates(self) -> bool:
        """Whether the prune jobs read the dataset (a method that calibrates on inputs: Wanda)."""
        return PRUNING_METHODS[self.prune.method].calibration

    def prune_spec(self, density: str) -> dict:
        """Method, density, the prune.* settings the method's registry entry owns that act, the
        granularity and the least weights a layer keeps when not at their defaults (so that specs
        written before they existed stay), and the lottery-ticket control when there is one."""
        method = PRUNING_METHODS[self.prune.method]
        values = {s.key: self.prune.option(s.key) for s in method.settings}
        settings = {s.key: values[s.key] for s in method.settings if s.acts(values[s.key])}
        spec = {"method": self.prune.method, "density": float(density)} | settings
        if self.prune.granularity != DEFAULT_GRANULARITY:
            spec["granularity"] = self.prune.granularity
        if self.prune.min_layer_weights != MIN_LAYER_WEIGHTS:
            spec["min_layer_weights"] = self.prune.min_layer_weights
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
        """The metrics settings, with the metric entries' own settings where they act
        (threeregime.registry.base.Setting), and lmc_bn_batch_size only when set, so that specs
        written before a setting existed stay."""
        spec = asdict(self.metrics)
        del spec["options"]
        for key, setting in metric_settings().items():
            value = self.metrics.option(key)
            if setting.acts(value):
                spec[key] = value
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
            own = float(getattr(owner, self.knob_entry.field)) * (self.units_per_epoch() or 1)
            reference = own if own in grid else grid[0]
        regimes["reference_temperature"] = float(reference)
        return {"knob": self.knob.name, "regimes": regimes}

    def adaptive_grid(self) -> Grid:
        """The grid adaptive refinement plans over."""
        reference = fmt_value(self.analysis_spec()["regimes"]["reference_temperature"])
        return Grid(tuple(self.temperatures), tuple(self.densities), reference)

    def adaptive_spec(self) -> dict:
        """What an adaptive planning round depends on: the grid, the regime settings, the
        refinement settings and the dense seeds every cell starts with
        (threeregime.analysis.adaptive)."""
        analysis = self.analysis_spec()
        return {
            "temperatures": self.temperatures,
            "densities": self.densities,
            "reference": fmt_value(analysis["regimes"]["reference_temperature"]),
            "regimes": analysis["regimes"],
            "adaptive": asdict(self.adaptive),
            "dense_seeds": list(self.seeds.dense),
        }

    def plot_spec(self) -> dict:
        return {"knob": self.knob.name, "plot": asdict(self.plot)}
