"""The configuration a `snakemake --configfile A B` run uses: config.yaml, then each file merged
over it key by key, as Snakemake merges them. For commands that look at a run from outside
(`threeregime cost`, `threeregime status`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from threeregime.config import ConfigError, ExperimentConfig, load_config

BASE_CONFIG = "config.yaml"  # the Snakefile's `configfile:`, relative to where snakemake starts


def merge(into: dict, layer: dict) -> dict:
    """Nested dicts merge key by key; any other value replaces the one below it."""
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def load_overlays(configfiles: list[str], base: str = BASE_CONFIG) -> ExperimentConfig:
    raw: dict = {}
    files = [base, *configfiles]
    for path in files:
        try:
            layer = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
        merge(raw, layer)
    # Where the data lives does not matter to a look at results: no data path check.
    return load_config(raw, source=", ".join(files), check_paths=False)


def results_dir(cfg: ExperimentConfig) -> Path:
    """The run's output folder, as the Snakefile names it (workflow/rules/common.smk: RES)."""
    return Path("results") / cfg.run_name
