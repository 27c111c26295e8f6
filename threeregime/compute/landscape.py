"""Loss-landscape metrics of retrained sparse models: test/train error, Hessian, LMC, CKA.

Definitions follow the paper (docs/method.md): LMC interpolates two retrainings of the same pruned
model at evenly spaced points, recomputes BatchNorm statistics at each point on the (unaugmented)
training set, and reports mc = m - e(u) with m the mean endpoint training error and u the point
farthest from m. mc < 0 is a barrier; mc ~ 0 is a connected pair. CKA is linear CKA of the two
models' outputs on the first training samples. A sequence model (a language model) counts every
token as one prediction: its outputs are (batch, vocabulary, tokens), and its loss, error and
CKA rows are per token.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from threeregime.compute.data import DeviceData
from threeregime.compute.evaluate import evaluate
from threeregime.compute.hessian import HessianSettings, hessian_summary
from threeregime.compute.runtime import Performance
from threeregime.config.settings import MetricsConfig
from threeregime.registry.metrics import compute_function, computed_metrics

log = logging.getLogger("threeregime")


def summarize_test_error(history: list[dict], last: int) -> dict:
    """Mean test error over the last ``last`` epochs (the paper's reported number) and the final one."""
    if not history:
        raise ValueError("empty training history: the model was never trained")
    tail = [h["test_error"] for h in history[-last:]]
    return {
        "test_error": float(np.mean(tail)),
        "test_error_final": float(history[-1]["test_error"]),
        "test_error_epochs": len(tail),
    }


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches, perf: Performance = Performance()) -> None:
    """Replace BN running statistics by sample-weighted averages over ``batches``.

    Each batch enters with momentum n_batch / n_seen, so running_mean is the exact mean over all
    samples even when the last batch is smaller (torch's cumulative mode weights batches equally).
    ``perf`` (bf16 autocast) applies to the forward passes; the statistics stay float32.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
    model.train()
    seen = 0
    for x, _ in batches:
        seen += len(x)
        for m in norms:
            m.momentum = len(x) / seen
        with perf.autocast(x.device):
            model(x)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()


def interpolate_states(state_a: dict, state_b: dict, t: float) -> dict:
    """(1 - t) a + t b for floating tensors; integer buffers (BN batch counts) come from a."""
    out = {}
    for key, a in state_a.items():
        b = state_b[key]
        out[key] = torch.lerp(a, b, t) if a.is_floating_point() else a.clone()
    return out


def mode_connectivity(errors: list[float]) -> tuple[float, int]:
    """The paper's mc = m - e(u), u = argmax_t |m - e(t)|, m = (e(0) + e(1)) / 2: (mc, u index).

    As in the paper's code (``np.argmax``), a tie goes to the first point; ties are decided with
    a relative tolerance so that floating-point rounding cannot flip the sign. Known artefact of
    the definition: on a path with no bump the endpoints tie, and mc = (e(1) - e(0)) / 2, which
    is negative when the first endpoint is worse; ``barrier_height`` has no such term.
    """
    midpoint = (errors[0] + errors[-1]) / 2
    deviations = np.array([midpoint - e for e in errors])
    size = np.abs(deviations)
    u = int(np.flatnonzero(size >= size.max() * (1 - 1e-9))[0])
    return float(deviations[u]), u


def barrier_height(errors: list[float], ts: list[float]) -> float:
    """max_t e(t) - ((1 - t) e(0) + t e(1)): the rise above the straight line between the
    endpoints (Frankle et al. 2020). 0 for a monotone or convex path, > 0 for a barrier."""
    return float(max(e - ((1 - t) * errors[0] + t * errors[-1]) for e, t in zip(errors, ts)))


def linear_mode_connectivity(
    model: nn.Module,
    state_a: dict,
    state_b: dict,
    data: DeviceData,
    points: int,
    bn_samples: int,
    batch_size: int,
    perf: Performance = Performance(),
    bn_batch_size: int | None = None,
    measure: str = "error",
) -> dict:
    """Training error/loss along the straight line between two models, BN recalibrated at each t
    in batches of ``bn_batch_size`` (None: ``batch_size``, the evaluation batch). In train mode
    each batch normalises with its own statistics, so the batch size changes what deeper layers
    see and hence the recomputed statistics; the paper's code uses 64. A model without
    BatchNorm (a transformer) is evaluated as it is. ``measure``: whether mc and the barrier
    are read from the error curve (the paper's) or the loss curve."""
    ts = np.linspace(0.0, 1.0, points)
    errors, losses = [], []
    bn_batch = bn_batch_size or batch_size
    for t in ts:
        model.load_state_dict(interpolate_states(state_a, state_b, float(t)))
        recalibrate_batchnorm(model, data.eval_batches("train", bn_batch, bn_samples), perf)
        loss, error = evaluate(model, data.eval_batches("train", batch_size), perf)
        errors.append(error)
        losses.append(loss)
    if measure not in ("error", "loss"):
        raise ValueError(f"metrics.lmc_measure: {measure!r} is neither error nor loss")
    curve = losses if measure == "loss" else errors
    mc, u = mode_connectivity(curve)
    return {
        "lmc_t": [float(t) for t in ts],
        "lmc_train_error": errors,
        "lmc_train_loss": losses,
        "mc": mc,
        "mc_t": float(ts[u]),
        "barrier": barrier_height(curve, list(ts)),
    }


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) between two n x d representations, in float64."""
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm_x = torch.linalg.matrix_norm(x.T @ x)
    norm_y = torch.linalg.matrix_norm(y.T @ y)
    return float(cross / (norm_x * norm_y))


@torch.no_grad()
def model_outputs(model: nn.Module, batches, perf: Performance = Performance()) -> torch.Tensor:
    """Logits of ``model`` (eval mode) over the batches, concatenated, as float32."""
    model.eval()
    chunks = []
    for x, _ in batches:
        with perf.autocast(x.device):
            chunks.append(model(x).float())
    return torch.cat(chunks)


def prediction_rows(outputs: torch.Tensor) -> torch.Tensor:
    """Outputs (samples, features, *positions) as one row per prediction: a classifier's as they
    are, a sequence model's (batch, classes, tokens) as (batch x tokens, classes)."""
    if outputs.dim() == 2:
        return outputs
    return outputs.movedim(1, -1).reshape(-1, outputs.shape[1])


def output_similarity(logits_a: torch.Tensor, logits_b: torch.Tensor) -> dict:
    """Linear CKA of two models' logits and softmax outputs, one row per prediction (per token
    of a sequence model); ``cka_samples`` counts the samples (sequences)."""
    rows_a, rows_b = prediction_rows(logits_a), prediction_rows(logits_b)
    return {
        "cka_logits": linear_cka(rows_a, rows_b),
        "cka_softmax": linear_cka(rows_a.softmax(1), rows_b.softmax(1)),
        "cka_samples": len(logits_a),
    }


class CrossMoments:
    """Linear CKA of two representations streamed in chunks of rows: the sums of x, y, x^T x,
    y^T y and x^T y in float64, so a representation of many rows (every token of every window)
    is never held whole. Centring uses X_c^T Y_c = X^T Y - n mean_x mean_y^T."""

    def __init__(self):
        self.n = 0
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double(), y.double()
        parts = {"x": x.sum(0), "y": y.sum(0), "xx": x.T @ x, "yy": y.T @ y, "yx": y.T @ x}
        for key, value in parts.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.n += len(x)

    def cka(self) -> float:
        s, n = self.sums, self.n
        mx, my = s["x"] / n, s["y"] / n
        xx = s["xx"] - n * torch.outer(mx, mx)
        yy = s["yy"] - n * torch.outer(my, my)
        yx = s["yx"] - n * torch.outer(my, mx)
        cross = torch.linalg.matrix_norm(yx) ** 2
        return float(cross / (torch.linalg.matrix_norm(xx) * torch.linalg.matrix_norm(yy)))


@torch.no_grad()
def final_hidden_states(model: nn.Module, x: torch.Tensor, perf: Performance = Performance()) -> torch.Tensor:
    """What the model's last Linear layer reads (a language model's lm_head: the final hidden
    state of every token; a CNN's classifier: the pooled features), one row per prediction."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    captured = []
    handle = last.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    try:
        model.eval()
        with perf.autocast(x.device):
            model(x)
    finally:
        handle.remove()
    (hidden,) = captured
    return hidden.float().reshape(-1, hidden.shape[-1])


def hidden_similarity(
    model_a: nn.Module, model_b: nn.Module, data: DeviceData, settings: MetricsConfig
) -> dict:
    """The cka_hidden metric of a retrain pair (threeregime.registry.metrics): linear CKA of the
    two models' final hidden states on the first cka_samples training samples, every token a
    row, accumulated batch by batch (:class:`CrossMoments`)."""
    samples = min(settings.cka_samples, data.num_train)
    moments = CrossMoments()
    for x, _ in data.eval_batches("train", settings.eval_batch_size, samples):
        moments.add(final_hidden_states(model_a, x), final_hidden_states(model_b, x))
    return {"cka_hidden": moments.cka()}


def perplexity_metrics(model: nn.Module, data: DeviceData, settings: MetricsConfig) -> dict:
    """The test_loss and perplexity metrics of a retrained model (threeregime.registry.metrics):
    the mean cross-entropy over the test split's predictions (a language model's every
    validation token) and its exponential."""
    loss, _ = evaluate(model, data.eval_batches("test", settings.eval_batch_size))
    return {"test_loss": loss, "perplexity": float(np.exp(loss))}


def model_metrics(
    payload: dict, model: nn.Module, data: DeviceData, settings: MetricsConfig, perf: Performance
) -> dict:
    """Per-model numbers of a retrained checkpoint (``payload``, rebuilt as ``model``): test
    error (mean of the last epochs), train loss/error, Hessian, and the registered model
    metrics with their own function that the metrics ``settings`` turn on."""
    masks = {name: m.to(data.device) for name, m in payload["masks"].items()}
    result = summarize_test_error(payload["state"]["history"], settings.test_error_last)
    batches = data.eval_batches("train", settings.eval_batch_size)
    train_loss, train_error = evaluate(model, batches, perf)
    result |= {
        "train_loss": train_loss,
        "train_error": train_error,
        "density_actual": payload["density_actual"],
    }
    x, y = next(data.eval_batches("train", settings.hessian_samples, settings.hessian_samples))
    result |= hessian_summary(model, x, y, masks, HessianSettings.from_config(settings))
    for metric in computed_metrics(settings.option):
        result |= compute_function(metric)(model, data, settings)
    return result


def pair_metrics(
    model_a: nn.Module, model_b: nn.Module, state_a: dict, state_b: dict, data: DeviceData,
    settings: MetricsConfig, perf: Performance,
) -> dict:  # fmt: skip
    """What two retrainings of one pruned model share: CKA of their outputs on the first
    ``cka_samples`` training samples, the registered pair metrics that are on (cka_hidden),
    and their linear mode connectivity (``model_a`` is overwritten along the path)."""
    samples = min(settings.cka_samples, data.num_train)
    if samples < settings.cka_samples:
        log.warning(
            "CKA on all %d training samples (fewer than cka_samples=%d)", samples, settings.cka_samples
        )
    batches = lambda: data.eval_batches("train", settings.eval_batch_size, samples)  # noqa: E731
    result = output_similarity(
        model_outputs(model_a, batches(), perf), model_outputs(model_b, batches(), perf)
    )
    for metric in computed_metrics(settings.option, scope="pair"):
        result |= compute_function(metric)(model_a, model_b, data, settings)
    state_a = {k: v.to(data.device) for k, v in state_a.items()}
    state_b = {k: v.to(data.device) for k, v in state_b.items()}
    result |= linear_mode_connectivity(
        model_a, state_a, state_b, data, settings.lmc_points, settings.lmc_bn_samples,
        settings.eval_batch_size, perf, bn_batch_size=settings.lmc_bn_batch_size,
        measure=settings.option("lmc_measure"),
    )  # fmt: skip
    return result
