"""The temperature knobs: one declarative entry each, the single source of every knob fact.

A knob sets one field of the dense training recipe per grid value ("temperature"). Everything
else derives from its entry here: the config schema's ``knob.name`` enum
(:func:`threeregime.config.schema.schema`), the dense recipes and specs
(:meth:`threeregime.config.experiment.ExperimentConfig.dense_recipe`), whether dense runs
continue each other (:meth:`~threeregime.config.experiment.ExperimentConfig.dense_parent`), the
advice's reference temperature, the order coldest to hottest, the axis labels and the advice's
wording (:mod:`threeregime.analysis.advice`, :mod:`threeregime.views.plot`). Knob values are
validated as values of the recipe field they set, against the schema's recipe definition, so
bounds live in one place.

Adding a knob is :func:`register` with a complete :class:`Knob`; an incomplete entry fails
config validation with one line (:func:`registry_problems`). A knob over a recipe field that
does not exist yet (dropout, say) needs that field first: docs/extending.md says where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from threeregime.registry.base import Registry
from threeregime.registry.datasets import DATASETS

SCHEDULES = {
    "checkpoints": "one dense run per seed; the checkpoint at each grid value is that temperature's model",
    "runs": "one dense run per temperature and seed, the recipe field set to the grid value",
    "retrain": "one dense run per seed serves every temperature; the grid value sets the "
    "retraining's retrain.<field>",
}
BUDGETS = {
    "epochs": "an epoch budget (train.iterations unset)",
    "iterations": "a fixed iteration budget (train.iterations set)",
}


@dataclass(frozen=True)
class Knob:
    """One temperature knob.

    ``field``: the :class:`~threeregime.config.settings.Recipe` field a grid value sets (and from which
    the advice's default reference temperature is read: the base recipe's own value); under the
    ``retrain`` schedule, the :class:`~threeregime.config.settings.RetrainConfig` field instead.
    ``schedule``: a key of :data:`SCHEDULES`. ``hotter``: +1 if a larger value is a higher
    temperature (noisier training), -1 if smaller is; ``why`` says why. ``words``: the advice
    in the knob's own words for (a larger value, a smaller value). ``integer``: grid values must
    be whole numbers. ``also_set``: other recipe fields every dense run of this knob sets (SAM's
    optimizer). ``budget``: a key of :data:`BUDGETS` the base recipe must use, or None.
    ``retrain``: how retraining treats the field. ``per_epoch`` (a checkpoints knob counted in
    another unit than the epoch): the knob's units in one epoch of the base recipe on the
    config's data, from (DataConfig, Recipe), or None where the data has no such unit; a grid
    value is then that many units, a whole number of epochs.
    """

    name: str
    field: str
    schedule: str
    hotter: int
    why: str
    label: str
    unit: str
    words: tuple[str, str]
    integer: bool
    retrain: str
    also_set: dict = field(default_factory=dict)
    budget: str | None = None
    per_epoch: Callable[[object, object], int | None] | None = None

    def advice(self, larger: bool) -> str:
        return self.words[0 if larger else 1]


KNOBS: Registry[Knob] = Registry("knob")
register = KNOBS.register  # an entry's problems surface as one line when a config is validated


def registry_problems(
    recipe_fields: set[str], schema_recipe_fields: set[str], retrain_fields: set[str] = frozenset()
) -> list[str]:
    """One line per incomplete or inconsistent entry (empty when the registry is sound)."""
    problems = []
    for name, knob in KNOBS.items():
        where = KNOBS.where(name)
        if knob.name != name:
            problems.append(f"{where}: registered under another name than its entry's {knob.name!r}")
        if knob.schedule == "retrain":
            if knob.field not in retrain_fields:
                problems.append(f"{where}: field {knob.field!r} is not a retrain.* setting")
        elif knob.field not in recipe_fields:
            problems.append(
                f"{where}: field {knob.field!r} is not a field of the training recipe: add it to "
                "Recipe (threeregime/config/settings.py), the schema's recipe and the training "
                "code first (docs/extending.md)"
            )
        elif knob.field not in schema_recipe_fields:
            problems.append(f"{where}: field {knob.field!r} is not in the config schema's recipe")
        for other in knob.also_set:
            if other not in recipe_fields:
                problems.append(f"{where}: also_set {other!r} is not a field of the training recipe")
        if knob.schedule not in SCHEDULES:
            problems.append(f"{where}: schedule {knob.schedule!r} is not one of {sorted(SCHEDULES)}")
        if knob.schedule == "checkpoints" and knob.field != "epochs":
            problems.append(f"{where}: only the epochs field can be read from checkpoints of one run")
        if knob.per_epoch is not None and knob.schedule != "checkpoints":
            problems.append(f"{where}: per_epoch is for a knob read from checkpoints of one run")
        if knob.budget is not None and knob.budget not in BUDGETS:
            problems.append(f"{where}: budget {knob.budget!r} is not one of {sorted(BUDGETS)}")
        if knob.hotter not in (1, -1):
            problems.append(f"{where}: hotter must be +1 or -1, got {knob.hotter!r}")
        if len(knob.words) != 2 or not all(isinstance(w, str) and w for w in knob.words):
            problems.append(f"{where}: words must be two phrases (larger value, smaller value)")
        for attribute in ("why", "label", "unit", "retrain"):
            if not (isinstance(getattr(knob, attribute), str) and getattr(knob, attribute).strip()):
                problems.append(f"{where}: {attribute} is empty")
    return problems


def tokens_per_epoch(data, recipe) -> int | None:
    """Tokens one epoch trains on: the samples its steps take (all of them unless drop_last
    drops a partial batch) times each sample's length in tokens; None for a dataset that is not
    of token sequences (threeregime.registry.datasets: ``sequence_key``)."""
    entry = DATASETS[data.name]
    if entry.sequence_key is None or entry.train_size is None:
        return None
    samples = entry.train_size(data.num_samples)
    used = recipe.steps_per_epoch(samples) * recipe.batch_size if recipe.drop_last else samples
    return min(used, samples) * getattr(data, entry.sequence_key)


# ----------------------------------------------------------------------------- the knobs
register(
    Knob(
        name="epochs",
        field="epochs",
        schedule="checkpoints",
        hotter=-1,
        why="a model stopped earlier has descended less far into the loss landscape (the paper's "
        "temperature: fewer epochs = hotter)",
        label="dense training epochs",
        unit="epochs",
        words=("more epochs", "fewer epochs"),
        integer=True,
        retrain="rewinding replays the full base schedule",
        budget="epochs",
    )
)
register(
    Knob(
        name="batch_size",
        field="batch_size",
        schedule="runs",
        hotter=-1,
        why="the SGD noise scale grows as lr / batch size, so a smaller batch is noisier (the "
        "paper trains every batch size for the same number of iterations)",
        label="dense batch size",
        unit="samples per step",
        words=("larger batch", "smaller batch"),
        integer=True,
        retrain="the base recipe's batch size",
        budget="iterations",
    )
)
register(
    Knob(
        name="sam_rho",
        field="sam_rho",
        schedule="runs",
        hotter=1,
        why="a larger SAM neighbourhood radius perturbs the weights further before each step (the "
        "paper's third knob)",
        label="SAM rho",
        unit="neighbourhood radius",
        words=("larger rho", "smaller rho"),
        integer=False,
        retrain="plain SGD: only dense training uses SAM",
        also_set={"optimizer": "sam"},
    )
)
register(
    Knob(
        name="lr",
        field="lr",
        schedule="runs",
        hotter=1,
        why="the SGD noise scale grows as lr / batch size, so a larger learning rate is noisier "
        "(the step schedule scales with it)",
        label="dense learning rate",
        unit="initial step size",
        words=("larger lr", "smaller lr"),
        integer=False,
        retrain="the base recipe's learning rate",
    )
)
register(
    Knob(
        name="weight_decay",
        field="weight_decay",
        schedule="runs",
        hotter=1,
        why="stronger decay keeps the weights' norms small, and with BatchNorm the effective step "
        "of a scale-invariant weight is lr / |w|^2, so stronger decay means larger effective "
        "steps and noisier training",
        label="dense weight decay",
        unit="L2 coefficient",
        words=("stronger weight decay", "weaker weight decay"),
        integer=False,
        retrain="the base recipe's weight decay",
    )
)
register(
    Knob(
        name="label_noise",
        field="label_noise",
        schedule="runs",
        hotter=1,
        why="more training labels replaced at random make the gradient noisier and the fit "
        "harder (random labels are a temperature of the loss-landscape taxonomy)",
        label="dense label noise",
        unit="fraction of training labels",
        words=("more label noise", "less label noise"),
        integer=False,
        retrain="clean labels: the noise belongs to the dense model's training, as SAM does, so "
        "every cell's retraining is the same recipe and cells differ only by their dense model; "
        "metrics also use clean labels",
    )
)
register(
    Knob(
        name="rewind_step",
        field="rewind_step",
        schedule="retrain",
        hotter=-1,
        why="rewinding to an earlier iteration leaves more of training to SGD noise: networks "
        "are unstable to it early in training and become stable later (Frankle et al. 2020)",
        label="rewind step",
        unit="iterations of dense training",
        words=("rewind to a later iteration", "rewind to an earlier iteration"),
        integer=True,
        retrain="weight rewinding (retrain.mode rewind_weights) to the grid value; one dense run "
        "per seed serves every rewind step",
    )
)
register(
    Knob(
        name="tokens",
        field="epochs",
        schedule="checkpoints",
        hotter=-1,
        why="a language model stopped after fewer training tokens has descended less far into "
        "the loss landscape (the epochs knob counted in tokens, its LM form)",
        label="dense training tokens",
        unit="tokens (whole epochs of the base recipe)",
        words=("more training tokens", "fewer training tokens"),
        integer=True,
        retrain="rewinding replays the full base schedule",
        budget="epochs",
        per_epoch=tokens_per_epoch,
    )
)
