"""The workflow's compute jobs: dense training, weight rewinding's replay, pruning, retraining of
pruned models, metrics of a pair.

Each reads its JSON spec (every setting that changes the output; typed by
threeregime.config.specs) and its input files, computes where :class:`Compute` says, records the
numeric environments of its lineage and writes its outputs atomically. The CLI only parses
arguments; the work is done by threeregime.compute: resume (resumable training), checkpoints
(model files), landscape (the metrics).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict, dataclass

import torch

from threeregime.compute.checkpoints import (
    environments,
    load,
    load_dataset,
    model_from,
    same_masks,
    save_model,
    warn_if_mixed,
)
from threeregime.compute.environments import merge_environments
from threeregime.compute.landscape import model_metrics, pair_metrics, summarize_test_error
from threeregime.compute.models import init_model
from threeregime.compute.prune import retrained_density
from threeregime.compute.resume import ResumableJob, fingerprint, train_resumable
from threeregime.compute.runtime import (
    Performance,
    job_performance,
    job_runtime,
    numeric_environment,
    place,
)
from threeregime.compute.train import RunSet
from threeregime.config.settings import ConfigError, RuntimeConfig
from threeregime.config.specs import DenseSpec, MetricsSpec, PruneSpec, RetrainSpec, to_json
from threeregime.io.files import CheckpointError, save_checkpoint, write_json

log = logging.getLogger("threeregime")


@dataclass(frozen=True)
class Compute:
    """Where and how a job computes: runtime settings, device, threads and numeric fast paths."""

    runtime: RuntimeConfig
    device: torch.device
    threads: int
    perf: Performance

    @classmethod
    def start(cls, runtime_json: str, threads: int, spec_json: str) -> Compute:
        """Set up the process for a job with this runtime and spec (device, threads, TF32 and
        convolution flags)."""
        runtime, device = job_runtime(runtime_json, threads)
        return cls(runtime, device, threads, job_performance(json.loads(spec_json), runtime, device))

    def environment(self) -> dict:
        """What decides the job's last bits besides config and seeds (recorded in its outputs)."""
        return numeric_environment(self.device, self.threads, self.perf)


def prepare_data(spec_json: str, location_json: str, out: str) -> None:
    """The dataset, prepared once (generated, or read from torchvision's files) and stored as
    plain tensors that every later job loads onto its device."""
    from threeregime.compute.data import prepare_dataset
    from threeregime.config.settings import DataConfig

    payload = prepare_dataset(DataConfig(**json.loads(spec_json), **json.loads(location_json)))
    save_checkpoint(out, payload, "dataset")
    log.info("dataset: %d train, %d test samples -> %s", len(payload["train_y"]), len(payload["test_y"]), out)


def _initialised(spec: DenseSpec, data, compute: Compute):
    """The dense run's freshly initialised model (its seed), on the job's device."""
    model = init_model(spec.model, data.in_channels, data.num_classes, spec.seed)
    return place(model, compute.device, compute.perf, data.image)


def dense(spec_json: str, data_path: str, init: str, out: str, compute: Compute) -> None:
    """Train one dense model (from ``init``, a dense checkpoint, if given: the epochs knob)."""
    spec = DenseSpec.parse(spec_json)
    data = load_dataset(data_path, compute.device, compute.perf.channels_last)
    model = _initialised(spec, data, compute)
    environment = compute.environment()
    state, inputs, lineage = None, [data_path], [environment]
    if init:
        start = load(init, "dense")
        state = start["state"]
        inputs.append(init)
        lineage = merge_environments(lineage, environments(start))
        warn_if_mixed(init, lineage)
    job = ResumableJob([out], fingerprint(spec_json, *inputs), environment, compute.runtime.checkpoint_every)
    runs = RunSet([model], [(0, spec.seed)], states=[state], tags=[f"dense seed={spec.seed}"])
    (final,) = train_resumable(job, runs, data, spec.recipe, stop_epoch=spec.stop_epoch, perf=compute.perf)
    record = json.loads(spec_json)
    save_model(out, "dense", final, asdict(spec.model), data, spec=record, environments=lineage)
    job.finished()


def rewind(spec_json: str, data_path: str, out: str, compute: Compute) -> None:
    """Weight rewinding's start: the dense run's first ``rewind_step`` iterations replayed (same
    initialisation, recipe, data order and label noise), so the state at k is the dense run's
    own without the dense job keeping it, and a new k never retrains the dense model. It
    trains to the end of k's epoch (at most one epoch more than k) and keeps the state at k."""
    from threeregime.compute.train import make_schedule, train_runs

    spec = DenseSpec.parse(spec_json)
    step, recipe = spec.rewind_step, spec.recipe
    data = load_dataset(data_path, compute.device, compute.perf.channels_last)
    model = _initialised(spec, data, compute)
    total = make_schedule(recipe, data.num_train).total_iterations
    if step > total:
        raise ConfigError(f"rewind_step: {step} is past the dense run's {total} iterations")
    runs = RunSet([model], [(0, spec.seed)], tags=[f"rewind seed={spec.seed} step={step}"])
    epochs = recipe.epochs_to_reach(step, data.num_train)
    (final,) = train_runs(runs, data, recipe, stop_epoch=epochs, keep_iteration=step, perf=compute.perf)
    record = json.loads(spec_json)
    payload = {"rewind": final["rewind"], "spec": record, "environments": [compute.environment()]}
    save_checkpoint(out, payload, "rewind")
    log.info("kept the state at iteration %d (epoch %d of the replay)", step, epochs)


def prune(spec_json: str, models: list[str], out: str, data_path: str = "") -> None:
    """Prune the dense model (``models[0]``), or under iterative pruning the previous level's
    retrained model (``models[1]``), to the spec's density and granularity; apply a
    lottery-ticket control. A method that calibrates on training inputs (Wanda) reads its first
    ``calibration_samples`` from the dataset (``data_path``). Records each layer's kept count."""
    from threeregime.compute.prune import (
        apply_masks,
        check_nested,
        compute_masks,
        kept_counts,
        mask_density,
    )
    from threeregime.compute.tickets import control_seed, fresh_weights, random_masks
    from threeregime.registry.pruning import CALIBRATION_SAMPLES, PRUNING_METHODS

    spec = PruneSpec.parse(spec_json)
    if len(models) > 2:
        raise ConfigError(f"prune --dense: a dense model and at most one previous level, got {models}")
    dense = load(models[0], "dense")
    previous = models[1] if len(models) == 2 else None  # iterative pruning: level l-1
    source = load(previous, "retrain") if previous else dense
    model = model_from(source, source=previous or models[0])
    inputs = None
    if spec.method in PRUNING_METHODS and PRUNING_METHODS[spec.method].calibration:
        if not data_path:
            raise ConfigError(f"prune: method {spec.method} calibrates on training samples; give --data")
        samples = spec.settings[CALIBRATION_SAMPLES]
        dataset = _dataset(data_path, torch.device("cpu"), False)  # read once for a packed job's densities
        inputs, _ = next(dataset.eval_batches("train", samples, samples))
        log.info("calibration: the first %d training samples of %s", len(inputs), data_path)
    masks = compute_masks(
        model, spec.density, spec.method, spec.settings, spec.granularity, spec.min_layer_weights, inputs
    )
    if previous:
        check_nested(masks, source["masks"], spec.method)
        log.info("level %d: pruning %s (level %d)", spec.level, previous, spec.level - 1)
    control = spec.control
    seed = control_seed(dense["spec"]["seed"], spec.density)
    if control == "random_mask":
        masks = random_masks(masks, seed)
    elif control == "reinit":
        shape = (dense["model_cfg"], dense["in_channels"], dense["num_classes"])
        model.load_state_dict(fresh_weights(*shape, seed))
    if control != "none":
        log.info("lottery-ticket control %s (seed %d)", control, seed)
    apply_masks(model, masks)
    achieved, kept = mask_density(masks), kept_counts(masks)
    log.info("pruned with %s (%s) to density %.5f (target %g)", spec.method, spec.granularity,
             achieved, spec.density)  # fmt: skip
    for name, mask in masks.items():
        size = mask.numel()
        log.info("  %-40s kept %8d of %8d (density %.4f)", name, kept[name], size, kept[name] / size)
    payload = {key: dense[key] for key in ("model_cfg", "in_channels", "num_classes")}
    payload |= {
        "model": model.state_dict(),
        "environments": environments(source),
        "reinit": control == "reinit",  # weight rewinding then keeps these fresh weights
        "masks": masks,
        "kept": kept,  # the density audit: weights each layer keeps
        "spec": json.loads(spec_json),
        "density_actual": achieved,
        "dense_history": dense["state"]["history"],  # the matching criterion's reference
    }
    save_checkpoint(out, payload, "pruned")


def retrain(
    spec_json: str, data_path: str, run_flags: list[list[str]], rewind_path: str, compute: Compute
) -> None:
    """Retrain pruned models with masks fixed, one ``[pruned, out, seed]`` per run, all runs
    packed into one model (threeregime.compute.pack); weight rewinding starts from ``rewind_path``."""
    runs = [(pruned, out, int(seed)) for pruned, out, seed in run_flags]
    spec = RetrainSpec.parse(spec_json)
    device, perf = compute.device, compute.perf
    data = load_dataset(data_path, device, perf.channels_last)
    sources = {path: load(path, "pruned") for path, _, _ in runs}  # each file read once
    pruned_of_run = [sources[path] for path, _, _ in runs]
    environment = compute.environment()
    lineages = {path: merge_environments([environment], environments(p)) for path, p in sources.items()}
    for path, lineage in lineages.items():
        warn_if_mixed(path, lineage)
    recipe, step = spec.recipe, spec.rewind_step
    starts, inputs = None, [data_path, *sources]  # from the pruned weights (LR rewinding, fine-tuning)
    if step is not None:  # weight rewinding: from the dense weights at step k
        from threeregime.compute.tickets import rewind_state

        if not rewind_path:
            raise ConfigError(f"retrain: weight rewinding to step {step} needs --rewind")
        kept = load(rewind_path, "rewind")
        steps = recipe.steps_per_epoch(data.num_train)
        starts = [rewind_state(kept, rewind_path, step, steps, pruned) for pruned in pruned_of_run]
        inputs.append(rewind_path)
        lineages = {path: merge_environments(lin, environments(kept)) for path, lin in lineages.items()}
    record = json.loads(spec_json)
    identity = fingerprint(to_json({"spec": record, "runs": run_flags}), *inputs)
    job = ResumableJob([out for _, out, _ in runs], identity, environment, compute.runtime.checkpoint_every)
    run_set = RunSet(
        models=[model_from(sources[path], device, perf, data.image, path) for path, _, _ in runs],
        streams=[(1, seed) for _, _, seed in runs],
        masks=[{name: m.to(device) for name, m in pruned["masks"].items()} for pruned in pruned_of_run],
        states=starts,
        tags=[
            f"retrain density={pruned['spec']['density']:g} seed={seed}"
            for pruned, (_, _, seed) in zip(pruned_of_run, runs)
        ],
    )
    finals = train_resumable(job, run_set, data, recipe, perf=perf)
    from threeregime.compute.prune import nonzero_counts

    for pruned, (path, out, seed), final in zip(pruned_of_run, runs, finals):
        final.pop("optimizer")  # not needed downstream; the resume file held it
        kept = nonzero_counts(final["model"], pruned["masks"], out)  # the density audit
        save_model(
            out, "retrain", final, pruned["model_cfg"], data, masks=pruned["masks"],
            spec=record | {"seed": seed}, density_actual=pruned["density_actual"], kept=kept,
            environments=lineages[path], dense_history=pruned.get("dense_history"),
        )  # fmt: skip
    job.finished()


@functools.lru_cache(maxsize=1)
def _dataset(path: str, device: torch.device, channels_last: bool):
    """The dataset, read once per process: a packed job prunes many densities (Wanda's
    calibration samples) or measures many pairs on it."""
    return load_dataset(path, device, channels_last)


def pair(spec_json: str, data_path: str, a_path: str, b_path: str, labels: dict, out: str, compute: Compute):
    """All metrics of one retrain pair of one pruned model: LMC, CKA, and both models' own;
    ``labels`` (knob, temperature, density, seeds) name the cell in the output."""
    settings = MetricsSpec.parse(spec_json).metrics
    device, perf = compute.device, compute.perf
    data = _dataset(data_path, device, perf.channels_last)
    a, b = load(a_path, "retrain"), load(b_path, "retrain")
    lineage = merge_environments([compute.environment()], environments(a), environments(b))
    warn_if_mixed(f"{a_path} / {b_path}", lineage)
    if not same_masks(a, b):
        raise CheckpointError(f"{a_path} and {b_path}: not retrainings of the same pruned model")
    started = time.perf_counter()
    model_a = model_from(a, device, perf, data.image, a_path)
    model_b = model_from(b, device, perf, data.image, b_path)
    result = dict(labels)
    result["models"] = [
        {"retrain_seed": result[f"seed_{side}"]}
        | model_metrics(payload, model, data, settings, perf)
        | retrained_density(payload, path)
        for side, payload, model, path in (("a", a, model_a, a_path), ("b", b, model_b, b_path))
    ]
    result["chance_error"] = 1 - 1 / data.num_classes  # a collapsed cell's test error
    result |= pair_metrics(model_a, model_b, a["model"], b["model"], data, settings, perf)
    if a.get("dense_history"):  # pruned before the dense history was kept: no matching verdict
        dense = summarize_test_error(a["dense_history"], settings.test_error_last)
        result["dense_test_error"] = dense["test_error"]
    result["seconds"] = time.perf_counter() - started
    result["environments"] = lineage
    write_json(out, result)
    log.info("pair: mc %.4f (at t=%.2f), CKA softmax %.4f, logits %.4f in %.1fs",
             result["mc"], result["mc_t"], result["cka_softmax"], result["cka_logits"],
             result["seconds"])  # fmt: skip
    for model in result["models"]:
        log.info("model %s", model)
