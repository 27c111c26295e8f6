"""SGD / SAM training with fixed masks, step-wise LR schedule, per-epoch logs and resumable state.

The state after every epoch (model, optimiser, epoch, iteration, history) is all that a later
epoch depends on: the data order and augmentation of epoch ``e`` come from a generator seeded by
``(stream..., e)``. Resuming from any epoch boundary therefore reproduces an uninterrupted run
bit for bit on CPU.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from threeregime.compute.data import DeviceData, data_generator
from threeregime.compute.evaluate import evaluate_runs
from threeregime.compute.pack import Packed
from threeregime.compute.prune import MaskApplier
from threeregime.compute.runtime import Performance, set_cpu_convolutions
from threeregime.config.settings import Recipe

log = logging.getLogger("threeregime")


class NonFiniteLossError(RuntimeError):
    """Training diverged; stop rather than write garbage metrics."""


@dataclass(frozen=True)
class Schedule:
    """Iteration budget and step-wise learning rate of one recipe on one dataset."""

    recipe: Recipe
    steps_per_epoch: int

    @property
    def total_iterations(self) -> int:
        return self.recipe.iterations or self.recipe.epochs * self.steps_per_epoch

    @property
    def total_epochs(self) -> int:
        return math.ceil(self.total_iterations / self.steps_per_epoch)

    def lr_at(self, iteration: int) -> float:
        """lr x gamma^k after k milestones (fractions of the budget), like MultiStepLR."""
        passed = sum(iteration >= round(f * self.total_iterations) for f in self.recipe.lr_milestones)
        return self.recipe.lr * self.recipe.lr_gamma**passed


def make_schedule(recipe: Recipe, num_train: int) -> Schedule:
    steps = recipe.steps_per_epoch(num_train)
    if steps < 1:
        raise ValueError(f"batch_size {recipe.batch_size} exceeds the {num_train} training samples")
    return Schedule(recipe, steps)


class MomentumSGD:
    """SGD with momentum and coupled weight decay, as torch.optim.SGD (dampening 0, no Nesterov).

    Written with fused foreach ops; unlike torch.optim it does not import torch._dynamo on the
    first step, which saves about a second of start-up in every short job.
    """

    def __init__(self, params, lr: float, momentum: float, weight_decay: float):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buffers: list[torch.Tensor] | None = None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            if self.buffers is None:
                self.buffers = [g.detach().clone() for g in grads]
            else:
                torch._foreach_mul_(self.buffers, self.momentum)
                torch._foreach_add_(self.buffers, grads)
            grads = self.buffers
        torch._foreach_add_(self.params, grads, alpha=-self.lr)

    def state_dict(self) -> dict:
        return {"momentum_buffers": self.buffers}

    def load_state_dict(self, state: dict) -> None:
        buffers = state["momentum_buffers"]
        self.buffers = None if buffers is None else [b.to(p.device) for b, p in zip(buffers, self.params)]


def make_optimizer(model: nn.Module, recipe: Recipe) -> MomentumSGD:
    return MomentumSGD(model.parameters(), recipe.lr, recipe.momentum, recipe.weight_decay)


class _FrozenBatchNorm:
    """Keep BN running statistics unchanged during SAM's second forward pass."""

    def __init__(self, model: nn.Module):
        self.modules = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [m.momentum for m in self.modules]
        for m in self.modules:
            m.momentum = 0.0

    def __exit__(self, *exc):
        for m, momentum in zip(self.modules, self.saved):
            m.momentum = momentum


@torch.no_grad()
def _sam_perturb(packed: Packed, params: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """Move each run to w + rho g/||g|| (non-adaptive SAM, the norm over that run's gradient);
    return the saved weights to restore."""
    grads = [p.grad for p in params]
    factors = rho / (packed.run_norms(grads) + 1e-12)
    saved = [p.detach().clone() for p in params]
    torch._foreach_add_(params, packed.scaled(grads, factors))
    return saved


@dataclass(frozen=True)
class RunSet:
    """The runs that one :func:`train_runs` call trains together, one list entry per run.

    Run r starts from ``models[r]`` (or ``states[r]``), draws its data from ``streams[r]``, keeps
    ``masks[r]`` fixed and logs as ``tags[r]``. ``models`` may be a ``Packed`` model instead of
    a list (trained in place). None for masks, states or tags: none for any run.
    """

    models: list[nn.Module] | Packed
    streams: list[tuple[int, ...]]
    masks: list[dict[str, torch.Tensor] | None] | None = None
    states: list[dict | None] | None = None
    tags: list[str] | None = None


def train(
    model: nn.Module,
    data: DeviceData,
    recipe: Recipe,
    stream: tuple[int, ...],
    *,
    masks: dict[str, torch.Tensor] | None = None,
    state: dict | None = None,
    stop_epoch: int | None = None,
    perf: Performance = Performance(),
    eval_batch_size: int = 1000,
    on_epoch_end: Callable[[dict], None] | None = None,
    tag: str = "train",
) -> dict:
    """Train in place from ``state`` (or from the model as is) up to ``stop_epoch``.

    ``stream`` seeds the per-epoch data generators; ``masks`` stay fixed and pruned weights are
    re-zeroed after every step. Returns the final state dict (see module docstring).
    """
    callback = None if on_epoch_end is None else lambda states: on_epoch_end(states[0])
    runs = RunSet([model], [stream], [masks], [state], [tag])
    return train_runs(
        runs, data, recipe, stop_epoch=stop_epoch, perf=perf, eval_batch_size=eval_batch_size,
        on_epoch_end=callback,
    )[0]  # fmt: skip


def train_runs(
    run_set: RunSet,
    data: DeviceData,
    recipe: Recipe,
    *,
    stop_epoch: int | None = None,
    perf: Performance = Performance(),
    eval_batch_size: int = 1000,
    on_epoch_end: Callable[[list[dict]], None] | None = None,
    keep_iteration: int | None = None,
) -> list[dict]:
    """:func:`train` for several runs of one recipe at once, packed into one model
    (threeregime.compute.pack).

    Each run ends where a separate ``train`` call would. One run trains ``run_set.models[0]`` in
    place; several train a packed copy, and only the returned states hold their results. A
    ``Packed`` given instead of the list is trained in place (a benchmark's repeated passes
    then reuse one module, and so one compiled graph).

    ``keep_iteration`` k: each state also holds ``rewind``, the run's weights after k steps
    (weight rewinding's replay, threeregime.stages.jobs.rewind).
    """
    models, streams = run_set.models, run_set.streams
    runs = models.runs if isinstance(models, Packed) else len(models)
    masks, states = run_set.masks or [None] * runs, run_set.states or [None] * runs
    tags = run_set.tags or [f"train {r}" for r in range(runs)]
    if not len(streams) == len(masks) == len(states) == len(tags) == runs:
        raise ValueError(f"train_runs: {runs} models need as many streams, masks, states and tags")
    if recipe.label_noise:
        data = data.with_label_noise(recipe.label_noise, recipe.label_noise_seed)
    device = data.device
    schedule = make_schedule(recipe, data.num_train)
    set_cpu_convolutions(device, data.channels_last)
    memory_format = torch.channels_last if data.channels_last else None
    packed = models if isinstance(models, Packed) else Packed(models, memory_format)
    model = packed.model
    optimizer = make_optimizer(model, recipe)
    enforce_masks = MaskApplier(model, packed.masks(masks))
    epoch, iteration, histories = 0, 0, [[] for _ in range(runs)]
    kept = [None] * runs
    if any(s is not None for s in states):
        if any(s is None or (s["epoch"], s["iteration"]) != (states[0]["epoch"], states[0]["iteration"])
               for s in states):  # fmt: skip
            raise ValueError("train_runs: packed runs must resume from the same epoch and iteration")
        packed.load([s["model"] for s in states])
        buffers = [s["optimizer"]["momentum_buffers"] for s in states]
        if buffers[0] is not None:
            optimizer.load_state_dict({"momentum_buffers": [packed.join(list(b)) for b in zip(*buffers)]})
        epoch, iteration = states[0]["epoch"], states[0]["iteration"]
        histories = [list(s["history"]) for s in states]
    enforce_masks()

    def snapshot() -> list[dict]:
        states = _snapshots(packed, optimizer, epoch, iteration, histories)
        return states if keep_iteration is None else [s | {"rewind": k} for s, k in zip(states, kept)]

    end_epoch = schedule.total_epochs if stop_epoch is None else min(stop_epoch, schedule.total_epochs)
    forward = _compiled(model, device) if perf.compile else model
    graphed = perf.compile and device.type == "cuda"
    params = optimizer.params
    frozen_bn = _FrozenBatchNorm(model)
    log.info(
        "%s: epochs %d->%d of %d, %d steps/epoch, batch %d, lr %g, optimizer %s, device %s%s",
        tags[0] if runs == 1 else f"{runs} packed runs ({', '.join(tags)})", epoch, end_epoch,
        schedule.total_epochs, schedule.steps_per_epoch, recipe.batch_size, recipe.lr,
        recipe.optimizer, device.type, "" if runs == 1 else f", {runs} runs per step",
    )  # fmt: skip
    started = time.perf_counter()
    while epoch < end_epoch:
        epoch_start = time.perf_counter()
        model.train()
        loss_sums = torch.zeros(runs, device=device)
        errors = torch.zeros(runs, device=device, dtype=torch.long)
        seen = 0
        per_run = [
            data.train_batches(recipe.batch_size, data_generator(device, *stream, epoch), recipe.drop_last)
            for stream in streams
        ]
        # a run started mid-epoch (weight rewinding to step k) skips the batches before k
        done_in_epoch = max(0, iteration - epoch * schedule.steps_per_epoch)
        for batches in itertools.islice(zip(*per_run), done_in_epoch, None):
            if iteration >= schedule.total_iterations:
                break
            if iteration == keep_iteration and kept[0] is None:
                kept = _kept(packed, iteration)
            x = packed.inputs([b[0] for b in batches])
            y = packed.targets([b[1] for b in batches])
            optimizer.lr = schedule.lr_at(iteration)
            # An epoch's last partial batch runs eagerly: its shape would make torch.compile
            # compile the model again, with dynamic shapes, for one step an epoch.
            step_forward = forward if x.shape[0] == recipe.batch_size else model
            if graphed:  # a new step: earlier CUDA-graph outputs may be overwritten from here
                torch.compiler.cudagraph_mark_step_begin()
            with perf.autocast(device):
                logits = packed.logits(step_forward(x))
                losses = packed.losses(logits, y)
            # predictions per run: a sample's one, or one per position of a sequence model
            predictions = y[0].numel()  # (logits (R, B, classes, *positions), y (R, B, *positions))
            loss_sums += losses.detach() * predictions  # before SAM's second pass, which may
            errors += (logits.detach().argmax(2) != y).flatten(1).sum(1)  # reuse the graph's output
            seen += predictions
            optimizer.zero_grad()
            losses.sum().backward()
            if recipe.optimizer == "sam":
                saved = _sam_perturb(packed, params, recipe.sam_rho)
                enforce_masks()  # the perturbation stays inside the sparse model
                optimizer.zero_grad()
                with frozen_bn, perf.autocast(device):
                    packed.losses(packed.logits(step_forward(x)), y).sum().backward()
                with torch.no_grad():
                    torch._foreach_copy_(params, saved)
            optimizer.step()
            enforce_masks()
            iteration += 1
        epoch += 1
        tests = evaluate_runs(packed, data.eval_batches("test", eval_batch_size), perf)
        seconds = time.perf_counter() - epoch_start
        for r, history in enumerate(histories):
            train = float(loss_sums[r]) / max(seen, 1), float(errors[r]) / max(seen, 1)
            history.append(_epoch_record(tags[r], schedule, epoch, iteration, train, tests[r], seconds))
        if on_epoch_end is not None:
            on_epoch_end(snapshot())
    if iteration == keep_iteration and kept[0] is None:
        kept = _kept(packed, iteration)
    log.info(
        "%s: done at epoch %d, iteration %d, in %.1fs; last test error %s",
        ", ".join(tags), epoch, iteration, time.perf_counter() - started,
        " / ".join(f"{h[-1]['test_error']:.4f}" for h in histories) if histories[0] else "n/a",
    )  # fmt: skip
    return snapshot()


def _kept(packed: Packed, iteration: int) -> list[dict]:
    return [{"iteration": iteration, "model": state} for state in packed.states()]


def _epoch_record(
    tag: str, schedule: Schedule, epoch: int, iteration: int, train: tuple[float, float],
    test: tuple[float, float], seconds: float,
) -> dict:  # fmt: skip
    """One run's history entry and log line for an epoch; stop on a diverged run."""
    train_loss, train_error = train
    if not math.isfinite(train_loss):
        raise NonFiniteLossError(
            f"{tag}: training loss is {train_loss} at epoch {epoch} (iteration {iteration}); "
            f"the run diverged, try a lower lr than {schedule.recipe.lr}"
        )
    record = {
        "epoch": epoch,
        "iteration": iteration,
        "lr": schedule.lr_at(iteration - 1),
        "train_loss": train_loss,
        "train_error": train_error,
        "test_loss": test[0],
        "test_error": test[1],
        "seconds": seconds,
    }
    log.info(
        "%s: epoch %d/%d iter %d lr %.4g train_loss %.4f train_err %.4f test_err %.4f (%.1fs)",
        tag, epoch, schedule.total_epochs, iteration, record["lr"], train_loss, train_error,
        test[1], seconds,
    )  # fmt: skip
    return record


def _compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile; on a GPU in "reduce-overhead" mode (CUDA graphs): at batch 64 a
    PreResNet-20 step is bound by kernel launches, which graphs remove and the default mode
    does not (measurements: benchmarks/README.md)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


def _snapshots(packed: Packed, optimizer, epoch: int, iteration: int, histories: list) -> list[dict]:
    """Each run's state: everything a later epoch depends on (the data stream is re-derived
    from the epoch)."""
    buffers = optimizer.state_dict()["momentum_buffers"]
    per_run_buffers = [None] * packed.runs if buffers is None else list(zip(*map(packed.split, buffers)))
    return [
        {
            "model": model_state,
            "optimizer": {"momentum_buffers": None if b is None else list(b)},
            "epoch": epoch,
            "iteration": iteration,
            "history": list(history),
        }
        for model_state, b, history in zip(packed.states(), per_run_buffers, histories)
    ]
