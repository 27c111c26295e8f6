"""The pruning methods: one declarative entry each (torch-free, read when a config is validated).

An entry names the function that computes its masks (``masks``: ``module:function``, called as
``function(layers, density, settings)`` with the model's prunable weights by name), says whether
it ranks each layer on its own or all layers together, owns its ``prune.*`` settings (only those
enter the prune spec, so a setting of another method reruns nothing), and says whether it nests
(``nests``: on a model already pruned, a lower density keeps a subset of the surviving weights,
because it ranks pruned, zero, weights last; iterative pruning needs it). The config schema's
``prune.method`` enum and the schema of each method's settings derive from this registry.
"""

from __future__ import annotations

from dataclasses import dataclass

from threeregime.registry.base import Registry, Setting, reference_problem, setting_problems


@dataclass(frozen=True)
class PruningMethod:
    name: str
    masks: str
    ranking: str  # "per layer" or "global"
    description: str
    settings: tuple[Setting, ...] = ()
    nests: bool = False


PRUNING_METHODS: Registry[PruningMethod] = Registry("pruning")
RANKINGS = ("per layer", "global")
register = PRUNING_METHODS.register


def registry_problems(core_fields: set[str]) -> list[str]:
    """One line per incomplete entry (empty when the registry is sound); ``core_fields``: the
    prune.* keys of the config itself, which no entry's setting may take."""
    problems = []
    owners: dict[str, str] = {}
    for name, m in PRUNING_METHODS.items():
        where = PRUNING_METHODS.where(name)
        if m.name != name:
            problems.append(f"{where}: registered under another name than its entry's {m.name!r}")
        missing = reference_problem(m.masks, "masks")
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
        if not m.description.strip():
            problems.append(f"{where}: description is empty")
    return problems


def settings() -> dict[str, Setting]:
    """Every method's settings by key (each key has one owner: :func:`registry_problems`)."""
    return {s.key: s for m in PRUNING_METHODS.values() for s in m.settings}


register(
    PruningMethod(
        "uniform", "threeregime.compute.prune:uniform_masks", "per layer",
        "the same density in every conv layer, smallest |w| pruned (the paper's default)",
        nests=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "global", "threeregime.compute.prune:global_magnitude_masks", "global",
        "one |w| threshold over all conv layers",
        nests=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "lamp", "threeregime.compute.prune:lamp_masks", "global",
        "one threshold over all conv layers on LAMP scores (Lee et al. 2021)",
        nests=True,
    )
)  # fmt: skip
register(
    PruningMethod(
        "alpha", "threeregime.compute.prune:alpha_masks", "per layer",
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
