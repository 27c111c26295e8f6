"""Config files: read one (one line naming the file for every problem), merge several as
``snakemake --configfile a b`` does, and load the result into an ExperimentConfig."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from threeregime.config.checks import check_registries, check_semantics
from threeregime.config.experiment import ExperimentConfig
from threeregime.config.schema import canonical_values, validate_schema
from threeregime.config.settings import (
    AdaptiveConfig,
    ConfigError,
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
)

BASE_CONFIG = "config.yaml"  # the Snakefile's `configfile:`, relative to where snakemake starts
# A project deployed with snakedeploy reads config/config.yaml first instead (config/README.md).
DEPLOYED_CONFIG = "config/config.yaml"


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
    """A section's dataclass from its validated mapping: lists become tuples, and keys that are
    no field of the dataclass (a registry entry's own settings) go into its ``options``."""
    raw = dict(raw or {})
    names = {f.name for f in dataclasses.fields(cls)}
    for name in names & set(raw):
        if isinstance(raw[name], list):
            raw[name] = tuple(raw[name])
    owned = {key: raw.pop(key) for key in set(raw) - names}
    return cls(**raw, options=owned) if owned else cls(**raw)


def load_config(raw: dict | str | Path, source: str | None = None, check_paths: bool = True):
    """Validate a config (dict or YAML path) and return an ExperimentConfig, or raise ConfigError."""
    if isinstance(raw, (str, Path)):
        source = source or str(raw)
        raw = read_config_file(raw)
    source = source or "config"
    check_registries()
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


def load_overlays(configfiles: list[str], base: str | None = None) -> ExperimentConfig:
    """The configuration a `snakemake --configfile A B` run uses: config.yaml (in a deployed
    project config/config.yaml), then each file merged over it, as Snakemake merges them (for
    commands that look at a run from outside: `threeregime cost`, `threeregime status`). Where
    the data lives does not matter to a look at results: no data path check."""
    if base is None:
        deployed = not Path(BASE_CONFIG).exists() and Path(DEPLOYED_CONFIG).exists()
        base = DEPLOYED_CONFIG if deployed else BASE_CONFIG
    files = [base, *configfiles]
    raw = merge_configs(*(read_config_file(path) for path in files))
    return load_config(raw, source=", ".join(files), check_paths=False)


def results_dir(cfg: ExperimentConfig) -> Path:
    """The run's output folder, as the Snakefile names it (workflow/rules/common.smk: RES)."""
    return Path("results") / cfg.run_name
