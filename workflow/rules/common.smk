import os
import re
import shlex
from dataclasses import asdict
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from threeregime.compute.gpus import gpus_per_job
from threeregime.config.load import load_config
from threeregime.config.settings import ConfigError
from threeregime.config.specs import grid_cells, to_json
from threeregime.io import locks
from threeregime.registry.metrics import panel_caption

try:
    CFG = load_config(
        config, source=", ".join(map(str, workflow.configfiles)) or "config"
    )
except ConfigError as exc:
    raise WorkflowError(f"invalid configuration: {exc}") from None

# A run killed hard (SIGKILL, SIGHUP, OOM) leaves Snakemake's locks behind; remove those of runs
# that provably died (their run lock is free) before Snakemake checks them, and say when another
# run is writing these results (threeregime.io.locks). Never in the jobs of a cluster or subprocess.
if not (workflow.remote_exec or workflow.subprocess_exec):
    _removed, _kept = locks.remove_stale_locks(os.getcwd())
    for _path in _removed:
        logger.warning(
            f"removed {_path}: its Snakemake run was killed and cannot resume it"
        )
    _holder = locks.run_holder(os.getcwd(), CFG.run_name)
    if _holder:
        logger.warning(
            f"results/{CFG.run_name} is being written by a running snakemake ({_holder}):"
            " a second run of it is refused, a dry run is not"
        )


# The run lock of results/<run_name>, held until this process ends: a second live run of the
# same results is refused here, before any job (hooks run only in the main process of a real
# run, never in a dry run or inside a job).
onstart:
    try:
        locks.acquire_run(
            os.getcwd(),
            CFG.run_name,
            getattr(workflow.persistence, "_lockfile", {}).values(),
        )
    except locks.Locked as exc:
        raise WorkflowError(str(exc)) from None


onsuccess:
    locks.release_run(os.getcwd(), CFG.run_name)
    from threeregime.stages.collect import mixed_environments_warning

    _mixed = mixed_environments_warning(f"results/{CFG.run_name}/summary.json")
    if _mixed:
        logger.warning(_mixed)


onerror:
    locks.release_run(os.getcwd(), CFG.run_name)


RES = f"results/{CFG.run_name}"
LOGS = f"{RES}/logs"
# Snakemake's benchmark of every compute job (wall and CPU seconds, max RSS): one TSV per job,
# at benchmarks/<rule>/<the job's log path under logs/<folder>/>.tsv (threeregime.views.cost reads them).
BENCH = f"{RES}/benchmarks"
KNOB = CFG.knob.name
DATA = f"{RES}/data/dataset.pt"
CELL = f"{KNOB}-{{temperature}}/density-{{density}}/seed{{seed}}"
# A dense run per temperature and seed, or, for a knob of the retraining (rewind_step), one per
# seed that every temperature prunes.
DENSE_RUN = CFG.dense_folder("{temperature}")
DENSE = f"{RES}/dense/{DENSE_RUN}/seed{{seed}}/model.pt"
# Weight rewinding's start: the dense run's first k iterations, replayed (rule rewind).
REWIND = f"{RES}/rewind/{KNOB}-{{temperature}}/seed{{seed}}/model.pt"
PRUNED = f"{RES}/pruned/{CELL}/model.pt"
RETRAINED = f"{RES}/retrain/{CELL}/retrain{{rseed}}/model.pt"
METRICS = f"{RES}/metrics/{CELL}/pair{{a}}-{{b}}.json"
ENV = "../../envs/threeregime.yaml"
# Runtime settings (device, threads, checkpoint interval, compile) and where CIFAR lives do not
# change results, so they are not params (no rerun when they change); jobs read them from the
# environment. The package is imported from this checkout, also inside conda environments.
_EXPORTS = (
    f"export THREEREGIME_RUNTIME={shlex.quote(to_json(asdict(CFG.runtime)))}"
    f" THREEREGIME_DATA_LOCATION={shlex.quote(to_json(CFG.data_location()))}"
    f" PYTHONPATH={shlex.quote(str(Path(workflow.basedir).parent))}${{PYTHONPATH:+:$PYTHONPATH}}; "
)
shell.prefix(_EXPORTS.replace("{", "{{").replace("}", "}}"))
GPUS_PER_JOB = gpus_per_job(CFG.runtime.device)


def _one_of(values):
    return "|".join(re.escape(v) for v in values)


wildcard_constraints:
    temperature=_one_of(CFG.temperatures),
    density=_one_of(CFG.pruned_densities),
    seed=r"\d+",
    rseed=r"\d+",
    a=r"\d+",
    b=r"\d+",


def prune_inputs(wildcards):
    """The dense model (its weights, or under iterative pruning its seed and test error) and,
    for an iterative level past the first, the previous level's retrained model it prunes (in
    this order: `prune --dense DENSE [PREVIOUS_LEVEL]`)."""
    inputs = [DENSE.format(**wildcards)]
    parent = CFG.prune_parent(wildcards.density)
    if parent is not None:
        link = dict(wildcards) | {"density": parent, "rseed": CFG.chain_seed}
        inputs.append(RETRAINED.format(**link))
    return inputs


def prune_data(wildcards):
    """The dataset, for a method that calibrates on training samples (Wanda); none otherwise."""
    return DATA if CFG.prune_calibrates else []


# The prune command; a calibrating method adds --data, so every other config's command (and
# Snakemake's record of it) stays as it was.
PRUNE_COMMAND = (
    "python -m threeregime prune --spec {params.spec:q} --dense {input.models}"
    " --data {input.data} --out {output} > {log} 2>&1"
    if CFG.prune_calibrates
    else "python -m threeregime prune --spec {params.spec:q} --dense {input} --out {output}"
    " > {log} 2>&1"
)


# Iterative pruning's levels that are links of the chain but not measured: only their first
# retraining is needed (it is what the next level prunes).
CHAIN_LINKS = [d for d in CFG.pruned_densities if d not in CFG.densities]


def dense_init(wildcards):
    """Epochs knob: each checkpoint continues the run from the previous grid epoch."""
    parent = CFG.dense_parent(wildcards.get("temperature"))
    if parent is None:
        return []
    return DENSE.format(temperature=parent, seed=wildcards.seed)


RETRAIN_SEEDS = [str(s) for s in CFG.seeds.retrain]
# What one retrain job covers (runtime.retrain_pack): one retraining, a cell's retrain seeds, or
# every density and retrain seed of one dense model, packed into one model (threeregime.compute.pack).
# Command, spec and, for "cell", inputs are those of "none", so switching between them reruns
# nothing; "temperature" has other inputs, so switching to or from it reruns the retrainings.
RETRAIN_JOB = {
    "none": {
        "pruned": PRUNED,
        "outputs": [RETRAINED],
        "log": f"{LOGS}/retrain/{CELL}/retrain{{rseed}}.log",
        "benchmark": f"{BENCH}/retrain/{CELL}/retrain{{rseed}}.tsv",
    },
    "cell": {
        "pruned": PRUNED,
        "outputs": expand(RETRAINED, rseed=RETRAIN_SEEDS, allow_missing=True),
        "log": f"{LOGS}/retrain/{CELL}/retrain.log",
        "benchmark": f"{BENCH}/retrain/{CELL}/retrain.tsv",
    },
    "temperature": {
        "pruned": expand(PRUNED, density=CFG.densities, allow_missing=True),
        "outputs": expand(
            RETRAINED, density=CFG.densities, rseed=RETRAIN_SEEDS, allow_missing=True
        ),
        "log": f"{LOGS}/retrain/{KNOB}-{{temperature}}/seed{{seed}}/retrain.log",
        "benchmark": f"{BENCH}/retrain/{KNOB}-{{temperature}}/seed{{seed}}/retrain.tsv",
    },
}[CFG.runtime.retrain_pack]


def retrain_rewind(wildcards):
    """Weight rewinding: the replayed dense state the job's retrainings restart from."""
    return REWIND.format(**wildcards) if CFG.retrain.rewinds_weights else []


def retrain_runs(wildcards, input, output):
    """--run flags pairing each output with its pruned model and retrain seed, in the order
    expand() lists the outputs (density, then retrain seed), and --rewind with the state weight
    rewinding restarts from. A function of input and output, it is a derived param: not
    compared between runs (the paths already are)."""
    pruned = [input.pruned] if isinstance(input.pruned, str) else list(input.pruned)
    seeds = [wildcards.rseed] if "rseed" in wildcards.keys() else RETRAIN_SEEDS
    runs = [(path, seed) for path in pruned for seed in seeds]
    flags = [
        f"--run {shlex.quote(path)} {shlex.quote(out)} {seed}"
        for (path, seed), out in zip(runs, output, strict=True)
    ]
    if CFG.retrain.rewinds_weights:
        flags.append(f"--rewind {shlex.quote(input.rewind)}")
    return " ".join(flags)


def labels(wildcards):
    """--label flags naming the cell an output belongs to (written into its JSON)."""
    names = {
        "seed": "dense_seed",
        "rseed": "retrain_seed",
        "a": "seed_a",
        "b": "seed_b",
    }
    pairs = [f"knob={KNOB}"]
    pairs += [f"{names.get(k, k)}={v}" for k, v in wildcards.items()]
    return " ".join(f"--label {p}" for p in pairs)


def all_metrics():
    """One metrics file per (temperature, density, dense seed, retrain pair)."""
    return [METRICS.format(**cell) for cell in grid_cells(CFG.metrics_axes())]


ANALYSIS = {
    name: f"{RES}/{name}.csv"
    for name in (
        "metrics",
        "models",
        "cells",
        "regimes",
        "robustness",
        "advice",
        "advice_cells",
        "selection",
        "boundaries",
    )
}
FIGURES = {
    "phase": [f"{RES}/phase_diagram.png", f"{RES}/phase_diagram.pdf"],
    "map": [f"{RES}/regime_map.png", f"{RES}/regime_map.pdf"],
}
if CFG.metrics.option("hessian_esd"):  # an optional metric's figure (rule plot_esd)
    FIGURES["esd"] = [f"{RES}/hessian_esd.png", f"{RES}/hessian_esd.pdf"]
if CFG.retrain.rewinds_weights:  # instability analysis (rule plot_instability)
    FIGURES["instability"] = [f"{RES}/instability.png", f"{RES}/instability.pdf"]


def intermediates():
    """Every dataset, dense, pruned and retrained model of the grid."""
    seeds = [str(s) for s in CFG.seeds.dense]
    grid = dict(temperature=CFG.temperatures, seed=seeds)
    dense = expand(DENSE, seed=seeds) if CFG.shared_dense else expand(DENSE, **grid)
    rewinds = expand(REWIND, **grid) if CFG.retrain.rewinds_weights else []
    return (
        [DATA]
        + dense
        + rewinds
        + expand(PRUNED, density=CFG.pruned_densities, **grid)
        + expand(RETRAINED, density=CFG.densities, rseed=RETRAIN_SEEDS, **grid)
        + expand(RETRAINED, density=CHAIN_LINKS, rseed=[str(CFG.chain_seed)], **grid)
    )


def final_outputs():
    # Intermediates and per-pair metrics are targets too: Snakemake does not rebuild a missing
    # input of an up-to-date job, so a deleted (e.g. corrupted) model would otherwise stay
    # deleted. As targets they are rebuilt, and what was computed from them reruns (mtime).
    # (Adaptive refinement runs only the planned cells: collect asks for their metrics itself.)
    return (
        ([] if CFG.adaptive.enabled else intermediates() + all_metrics())
        + list(ANALYSIS.values())
        + FIGURES["phase"]
        + FIGURES["map"]
        + FIGURES.get("esd", [])
        + FIGURES.get("instability", [])
        + [f"{RES}/summary.json"]
    )
