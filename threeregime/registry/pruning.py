"""The pruning methods and the granularities: one declarative entry each (torch-free, read when a
config is validated).

A mask comes from a **method** (``prune.method``: which weights matter most, and how much of each
layer to keep) and a **granularity** (``prune.granularity``: which patterns of kept weights are
allowed). Any method works with any granularity.

A method's entry names its score function (``scores``: ``module:function``, called as
``function(layers, density, settings)`` with the model's prunable weights by name, or, for a
method that declares ``calibration``, as ``function(layers, density, settings, model=model,
inputs=inputs)`` with the model and its first ``calibration_samples`` training inputs, a setting
such a method owns). The function returns a score
per weight (higher is kept first) and the fraction of each layer to keep
(threeregime.compute.prune.LayerScores). ``ranking`` says which weights compete: each layer's
(``per layer``), all layers' together (``global``: the layer fractions come from one ranking), or
each output row's (``per row``: every row keeps its own share, as Wanda does). ``same_density``:
every layer keeps the overall density, so the weights each layer keeps follow from the shapes and
are checked at validation. An entry owns its ``prune.*`` settings (only those enter the prune
spec, so a setting of another method reruns nothing) and says whether it nests (``nests``: on a
model already pruned, a lower density keeps a subset of the surviving weights, because it ranks
pruned, zero, weights last; iterative pruning needs it).

A granularity's entry names the function that turns scores and layer fractions into masks
(``masks``: ``module:function``, called as ``function(scores, densities, per_row, granularity)``)
and, torch-free, how many weights a layer of a given shape keeps at a density (``kept``: config
validation; the compute side keeps exactly that many, a test holds them equal). ``fixed_density``:
a structure that allows one density only (N:M keeps N/M of the layers it structures).

The config schema's ``prune.method`` and ``prune.granularity`` enums and the schema of each
method's settings derive from these registries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from threeregime.registry.base import Registry, Setting, reference_problem, setting_problems


@dataclass(frozen=True)
class PruningMethod:
    name: str
    scores: str
    ranking: str  # "per layer", "global" or "per row"
    description: str
    settings: tuple[Setting, ...] = ()
    nests: bool = False
    same_density: bool = False
    calibration: bool = False  # scores need the model's inputs (the prune job reads the dataset)


@dataclass(frozen=True)
class Granularity:
    name: str
    masks: str
    kept: Callable[[tuple[int, ...], float, bool], int]  # (weight shape, density, per_row) -> kept
    description: str
    fixed_density: float | None = None
    nests: bool = True
    group: tuple[int, int] | None = None  # N:M: (N, M)


PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning")
GRANULARITIES: Registry[Granularity] = Registry("granularity")
RANKINGS = ("per layer", "global", "per row")
register = PRUNING_METHODS.register
register_granularity = GRANULARITIES.register
DEFAULT_GRANULARITY = "unstructured"
# A method with ``calibration`` owns this setting: how many training samples (the first ones)
# its scores see; the prune job passes them as ``inputs``.
CALIBRATION_SAMPLES = "calibration_samples"


def registry_problems(core_fields: set[str]) -> list[str]:
    """One line per incomplete entry of either registry (empty when both are sound);
    ``core_fields``: the prune.* keys of the config itself, which no entry's setting may take."""
    problems = []
    owners: dict[str, str] = {}
    for name, m in PRUNING_METHODS.items():
        where = PRUNING_METHODS.where(name)
        if m.name != name:
            problems.append(f"{where}: registered under another name than its entry's {m.name!r}")
        missing = reference_problem(m.scores, "scores")
        if missing:
            problems.append(f"{where}: {missing}")
        if m.ranking not in RANKINGS:
            problems.append(f"{where}: ranking {m.ranking!r} is not one of {list(RANKINGS)}")
        problems += setting_problems(where, m.settings)
        for setting in m.settings:
            if setting.key in core_fields or owners.get(setting.key, name) != name:
                taken = "a prune.* key of the config" if setting.key in core_fields else owners[setting.key]
                problems.append(f"{where}: setting prune.{setting.key} is already {taken}'s")
            owners.setdefault(setting.key, name)
        if m.calibration and CALIBRATION_SAMPLES not in {s.key for s in m.settings}:
            problems.append(f"{where}: a method with calibration owns a {CALIBRATION_SAMPLES} setting")
        if not m.description.strip():
            problems.append(f"{where}: description is empty")
    for name, g in GRANULARITIES.items():
        where = GRANULARITIES.where(name)
        if g.name != name:
            problems.append(f"{where}: registered under another name than its entry's {g.name!r}")
        missing = reference_problem(g.masks, "masks")
        if missing:
            problems.append(f"{where}: {missing}")
        if not callable(g.kept):
            problems.append(f"{where}: kept must be a function of (shape, density, per_row)")
        if g.fixed_density is not None and not 0 < g.fixed_density <= 1:
            problems.append(f"{where}: fixed_density must lie in (0, 1], got {g.fixed_density}")
        if not g.description.strip():
            problems.append(f"{where}: description is empty")
    return problems


def settings() -> dict[str, Setting]:
    """Every method's settings by key (each key has one owner: :func:`registry_problems`)."""
    return {s.key: s for m in PRUNING_METHODS.values() for s in m.settings}


# ----------------------------------------------------------------------------- counting, torch-free
def keep_count(units: int, density: float) -> int:
    """Units (weights, rows' weights, filters) kept out of ``units`` at ``density``: round(d * n)."""
    return round(density * units)


def row_length(shape: tuple[int, ...]) -> int:
    """Weights of one output row: a Linear layer's inputs, a convolution filter's in_channels x
    kernel (the filter flattened as PyTorch stores it, the columns of its unfolded input)."""
    length = 1
    for dim in shape[1:]:
        length *= dim
    return length


def _unstructured_kept(shape: tuple[int, ...], density: float, per_row: bool) -> int:
    rows, length = shape[0], row_length(shape)
    return rows * keep_count(length, density) if per_row else keep_count(rows * length, density)


def _channel_kept(shape: tuple[int, ...], density: float, per_row: bool) -> int:
    return keep_count(shape[0], density) * row_length(shape)


def n_of_m_kept(n: int, m: int) -> Callable[[tuple[int, ...], float, bool], int]:
    """N of every M consecutive weights of a row; a layer whose rows are not a multiple of M
    long has no such groups and stays dense."""

    def kept(shape: tuple[int, ...], density: float, per_row: bool) -> int:
        rows, length = shape[0], row_length(shape)
        return rows * length * n // m if length % m == 0 else rows * length

    return kept


def n_of_m(n: int, m: int) -> Granularity:
    """The N:M entry ``"N:M"`` (N of every M consecutive input weights of each row kept)."""
    return Granularity(
        f"{n}:{m}", "threeregime.compute.prune:n_of_m_masks", n_of_m_kept(n, m),
        f"every group of {m} consecutive input weights of an output row keeps its {n} highest "
        f"scores (density {n}/{m}); a layer whose rows are not a multiple of {m} long stays dense",
        fixed_density=n / m, nests=False, group=(n, m),
    )  # fmt: skip


# ----------------------------------------------------------------------------- granularities
register_granularity(
    Granularity(
        "unstructured", "threeregime.compute.prune:unstructured_masks", _unstructured_kept,
        "any weight: each layer (each output row for a per-row method) keeps round(d * n) of its "
        "highest-scoring weights",
    )
)  # fmt: skip
register_granularity(n_of_m(2, 4))
register_granularity(n_of_m(4, 8))
register_granularity(
    Granularity(
        "channel", "threeregime.compute.prune:channel_masks", _channel_kept,
        "whole output filters (convolution) or neurons (Linear): each layer keeps round(d * "
        "filters) of its filters with the highest summed scores; only the filter's weights are "
        "masked (its BatchNorm and the next layer's weights stay)",
    )
)  # fmt: skip

# ----------------------------------------------------------------------------- methods
register(
    PruningMethod(
        "uniform", "threeregime.compute.prune:score_uniform", "per layer",
        "the same density in every conv layer, smallest |w| pruned (the paper's default)",
        nests=True, same_density=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "global", "threeregime.compute.prune:score_global", "global",
        "one |w| threshold over all conv layers",
        nests=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "lamp", "threeregime.compute.prune:score_lamp", "global",
        "one threshold over all conv layers on LAMP scores (Lee et al. 2021)",
        nests=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "alpha", "threeregime.compute.prune:score_alpha", "per layer",
        "AlphaPruning (Lu et al. 2024): layer densities from each layer's heavy-tail exponent "
        "alpha (heavier-tailed layers keep more) at the same global density, smallest |w| "
        "pruned within each layer",
        settings=(
            Setting(
                "alpha_epsilon", 0.2, {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                "layer pruning ratios span 1 -/+ epsilon times the mean before scaling to the "
                "global density (AlphaPruning's s1, s2 = 1 - epsilon, 1 + epsilon)",
                in_spec="always",
            ),
            Setting(
                "alpha_xmin", "xmin_mid", {"enum": ["search", "xmin_mid", "xmin_peak"]},
                "how each layer's power-law fit picks xmin (threeregime/compute/spectra.py): "
                "xmin_mid, AlphaPruning's rule for image classifiers; xmin_peak, its rule for "
                "language models; search, weightwatcher's default",
                in_spec="always",
            ),
        ),
    )
)  # fmt: skip
register(
    PruningMethod(
        "wanda", "threeregime.compute.prune:score_wanda", "per row",
        "Wanda (Sun et al. 2023): score |W_ij| x ||X_j||_2, the weight's magnitude times the norm "
        "of its input over calibration samples (a convolution's over its unfolded input patches); "
        "each output row keeps its own highest-scoring fraction",
        settings=(
            Setting(
                "calibration_samples", 128, {"type": "integer", "minimum": 1},
                "Wanda: the first K training samples (unaugmented, the model in eval mode) whose "
                "inputs to each prunable layer give the norms ||X_j||",
                in_spec="always",
            ),
        ),
        nests=True, same_density=True, calibration=True,
    )
)  # fmt: skip
