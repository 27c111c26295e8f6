"""The workflow's compute jobs: dense training, retraining of pruned models, metrics of a pair.

Each reads its JSON spec (every setting that changes the output) and its input files, computes
where :class:`Compute` says, records the numeric environments of its lineage and writes its
outputs atomically. The CLI only parses arguments; the work is done by threeregime.resume
(resumable training), threeregime.checkpoints (model files) and threeregime.metrics.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import torch

from threeregime.checkpoints import (
    environments,
    load_dataset,
    model_from,
    same_masks,
    save_model,
    warn_if_mixed,
)
from threeregime.config import ConfigError, ModelConfig, RuntimeConfig, recipe_from_spec, to_json
from threeregime.io import CheckpointError, load_checkpoint, write_json
from threeregime.metrics import model_metrics, pair_metrics
from threeregime.models import init_model
from threeregime.resume import ResumableJob, fingerprint, train_resumable
from threeregime.runtime import (
    Performance,
    job_performance,
    job_runtime,
    merge_environments,
    numeric_environment,
    place,
)
from threeregime.train import RunSet

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


def dense(spec_json: str, data_path: str, init: str, out: str, compute: Compute) -> None:
    """Train one dense model (from ``init``, a dense checkpoint, if given: the epochs knob)."""
    spec = json.loads(spec_json)
    data = load_dataset(data_path, compute.device, compute.perf.channels_last)
    model = init_model(ModelConfig(**spec["model"]), data.in_channels, data.num_classes, spec["seed"])
    model = place(model, compute.device, compute.perf, data.image)
    environment = compute.environment()
    state, inputs, lineage = None, [data_path], [environment]
    if init:
        start = load_checkpoint(init, "dense")
        state = start["state"]
        inputs.append(init)
        lineage = merge_environments(lineage, environments(start))
        warn_if_mixed(init, lineage)
    recipe = recipe_from_spec(spec["recipe"])
    job = ResumableJob([out], fingerprint(spec_json, *inputs), environment, compute.runtime.checkpoint_every)
    runs = RunSet([model], [(0, spec["seed"])], states=[state], tags=[f"dense seed={spec['seed']}"])
    (final,) = train_resumable(
        job, runs, data, recipe, stop_epoch=spec["stop_epoch"], keep_iteration=spec.get("rewind_step"),
        perf=compute.perf,
    )  # fmt: skip
    if spec.get("rewind_step") is not None and final.get("rewind") is None:
        raise ConfigError(
            f"retrain.rewind_step: {spec['rewind_step']} is past this dense run's "
            f"{final['iteration']} iterations"
        )
    save_model(out, "dense", final, spec["model"], data, spec=spec, environments=lineage)
    job.finished()


def retrain(spec_json: str, data_path: str, run_flags: list[list[str]], compute: Compute) -> None:
    """Retrain pruned models with masks fixed, one ``[pruned, out, seed]`` per run, all runs
    packed into one model (threeregime.pack)."""
    runs = [(pruned, out, int(seed)) for pruned, out, seed in run_flags]
    spec = json.loads(spec_json)
    device, perf = compute.device, compute.perf
    data = load_dataset(data_path, device, perf.channels_last)
    sources = {path: load_checkpoint(path, "pruned") for path, _, _ in runs}  # each file read once
    pruned_of_run = [sources[path] for path, _, _ in runs]
    environment = compute.environment()
    lineages = {path: merge_environments([environment], environments(p)) for path, p in sources.items()}
    for path, lineage in lineages.items():
        warn_if_mixed(path, lineage)
    recipe = recipe_from_spec(spec["recipe"])
    starts = None  # from the pruned weights (LR rewinding, fine-tuning)
    if spec.get("rewind_step") is not None:  # weight rewinding: from the dense weights at step k
        from threeregime.tickets import rewind_state
        from threeregime.train import make_schedule

        steps = make_schedule(recipe, data.num_train).steps_per_epoch
        starts = [rewind_state(pruned, path, steps) for pruned, (path, _, _) in zip(pruned_of_run, runs)]
    identity = fingerprint(to_json({"spec": spec, "runs": run_flags}), data_path, *sources)
    job = ResumableJob([out for _, out, _ in runs], identity, environment, compute.runtime.checkpoint_every)
    run_set = RunSet(
        models=[model_from(pruned, device, perf, data.image) for pruned in pruned_of_run],
        streams=[(1, seed) for _, _, seed in runs],
        masks=[{name: m.to(device) for name, m in pruned["masks"].items()} for pruned in pruned_of_run],
        states=starts,
        tags=[
            f"retrain density={pruned['spec']['density']:g} seed={seed}"
            for pruned, (_, _, seed) in zip(pruned_of_run, runs)
        ],
    )
    finals = train_resumable(job, run_set, data, recipe, perf=perf)
    for pruned, (path, out, seed), final in zip(pruned_of_run, runs, finals):
        final.pop("optimizer")  # not needed downstream; the resume file held it
        save_model(
            out, "retrain", final, pruned["model_cfg"], data, masks=pruned["masks"],
            spec=spec | {"seed": seed}, density_actual=pruned["density_actual"],
            environments=lineages[path],
        )  # fmt: skip
    job.finished()


def pair(spec_json: str, data_path: str, a_path: str, b_path: str, labels: dict, out: str, compute: Compute):
    """All metrics of one retrain pair of one pruned model: LMC, CKA, and both models' own;
    ``labels`` (knob, temperature, density, seeds) name the cell in the output."""
    spec = json.loads(spec_json)
    device, perf = compute.device, compute.perf
    data = load_dataset(data_path, device, perf.channels_last)
    a, b = load_checkpoint(a_path, "retrain"), load_checkpoint(b_path, "retrain")
    lineage = merge_environments([compute.environment()], environments(a), environments(b))
    warn_if_mixed(f"{a_path} / {b_path}", lineage)
    if not same_masks(a, b):
        raise CheckpointError(f"{a_path} and {b_path}: not retrainings of the same pruned model")
    started = time.perf_counter()
    model_a, model_b = (model_from(p, device, perf, data.image) for p in (a, b))
    result = dict(labels)
    result["models"] = [
        {"retrain_seed": result[f"seed_{side}"]} | model_metrics(payload, model, data, spec, perf)
        for side, payload, model in (("a", a, model_a), ("b", b, model_b))
    ]
    result |= pair_metrics(model_a, model_b, a["model"], b["model"], data, spec, perf)
    result["seconds"] = time.perf_counter() - started
    result["environments"] = lineage
    write_json(out, result)
    log.info("pair: mc %.4f (at t=%.2f), CKA softmax %.4f, logits %.4f in %.1fs",
             result["mc"], result["mc_t"], result["cka_softmax"], result["cka_logits"],
             result["seconds"])  # fmt: skip
    for model in result["models"]:
        log.info("model %s", model)
