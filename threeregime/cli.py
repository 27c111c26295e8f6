"""The ``threeregime`` command: commands for people (validate, status, cost, unlock, fetch-data)
and one command per workflow step, which the Snakemake rules call.

A step reads a JSON ``--spec`` (the rule's ``params``: every setting that changes its output)
and its input files, and writes its outputs atomically (threeregime.stages does the work; this
module parses arguments). Runtime settings that change no result (device, threads, checkpoint
interval, compile) come separately in ``--runtime``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from threeregime.config.settings import ConfigError
from threeregime.io.files import CheckpointError

log = logging.getLogger("threeregime")
LABEL_TYPES = {"knob": str, "temperature": float, "density": float, "dense_seed": int}
LABEL_TYPES |= {"retrain_seed": int, "seed_a": int, "seed_b": int}


def _labels(pairs: list[str]) -> dict:
    labels = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        labels[key] = LABEL_TYPES.get(key, str)(value)
    return labels


def _compute(args):
    """Device, threads and fast paths for this job (torch imported here, not at CLI start)."""
    from threeregime.stages.jobs import Compute

    return Compute.start(args.runtime, args.threads, args.spec)


# ----------------------------------------------------------------------------- for people
def cmd_validate(args) -> None:
    from threeregime.config.load import load_config, merge_configs, read_config_file

    source = ", ".join(args.config)
    try:
        cfg = load_config(merge_configs(*(read_config_file(p) for p in args.config)), source=source)
    except ConfigError as exc:
        if len(args.config) == 1 and "is a required property" in str(exc):
            raise ConfigError(
                f"{exc} (an overlay? validate it after its base: validate BASE OVERLAY)"
            ) from None
        raise
    cells = len(cfg.temperatures) * len(cfg.densities)
    print(
        f"{source}: ok ({cfg.knob.name} x density = {len(cfg.temperatures)} x "
        f"{len(cfg.densities)} = {cells} cells, {len(cfg.seeds.dense)} dense seeds, "
        f"{len(cfg.retrain_pairs)} retrain pairs)"
    )


def cmd_status(args) -> None:
    from threeregime.config.load import load_overlays, results_dir
    from threeregime.views.status import draw, read_status, setup_folders, terminal_grid

    run_cfg = load_overlays(args.configfile)
    for cfg in run_cfg.setup_configs():  # each setup of prune.setups, or the run alone
        cells, run = read_status(cfg)
        print(terminal_grid(cfg, cells, run))
        folder = (Path(args.out) if args.out else results_dir(cfg)) / setup_folders(cfg)[1]
        for path in draw(cfg, cells, Path("."), folder):
            print(f"wrote {path}")


def cmd_cost(args) -> None:
    from threeregime.config.load import load_overlays, results_dir
    from threeregime.views.cost import project, projection_report, read_costs

    target = load_overlays(args.configfile)
    measured_cfg = load_overlays(args.measured_configfile) if args.measured_configfile else target
    folder = results_dir(measured_cfg)
    costs = read_costs(folder, len(measured_cfg.seeds.retrain), len(measured_cfg.densities))
    if costs.empty:
        raise ConfigError(f"{folder}: no benchmarked job yet (benchmarks/ is empty or missing)")
    table = project(costs, measured_cfg, target)
    print(projection_report(table, f"{folder} ({len(costs)} jobs)", target.run_name))
    if args.cores or args.profile:
        print(wall_time_report(args, target, costs, table))


def wall_time_report(args, target, costs, table) -> str:
    """The expected wall time of the target at --cores N, or under a cluster profile's jobs."""
    import pandas as pd
    import yaml

    from threeregime.config.load import results_dir
    from threeregime.views.cost import job_units, read_local_costs
    from threeregime.views.walltime import MODEL, dependencies, dry_run, job_seconds, simulate

    cluster_jobs = 0
    if args.profile:
        profile = Path(args.profile) / "config.yaml"
        try:
            cluster_jobs = int(yaml.safe_load(profile.read_text())["jobs"])
        except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
            raise ConfigError(f"{profile}: expected a Snakemake profile with a 'jobs:' number") from None
    try:
        jobs, start_s = dry_run(args.configfile, remaining=args.remaining)
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None
    rates = dict(zip(table["rule"], table["s_per_unit"]))
    measured = pd.concat([costs, read_local_costs(results_dir(target))], ignore_index=True)
    seconds = job_seconds(jobs, measured, rates, lambda rule, keys: job_units(target, rule, keys))
    cores = args.cores or 1
    makespan = simulate(jobs, dependencies(jobs), seconds, cores, cluster_jobs)
    where = f"{cluster_jobs} cluster jobs at once ({args.profile})" if cluster_jobs else f"--cores {cores}"
    what = "the jobs still to run" if args.remaining else "every job"
    total = start_s + makespan
    return (
        f"\nexpected wall time of {what} ({len(jobs)}) at {where}: {total / 60:.1f} min "
        f"(snakemake's start {start_s:.0f} s + jobs {makespan:.0f} s; summed job time "
        f"{sum(seconds.values()) / 60:.1f} min)\nmodel: {MODEL}"
    )


def cmd_unlock(args) -> None:
    from threeregime.io.locks import unlock

    try:
        print(unlock(args.directory, force=args.force))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_fetch_data(args) -> None:
    from threeregime.compute.data import load_cifar
    from threeregime.config.settings import DataConfig

    payload = load_cifar(DataConfig(name=args.name, root=args.root, download=True))
    print(
        f"{args.name}: {len(payload['train_y'])} train / {len(payload['test_y'])} test images in {args.root}"
    )


# ----------------------------------------------------------------------------- workflow steps
def cmd_prepare_data(args) -> None:
    from threeregime.stages import jobs

    jobs.prepare_data(args.spec, args.location, args.out)


def cmd_dense(args) -> None:
    from threeregime.stages import jobs

    jobs.dense(args.spec, args.data, args.init, args.out, _compute(args))


def cmd_rewind(args) -> None:
    from threeregime.stages import jobs

    jobs.rewind(args.spec, args.data, args.out, _compute(args))


def cmd_prune(args) -> None:
    from threeregime.stages import jobs

    try:
        specs = json.loads(args.spec)
    except ValueError as exc:
        raise ConfigError(f"prune --spec: not JSON ({exc})") from None
    specs = specs if isinstance(specs, list) else [specs]  # packed: one spec per --out
    if len(specs) != len(args.out) or len(set(args.out)) < len(args.out):
        raise ConfigError(
            f"prune: expected one spec per distinct --out path, got {len(specs)} for {args.out}"
        )
    for spec, out in zip(specs, args.out):
        jobs.prune(json.dumps(spec), args.dense, out, args.data)


def cmd_retrain(args) -> None:
    from threeregime.stages import jobs

    if len({out for _, out, _ in args.run}) < len(args.run):
        raise ConfigError(f"two --run flags write the same output ({args.run})")
    jobs.retrain(args.spec, args.data, args.run, args.rewind, _compute(args))


def cmd_metrics(args) -> None:
    from threeregime.stages import jobs

    compute, pairs = _compute(args), metrics_pairs(args)
    for number, pair in enumerate(pairs, 1):
        if len(pairs) > 1:
            log.info("pair %d of %d -> %s", number, len(pairs), pair["out"])
        jobs.pair(args.spec, args.data, pair["a"], pair["b"], _labels(pair["labels"]), pair["out"], compute)


def metrics_pairs(args) -> list[dict]:
    """The pairs a metrics job measures: --a, --b, --label, --out (one), or --pairs, a JSON list
    of {"a", "b", "out", "labels": ["key=value", ...]} measured in one process (the workflow's
    runtime.retrain_pack: temperature)."""
    if not args.pairs:
        if not (args.a and args.b and args.out):
            raise ConfigError("metrics: give --a, --b and --out (one pair), or --pairs")
        return [{"a": args.a, "b": args.b, "out": args.out, "labels": args.label}]
    keys = {"a", "b", "out", "labels"}
    try:
        pairs = json.loads(args.pairs)
    except ValueError:
        pairs = None
    if (
        not pairs
        or not isinstance(pairs, list)
        or not all(isinstance(p, dict) and set(p) == keys for p in pairs)
    ):
        raise ConfigError(
            f"metrics --pairs: expected a non-empty JSON list of objects with keys {sorted(keys)}"
        )
    if len({p["out"] for p in pairs}) < len(pairs):
        raise ConfigError("metrics --pairs: two pairs write the same output")
    return pairs


def cmd_collect(args) -> None:
    from threeregime.stages.collect import collect, metrics_paths

    paths = metrics_paths(args.pattern, json.loads(args.grid), args.plan)
    collect(paths, args.models_csv, args.metrics, args.cells)
    if args.cost:
        from threeregime.views.cost import write_cost

        costs = write_cost(Path(args.results), json.loads(args.grid), args.cost, args.cost_html)
        log.info("cost of %d benchmarked jobs -> %s", len(costs), args.cost)


def cmd_classify(args) -> None:
    from threeregime.config.experiment import Grid
    from threeregime.config.specs import regime_config_from_spec
    from threeregime.stages.classify import TABLES, classify

    cfg = regime_config_from_spec(json.loads(args.spec)["regimes"])
    outputs = {name: getattr(args, name) for name in TABLES}
    grid = Grid(**json.loads(args.grid)) if args.grid else None  # adaptive: infer the rest
    classify(args.cells, args.metrics, cfg, outputs, args.summary, args.html_dir, grid, described(args))


def cmd_adaptive_plan(args) -> None:
    from threeregime.stages.plan import plan

    plan(args.round, json.loads(args.spec), args.previous, args.metrics, args.out)


def cmd_compare(args) -> None:
    from threeregime.stages.compare import compare, run_folder

    folders = [run_folder(run) for run in args.runs]
    out = args.out or f"results/compare/{'-vs-'.join(Path(f).name for f in folders)}"
    comparison = compare(folders, out)
    t = comparison.thresholds
    print(f"shared thresholds: eps {t.eps:.4g}, CKA cut {t.cka_cut:.4g} ({len(folders)} runs pooled)")
    for pair in comparison.summary["pairs"]:
        print(
            f"{pair['run_a']} vs {pair['run_b']}: {pair['differing']} of {pair['common_cells']} shared cells "
            f"differ, {pair['differing_confident']} of them with p >= {comparison.summary['confident_at']:g}"
        )
    print(
        f"wrote {out}/comparison.csv, comparison_maps.png, comparison_difference.png, tables/comparison.html"
    )


def described(args) -> dict | None:
    """--describe: what the run is (run, setup, knob, model, data, method), for titles and the
    summary; None without it."""
    return json.loads(args.describe) if args.describe else None


def cmd_plot(args) -> None:
    from threeregime.stages.figures import regime_figures

    regime_figures(
        args.spec, args.regimes, args.selection, args.boundaries, args.phase, args.map, described(args)
    )


def cmd_plot_esd(args) -> None:
    from threeregime.stages.figures import esd_figure

    esd_figure(args.spec, args.regimes, args.out, described(args))


def cmd_plot_instability(args) -> None:
    from threeregime.stages.figures import instability_figure

    instability_figure(args.spec, args.regimes, args.out, described(args))


# ----------------------------------------------------------------------------- parser
PEOPLE = {
    "validate": "check config files merged in order, as snakemake --configfile merges them",
    "status": "a running or finished grid: cells done, running, failed; progress and partial figures",
    "cost": "measured cost of the jobs run so far and a projection for a whole config",
    "unlock": "remove a killed run's locks (refuses while a run there is live)",
    "fetch-data": "download CIFAR with torchvision (the only download threeregime does)",
    "compare": "several runs' regime maps under shared thresholds, and where they differ (with p)",
}
STEPS = {
    "prepare-data": "prepare the dataset once (rule prepare_data)",
    "dense": "train one dense model (rule dense_train)",
    "rewind": "replay a dense run's first k iterations for weight rewinding (rule rewind)",
    "prune": "prune a dense model, or an iterative chain's previous level (rule prune)",
    "retrain": "retrain pruned models with their masks fixed, packed into one model (rule retrain)",
    "metrics": "all metrics of one retrain pair: LMC, CKA, each model's own (rule metrics)",
    "collect": "the run's tables from its metrics files, and its cost (rule collect)",
    "classify": "regimes, confidence, robustness, advice and model selection (rule classify)",
    "adaptive-plan": "one round of adaptive refinement (checkpoint adaptive_round)",
    "plot": "the phase diagram and the regime map (rule plot)",
    "plot-esd": "the Hessian eigenvalue density of every cell (rule plot_esd)",
    "plot-instability": "the error barrier against the temperature (rule plot_instability)",
}


def _overview() -> str:
    def block(title: str, commands: dict[str, str]) -> str:
        width = max(map(len, commands))
        return title + "\n" + "\n".join(f"  {name:<{width}}  {text}" for name, text in commands.items())

    return (
        block("commands:", PEOPLE)
        + "\n\n"
        + block("workflow steps (run by the Snakemake rules):", STEPS)
        + "\n\n`threeregime COMMAND --help` describes each one."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="threeregime",
        description="The three-regime model of network pruning: a Snakemake workflow's commands.",
        epilog=_overview(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="threeregime COMMAND [options]",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title=argparse.SUPPRESS)

    def command(name, func, *, spec=True, compute=False):
        text = {**PEOPLE, **STEPS}[name]
        p = sub.add_parser(name, help=argparse.SUPPRESS, description=text[0].upper() + text[1:] + ".")
        p.set_defaults(func=func)
        if spec:
            p.add_argument("--spec", required=True, help="JSON settings (the rule's params)")
        if compute:
            p.add_argument("--data", required=True, help="prepared dataset (prepare-data)")
            p.add_argument(
                "--runtime",
                default=os.environ.get("THREEREGIME_RUNTIME", "{}"),
                help="JSON runtime settings (default: $THREEREGIME_RUNTIME, set by the workflow)",
            )
            p.add_argument("--threads", type=int, default=1)
        return p

    p = command("validate", cmd_validate, spec=False)
    p.add_argument("config", nargs="+", help="config files, merged in order as --configfile merges them")
    p = command("status", cmd_status, spec=False)
    p.add_argument("--configfile", nargs="*", default=[], help="overlays on config.yaml, as for snakemake")
    p.add_argument("--out", default="", help="folder for progress.png, partial figures (default: the run's)")
    p = command("cost", cmd_cost, spec=False)
    p.add_argument(
        "--configfile", nargs="*", default=[], help="overlays on config.yaml, as for snakemake (the target)"
    )
    p.add_argument(
        "--measured-configfile", nargs="*", default=None,
        help="overlays naming the run whose jobs were measured (default: the target's own run)",
    )  # fmt: skip
    p.add_argument("--cores", type=int, default=0, help="also the expected wall time at snakemake --cores N")
    p.add_argument("--profile", default="", help="also the expected wall time under a cluster profile's jobs")
    p.add_argument("--remaining", action="store_true", help="wall time of the jobs not done yet only")
    p = command("unlock", cmd_unlock, spec=False)
    p.add_argument("directory", nargs="?", default=".", help="the workflow's working directory")
    p.add_argument("--force", action="store_true", help="also remove locks recorded by another host")
    p = command("fetch-data", cmd_fetch_data, spec=False)
    p.add_argument("--name", choices=["cifar10", "cifar100"], default="cifar10")
    p.add_argument("--root", default="data")

    p = command("compare", cmd_compare, spec=False)
    p.add_argument(
        "runs", nargs="+", metavar="RUN",
        help="run folders (results/<run_name>, results/<run_name>/setups/<name>) or run names; "
        "the first is the reference",
    )  # fmt: skip
    p.add_argument("--out", default="", help="folder for the comparison (default: results/compare/A-vs-B)")

    p = command("prepare-data", cmd_prepare_data)
    p.add_argument(
        "--location",
        default=os.environ.get("THREEREGIME_DATA_LOCATION", "{}"),
        help="JSON root/download of CIFAR (default: $THREEREGIME_DATA_LOCATION, set by the workflow)",
    )
    p.add_argument("--out", required=True)
    p = command("dense", cmd_dense, compute=True)
    p.add_argument("--init", default="", help="dense checkpoint to continue from (epochs knob)")
    p.add_argument("--out", required=True)
    p = command("rewind", cmd_rewind, compute=True)
    p.add_argument("--out", required=True)
    p = command("prune", cmd_prune)
    p.add_argument(
        "--dense", required=True, nargs="+", metavar="MODEL",
        help="the dense model, then (iterative pruning, past level 1) the previous level's retrained model",
    )  # fmt: skip
    p.add_argument("--data", default="", help="the dataset, for a method that calibrates on training samples")
    p.add_argument(
        "--out", required=True, nargs="+", help="pruned model(s): one per spec (--spec a JSON list packs)"
    )
    p = command("retrain", cmd_retrain, compute=True)
    p.add_argument(
        "--run", nargs=3, action="append", required=True, metavar=("PRUNED", "OUT", "SEED"),
        help="one retraining: pruned checkpoint, output, retrain seed (repeat to pack several)",
    )  # fmt: skip
    p.add_argument("--rewind", default="", help="weight rewinding: the rewind job's state at step k")
    p = command("metrics", cmd_metrics, compute=True)
    p.add_argument("--a", default="", help="retrained model (first seed of the pair)")
    p.add_argument("--b", default="", help="retrained model (second seed of the pair)")
    p.add_argument("--label", action="append", default=[], help="key=value naming the cell")
    p.add_argument("--out", default="")
    p.add_argument(
        "--pairs", default="", help='packed: JSON [{"a", "b", "out", "labels": ["k=v", ...]}, ...]'
    )
    p = command("collect", cmd_collect, spec=False)
    p.add_argument("--pattern", required=True, help="metrics file path with {temperature} ... {b}")
    p.add_argument("--grid", required=True, help="JSON axes: temperature, density, seed, pair")
    p.add_argument("--models-csv", required=True)
    p.add_argument("--metrics", required=True)
    p.add_argument("--cells", required=True)
    p.add_argument("--results", default="", help="run folder holding benchmarks/ and logs/")
    p.add_argument("--cost", default="", help="cost.csv: every job's benchmark (needs --results)")
    p.add_argument("--cost-html", default="", help="per-rule cost page for the report")
    p.add_argument("--plan", default="", help="adaptive plan JSON: collect only its cells")
    p = command("classify", cmd_classify)
    p.add_argument("--cells", required=True)
    for name in ("regimes", "robustness", "advice", "advice-cells", "selection", "boundaries", "summary"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--html-dir", default="", help="also write <dir>/<table>.html views")
    p.add_argument("--metrics", default="", help="metrics.csv: per-pair rows for the label probabilities")
    p.add_argument("--grid", default="", help="JSON temperatures, densities, reference: infer the rest")
    p.add_argument(
        "--describe", default="", help="JSON: the run, setup, knob, model, data and method titles name"
    )
    p = command("adaptive-plan", cmd_adaptive_plan)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--previous", default="", help="the previous round's plan (none: the coarse grid)")
    p.add_argument("--metrics", nargs="*", default=[], help="metrics files of the planned cells")
    p.add_argument("--out", required=True)
    p = command("plot", cmd_plot)
    p.add_argument("--regimes", required=True)
    p.add_argument("--selection", default="", help="selection.csv: mark best and picked cells")
    p.add_argument("--boundaries", default="", help="boundaries.csv: draw each boundary's interval")
    p.add_argument("--phase", nargs="+", required=True)
    p.add_argument("--map", nargs="+", required=True)
    p.add_argument(
        "--describe", default="", help="JSON: the run, setup, knob, model, data and method titles name"
    )
    p = command("plot-esd", cmd_plot_esd)
    p.add_argument("--regimes", required=True)
    p.add_argument("--out", nargs="+", required=True)
    p.add_argument(
        "--describe", default="", help="JSON: the run, setup, knob, model, data and method titles name"
    )
    p = command("plot-instability", cmd_plot_instability)
    p.add_argument("--regimes", required=True)
    p.add_argument("--out", nargs="+", required=True)
    p.add_argument(
        "--describe", default="", help="JSON: the run, setup, knob, model, data and method titles name"
    )
    return parser


EXPECTED_ERRORS = (ConfigError, CheckpointError)
# The first output of each compute job: the job holds its lock while it runs (threeregime.io.locks),
# so that a job of a killed run that is still running and its rerun never compute it together.
JOB_OUTPUT = {
    "prepare-data": lambda args: args.out,
    "dense": lambda args: args.out,
    "rewind": lambda args: args.out,
    "prune": lambda args: args.out[0],
    "retrain": lambda args: args.run[0][1],
    "metrics": lambda args: metrics_pairs(args)[0]["out"],
}


def main(argv: list[str] | None = None) -> int:
    from contextlib import nullcontext

    from threeregime.io.locks import Locked, job_lock
    from threeregime.io.logs import configure_logging

    configure_logging()
    args = build_parser().parse_args(argv)
    output = JOB_OUTPUT.get(args.command)
    try:
        with job_lock(output(args)) if output else nullcontext():
            args.func(args)
    except EXPECTED_ERRORS + (Locked,) + _domain_errors() as exc:
        print(f"threeregime {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # full disk, permissions, a vanished folder: one line naming the file
        where = f"{exc.filename}: " if exc.filename and str(exc.filename) not in str(exc) else ""
        print(f"threeregime {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _domain_errors() -> tuple[type[Exception], ...]:
    """The one-line errors of the compute layer (imported only once a command raised: their
    modules import torch, which a command for people does not need)."""
    from threeregime.compute.data import DataError
    from threeregime.compute.pack import PackError
    from threeregime.compute.prune import PruneError
    from threeregime.compute.runtime import DeviceError
    from threeregime.compute.tickets import TicketError
    from threeregime.compute.train import NonFiniteLossError

    return (DataError, PackError, PruneError, DeviceError, NonFiniteLossError, TicketError)


if __name__ == "__main__":
    sys.exit(main())
