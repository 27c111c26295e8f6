"""The configuration a `snakemake --configfile A B` run uses: config.yaml, then each file merged
over it key by key, as Snakemake merges them. For commands that look at a run from outside
(`threeregime cost`, `threeregime status`)."""

from __future__ import annotations

from pathlib import Path

from threeregime.config import ExperimentConfig, load_config, merge_configs, read_config_file

BASE_CONFIG = "config.yaml"  # the Snakefile's `configfile:`, relative to where snakemake starts


def load_overlays(configfiles: list[str], base: str = BASE_CONFIG) -> ExperimentConfig:
    files = [base, *configfiles]
    raw = merge_configs(*(read_config_file(path) for path in files))
    # Where the data lives does not matter to a look at results: no data path check.
    return load_config(raw, source=", ".join(files), check_paths=False)


def results_dir(cfg: ExperimentConfig) -> Path:
    """The run's output folder, as the Snakefile names it (workflow/rules/common.smk: RES)."""
    return Path("results") / cfg.run_name
