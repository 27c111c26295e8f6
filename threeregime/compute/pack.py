"""Several training runs of one architecture in one set of kernels: grouped layers.

Why: a batch-64 PreResNet-20 step is bound by kernel launches on a large GPU (benchmarks/README.md);
R runs packed as R groups of every layer do R times the work per launch. Packing is exact: every
conv becomes a grouped conv with R times the groups, every BatchNorm covers R times the channels
and every Linear is a batched matmul, so group r of each layer sees only run r's channels. Each
run keeps its own weights, masks, BatchNorm statistics, data order and momentum; the packed step
is the R separate steps up to the rounding of grouped vs plain conv kernels (tests/test_pack.py).
The models' forward code must act on each channel separately between layers (activations,
pooling, residual sums, spatial means), as the project's three models do.

Every packed tensor is run-major along dim 0 (run r owns rows ``r*k : (r+1)*k``), so packing
state is ``torch.cat`` and unpacking is ``unflatten(0, (R, k))``. With one run nothing is copied:
the model itself is trained, and the reference path stays as it was.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# Layers without weights that act per channel or per element; anything else with no rule below
# cannot be packed. A Flatten of everything after the batch dimension keeps run r's features one
# contiguous block (run-major), which is what a packed Linear takes.
_CHANNELWISE = (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.Identity)
_CHANNELWISE += (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.GELU, nn.SiLU, nn.Tanh)
_CHANNELWISE += (nn.Sigmoid, nn.LeakyReLU, nn.ELU)


class PackError(ValueError):
    """A model with a layer that has no packed form."""


class PackedLinear(nn.Module):
    """R independent Linear layers; weight (R*out, in) and bias (R*out), run-major."""

    def __init__(self, in_features: int, out_features: int, runs: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.runs = in_features, out_features, runs
        self.weight = nn.Parameter(torch.empty(runs * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(runs * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_run = x.unflatten(-1, (self.runs, self.in_features))  # (B, R, in)
        weight = self.weight.unflatten(0, (self.runs, self.out_features))  # (R, out, in)
        out = torch.einsum("bri,roi->bro", per_run, weight)
        if self.bias is not None:  # in the matmul's dtype (bf16 under autocast), as nn.Linear adds it
            out = out + self.bias.unflatten(0, (self.runs, self.out_features)).to(out.dtype)
        return out.flatten(-2)


def _widened(layer: nn.Module, runs: int) -> nn.Module | None:
    """The R-run version of one layer, or None if the layer is already run-agnostic."""
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return type(layer)(
            layer.in_channels * runs, layer.out_channels * runs, layer.kernel_size, layer.stride,
            layer.padding, layer.dilation, layer.groups * runs, layer.bias is not None,
            layer.padding_mode,
        )  # fmt: skip
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return type(layer)(
            layer.num_features * runs, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
        )
    if isinstance(layer, nn.Linear):
        return PackedLinear(layer.in_features, layer.out_features, runs, layer.bias is not None)
    if isinstance(layer, _CHANNELWISE):
        return None
    if isinstance(layer, nn.Flatten) and layer.start_dim == 1 and layer.end_dim == -1:
        return None
    if any(True for _ in layer.children()):
        return None  # a container: its children are widened one by one
    raise PackError(
        f"runtime.retrain_pack: cannot pack the model's {type(layer).__name__} layer into one model "
        "with the job's other runs (conv, BatchNorm, Linear, Flatten and per-channel layers without "
        "weights have a packed form); set runtime.retrain_pack: none"
    )


def packed_module(template: nn.Module, runs: int) -> nn.Module:
    """A copy of ``template`` whose every layer holds ``runs`` runs (weights uninitialised)."""
    packed = copy.deepcopy(template)
    for parent in list(packed.modules()):
        for name, child in list(parent.named_children()):
            wide = _widened(child, runs)
            if wide is not None:
                setattr(parent, name, wide)
    return packed


class Packed:
    """R models of one architecture trained as one module (see the module docstring)."""

    def __init__(self, models: list[nn.Module], memory_format: torch.memory_format | None = None):
        if not models:
            raise ValueError("Packed needs at least one model")
        self.runs = len(models)
        self.memory_format = memory_format
        if self.runs == 1:
            self.model = models[0]
            return
        reference = models[0].state_dict()
        for index, model in enumerate(models[1:], 1):
            shapes = {k: v.shape for k, v in model.state_dict().items()}
            if type(model) is not type(models[0]) or shapes != {k: v.shape for k, v in reference.items()}:
                raise ValueError(f"Packed: model {index} is not the architecture of model 0")
        device = next(iter(reference.values())).device
        self.model = packed_module(models[0], self.runs).to(device)
        if memory_format is not None:
            self.model = self.model.to(memory_format=memory_format)
        self.load([model.state_dict() for model in models])

    # ----- state: per-run dicts <-> one packed dict -----
    def load(self, states: list[dict[str, torch.Tensor]]) -> None:
        if self.runs == 1:
            self.model.load_state_dict(states[0])
            return
        packed = {}
        self._counters = {}  # scalar buffers (BN num_batches_tracked) are kept per run as offsets
        for key, value in states[0].items():
            if value.dim() == 0:
                self._counters[key] = [state[key].clone() for state in states]
                packed[key] = value
            else:
                packed[key] = self.join([state[key] for state in states])
        self.model.load_state_dict(packed)

    def states(self) -> list[dict[str, torch.Tensor]]:
        """Each run's state_dict, as the unpacked model would have it (copies)."""
        current = self.model.state_dict()
        if self.runs == 1:
            return [{k: v.clone() for k, v in current.items()}]
        states = [{} for _ in range(self.runs)]
        for key, value in current.items():
            if value.dim() == 0:
                start = self._counters[key]
                for r, state in enumerate(states):
                    state[key] = start[r] + (value - start[0])
            else:
                for r, part in enumerate(self.split(value)):
                    states[r][key] = part
        return states

    def split(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Run r's copy of a packed parameter-shaped tensor (a gradient, a momentum buffer)."""
        if self.runs == 1:
            return [tensor.clone()]
        return [part.clone() for part in tensor.unflatten(0, (self.runs, -1)).unbind(0)]

    def join(self, per_run: list[torch.Tensor]) -> torch.Tensor:
        return per_run[0] if self.runs == 1 else torch.cat(per_run)

    def masks(self, per_run: list[dict[str, torch.Tensor] | None]) -> dict[str, torch.Tensor]:
        """One mask per packed weight; a run without a mask for a layer keeps all its weights."""
        if self.runs == 1:
            return dict(per_run[0] or {})
        params = dict(self.model.named_parameters())
        names = sorted({name for masks in per_run for name in (masks or {})})
        packed = {}
        for name in names:
            weight = params[name]
            shape = (weight.shape[0] // self.runs, *weight.shape[1:])
            parts = [(m or {}).get(name) for m in per_run]
            ones = torch.ones(shape, dtype=torch.bool, device=weight.device)
            packed[name] = self.join([ones if p is None else p.to(weight.device, torch.bool) for p in parts])
        return packed

    # ----- data through the packed model -----
    def inputs(self, per_run: list[torch.Tensor]) -> torch.Tensor:
        """Run r's batch as channel block r of one batch (all runs have the same batch size)."""
        if self.runs == 1:
            return per_run[0]
        x = torch.cat(per_run, dim=1)
        return x.contiguous(memory_format=self.memory_format) if self.memory_format else x

    def targets(self, per_run: list[torch.Tensor]) -> torch.Tensor:
        """(R, B) labels; with one run a view, not a copy (one kernel fewer per step on a GPU)."""
        return per_run[0].unsqueeze(0) if self.runs == 1 else torch.stack(per_run)

    def replicate(self, x: torch.Tensor) -> torch.Tensor:
        """The same batch for every run (evaluation)."""
        return self.inputs([x] * self.runs)

    def logits(self, output: torch.Tensor) -> torch.Tensor:
        """(R, B, classes) from the packed model's (B, R * classes) output."""
        return output.unsqueeze(0) if self.runs == 1 else output.unflatten(1, (self.runs, -1)).transpose(0, 1)

    def losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each run, shape (R,); their sum has each run's own gradient."""
        if self.runs == 1:
            return F.cross_entropy(logits[0].float(), y[0]).unsqueeze(0)
        runs, batch, classes = logits.shape
        flat = F.cross_entropy(logits.float().reshape(-1, classes), y.reshape(-1), reduction="none")
        return flat.view(runs, batch).mean(1)

    def run_norms(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """Each run's global L2 norm over parameter-shaped tensors, shape (R,)."""
        if self.runs == 1:
            return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))).unsqueeze(0)
        squares = [t.unflatten(0, (self.runs, -1)).flatten(1).float().pow(2).sum(1) for t in tensors]
        return torch.stack(squares).sum(0).sqrt()

    def scaled(self, tensors: list[torch.Tensor], factors: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor with run r's rows multiplied by ``factors[r]``."""
        if self.runs == 1:
            return torch._foreach_mul(tensors, factors[0])
        out = []
        for t in tensors:
            per_run = t.unflatten(0, (self.runs, -1))
            out.append((per_run * factors.view(-1, *[1] * (per_run.dim() - 1))).flatten(0, 1))
        return out
