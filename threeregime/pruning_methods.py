"""The pruning methods: one declarative entry each (torch-free, read when a config is validated).

An entry names the function that computes its masks (``masks``: ``module:function``, called as
``function(layers, density, settings)`` with the model's prunable conv weights by name), says
whether it ranks each layer on its own or all layers together, and which ``prune.*`` settings act
on it (only those enter the prune spec, so a setting of another method reruns nothing), and
whether it nests (``nests``: on a model already pruned, a lower density keeps a subset of the
surviving weights, because it ranks pruned, zero, weights last; iterative pruning needs it). The
config schema's ``prune.method`` enum is derived from this registry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PruningMethod:
    name: str
    masks: str
    ranking: str  # "per layer" or "global"
    description: str
    settings: tuple[str, ...] = ()
    nests: bool = False


PRUNING_METHODS: dict[str, PruningMethod] = {}
RANKINGS = ("per layer", "global")


def register(method: PruningMethod) -> PruningMethod:
    PRUNING_METHODS[method.name] = method
    return method


def registry_problems(prune_fields: set[str]) -> list[str]:
    """One line per incomplete entry (empty when the registry is sound)."""
    problems = []
    for name, m in PRUNING_METHODS.items():
        where = f"pruning registry: {name}"
        if m.name != name:
            problems.append(f"{where}: registered under another name than its entry's {m.name!r}")
        module, _, function = m.masks.partition(":")
        if not (module and function):
            problems.append(f"{where}: masks must be 'module:function', got {m.masks!r}")
        if m.ranking not in RANKINGS:
            problems.append(f"{where}: ranking {m.ranking!r} is not one of {list(RANKINGS)}")
        for setting in m.settings:
            if setting not in prune_fields:
                problems.append(f"{where}: setting {setting!r} is not a prune.* config key")
        if not m.description.strip():
            problems.append(f"{where}: description is empty")
    return problems


register(
    PruningMethod(
        "uniform", "threeregime.prune:uniform_masks", "per layer",
        "the same density in every conv layer, smallest |w| pruned (the paper's default)",
        nests=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "global", "threeregime.prune:global_magnitude_masks", "global",
        "one |w| threshold over all conv layers",
        nests=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "lamp", "threeregime.prune:lamp_masks", "global",
        "one threshold over all conv layers on LAMP scores (Lee et al. 2021)",
        nests=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "alpha", "threeregime.prune:alpha_masks", "per layer",
        "AlphaPruning (Lu et al. 2024): layer densities from each layer's heavy-tail exponent "
        "alpha (heavier-tailed layers keep more) at the same global density, smallest |w| "
        "pruned within each layer",
        settings=("alpha_epsilon",),
    )
)  # fmt: skip
