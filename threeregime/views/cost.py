"""Measured cost of a run's jobs and a projection of what a whole config costs.

Every compute rule has a Snakemake ``benchmark:`` file, ``<results>/benchmarks/<rule>/<job
path>.tsv`` (the job path is its log's: cell folders, then ``seed1``, ``retrain2``, ``pair1-2``;
``workflow/rules/common.smk``). :func:`read_costs` turns them into one row per job (wall and CPU
seconds, max RSS, the device its log names). :func:`project` scales each rule's measured seconds
per unit of work to the units a target config needs; the units are in :data:`UNITS`.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import pandas as pd

from threeregime.config.experiment import ExperimentConfig
from threeregime.config.settings import Recipe
from threeregime.registry.datasets import train_samples as registered_train_samples
from threeregime.registry.knobs import KNOBS

log = logging.getLogger("threeregime")

KEYS = ["temperature", "density", "seed", "rseed", "a", "b"]
COLUMNS = ["rule", *KEYS, "runs", "wall_s", "cpu_s", "max_rss_mb", "device"]
LOG_FOLDER = {"dense_train": "dense"}  # a rule's log folder under logs/, when not its own name
GPU_RULES = ("dense_train", "rewind", "retrain", "metrics")  # the rules that run on runtime.device
UNITS = {
    "prepare_data": "job",
    "dense_train": "training samples processed (x2 under SAM)",
    "rewind": "training samples processed (the replay trains to the end of k's epoch)",
    "prune": "pruned model",
    "retrain": "training samples processed, all runs of the job",
    "metrics": "LMC points x training samples, all pairs of the job",
}
ASSUMPTION = (
    "each rule's time is linear in its units: training in samples processed (epochs x training "
    "samples, or iterations x batch size; x2 under SAM), a metrics job in LMC points x training "
    "samples (BatchNorm recompute and evaluation on the training set at every point dominate), "
    "prune constant per pruned model and prepare_data per job; the target runs the measured "
    "model on the measured device with the measured runtime settings (retrain_pack, amp, compile)"
)
_SEGMENTS = [
    ("density", re.compile(r"density-(.+)")),
    ("temperature", re.compile(rf"(?:{'|'.join(KNOBS)})-(.+)")),
    ("seed", re.compile(r"seed(\d+)")),
    ("rseed", re.compile(r"retrain(\d*)")),
    ("pair", re.compile(r"pair(\d+)-(\d+)")),
]
_DEVICE = re.compile(r"runtime: device (\S+?),")


def job_keys(relative: Path) -> dict:
    """Cell keys of a job from its path below benchmarks/<rule>/ (or logs/<folder>/)."""
    keys: dict = {}
    for part in relative.with_suffix("").parts:
        for name, pattern in _SEGMENTS:
            match = pattern.fullmatch(part)
            if match and name == "pair":
                keys["a"], keys["b"] = match.groups()
                break
            if match:
                keys[name] = match.group(1)
                break
    return keys


def _device(results: Path, rule: str, job_path: Path) -> str:
    """The device a job's log names (``runtime: device cuda, ...``); CPU-only rules: cpu."""
    if rule not in GPU_RULES:
        return "cpu"
    log = results / "logs" / LOG_FOLDER.get(rule, rule) / job_path.with_suffix(".log")
    try:
        match = _DEVICE.search(log.read_text(errors="replace"))
    except OSError:
        return ""
    return match.group(1) if match else ""


BENCHMARK_COLUMNS = ("s", "cpu_time", "max_rss")


def _benchmark(path: Path) -> pd.Series | None:
    """The first row of a Snakemake benchmark file, or None (with a warning naming the file)
    when it cannot be read: the job's cost is then left out, and said to be."""
    try:
        table = pd.read_csv(path, sep="\t", na_values=["NA", "-"])
        if table.empty or not set(BENCHMARK_COLUMNS) <= set(table.columns):
            raise ValueError(f"expected a header with {', '.join(BENCHMARK_COLUMNS)} and one row")
        first = table.iloc[0]
        [float(first[column]) for column in BENCHMARK_COLUMNS]
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        log.warning("%s: unreadable benchmark file, left out of the cost (%s)", path, reason)
        return None
    return first


def read_costs(results: Path, retrain_seeds: int = 1, densities: int = 1) -> pd.DataFrame:
    """One row per benchmarked job under ``results`` (finished jobs only: Snakemake writes the
    file when a job ends). ``runs``: retrainings in the job (:func:`retrain_runs`), else 1.
    An unreadable file is left out with a warning naming it."""
    rows = []
    for path in sorted((results / "benchmarks").rglob("*.tsv")):
        relative = path.relative_to(results / "benchmarks")
        rule = relative.parts[0].removesuffix(".tsv")
        keys = job_keys(Path(*relative.parts[1:])) if len(relative.parts) > 1 else {}
        first = _benchmark(path)
        if first is None:
            continue
        rows.append(
            {
                "rule": rule,
                **keys,
                "runs": retrain_runs(keys, retrain_seeds, densities) if rule == "retrain" else 1,
                "wall_s": float(first["s"]),
                "cpu_s": float(first["cpu_time"]),
                "max_rss_mb": float(first["max_rss"]),
                "device": _device(results, rule, Path(*relative.parts[1:])),
            }
        )
    return pd.DataFrame(rows, columns=COLUMNS)


def read_local_costs(results: Path) -> pd.DataFrame:
    """The benchmarks of the local bookkeeping jobs (collect, classify, plot, adaptive rounds:
    ``benchmarks-local/[setups/<setup>/]<rule>.tsv``), one row per file, in :func:`read_costs`'
    columns."""
    rows = []
    for path in sorted((Path(results) / "benchmarks-local").rglob("*.tsv")):
        first = _benchmark(path)
        if first is None:
            continue
        rule = "adaptive_round" if path.stem.startswith("adaptive-round") else path.stem
        rows.append({"rule": rule, "runs": 1, "wall_s": float(first["s"]), "cpu_s": float(first["cpu_time"]),
                     "max_rss_mb": float(first["max_rss"]), "device": "cpu"})  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS)


def summarize(costs: pd.DataFrame) -> pd.DataFrame:
    """Per rule: jobs, wall and CPU hours, the largest max RSS, the devices seen."""
    grouped = costs.groupby("rule", sort=False)
    return pd.DataFrame(
        {
            "jobs": grouped.size(),
            "wall_h": grouped["wall_s"].sum() / 3600,
            "cpu_h": grouped["cpu_s"].sum() / 3600,
            "mean_wall_s": grouped["wall_s"].mean(),
            "max_rss_mb": grouped["max_rss_mb"].max(),
            "device": grouped["device"].agg(lambda d: ", ".join(sorted(set(d) - {""})) or "?"),
        }
    ).reset_index()


# ----------------------------------------------------------------------------- units of work
def train_samples(cfg: ExperimentConfig) -> int:
    """Training-set size of the config's dataset (threeregime.registry.datasets)."""
    return registered_train_samples(cfg.data.name, cfg.data.num_samples)


def _samples(recipe: Recipe, n_train: int, epochs: float | None = None) -> float:
    if recipe.iterations is not None:
        processed = recipe.iterations * recipe.batch_size
    else:
        processed = (recipe.epochs if epochs is None else epochs) * n_train
    return processed * (2 if recipe.optimizer == "sam" else 1)


def retrain_runs(keys: dict, retrain_seeds: int, densities: int) -> int:
    """Retrainings in one retrain job: one (seed in its path), a cell's, or a dense model's."""
    if keys.get("rseed"):
        return 1
    return retrain_seeds if "density" in keys else retrain_seeds * densities


def job_units(cfg: ExperimentConfig, rule: str, keys: dict) -> float:
    n_train = train_samples(cfg)
    if rule == "rewind":  # epochs up to the one holding iteration k
        recipe = cfg.dense_recipe(None if cfg.shared_dense else keys["temperature"])
        return _samples(
            recipe, n_train, recipe.epochs_to_reach(cfg.rewind_step(keys["temperature"]), n_train)
        )
    if rule == "dense_train":
        recipe = cfg.dense_recipe(keys.get("temperature"))
        if cfg.knob_entry.schedule == "checkpoints":  # each trains on from the previous grid value
            parent = cfg.dense_parent(keys["temperature"])
            start = cfg.dense_stop_epoch(parent) if parent else 0
            return _samples(recipe, n_train, cfg.dense_stop_epoch(keys["temperature"]) - start)
        return _samples(recipe, n_train)
    if rule == "retrain":
        runs = retrain_runs(keys, len(cfg.seeds.retrain), len(cfg.densities))
        return runs * _samples(cfg.retrain_recipe(), n_train)
    # a packed job (retrain_pack temperature: no density in its path) prunes every density and
    # measures every density's pairs
    cells = 1 if "density" in keys else len(cfg.densities)
    if rule == "metrics":
        pairs = 1 if "a" in keys else cells * len(cfg.retrain_pairs)
        return pairs * pair_units(cfg)
    return float(cells) if rule == "prune" else 1.0


def pair_units(cfg: ExperimentConfig) -> float:
    """Units of measuring one retrain pair: LMC points x training samples."""
    return cfg.metrics.lmc_points * train_samples(cfg)


def target_units(cfg: ExperimentConfig) -> dict[str, tuple[int, float]]:
    """(jobs, units of work) per rule for the whole config: iterative pruning's links are
    pruned and retrained too (once each, or with every retrain seed when packed by cell)."""
    models = [{"temperature": t} for t in cfg.temperatures for _ in cfg.seeds.dense]
    dense = [{} for _ in cfg.seeds.dense] if cfg.shared_dense else models
    cells = len(models) * len(cfg.densities)
    links = len(models) * (len(cfg.pruned_densities) - len(cfg.densities))
    seeds, pack = len(cfg.seeds.retrain), cfg.runtime.retrain_pack
    runs = cells * seeds + links * (1 if pack == "none" else seeds)
    retrain_jobs = {"none": runs, "cell": cells + links, "temperature": len(models)}[pack]
    pairs = cells * len(cfg.retrain_pairs)
    packed = pack == "temperature"  # pruning and metrics packed per dense model too
    units = {
        "prepare_data": (1, 1.0),
        "dense_train": (len(dense), sum(job_units(cfg, "dense_train", k) for k in dense)),
        "prune": (len(models) if packed else cells + links, float(cells + links)),
        "retrain": (retrain_jobs, runs * _samples(cfg.retrain_recipe(), train_samples(cfg))),
        "metrics": (len(models) if packed else pairs, pairs * pair_units(cfg)),
    }
    if cfg.retrain.rewinds_weights:
        units["rewind"] = (len(models), sum(job_units(cfg, "rewind", k) for k in models))
    return units


def project(costs: pd.DataFrame, measured_cfg: ExperimentConfig, target: ExperimentConfig) -> pd.DataFrame:
    """Per rule: measured seconds per unit (total seconds / total units of the measured jobs)
    times the target's units. Rules with no measured job project to NaN."""
    rows = []
    for rule, (jobs, units) in target_units(target).items():
        measured = costs[costs["rule"] == rule]
        done = [job_units(measured_cfg, rule, _keys(row)) for _, row in measured.iterrows()]
        rate = measured["wall_s"].sum() / sum(done) if done else math.nan
        devices = sorted(set(measured["device"]) - {""})
        rows.append(
            {
                "rule": rule,
                "measured_jobs": len(measured),
                "device": ", ".join(devices) or "-",
                "s_per_unit": rate,
                "unit": UNITS[rule],
                "target_jobs": jobs,
                "target_units": units,
                "projected_h": rate * units / 3600,
            }
        )
    return pd.DataFrame(rows)


def _keys(row: pd.Series) -> dict:
    return {k: str(row[k]) for k in KEYS if isinstance(row[k], str) or pd.notna(row[k])}


def projection_report(table: pd.DataFrame, measured_from: str, target: str) -> str:
    """The projection as text: the table, hours per device (GPU-hours: the rules measured on
    cuda), what is missing and what is extrapolated."""
    on_gpu = table["device"].str.contains("cuda") & table["rule"].isin(GPU_RULES)
    shown = table.assign(
        s_per_unit=table["s_per_unit"].map(lambda v: f"{v:.3g}"),
        target_units=table["target_units"].map(lambda v: f"{v:.4g}"),
        projected_h=table["projected_h"].map(lambda v: f"{v:.3g}"),
    )
    lines = [
        f"cost of {target}, projected from the jobs measured in {measured_from}:",
        shown.to_string(index=False),
        "",
        f"GPU-hours (rules measured on cuda: {', '.join(table.loc[on_gpu, 'rule']) or 'none'}): "
        f"{table.loc[on_gpu, 'projected_h'].sum():.3g}",
    ]
    elsewhere = table[~on_gpu & table["projected_h"].notna()]
    for device, rows in elsewhere.groupby("device"):
        rules = ", ".join(rows["rule"])
        lines.append(f"hours on {device} (not GPU; {rules}): {rows['projected_h'].sum():.3g}")
    missing = table.loc[table["measured_jobs"] == 0, "rule"].tolist()
    if missing:
        lines.append(f"not measured yet, left out (the totals are lower bounds): {', '.join(missing)}")
    lines.append(f"assumes: {ASSUMPTION}")
    return "\n".join(lines)


COST_NOTE = (
    "Measured by Snakemake's benchmark of every compute job: wall and CPU time, the largest "
    "resident memory, and the device the job's log names. One row per job in cost.csv."
)


def write_cost(results: Path, grid: dict, csv_path: str, html_path: str) -> pd.DataFrame:
    """cost.csv (one row per job of the grid) and its per-rule summary page for the report."""
    from threeregime.io.files import write_csv, write_text
    from threeregime.views.tables import html_table

    seeds = len({seed for pair in grid["pair"] for seed in pair})
    costs = read_costs(Path(results), seeds, len(grid["density"]))
    on_grid = costs["temperature"].isna() | costs["temperature"].isin(grid["temperature"])
    on_grid &= costs["density"].isna() | costs["density"].isin(grid["density"])
    costs = costs[on_grid].reset_index(drop=True)
    write_csv(csv_path, costs)
    write_text(html_path, html_table(summarize(costs), "Measured cost per rule", COST_NOTE))
    return costs
