"""SGD / SAM training with fixed masks, step-wise LR schedule, per-epoch logs and resumable state.

The state after every epoch (model, optimiser, epoch, iteration, history) is all that a later
epoch depends on: the data order and augmentation of epoch ``e`` come from a generator seeded by
``(stream..., e)``. Resuming from any epoch boundary therefore reproduces an uninterrupted run
bit for bit on CPU.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from threeregime.config import Recipe
from threeregime.data import DeviceData, data_generator
from threeregime.prune import MaskApplier
from threeregime.runtime import Performance

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
    steps = num_train // recipe.batch_size if recipe.drop_last else -(-num_train // recipe.batch_size)
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


@torch.no_grad()
def evaluate(model: nn.Module, batches, perf: Performance = Performance()) -> tuple[float, float]:
    """Mean cross-entropy and error rate over the given (x, y) batches, in eval mode."""
    model.eval()
    loss_sum, errors, count = None, None, 0
    for x, y in batches:
        with perf.autocast(x.device):
            logits = model(x)
        batch_loss = F.cross_entropy(logits.float(), y, reduction="sum")
        batch_errors = (logits.argmax(1) != y).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        errors = batch_errors if errors is None else errors + batch_errors
        count += len(y)
    return float(loss_sum) / count, float(errors) / count


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
def _sam_perturb(params: list[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """Move to w + rho g/||g|| (non-adaptive SAM); return the saved weights to restore."""
    grads = [p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    saved = [p.detach().clone() for p in params]
    torch._foreach_add_(params, torch._foreach_mul(grads, rho / (norm + 1e-12)))
    return saved


def train(
    model: nn.Module,
    data: DeviceData,
    recipe: Recipe,
    stream: tuple[int, ...],
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
    device = data.device
    schedule = make_schedule(recipe, data.num_train)
    optimizer = make_optimizer(model, recipe)
    enforce_masks = MaskApplier(model, masks or {})
    epoch, iteration, history = 0, 0, []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, iteration, history = state["epoch"], state["iteration"], list(state["history"])
    enforce_masks()
    end_epoch = schedule.total_epochs if stop_epoch is None else min(stop_epoch, schedule.total_epochs)
    forward = _compiled(model, device) if perf.compile else model
    graphed = perf.compile and device.type == "cuda"
    params = optimizer.params
    frozen_bn = _FrozenBatchNorm(model)
    log.info(
        "%s: epochs %d->%d of %d, %d steps/epoch, batch %d, lr %g, optimizer %s, device %s",
        tag, epoch, end_epoch, schedule.total_epochs, schedule.steps_per_epoch,
        recipe.batch_size, recipe.lr, recipe.optimizer, device.type,
    )  # fmt: skip
    started = time.perf_counter()
    while epoch < end_epoch:
        epoch_start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        errors = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        generator = data_generator(device, *stream, epoch)
        batches = data.train_batches(recipe.batch_size, generator, recipe.drop_last)
        for x, y in batches:
            if iteration >= schedule.total_iterations:
                break
            optimizer.lr = schedule.lr_at(iteration)
            if graphed:  # a new step: earlier CUDA-graph outputs may be overwritten from here
                torch.compiler.cudagraph_mark_step_begin()
            with perf.autocast(device):
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
            loss_sum += loss.detach() * len(y)  # before SAM's second pass, which may reuse
            errors += (logits.detach().argmax(1) != y).sum()  # the graph's output memory
            seen += len(y)
            optimizer.zero_grad()
            loss.backward()
            if recipe.optimizer == "sam":
                saved = _sam_perturb(params, recipe.sam_rho)
                enforce_masks()  # the perturbation stays inside the sparse model
                optimizer.zero_grad()
                with frozen_bn, perf.autocast(device):
                    F.cross_entropy(forward(x).float(), y).backward()
                with torch.no_grad():
                    torch._foreach_copy_(params, saved)
            optimizer.step()
            enforce_masks()
            iteration += 1
        epoch += 1
        train_loss, train_error = float(loss_sum) / max(seen, 1), float(errors) / max(seen, 1)
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"{tag}: training loss is {train_loss} at epoch {epoch} (iteration {iteration}); "
                f"the run diverged, try a lower lr than {recipe.lr}"
            )
        test_loss, test_error = evaluate(model, data.eval_batches("test", eval_batch_size), perf)
        record = {
            "epoch": epoch,
            "iteration": iteration,
            "lr": schedule.lr_at(iteration - 1),
            "train_loss": train_loss,
            "train_error": train_error,
            "test_loss": test_loss,
            "test_error": test_error,
            "seconds": time.perf_counter() - epoch_start,
        }
        history.append(record)
        log.info(
            "%s: epoch %d/%d iter %d lr %.4g train_loss %.4f train_err %.4f test_err %.4f (%.1fs)",
            tag, epoch, schedule.total_epochs, iteration, record["lr"], train_loss, train_error,
            test_error, record["seconds"],
        )  # fmt: skip
        if on_epoch_end is not None:
            on_epoch_end(_snapshot(model, optimizer, epoch, iteration, history))
    log.info(
        "%s: done at epoch %d, iteration %d, in %.1fs; last test error %s",
        tag, epoch, iteration, time.perf_counter() - started,
        f"{history[-1]['test_error']:.4f}" if history else "n/a",
    )  # fmt: skip
    return _snapshot(model, optimizer, epoch, iteration, history)


def _compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """torch.compile; on a GPU in "reduce-overhead" mode (CUDA graphs). At batch 64 a
    PreResNet-20 step is bound by kernel launches, which graphs remove: 2.9-3.0x the eager
    bf16 + channels_last step on an H200, where the default mode gave 0.9-1.0x
    (benchmarks/README.md)."""
    return torch.compile(model, mode="reduce-overhead" if device.type == "cuda" else None)


def _snapshot(model, optimizer, epoch: int, iteration: int, history: list) -> dict:
    """Everything a later epoch depends on (the data stream is re-derived from the epoch)."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "iteration": iteration,
        "history": list(history),
    }
