import hashlib
import itertools
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
from threeregime.views.cost import GPU_RULES

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
def start_run():
    try:
        locks.acquire_run(
            os.getcwd(),
            CFG.run_name,
            getattr(workflow.persistence, "_lockfile", {}).values(),
        )
    except locks.Locked as exc:
        raise WorkflowError(str(exc)) from None


def end_run(succeeded):
    locks.release_run(os.getcwd(), CFG.run_name)
    if not succeeded:
        return
    from threeregime.stages.collect import mixed_environments_warning

    _mixed = mixed_environments_warning(f"results/{CFG.run_name}/summary.json")
    if _mixed:
        logger.warning(_mixed)


onstart:
    start_run()


onsuccess:
    end_run(True)


onerror:
    end_run(False)


def run_after(hook, ours):
    """The deploying workflow's ``hook`` (Snakemake calls it with the log's path), preceded by
    ``ours``."""

    def chained(log):
        ours()
        hook(log)

    return chained


# Used as a module (snakedeploy writes `module threeregime: ...` and `use rule * from
# threeregime`), Snakemake registers only the deploying Snakefile's hooks and would skip the
# ones above: chain them onto that workflow's. (A hook the deploying Snakefile defines after its
# `use rule` line replaces them; docs/cluster.md.)
if not workflow.modifier.is_main_snakefile():
    if all(hasattr(workflow, f"_on{name}") for name in ("start", "success", "error")):
        workflow._onstart = run_after(workflow._onstart, start_run)
        workflow._onsuccess = run_after(workflow._onsuccess, lambda: end_run(True))
        workflow._onerror = run_after(workflow._onerror, lambda: end_run(False))
    else:
        logger.warning(
            "this Snakemake cannot run a module's onstart hook: the run lock of"
            f" results/{CFG.run_name} is not taken (two runs of it are not kept apart)"
        )


RES = f"results/{CFG.run_name}"
LOGS = f"{RES}/logs"
# Snakemake's benchmark of every compute job (wall and CPU seconds, max RSS): one TSV per job,
# at benchmarks/<rule>/<the job's log path under logs/<folder>/>.tsv (threeregime.views.cost reads them).
BENCH = f"{RES}/benchmarks"
KNOB = CFG.knob.name
DATA = f"{RES}/data/dataset.pt"
# The method axis (prune.setups): every setup prunes the same dense models, and its pruned,
# retrained and metrics files, logs and benchmarks sit under setup-<name>/ (the setup wildcard);
# its tables and figures under setups/<name>/. Without prune.setups both are empty: the paths
# are those the workflow always had.
SETUPS = CFG.setup_names
SETUP_CFG = {name: CFG.for_setup(name) for name in SETUPS}
CONFIGS = list(SETUP_CFG.values()) or [CFG]
SETUP = "setup-{setup}/" if SETUPS else ""
COMPARE_SETUPS = len(SETUPS) >= 2  # one setup alone has nothing to be compared with
ANALYSIS_DIR = "setups/{setup}/" if SETUPS else ""
CELL = f"{SETUP}{KNOB}-{{temperature}}/density-{{density}}/seed{{seed}}"


def cfg_of(wildcards):
    """The experiment of a job's setup (the run's own without prune.setups)."""
    return SETUP_CFG[wildcards.setup] if SETUPS else CFG


def run_folder(cost_csv):
    """results/<run_name> (or its local copy under a storage provider), from the path of a
    cost.csv, which sits there, or under setups/<name>/ with prune.setups."""
    return Path(cost_csv).parents[2 if SETUPS else 0]


def describe(wildcards, output):
    """The run a job's figures and summary name (threeregime.config.experiment
    .ExperimentConfig.description), as JSON; a function of the output, so a derived param.
    """
    return to_json(cfg_of(wildcards).description())


def in_setup(path, setup):
    """``path`` with its setup wildcard filled in (unchanged without prune.setups)."""
    return path.replace("{setup}", setup) if SETUPS else path


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
# No shared filesystem (a default storage provider: Kubernetes, Google Batch, or
# `--default-storage-provider fs` on one machine): Snakemake keeps every declared file in
# storage, and a job sees local copies of its own declared files only (docs/cluster.md).
STORAGE = workflow.storage_settings.default_storage_provider is not None


def stored(path) -> bool:
    """Whether a file of this workflow exists where Snakemake keeps it: on disk, or in the
    default storage provider's storage, which os.path.exists does not see (and Snakemake's own
    exists() cannot be called from an input function in Snakemake 9)."""
    if not STORAGE:
        return os.path.exists(path)
    prefix = workflow.storage_settings.default_storage_prefix or ""
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    query = f"{prefix}{os.path.normpath(path)}"
    return workflow.storage_registry.default_storage_provider.object(query).exists()


def job_pythonpath() -> str:
    """Where jobs import threeregime from, also inside conda environments: the checkout these
    rules are read from (a clone, or a module declared by a local path), else the package this
    snakemake imported (a module read from GitHub or a git tag: the package installed beside
    snakemake), linked alone into .snakemake/threeregime/python/ so that nothing else of the
    folder it is installed in comes before a conda environment's own packages."""
    import threeregime

    rules_folder = workflow.current_basedir  # a path only when read from local files
    if isinstance(rules_folder, os.PathLike):
        checkout = Path(rules_folder).parents[1]
        if (checkout / "threeregime" / "__init__.py").is_file():
            return str(checkout)
    package = Path(threeregime.__file__).resolve().parent
    key = hashlib.sha256(str(package).encode()).hexdigest()[:16]
    folder = Path.cwd() / ".snakemake" / "threeregime" / "python" / key
    if not (folder / "threeregime").exists():
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f".threeregime.{os.getpid()}.tmp"
        link.unlink(missing_ok=True)
        link.symlink_to(package, target_is_directory=True)
        os.replace(link, folder / "threeregime")
    return str(folder)


# Runtime settings (device, threads, checkpoint interval, compile) and where CIFAR lives do not
# change results, so they are not params (no rerun when they change); jobs read them from the
# environment, and the package from job_pythonpath().
_EXPORTS = (
    f"export THREEREGIME_RUNTIME={shlex.quote(to_json(asdict(CFG.runtime)))}"
    f" THREEREGIME_DATA_LOCATION={shlex.quote(to_json(CFG.data_location()))}"
    f" PYTHONPATH={shlex.quote(job_pythonpath())}${{PYTHONPATH:+:$PYTHONPATH}}; "
)
shell.prefix(_EXPORTS.replace("{", "{{").replace("}", "}}"))
GPUS_PER_JOB = gpus_per_job(CFG.runtime.device)


def _one_of(values):
    return "|".join(re.escape(v) for v in values)


# every density a prune job of any setup makes (in order of first appearance)
PRUNED_DENSITIES = list(dict.fromkeys(d for c in CONFIGS for d in c.pruned_densities))


wildcard_constraints:
    temperature=_one_of(CFG.temperatures),
    density=_one_of(PRUNED_DENSITIES),
    setup=_one_of(SETUPS),
    seed=r"\d+",
    rseed=r"\d+",
    a=r"\d+",
    b=r"\d+",


def prune_inputs(wildcards):
    """The dense model (its weights, or under iterative pruning its seed and test error) and,
    for an iterative level past the first, the previous level's retrained model it prunes (in
    this order: `prune --dense DENSE [PREVIOUS_LEVEL]`)."""
    inputs = [DENSE.format(**wildcards)]
    # packed: every density is pruned from the dense model (no iterative chain: config checks)
    if PACKED:
        return inputs
    parent = cfg_of(wildcards).prune_parent(wildcards.density)
    if parent is not None:
        link = dict(wildcards) | {"density": parent, "rseed": CFG.chain_seed}
        inputs.append(RETRAINED.format(**link))
    return inputs


def prune_data(wildcards):
    """The dataset, for a method that calibrates on training samples (Wanda); none otherwise."""
    return DATA if cfg_of(wildcards).prune_calibrates else []


def prune_data_flag(wildcards, input):
    """--data and the dataset for a setup whose method calibrates (prune.setups); a function of
    the input, so a derived param, never compared between runs."""
    return f" --data {shlex.quote(input.data)}" if input.data else ""


# runtime.retrain_pack: temperature packs a dense model's pruning and metrics too: one prune job
# writes every density's pruned model and one metrics job measures every density's retrain pairs,
# so a job's start-up (a fresh interpreter importing torch, ~2 s of CPU) is paid once per dense
# model, not once per cell and pair (benchmarks/bench_overhead.py). Each file is computed as an
# unpacked job computes it; only the job that writes it differs.
PACKED = CFG.runtime.retrain_pack == "temperature"
# every setup has the same densities under packing (threeregime.config.checks)
PACKED_DENSITIES = CONFIGS[0].densities
# a packed job's log and benchmark path
MODEL_JOB = f"{SETUP}{KNOB}-{{temperature}}/seed{{seed}}"


def packed_prune_spec(wildcards):
    """The prune specs of every density a packed prune job writes, in its outputs' order."""
    return to_json([cfg_of(wildcards).prune_spec(d) for d in PACKED_DENSITIES])


# The prune command; a calibrating method adds --data, so every other config's command (and
# Snakemake's record of it) stays as it was. Setups mix both: the flag comes per job. Packed,
# --spec lists one spec per --out.
PRUNE_COMMAND = (
    "python -m threeregime prune --spec {params.spec:q} --dense {input.models}"
    "{params.data} --out {output} > {log} 2>&1"
    if SETUPS
    else (
        "python -m threeregime prune --spec {params.spec:q} --dense {input.models}"
        " --data {input.data} --out {output} > {log} 2>&1"
        if CFG.prune_calibrates
        else "python -m threeregime prune --spec {params.spec:q} --dense {input} --out {output}"
        " > {log} 2>&1"
    )
)
PRUNE_JOB = (
    {
        "outputs": expand(PRUNED, density=PACKED_DENSITIES, allow_missing=True),
        "spec": packed_prune_spec,
        "log": f"{LOGS}/prune/{MODEL_JOB}.log",
        "benchmark": f"{BENCH}/prune/{MODEL_JOB}.tsv",
    }
    if PACKED
    else {
        "outputs": [PRUNED],
        "spec": lambda wc: to_json(cfg_of(wc).prune_spec(wc.density)),
        "log": f"{LOGS}/prune/{CELL}.log",
        "benchmark": f"{BENCH}/prune/{CELL}.tsv",
    }
)


def chain_links(cfg):
    """Iterative pruning's levels that are links of the chain but not measured: only their first
    retraining is needed (it is what the next level prunes)."""
    return [d for d in cfg.pruned_densities if d not in cfg.densities]


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
    "temperature": {  # every setup has the same densities (threeregime.config.checks)
        "pruned": expand(PRUNED, density=CONFIGS[0].densities, allow_missing=True),
        "outputs": expand(
            RETRAINED,
            density=CONFIGS[0].densities,
            rseed=RETRAIN_SEEDS,
            allow_missing=True,
        ),
        "log": f"{LOGS}/retrain/{SETUP}{KNOB}-{{temperature}}/seed{{seed}}/retrain.log",
        "benchmark": f"{BENCH}/retrain/{SETUP}{KNOB}-{{temperature}}/seed{{seed}}/retrain.tsv",
    },
}[CFG.runtime.retrain_pack]

# What one metrics job measures: one retrain pair of one cell, or (packed) every pair of every
# density of one dense model, listed density by density, then pair by pair.
PACKED_PAIRS = [(d, a, b) for d in PACKED_DENSITIES for a, b in CFG.retrain_pairs]
METRICS_JOB = (
    {
        "inputs": {
            "models": expand(
                RETRAINED,
                density=PACKED_DENSITIES,
                rseed=RETRAIN_SEEDS,
                allow_missing=True,
            )
        },
        "outputs": [
            expand(METRICS, density=d, a=a, b=b, allow_missing=True)[0]
            for d, a, b in PACKED_PAIRS
        ],
        "params": {
            "pairs": lambda wildcards, input, output: packed_pairs(wildcards, input, output)
        },
        "log": f"{LOGS}/metrics/{MODEL_JOB}.log",
        "benchmark": f"{BENCH}/metrics/{MODEL_JOB}.tsv",
        "command": "python -m threeregime metrics --spec {params.spec:q} --data {input.data}"
        " --pairs {params.pairs:q} --threads {threads} > {log} 2>&1",
    }
    if PACKED
    else {
        "inputs": {
            "a": RETRAINED.replace("{rseed}", "{a}"),
            "b": RETRAINED.replace("{rseed}", "{b}"),
        },
        "outputs": [METRICS],
        "params": {"labels": lambda wildcards: labels(wildcards)},
        "log": f"{LOGS}/metrics/{CELL}/pair{{a}}-{{b}}.log",
        "benchmark": f"{BENCH}/metrics/{CELL}/pair{{a}}-{{b}}.tsv",
        "command": "python -m threeregime metrics --spec {params.spec:q} --data {input.data}"
        " --a {input.a} --b {input.b} {params.labels} --out {output}"
        " --threads {threads} > {log} 2>&1",
    }
)

# Each compute rule's log and benchmark (threeregime.views.cost reads the benchmarks, and the logs
# of the rules that run on runtime.device for the device).
JOB_FILES = {
    "prepare_data": (f"{LOGS}/prepare_data.log", f"{BENCH}/prepare_data.tsv"),
    "dense_train": (
        f"{LOGS}/dense/{DENSE_RUN}/seed{{seed}}.log",
        f"{BENCH}/dense_train/{DENSE_RUN}/seed{{seed}}.tsv",
    ),
    "rewind": (
        f"{LOGS}/rewind/{KNOB}-{{temperature}}/seed{{seed}}.log",
        f"{BENCH}/rewind/{KNOB}-{{temperature}}/seed{{seed}}.tsv",
    ),
    "prune": (PRUNE_JOB["log"], PRUNE_JOB["benchmark"]),
    "retrain": (RETRAIN_JOB["log"], RETRAIN_JOB["benchmark"]),
    "metrics": (METRICS_JOB["log"], METRICS_JOB["benchmark"]),
}


def with_ancestors(start, parent):
    """``start`` and every ancestor ``parent`` names (the epochs knob's earlier checkpoints, an
    iterative pruning's earlier levels)."""
    links = [start]
    while (start := parent(start)) is not None:
        links.append(start)
    return links


def job_records(cells, extra_seeds=None, cfg=CFG):
    """The benchmark of every compute job the metrics of ``cells`` ((temperature, density)
    pairs) are computed from, with every dense seed of the config and a cell's
    ``extra_seeds`` ("t/d" -> seeds, an adaptive plan's replicates), and the log of each such job
    that runs on runtime.device: what collect's cost table reads. Declared as collect's inputs
    under a storage provider, where a job sees only its declared files. ``cfg``: the setup's
    experiment under prune.setups."""
    extra_seeds = extra_seeds or {}
    setup = {"setup": cfg.setup} if SETUPS else {}

    def seeds_of(t, d):
        return [str(s) for s in [*CFG.seeds.dense, *extra_seeds.get(f"{t}/{d}", [])]]

    # pruned densities per (temperature, seed); the epochs knob's earlier checkpoints only train
    densities = {
        (a, s): set()
        for t, d in cells
        for s in seeds_of(t, d)
        for a in with_ancestors(t, cfg.dense_parent)
    }
    for t, d in cells:
        for s in seeds_of(t, d):
            # a job packing a dense model's retrainings needs every density's pruned model
            if cfg.runtime.retrain_pack == "temperature":
                densities[(t, s)] |= set(cfg.densities)
            densities[(t, s)] |= set(with_ancestors(d, cfg.prune_parent))
    jobs = [("prepare_data", {})]
    for t, s in sorted(densities):
        model = {"temperature": t, "seed": s}
        jobs.append(("dense_train", model))
        if cfg.retrain.rewinds_weights:
            jobs.append(("rewind", model))
        for d in sorted(densities[(t, s)]):
            jobs.append(("prune", model | setup | {"density": d}))
            measured = d in cfg.densities  # else a link of an iterative chain
            for r in RETRAIN_SEEDS if measured else [str(cfg.chain_seed)]:
                jobs.append(("retrain", model | setup | {"density": d, "rseed": r}))
    for t, d in cells:
        for s, (a, b) in itertools.product(seeds_of(t, d), cfg.retrain_pairs):
            cell = {"temperature": t, "density": d, "seed": s, "a": a, "b": b}
            jobs.append(("metrics", cell | setup))
    records = set()
    for name, wildcards in jobs:
        job_log, benchmark = JOB_FILES[name]
        records.add(benchmark.format(**wildcards))
        if name in GPU_RULES:
            records.add(job_log.format(**wildcards))
    return sorted(records)


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


LABEL_NAMES = {
    "seed": "dense_seed",
    "rseed": "retrain_seed",
    "a": "seed_a",
    "b": "seed_b",
}


def label_pairs(wildcards):
    """key=value pairs naming the cell an output belongs to (written into its JSON)."""
    return [f"knob={KNOB}"] + [
        f"{LABEL_NAMES.get(k, k)}={v}" for k, v in wildcards.items()
    ]


def labels(wildcards):
    """--label flags naming the cell an output belongs to (written into its JSON)."""
    return " ".join(f"--label {p}" for p in label_pairs(wildcards))


def packed_pairs(wildcards, input, output):
    """--pairs of a packed metrics job (JSON): per output, its two retrained models (the job's
    own input paths: local copies under a storage provider) and the labels the cell's own
    metrics job would write, keys in the order of the metrics path. A function of the input and
    output, so a derived param (the paths are compared already)."""
    order = list(dict.fromkeys(re.findall(r"\{(\w+)\}", METRICS)))
    # input.models as expand() lists them: density by density, retrain seed by retrain seed
    models = dict(
        zip(itertools.product(PACKED_DENSITIES, RETRAIN_SEEDS), input.models, strict=True)
    )
    jobs = []
    for (density, a, b), out in zip(PACKED_PAIRS, output, strict=True):
        cell = dict(wildcards) | {"density": density, "a": a, "b": b}
        jobs.append(
            {
                "a": models[(density, str(a))],
                "b": models[(density, str(b))],
                "out": out,
                "labels": label_pairs({k: cell[k] for k in order}),
            }
        )
    return to_json(jobs)


def all_metrics(cfg=None):
    """One metrics file per (temperature, density, dense seed, retrain pair): of the setup
    ``cfg``, or of every setup (the run's own grid without prune.setups)."""
    return [
        in_setup(METRICS, c.setup).format(**cell)
        for c in ([cfg] if cfg is not None else CONFIGS)
        for cell in grid_cells(c.metrics_axes())
    ]


# The analysis of each setup (its own tables and figures) and, under prune.setups, the
# comparison of all setups under shared thresholds (rule compare_setups).
ANALYSIS = {
    name: f"{RES}/{ANALYSIS_DIR}{name}.csv"
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
SUMMARY = f"{RES}/{ANALYSIS_DIR}summary.json"
FIGURES = {
    "phase": [
        f"{RES}/{ANALYSIS_DIR}phase_diagram.png",
        f"{RES}/{ANALYSIS_DIR}phase_diagram.pdf",
    ],
    "map": [
        f"{RES}/{ANALYSIS_DIR}regime_map.png",
        f"{RES}/{ANALYSIS_DIR}regime_map.pdf",
    ],
}
if CFG.metrics.option("hessian_esd"):  # an optional metric's figure (rule plot_esd)
    FIGURES["esd"] = [
        f"{RES}/{ANALYSIS_DIR}hessian_esd.png",
        f"{RES}/{ANALYSIS_DIR}hessian_esd.pdf",
    ]
if CFG.retrain.rewinds_weights:  # instability analysis (rule plot_instability)
    FIGURES["instability"] = [
        f"{RES}/{ANALYSIS_DIR}instability.png",
        f"{RES}/{ANALYSIS_DIR}instability.pdf",
    ]
# The comparison of the setups (threeregime.stages.compare writes these names into its folder).
COMPARISON_DIR = f"{RES}/setups"
COMPARISON = {
    "table": f"{COMPARISON_DIR}/comparison.csv",
    "labels": f"{COMPARISON_DIR}/comparison_labels.csv",
    "summary": f"{COMPARISON_DIR}/comparison.json",
    "html": f"{COMPARISON_DIR}/tables/comparison.html",
    "maps": [
        f"{COMPARISON_DIR}/comparison_maps.png",
        f"{COMPARISON_DIR}/comparison_maps.pdf",
    ],
    "difference": [
        f"{COMPARISON_DIR}/comparison_difference.png",
        f"{COMPARISON_DIR}/comparison_difference.pdf",
    ],
}


def intermediates():
    """Every dataset, dense, pruned and retrained model of the grid (of every setup)."""
    seeds = [str(s) for s in CFG.seeds.dense]
    grid = dict(temperature=CFG.temperatures, seed=seeds)
    dense = expand(DENSE, seed=seeds) if CFG.shared_dense else expand(DENSE, **grid)
    rewinds = expand(REWIND, **grid) if CFG.retrain.rewinds_weights else []
    models = []
    for c in CONFIGS:
        pruned, retrained = in_setup(PRUNED, c.setup), in_setup(RETRAINED, c.setup)
        models += expand(pruned, density=c.pruned_densities, **grid)
        models += expand(retrained, density=c.densities, rseed=RETRAIN_SEEDS, **grid)
        models += expand(
            retrained, density=chain_links(c), rseed=[str(c.chain_seed)], **grid
        )
    return [DATA] + dense + rewinds + models


def per_setup(paths):
    """``paths`` of every setup (as they are without prune.setups)."""
    return expand(paths, setup=SETUPS) if SETUPS else list(paths)


def final_outputs():
    # Intermediates and per-pair metrics are targets too: Snakemake does not rebuild a missing
    # input of an up-to-date job, so a deleted (e.g. corrupted) model would otherwise stay
    # deleted. As targets they are rebuilt, and what was computed from them reruns (mtime).
    # (Adaptive refinement runs only the planned cells: collect asks for their metrics itself.)
    comparison = [
        path
        for value in COMPARISON.values()
        for path in (value if isinstance(value, list) else [value])
    ]
    return (
        ([] if CFG.adaptive.enabled else intermediates() + all_metrics())
        + per_setup(ANALYSIS.values())
        + per_setup(FIGURES["phase"])
        + per_setup(FIGURES["map"])
        + per_setup(FIGURES.get("esd", []))
        + per_setup(FIGURES.get("instability", []))
        + per_setup([SUMMARY])
        + (comparison if COMPARE_SETUPS else [])
    )
