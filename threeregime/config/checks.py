"""The checks a JSON schema cannot express, and the registries' soundness: each problem is one
ConfigError line naming the file and the key (or the registry and the entry)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

from threeregime.config.experiment import ExperimentConfig, coarse_cells
from threeregime.config.schema import schema_file, section_fields, value_problem
from threeregime.config.settings import ConfigError, DataConfig, Recipe, RetrainConfig, fmt_value, knob_value
from threeregime.registry.datasets import (
    DATASETS,
    cifar_folder,
    cifar_howto,
    cifar_missing,
    data_file_problem,
    packaged_problem,
    subset_problem,
    train_samples,
)
from threeregime.registry.datasets import registry_problems as dataset_problems
from threeregime.registry.knobs import KNOBS
from threeregime.registry.knobs import registry_problems as knob_problems
from threeregime.registry.metrics import METRICS
from threeregime.registry.metrics import registry_problems as metric_problems
from threeregime.registry.models import MODELS, layer_sizes, weight_shapes
from threeregime.registry.models import registry_problems as model_problems
from threeregime.registry.pruning import (
    CALIBRATION_SAMPLES,
    DEFAULT_GRANULARITY,
    GRANULARITIES,
    PRUNING_METHODS,
    row_length,
)
from threeregime.registry.pruning import registry_problems as pruning_problems

MAX_SEED = 2**32


def check_registries() -> None:
    """Raise ConfigError with one line for the first incomplete registry entry: its fields, its
    settings, and every piece of code it names (resolved without importing it)."""
    recipe_fields = {f.name for f in dataclasses.fields(Recipe)}
    schema_fields = set(schema_file()["$defs"]["recipe"]["properties"])
    retrain_fields = {f.name for f in dataclasses.fields(RetrainConfig)}
    problems = knob_problems(recipe_fields, schema_fields, retrain_fields)
    problems += metric_problems(section_fields("metrics"))
    problems += pruning_problems(section_fields("prune"))
    problems += dataset_problems({f.name for f in dataclasses.fields(DataConfig)}) + model_problems()
    if problems:
        raise ConfigError(problems[0])


def check_semantics(cfg: ExperimentConfig, source: str, check_paths: bool = True) -> None:
    """Checks a JSON schema cannot express; each raises one ConfigError line."""

    def fail(key: str, message: str):
        raise ConfigError(f"{source}: {key}: {message}")

    if cfg.data.name not in MODELS[cfg.model.name].datasets:
        allowed = ", ".join(sorted(MODELS[cfg.model.name].datasets))
        fail("model.name", f"{cfg.model.name} needs data.name in {{{allowed}}}, got {cfg.data.name}")
    check_model_and_data(cfg, fail, check_paths)
    knob = KNOBS[cfg.knob.name]
    for i, value in enumerate(cfg.knob.values):
        if knob.integer and not float(value).is_integer():
            fail(f"knob.values[{i}]", f"{value} must be a whole number for knob {cfg.knob.name}")
        if knob.per_epoch is not None:
            value = check_units_per_epoch(cfg, i, value, fail)
        section = "retrain" if knob.schedule == "retrain" else "train"
        problem = value_problem(section, knob.field, knob_value(knob, value))
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
        too_long = [v for v in cfg.knob.values if cfg.checkpoint_epoch(fmt_value(v)) > budget]
        if too_long:
            unit = f" ({fmt_value(budget * cfg.units_per_epoch())} {knob.name})" if knob.per_epoch else ""
            fail("knob.values", f"{knob.field} {too_long} exceed train.{knob.field}={budget}{unit}")
    reference = cfg.regimes.reference_temperature
    if reference is not None and fmt_value(reference) not in cfg.temperatures:
        fail("regimes.reference_temperature", f"{fmt_value(reference)} is not one of the knob values")
    if check_paths and cfg.data.name.startswith("cifar") and not cfg.data.download:
        folder = Path(cfg.data.root) / cifar_folder(cfg.data.name)
        howto = cifar_howto(cfg.data.name, cfg.data.root)
        if not folder.is_dir():
            fail("data.root", f"{folder} not found; {howto}")
        missing = cifar_missing(cfg.data.name, cfg.data.root)
        if missing:
            names = ", ".join(m.name for m in missing)
            fail("data.root", f"{folder} lacks {names} (torchvision's {cfg.data.name} layout); {howto}")
    if DATASETS[cfg.data.name].packaged is not None:
        problem = subset_problem(cfg.data.name, cfg.data.num_samples)
        if problem:
            fail("data.num_samples", problem)
        problem = packaged_problem(cfg.data.name) if check_paths else None
        if problem:
            fail("data.name", problem)
    if cfg.metrics.hessian_trace_deflation > cfg.metrics.hessian_max_iter:
        fail(
            "metrics.hessian_trace_deflation",
            f"{cfg.metrics.hessian_trace_deflation} Lanczos vectors exceed hessian_max_iter="
            f"{cfg.metrics.hessian_max_iter}, the most Lanczos products allowed",
        )
    check_setups(cfg, fail)
    for setup, setup_fail in pruning_setups(cfg, fail):
        if setup.prune.iterative:
            check_iterative(setup, setup_fail)
        check_granularity(setup, setup_fail)
        check_layer_sizes(setup, setup_fail)
        check_calibration(setup, setup_fail)
    if cfg.adaptive.enabled and not cfg.prune.iterative:
        check_adaptive(cfg, fail)
    check_rewind_step(cfg, fail)
    seeds = {f"seeds.dense[{i}]": s for i, s in enumerate(cfg.seeds.dense)}
    seeds |= {f"seeds.retrain[{i}]": s for i, s in enumerate(cfg.seeds.retrain)}
    seeds["data.generation_seed"] = cfg.data.generation_seed
    for key, seed in seeds.items():
        if seed >= MAX_SEED:
            fail(key, f"{seed} is too large; seeds must be below 2**32 (NumPy's and MNIST-1D's limit)")
    check_batch_sizes(cfg, fail)
    check_colormap(cfg.plot.cmap, fail)
    cka = cfg.regimes.cka_metric
    if cka in METRICS and METRICS[cka].enabled_by and not cfg.metrics.option(METRICS[cka].enabled_by):
        fail("regimes.cka_metric", f"{cka} is measured only with metrics.{METRICS[cka].enabled_by}: true")


def check_model_and_data(cfg: ExperimentConfig, fail, check_paths: bool) -> None:
    """The model's optional package is installed, its runs are packed only if it packs, and the
    dataset's shipped files and its own settings check out."""
    model = MODELS[cfg.model.name]
    if model.requires is not None:
        module, install = model.requires
        if not _importable(module):
            fail("model.name", f"{cfg.model.name} needs the optional package {module}: {install}")
    if not model.packs and cfg.runtime.retrain_pack != "none":
        fail(
            "runtime.retrain_pack",
            f"{cfg.runtime.retrain_pack}: {cfg.model.name} has layers without a packed form "
            "(threeregime/compute/pack.py); set runtime.retrain_pack: none",
        )
    dataset = DATASETS[cfg.data.name]
    for file in dataset.files if check_paths else ():
        problem = data_file_problem(file)
        if problem:
            fail("data.name", f"{cfg.data.name}: {problem}")
    problem = dataset.check(cfg.data) if dataset.check is not None else None
    if problem:
        fail(*problem)


def _importable(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_units_per_epoch(cfg: ExperimentConfig, index: int, value, fail):
    """A knob counted in units of the data (tokens): the data has them, and the grid value is a
    whole number of epochs; returns that number of epochs."""
    knob = cfg.knob_entry
    per_epoch = cfg.units_per_epoch()
    if not per_epoch:
        fail("knob.name", f"the {knob.name} knob needs data made of {knob.name}; {cfg.data.name} has none")
    epochs = value / per_epoch
    if value <= 0 or not float(epochs).is_integer():
        fail(
            f"knob.values[{index}]",
            f"{value} {knob.name} is not a whole number of epochs of {per_epoch} {knob.name} (the "
            f"base recipe on this data); use multiples of {per_epoch}",
        )
    return int(epochs)


def pruning_setups(cfg: ExperimentConfig, fail):
    """(experiment, fail) of every pruning setup the run makes: each prune.setups entry, whose
    problems name its own key (``prune.setups[2].densities``) or the run's key it inherits, or
    the run itself without prune.setups."""
    if not cfg.prune.setups:
        yield cfg, fail
        return
    for i, entry in enumerate(cfg.prune.setups):

        def setup_fail(key: str, message: str, i=i, entry=entry):
            field = key.removeprefix("prune.")
            if key.startswith("prune.") and field in entry:
                fail(f"prune.setups[{i}].{field}", message)
            else:
                fail(f"prune.setups[{i}] ({entry['name']}), from {key}", message)

        yield cfg.for_setup(entry["name"]), setup_fail


def check_setups(cfg: ExperimentConfig, fail) -> None:
    """The method axis: distinct names, and only what runs per setup (adaptive refinement plans
    one grid; a retrain job packing a dense model's densities needs the same densities in every
    setup)."""
    names = cfg.setup_names
    if not names:
        return
    seen = set()
    for i, name in enumerate(names):
        if name in seen:
            fail(f"prune.setups[{i}].name", f"{name!r} names two setups; give each its own name")
        seen.add(name)
    if cfg.adaptive.enabled:
        fail(
            "adaptive.enabled",
            "adaptive refinement plans one grid; with prune.setups measure every cell "
            "(adaptive.enabled: false) or run each setup as its own run",
        )
    if cfg.runtime.retrain_pack == "temperature":
        grids = {name: cfg.for_setup(name).densities for name in names}
        if len({tuple(d) for d in grids.values()}) > 1:
            shown = "; ".join(f"{name}: {', '.join(d)}" for name, d in grids.items())
            fail(
                "runtime.retrain_pack",
                f"temperature packs every density of a dense model into one job, but the setups of "
                f"prune.setups prune different densities ({shown}); use cell or none",
            )


def check_batch_sizes(cfg: ExperimentConfig, fail) -> None:
    """A batch larger than the training set leaves an epoch without a step (drop_last)."""
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
    from threeregime.registry.datasets import train_samples

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
    if not GRANULARITIES[cfg.prune.granularity].nests:
        nesting = sorted(name for name, g in GRANULARITIES.items() if g.nests)
        fail(
            "prune.granularity",
            f"{cfg.prune.granularity} does not nest its masks level after level (its density is "
            f"fixed); iterative pruning needs one of {nesting}",
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


def check_adaptive(cfg: ExperimentConfig, fail) -> None:
    """Adaptive refinement needs room beyond its coarse sub-grid, and retraining packed per
    cell or not at all (a temperature-packed job would retrain densities no round measures)."""
    grid = cfg.adaptive_grid()
    seeds = len(cfg.seeds.dense)
    coarse = len(coarse_cells(grid, cfg.adaptive.step)) * seeds
    allowed = math.floor(cfg.adaptive.budget * len(grid.cells()) * seeds + 1e-9)
    if coarse >= allowed:
        fail(
            "adaptive.budget",
            f"{fmt_value(cfg.adaptive.budget)} of the {len(grid.cells())}-cell grid allows {allowed} units "
            f"(cells x {seeds} dense seeds), and the coarse sub-grid of adaptive.step "
            f"{cfg.adaptive.step} already takes {coarse}: no round could add anything; raise the "
            "budget or the step, or measure the whole grid (adaptive.enabled: false)",
        )
    if cfg.runtime.retrain_pack == "temperature":
        fail(
            "runtime.retrain_pack",
            "temperature packs every density of a dense model into one job, but adaptive refinement "
            "measures only some; use cell (a cell's retrain seeds in one job) or none",
        )


def check_granularity(cfg: ExperimentConfig, fail) -> None:
    """A structure that fixes the density (N:M) takes that density only, and some layer of the
    model must have its groups; the random-mask control draws unstructured positions."""
    name = cfg.prune.granularity
    structure = GRANULARITIES[name]
    if cfg.prune.control == "random_mask" and name != DEFAULT_GRANULARITY:
        fail(
            "prune.control",
            f"random_mask draws each layer's kept weights at unstructured positions; with "
            f"prune.granularity {name} use none or reinit",
        )
    if structure.fixed_density is None:
        return
    fixed = structure.fixed_density
    for density in cfg.prune.densities:
        if abs(density - fixed) > 1e-12:
            fail(
                "prune.densities",
                f"{fmt_value(density)} is not {name}'s density: {name} keeps a fixed "
                f"{fmt_value(fixed)} of the weights it structures; use prune.densities: [{fmt_value(fixed)}]",
            )
    shapes = weight_shapes(cfg.model.name, cfg.model.width, cfg.data.name)
    if structure.group and not any(row_length(s) % structure.group[1] == 0 for s in shapes.values()):
        fail(
            "prune.granularity",
            f"no prunable layer of {cfg.model.name} has rows (in_channels x kernel) a multiple of "
            f"{structure.group[1]} long: {name} would prune nothing",
        )


def check_calibration(cfg: ExperimentConfig, fail) -> None:
    """A method that calibrates on training samples needs that many of them."""
    if not cfg.prune_calibrates:
        return
    wanted = cfg.prune.option(CALIBRATION_SAMPLES)
    samples = train_samples(cfg.data.name, cfg.data.num_samples)
    if samples is not None and wanted > samples:
        fail(
            f"prune.{CALIBRATION_SAMPLES}",
            f"{wanted} exceeds the {samples} training samples of {cfg.data.name}",
        )


def check_layer_sizes(cfg: ExperimentConfig, fail) -> None:
    """A model needs a prunable layer; a method with the same density in every layer keeps,
    per layer, what its granularity says for the layer's shape (known without torch: no torch
    import at DAG time), and no layer may keep fewer than prune.min_layer_weights."""
    shapes = weight_shapes(cfg.model.name, cfg.model.width, cfg.data.name)
    if not shapes:
        fail(
            "model.name",
            f"{cfg.model.name} has no prunable layer (every convolution and every Linear layer "
            "but the last are pruned)",
        )
    method = PRUNING_METHODS[cfg.prune.method]
    if not method.same_density:
        return
    structure = GRANULARITIES[cfg.prune.granularity]
    per_row = method.ranking == "per row"
    minimum = cfg.prune.min_layer_weights
    sizes = layer_sizes(cfg.model.name, cfg.model.width, cfg.data.name)
    for density in (cfg.prune_spec(d)["density"] for d in cfg.pruned_densities):
        for name, shape in shapes.items():
            kept = structure.kept(shape, density, per_row)
            if kept < minimum:
                fail(
                    "prune.densities",
                    f"density {fmt_value(density)} keeps {kept} of {sizes[name]} weights of layer "
                    f"{name}, fewer than prune.min_layer_weights = {minimum}; use a higher density",
                )
