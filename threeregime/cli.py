"""Command line entry points, one per workflow stage; the Snakemake rules only call these.

Each command reads a JSON ``--spec`` (the rule's ``params``: every setting that changes the
output), its input files, and writes its outputs atomically. Runtime settings that do not change
results (device, threads, checkpoint interval, compile) come separately in ``--runtime``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from threeregime.config import ConfigError, RuntimeConfig, load_config, to_json
from threeregime.io import (
    REBUILD_ADVICE,
    CheckpointError,
    file_digest,
    load_checkpoint,
    read_json,
    save_checkpoint,
    write_csv,
    write_json,
)

log = logging.getLogger("threeregime")
LABEL_TYPES = {"knob": str, "temperature": float, "density": float, "dense_seed": int}
LABEL_TYPES |= {"retrain_seed": int, "seed_a": int, "seed_b": int}


# ----------------------------------------------------------------------------- helpers
def _labels(pairs: list[str]) -> dict:
    labels = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        labels[key] = LABEL_TYPES.get(key, str)(value)
    return labels


def _runtime(args):
    """Device, threads and fast paths for this job (torch imported here, not at CLI start)."""
    from threeregime import runtime as rt

    cfg = RuntimeConfig(**json.loads(args.runtime))
    device = rt.resolve_device(cfg.device, cfg.require_gpu)
    rt.setup(args.threads, device)
    log.info("runtime: device %s, %d threads, %s", device, args.threads, cfg)
    return cfg, device


def _load_data(path: str, device, channels_last: bool):
    from threeregime.data import DeviceData

    return DeviceData(load_checkpoint(path, "dataset"), device, channels_last)


def _performance(spec: dict, runtime: RuntimeConfig, device):
    """The job's numeric fast paths; also sets the process-wide TF32 and CPU convolution flags
    to match."""
    from threeregime.runtime import Performance, set_cpu_convolutions, set_tf32

    perf = spec.get("performance", {})
    tf32 = perf.get("tf32", False)
    set_tf32(tf32)
    set_cpu_convolutions(device, perf.get("channels_last", False))
    return Performance(perf.get("amp", "none"), perf.get("channels_last", False), runtime.compile, tf32)


def _place(model, device, perf, image: bool):
    """Move a model to the device, in channels_last memory order for image models if asked."""
    import torch

    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if perf.channels_last and image else model


def _model_from(payload: dict, device="cpu", perf=None, image: bool = False):
    """Rebuild the architecture recorded in a checkpoint and load its weights."""
    from threeregime.config import ModelConfig
    from threeregime.models import build_model
    from threeregime.runtime import Performance

    model = build_model(ModelConfig(**payload["model_cfg"]), payload["in_channels"], payload["num_classes"])
    model.load_state_dict(payload["model"])
    return _place(model, device, perf or Performance(), image)


def _train_resumable(
    outs: list[str], fingerprint: str, runtime: RuntimeConfig, environment: dict, **train_kwargs
) -> list[dict]:
    """``train_runs`` with a resume checkpoint next to ``outs[0]`` every ``checkpoint_every`` epochs.

    A later attempt of the same job (same spec, runs and inputs: same fingerprint) continues from
    the last saved epoch; the final result is identical to an uninterrupted run. An attempt in
    another numeric environment (threads, device, torch, fast paths) starts over instead, so that
    no run is computed half in one environment and half in another. The caller removes the
    resume file (:func:`_finished`) once every output is written.
    """
    from threeregime.runtime import environment_label
    from threeregime.train import train_runs

    resume = _resume_file(outs)  # temporaries of a killed write go at the next write (atomic_path)
    if resume.exists():
        try:
            saved = load_checkpoint(resume, "resume")
        except CheckpointError as exc:
            log.warning("%s; starting over", exc)
            saved = None
        if saved is not None and "states" not in saved:
            log.warning("ignoring %s: written by an older threeregime (one run per file)", resume)
        elif saved is not None and saved["fingerprint"] == fingerprint:
            if saved.get("environment") != environment:
                was = environment_label(saved["environment"]) if saved.get("environment") else "unknown"
                log.warning(
                    "NOT resuming from %s: it was computed under [%s], this job runs under [%s]; "
                    "starting over so that the run is computed in one environment",
                    resume, was, environment_label(environment),
                )  # fmt: skip
            else:
                train_kwargs["states"] = saved["states"]
                log.info("resuming from %s at epoch %d", resume, saved["states"][0]["epoch"])
        elif saved is not None:
            log.warning("ignoring %s: it was built from other settings or inputs", resume)

    def checkpoint(states: list[dict]) -> None:
        if states[0]["epoch"] % runtime.checkpoint_every == 0:
            payload = {"fingerprint": fingerprint, "states": states, "environment": environment}
            save_checkpoint(resume, payload, "resume")

    return train_runs(on_epoch_end=checkpoint, **train_kwargs)


def _resume_file(outs: list[str]) -> Path:
    """A job's one resume checkpoint, next to its first output (all its runs in it)."""
    return Path(f"{outs[0]}.resume")


def _finished(outs: list[str]) -> None:
    _resume_file(outs).unlink(missing_ok=True)


def _fingerprint(spec: str, *paths: str) -> str:
    return to_json({"spec": json.loads(spec), "inputs": [file_digest(p) for p in paths]})


# ----------------------------------------------------------------------------- commands
def cmd_validate(args) -> None:
    """Check config files merged in order, as ``snakemake --configfile a b`` merges them."""
    from threeregime.config import merge_configs, read_config_file

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


def cmd_unlock(args) -> None:
    """Remove a killed run's Snakemake locks, refusing while a Snakemake may still run there."""
    from threeregime.locks import unlock

    try:
        print(unlock(args.directory, force=args.force))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def cmd_fetch_data(args) -> None:
    """Download CIFAR with torchvision (the only place the project downloads anything)."""
    from threeregime.config import DataConfig
    from threeregime.data import load_cifar

    payload = load_cifar(DataConfig(name=args.name, root=args.root, download=True))
    print(
        f"{args.name}: {len(payload['train_y'])} train / {len(payload['test_y'])} test images in {args.root}"
    )


def cmd_prepare_data(args) -> None:
    from threeregime.config import DataConfig
    from threeregime.data import prepare_dataset

    payload = prepare_dataset(DataConfig(**json.loads(args.spec), **json.loads(args.location)))
    save_checkpoint(args.out, payload, "dataset")
    log.info(
        "dataset: %d train, %d test samples -> %s",
        len(payload["train_y"]),
        len(payload["test_y"]),
        args.out,
    )


def cmd_dense(args) -> None:
    from threeregime.config import ModelConfig, recipe_from_spec
    from threeregime.models import init_model
    from threeregime.runtime import merge_environments, numeric_environment

    runtime, device = _runtime(args)
    spec = json.loads(args.spec)
    perf = _performance(spec, runtime, device)
    data = _load_data(args.data, device, perf.channels_last)
    model = init_model(ModelConfig(**spec["model"]), data.in_channels, data.num_classes, spec["seed"])
    model = _place(model, device, perf, data.image)
    environment = numeric_environment(device, args.threads, perf)
    state, inputs, lineage = None, [args.data], [environment]
    if args.init:
        init = load_checkpoint(args.init, "dense")
        state = init["state"]
        inputs.append(args.init)
        lineage = merge_environments(lineage, _environments(init))
        _warn_if_mixed(args.init, lineage)
    recipe = recipe_from_spec(spec["recipe"])
    (final,) = _train_resumable(
        [args.out],
        _fingerprint(args.spec, *inputs),
        runtime,
        environment,
        models=[model],
        data=data,
        recipe=recipe,
        streams=[(0, spec["seed"])],
        states=[state],
        stop_epoch=spec["stop_epoch"],
        keep_iteration=spec.get("rewind_step"),
        perf=perf,
        tags=[f"dense seed={spec['seed']}"],
    )
    if spec.get("rewind_step") is not None and final.get("rewind") is None:
        raise ConfigError(
            f"retrain.rewind_step: {spec['rewind_step']} is past this dense run's "
            f"{final['iteration']} iterations"
        )
    _save_model(args.out, "dense", final, spec["model"], data, spec=spec, environments=lineage)
    _finished([args.out])


def _environments(payload: dict) -> list[dict]:
    """The numeric environments a checkpoint was computed in (none recorded before 0.2)."""
    return payload.get("environments", [])


def _warn_if_mixed(source: str, lineage: list[dict]) -> None:
    from threeregime.runtime import environment_label

    if len(lineage) > 1:
        log.warning(
            "%s was computed under [%s]; this job continues it under [%s]: the result mixes "
            "numeric environments (reported by collect)",
            source, "; ".join(map(environment_label, lineage[1:])), environment_label(lineage[0]),
        )  # fmt: skip


def _save_model(out: str, kind: str, state: dict, model_cfg: dict, data, **extra) -> None:
    payload = {
        "state": state,
        "model": state["model"],
        "model_cfg": model_cfg,
        "in_channels": data.in_channels,
        "num_classes": data.num_classes,
        **extra,
    }
    save_checkpoint(out, payload, kind)


def cmd_prune(args) -> None:
    from threeregime.prune import apply_masks, check_nested, compute_masks, layer_densities, mask_density
    from threeregime.tickets import control_seed, fresh_weights, random_masks

    spec = json.loads(args.spec)
    if len(args.dense) > 2:
        raise ConfigError(f"prune --dense: a dense model and at most one previous level, got {args.dense}")
    dense = load_checkpoint(args.dense[0], "dense")
    previous = args.dense[1] if len(args.dense) == 2 else None  # iterative pruning: level l-1
    source = load_checkpoint(previous, "retrain") if previous else dense
    model = _model_from(source)
    masks = compute_masks(model, spec["density"], spec["method"], spec)
    if previous:
        check_nested(masks, source["masks"], spec["method"])
        log.info("level %d: pruning %s (level %d)", spec["level"], previous, spec["level"] - 1)
    rewind = dense["state"].get("rewind")
    control = spec.get("control", "none")
    seed = control_seed(dense["spec"]["seed"], spec["density"])
    if control == "random_mask":
        masks = random_masks(masks, seed)
    elif control == "reinit":
        fresh = fresh_weights(dense["model_cfg"], dense["in_channels"], dense["num_classes"], seed)
        model.load_state_dict(fresh)
        rewind = None if rewind is None else {"iteration": rewind["iteration"], "model": fresh}
    if control != "none":
        log.info("lottery-ticket control %s (seed %d)", control, seed)
    apply_masks(model, masks)
    achieved = mask_density(masks)
    log.info("pruned with %s to density %.5f (target %g)", spec["method"], achieved, spec["density"])
    for name, value in layer_densities(masks).items():
        log.info("  %-40s density %.4f", name, value)
    payload = {key: dense[key] for key in ("model_cfg", "in_channels", "num_classes")}
    payload |= {
        "model": model.state_dict(),
        "environments": _environments(source),
        "rewind": rewind,
        "masks": masks,
        "spec": spec,
        "density_actual": achieved,
        "dense_history": dense["state"]["history"],  # the matching criterion's reference
    }
    save_checkpoint(args.out, payload, "pruned")


def cmd_retrain(args) -> None:
    """Retrain pruned models with masks fixed: one ``--run PRUNED OUT SEED`` per retraining, all
    runs of the job packed into one model (runtime.retrain_pack; threeregime.pack)."""
    from threeregime.config import recipe_from_spec
    from threeregime.runtime import merge_environments, numeric_environment

    runs = [(pruned, out, int(seed)) for pruned, out, seed in args.run]
    if len({out for _, out, _ in runs}) < len(runs):
        raise ConfigError(f"two --run flags write the same output ({args.run})")
    runtime, device = _runtime(args)
    spec = json.loads(args.spec)
    perf = _performance(spec, runtime, device)
    data = _load_data(args.data, device, perf.channels_last)
    sources = {path: load_checkpoint(path, "pruned") for path, _, _ in runs}  # each file read once
    pruned_of_run = [sources[path] for path, _, _ in runs]
    outs = [out for _, out, _ in runs]
    environment = numeric_environment(device, args.threads, perf)
    lineages = {path: merge_environments([environment], _environments(p)) for path, p in sources.items()}
    for path, lineage in lineages.items():
        _warn_if_mixed(path, lineage)
    recipe = recipe_from_spec(spec["recipe"])
    starts = None  # from the pruned weights (LR rewinding, fine-tuning)
    if spec.get("rewind_step") is not None:  # weight rewinding: from the dense weights at step k
        from threeregime.tickets import rewind_state
        from threeregime.train import make_schedule

        steps = make_schedule(recipe, data.num_train).steps_per_epoch
        starts = [rewind_state(pruned, path, steps) for pruned, (path, _, _) in zip(pruned_of_run, runs)]
    finals = _train_resumable(
        outs,
        _fingerprint(to_json({"spec": spec, "runs": args.run}), args.data, *sources),
        runtime,
        environment,
        models=[_model_from(pruned, device, perf, data.image) for pruned in pruned_of_run],
        data=data,
        recipe=recipe,
        streams=[(1, seed) for _, _, seed in runs],
        states=starts,
        masks=[{name: m.to(device) for name, m in pruned["masks"].items()} for pruned in pruned_of_run],
        perf=perf,
        tags=[
            f"retrain density={pruned['spec']['density']:g} seed={seed}"
            for pruned, (_, _, seed) in zip(pruned_of_run, runs)
        ],
    )
    for pruned, (path, out, seed), final in zip(pruned_of_run, runs, finals):
        final.pop("optimizer")  # not needed downstream; the resume file held it
        _save_model(
            out, "retrain", final, pruned["model_cfg"], data, masks=pruned["masks"],
            spec=spec | {"seed": seed}, density_actual=pruned["density_actual"],
            environments=lineages[path], dense_history=pruned.get("dense_history"),
        )  # fmt: skip
    _finished(outs)


def _model_metrics(payload: dict, model, data, spec: dict, perf) -> dict:
    """Per-model numbers: test error (mean of the last epochs), train loss/error, Hessian."""
    from threeregime.hessian import hessian_summary
    from threeregime.metric_registry import compute_function, computed_metrics
    from threeregime.metrics import summarize_test_error
    from threeregime.train import evaluate

    masks = {name: m.to(data.device) for name, m in payload["masks"].items()}
    result = summarize_test_error(payload["state"]["history"], spec["test_error_last"])
    train_loss, train_error = evaluate(model, data.eval_batches("train", spec["eval_batch_size"]), perf)
    result |= {
        "train_loss": train_loss,
        "train_error": train_error,
        "density_actual": payload["density_actual"],
    }
    x, y = next(data.eval_batches("train", spec["hessian_samples"], spec["hessian_samples"]))
    result |= hessian_summary(
        model, x, y, masks, spec["hessian_max_iter"], spec["hessian_tol"],
        spec["hessian_probes"], spec["hessian_probe_batch"],
        deflation=spec["hessian_trace_deflation"], density=spec.get("hessian_esd", False),
    )  # fmt: skip
    for metric in computed_metrics(spec):  # registered model metrics with their own function
        result |= compute_function(metric)(model, data, spec)
    return result


def cmd_metrics(args) -> None:
    """All metrics of one retrain pair of one pruned model: LMC, CKA, and both models' own."""
    import torch

    from threeregime.metrics import linear_mode_connectivity, model_outputs, output_similarity
    from threeregime.runtime import merge_environments, numeric_environment

    runtime, device = _runtime(args)
    spec = json.loads(args.spec)
    perf = _performance(spec, runtime, device)
    data = _load_data(args.data, device, perf.channels_last)
    a, b = load_checkpoint(args.a, "retrain"), load_checkpoint(args.b, "retrain")
    environment = numeric_environment(device, args.threads, perf)
    lineage = merge_environments([environment], _environments(a), _environments(b))
    _warn_if_mixed(f"{args.a} / {args.b}", lineage)
    if a["masks"].keys() != b["masks"].keys() or any(
        not torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"]
    ):
        raise CheckpointError(f"{args.a} and {args.b}: not retrainings of the same pruned model")
    started = time.perf_counter()
    model_a, model_b = (_model_from(p, device, perf, data.image) for p in (a, b))
    result = _labels(args.label)
    result["models"] = [
        {"retrain_seed": result[f"seed_{side}"]} | _model_metrics(payload, model, data, spec, perf)
        for side, payload, model in (("a", a, model_a), ("b", b, model_b))
    ]
    samples = min(spec["cka_samples"], data.num_train)
    if samples < spec["cka_samples"]:
        log.warning(
            "CKA on all %d training samples (fewer than cka_samples=%d)",
            samples,
            spec["cka_samples"],
        )
    batches = lambda: data.eval_batches("train", spec["eval_batch_size"], samples)  # noqa: E731
    result |= output_similarity(
        model_outputs(model_a, batches(), perf), model_outputs(model_b, batches(), perf)
    )
    state_a = {k: v.to(device) for k, v in a["model"].items()}
    state_b = {k: v.to(device) for k, v in b["model"].items()}
    result |= linear_mode_connectivity(
        model_a, state_a, state_b, data, spec["lmc_points"], spec["lmc_bn_samples"],
        spec["eval_batch_size"], perf, bn_batch_size=spec.get("lmc_bn_batch_size"),
    )  # fmt: skip
    if a.get("dense_history"):  # pruned before the dense history was kept: no matching verdict
        from threeregime.metrics import summarize_test_error

        dense = summarize_test_error(a["dense_history"], spec["test_error_last"])
        result["dense_test_error"] = dense["test_error"]
    result["seconds"] = time.perf_counter() - started
    result["environments"] = lineage
    write_json(args.out, result)
    log.info("pair: mc %.4f (at t=%.2f), CKA softmax %.4f, logits %.4f in %.1fs",
             result["mc"], result["mc_t"], result["cka_softmax"], result["cka_logits"],
             result["seconds"])  # fmt: skip
    for model in result["models"]:
        log.info("model %s", model)


def cmd_collect(args) -> None:
    import pandas as pd

    from threeregime.config import grid_cells
    from threeregime.metric_registry import as_cell, pair_row
    from threeregime.regimes import aggregate_cells, environments_of
    from threeregime.runtime import environment_label

    keys = ["knob", "temperature", "density", "dense_seed"]
    rows, models = [], {}
    cells = grid_cells(json.loads(args.grid))
    if args.plan:  # adaptive refinement: only the planned cells were measured
        planned = {tuple(c) for c in read_json(args.plan)["cells"]}
        cells = [c for c in cells if (c["temperature"], c["density"]) in planned]
    paths = [args.pattern.format(**cell) for cell in cells]
    for path in paths:
        record = read_json(path)
        try:
            pair_models = record.pop("models")
            cell = {k: record[k] for k in keys}
            environment = "; ".join(environment_label(e) for e in record.pop("environments", []))
            for model in pair_models:
                models[(*cell.values(), model["retrain_seed"])] = cell | {
                    k: as_cell(v) for k, v in model.items()
                }
            pair = {k: as_cell(v) for k, v in record.items() if not k.startswith("lmc_") and k != "seconds"}
            rows.append(pair | pair_row(pair_models) | {"environment": environment or "unrecorded"})
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: not a metrics file of this workflow ({type(exc).__name__}: {exc}); {REBUILD_ADVICE}"
            ) from None
    metrics = pd.DataFrame(rows).sort_values(keys + ["seed_a", "seed_b"]).reset_index(drop=True)
    models_table = pd.DataFrame(list(models.values())).sort_values(keys + ["retrain_seed"])
    write_csv(args.models_csv, models_table.reset_index(drop=True))
    write_csv(args.metrics, metrics)
    write_csv(args.cells, aggregate_cells(metrics))
    log.info("collected %d models and %d pairs into %s", len(models_table), len(metrics), args.metrics)
    environments = environments_of(metrics)
    if len(environments) > 1:
        log.warning(
            "the table mixes %d numeric environments (see its environment column): %s",
            len(environments), " | ".join(environments),
        )  # fmt: skip
    if args.cost:
        from threeregime.cost import write_cost

        costs = write_cost(Path(args.results), json.loads(args.grid), args.cost, args.cost_html)
        log.info("cost of %d benchmarked jobs -> %s", len(costs), args.cost)


def cmd_cost(args) -> None:
    """Project the whole target config's GPU-hours from the jobs measured so far."""
    from threeregime.cost import project, projection_report, read_costs
    from threeregime.overlays import load_overlays, results_dir

    target = load_overlays(args.configfile)
    measured_cfg = load_overlays(args.measured_configfile) if args.measured_configfile else target
    folder = results_dir(measured_cfg)
    costs = read_costs(folder, len(measured_cfg.seeds.retrain), len(measured_cfg.densities))
    if costs.empty:
        raise ConfigError(f"{folder}: no benchmarked job yet (benchmarks/ is empty or missing)")
    table = project(costs, measured_cfg, target)
    print(projection_report(table, f"{folder} ({len(costs)} jobs)", target.run_name))


def cmd_status(args) -> None:
    """Cells done / running / failed / not started, progress.png and partial figures; reads
    files only, so it works while snakemake runs (no lock)."""
    from threeregime.overlays import load_overlays, results_dir
    from threeregime.status import draw, read_status, terminal_grid

    cfg = load_overlays(args.configfile)
    cells = read_status(cfg)
    print(terminal_grid(cfg, cells))
    folder = Path(args.out) if args.out else results_dir(cfg)
    for path in draw(cfg, cells, Path("."), folder):
        print(f"wrote {path}")


def cmd_classify(args) -> None:
    """Regimes, robustness, advice and model selection of the cells table (+ HTML views)."""
    import pandas as pd

    from threeregime.confidence import add_confidence
    from threeregime.config import RegimeConfig
    from threeregime.regimes import analyse
    from threeregime.report import write_html_tables

    spec = json.loads(args.spec)
    raw = spec["regimes"]
    cfg = RegimeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    result = analyse(pd.read_csv(args.cells), cfg)
    observations = pd.read_csv(args.metrics) if args.metrics else None
    add_confidence(result, observations, cfg, cfg.bootstrap)
    if args.grid:  # adaptive refinement: unmeasured cells get inferred labels
        from threeregime.adaptive import Grid, with_inferred

        grid = json.loads(args.grid)
        result["regimes"] = with_inferred(result["regimes"], Grid(**grid))
        sources = result["regimes"]["label_source"].value_counts()
        result["summary"]["label_source"] = {k: int(v) for k, v in sources.items()}
    for name in ("regimes", "robustness", "advice", "advice_cells", "selection"):
        write_csv(getattr(args, name), result[name])
    write_json(args.summary, result["summary"])
    if args.html_dir:
        write_html_tables(result, args.html_dir)
    summary = result["summary"]
    log.info("thresholds: %s", summary["thresholds"])
    log.info("regimes: %s", summary["regime_counts"])
    log.info("advice: %s", summary["advice"])
    log.info("selection: %s", summary["selection"])


def cmd_adaptive_plan(args) -> None:
    """One round of adaptive refinement: classify the cells measured so far, add the cells
    that could change the map (threeregime.adaptive)."""
    import pandas as pd

    from threeregime.adaptive import Grid, coarse_cells, pair_observation, plan_round
    from threeregime.config import RegimeConfig

    spec = json.loads(args.spec)
    grid = Grid(tuple(spec["temperatures"]), tuple(spec["densities"]), spec["reference"])
    raw = spec["regimes"]
    cfg = RegimeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    adaptive = spec["adaptive"]
    if args.previous:
        previous = [tuple(c) for c in read_json(args.previous)["cells"]]
    else:
        previous = coarse_cells(grid, adaptive["step"])
    metrics = [path for path in args.metrics if path != args.previous]  # the plan is an input too
    observations = pd.DataFrame([pair_observation(read_json(path), cfg.cka_metric) for path in metrics])
    plan = plan_round(args.round, previous, observations, grid, cfg, adaptive["budget"],
                      adaptive["min_confidence"])  # fmt: skip
    write_json(args.out, plan)
    log.info("round %d: %d cells measured, %d added (%s), %d of %d planned", args.round,
             plan["measured_before"], len(plan["added"]), ", ".join("/".join(a) for a in plan["added"]),
             len(plan["cells"]), plan["grid_cells"])  # fmt: skip


def cmd_plot(args) -> None:
    import pandas as pd

    from threeregime.config import PlotConfig
    from threeregime.plot import phase_diagram, regime_map

    spec = json.loads(args.spec)
    regimes = pd.read_csv(args.regimes)
    selection = pd.read_csv(args.selection) if args.selection else None
    cfg = PlotConfig(**spec["plot"])
    phase_diagram(regimes, cfg, args.phase)
    regime_map(regimes, cfg, args.map, selection)
    log.info("figures: %s", ", ".join(args.phase + args.map))


def cmd_plot_esd(args) -> None:
    """The Hessian eigenvalue density of every cell (metrics.hessian_esd)."""
    import pandas as pd

    from threeregime.config import PlotConfig
    from threeregime.plot import esd_diagram

    esd_diagram(pd.read_csv(args.regimes), PlotConfig(**json.loads(args.spec)["plot"]), args.out)
    log.info("figures: %s", ", ".join(args.out))


# ----------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="threeregime", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, *, spec=True, compute=False):
        p = sub.add_parser(name)
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
    p = command("unlock", cmd_unlock, spec=False)
    p.add_argument("directory", nargs="?", default=".", help="the workflow's working directory")
    p.add_argument("--force", action="store_true", help="also remove locks recorded by another host")
    p = command("fetch-data", cmd_fetch_data, spec=False)
    p.add_argument("--name", choices=["cifar10", "cifar100"], default="cifar10")
    p.add_argument("--root", default="data")
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
    p = command("prune", cmd_prune)
    p.add_argument(
        "--dense", required=True, nargs="+", metavar="MODEL",
        help="the dense model, then (iterative pruning, past level 1) the previous level's retrained model",
    )  # fmt: skip
    p.add_argument("--out", required=True)
    p = command("retrain", cmd_retrain, compute=True)
    p.add_argument(
        "--run", nargs=3, action="append", required=True, metavar=("PRUNED", "OUT", "SEED"),
        help="one retraining: pruned checkpoint, output, retrain seed (repeat to pack several)",
    )  # fmt: skip
    p = command("metrics", cmd_metrics, compute=True)
    p.add_argument("--a", required=True, help="retrained model (first seed of the pair)")
    p.add_argument("--b", required=True, help="retrained model (second seed of the pair)")
    p.add_argument("--label", action="append", default=[], help="key=value naming the cell")
    p.add_argument("--out", required=True)
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
    for name in ("regimes", "robustness", "advice", "advice-cells", "selection", "summary"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--html-dir", default="", help="also write <dir>/<table>.html views")
    p.add_argument("--metrics", default="", help="metrics.csv: per-pair rows for the bootstrap")
    p.add_argument("--grid", default="", help="JSON temperatures, densities, reference: infer the rest")
    p = command("cost", cmd_cost, spec=False)
    p.add_argument(
        "--configfile", nargs="*", default=[], help="overlays on config.yaml, as for snakemake (the target)"
    )
    p.add_argument(
        "--measured-configfile", nargs="*", default=None,
        help="overlays naming the run whose jobs were measured (default: the target's own run)",
    )  # fmt: skip
    p = command("status", cmd_status, spec=False)
    p.add_argument("--configfile", nargs="*", default=[], help="overlays on config.yaml, as for snakemake")
    p.add_argument("--out", default="", help="folder for progress.png, partial figures (default: the run's)")
    p = command("adaptive-plan", cmd_adaptive_plan)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--previous", default="", help="the previous round's plan (none: the coarse grid)")
    p.add_argument("--metrics", nargs="*", default=[], help="metrics files of the planned cells")
    p.add_argument("--out", required=True)
    p = command("plot", cmd_plot)
    p.add_argument("--regimes", required=True)
    p.add_argument("--selection", default="", help="selection.csv: mark best and picked cells")
    p.add_argument("--phase", nargs="+", required=True)
    p.add_argument("--map", nargs="+", required=True)
    p = command("plot-esd", cmd_plot_esd)
    p.add_argument("--regimes", required=True)
    p.add_argument("--out", nargs="+", required=True)
    return parser


EXPECTED_ERRORS = (ConfigError, CheckpointError)


def main(argv: list[str] | None = None) -> int:
    from threeregime.runtime import configure_logging

    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EXPECTED_ERRORS + _domain_errors() as exc:
        print(f"threeregime {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # full disk, permissions, a vanished folder: one line naming the file
        where = f"{exc.filename}: " if exc.filename and str(exc.filename) not in str(exc) else ""
        print(f"threeregime {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _domain_errors() -> tuple[type[Exception], ...]:
    from threeregime.data import DataError
    from threeregime.prune import PruneError
    from threeregime.runtime import DeviceError
    from threeregime.tickets import TicketError
    from threeregime.train import NonFiniteLossError

    return (DataError, PruneError, DeviceError, NonFiniteLossError, TicketError)


if __name__ == "__main__":
    sys.exit(main())
