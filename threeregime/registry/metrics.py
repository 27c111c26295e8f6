"""The metrics: one declarative entry each, the single source of what a metric column is.

An entry says where a metric is measured (``scope``: each retrained model, each retrain pair, or
derived per cell), what computes it, whether it is a number or a list (``kind``), how a cell
combines its observations (``aggregate``), whether it gets a phase-diagram panel (label, colour
map, log scale), its caption, and the ``metrics.*`` settings it owns (a flag that turns it on,
say). Derived from it: the columns ``collect`` averages and how (:func:`pair_row`), the per-cell
table (:func:`threeregime.analysis.cells.aggregate_cells`), the panels of the phase diagram
(:func:`threeregime.views.plot.phase_figure`), the panel list of the report's caption
(:func:`panel_caption`), and the schema, docs and spec entries of its settings.

Vector metrics travel through the CSV tables as JSON lists. ``elementwise``: lists of one length
(one value per layer, say), averaged element by element. ``pool``: samples of a distribution
(quadrature nodes, say), concatenated; their weights are divided by the number of lists pooled,
so the pooled weights still sum to one (see :func:`combine`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np

from threeregime.registry.base import Registry, Setting, reference_problem, setting_problems

log = logging.getLogger("threeregime")

SCOPES = {
    "model": "each retrained model; a pair's row holds the mean of its two models",
    "pair": "each retrain pair (the two retrainings of one pruned model)",
    "cell": "derived per cell from the other metrics' cell means",
}
KINDS = ("scalar", "vector")
AGGREGATES = {
    "scalar": ("mean",),
    "vector": ("elementwise", "pool", "pool_weights"),
}


@dataclass(frozen=True)
class Panel:
    """A phase-diagram heatmap: title, colour-bar label, colour map (None: plot.cmap), log scale."""

    title: str
    label: str
    cmap: str | None = None
    log: bool = False


@dataclass(frozen=True)
class Metric:
    """One metric column. ``computed_by``: ``module:function`` (or ``module:Class.method``) of
    the code that measures it; ``caption`` is the sentence the report shows for its panel or
    column. ``weights_of`` (``pool_weights`` only): the ``pool`` metric whose samples these
    weights belong to.

    ``compute`` (metrics measured by their own function): ``module:function`` called by the
    metrics job as ``function(model, data, settings)`` for each retrained model (scope
    ``model``), or ``function(model_a, model_b, data, settings)`` for each retrain pair (scope
    ``pair``), with the job's MetricsConfig as ``settings``, returning a dict of metric values
    (this metric's and any it produces alongside). ``settings``: the ``metrics.*`` keys it owns;
    ``enabled_by``: the boolean one that turns it on (None: always on)."""

    name: str
    scope: str
    computed_by: str
    caption: str
    kind: str = "scalar"
    aggregate: str = "mean"
    panel: Panel | None = None
    weights_of: str | None = None
    compute: str | None = None
    enabled_by: str | None = None
    settings: tuple[Setting, ...] = ()

    @property
    def cell_column(self) -> str:
        """The column of cells.csv (and regimes.csv) holding this metric per cell."""
        return self.name if self.scope == "cell" else f"{self.name}_mean"


METRICS: Registry[Metric] = Registry("metric")
register = METRICS.register


def settings() -> dict[str, Setting]:
    """Every metric's settings by key (each key has one owner: :func:`registry_problems`)."""
    return {s.key: s for m in METRICS.values() for s in m.settings}


def registry_problems(core_fields: set[str] = frozenset()) -> list[str]:
    """One line per incomplete or inconsistent entry (empty when the registry is sound);
    ``core_fields``: the metrics.* keys of the config itself, which no entry's setting may take
    and which a flag may name."""
    problems = []
    owners: dict[str, str] = {}
    for name, m in METRICS.items():
        for setting in m.settings:
            if setting.key in core_fields or owners.get(setting.key, name) != name:
                taken = "a metrics.* key of the config" if setting.key in core_fields else owners[setting.key]
                problems.append(f"{METRICS.where(name)}: setting metrics.{setting.key} is already {taken}'s")
            owners.setdefault(setting.key, name)
    flags = {s.key for s in settings().values() if s.rule.get("type") == "boolean"}
    for name, m in METRICS.items():
        where = METRICS.where(name)
        if m.name != name:
            problems.append(f"{where}: registered under another name than its entry's {m.name!r}")
        if m.scope not in SCOPES:
            problems.append(f"{where}: scope {m.scope!r} is not one of {sorted(SCOPES)}")
        if m.kind not in KINDS:
            problems.append(f"{where}: kind {m.kind!r} is not one of {list(KINDS)}")
        elif m.aggregate not in AGGREGATES[m.kind]:
            problems.append(f"{where}: a {m.kind} cannot aggregate by {m.aggregate!r}")
        if m.kind == "vector" and m.panel is not None:
            problems.append(f"{where}: a vector has no heatmap panel (register its scalar summary)")
        pooled = METRICS.get(m.weights_of)
        if m.aggregate == "pool_weights" and (pooled is None or pooled.aggregate != "pool"):
            problems.append(f"{where}: weights_of must name a registered pool metric")
        if m.compute is not None and m.scope == "cell":
            problems.append(f"{where}: compute is for a model or pair metric (a cell's is derived)")
        for field, reference in (("computed_by", m.computed_by), ("compute", m.compute)):
            missing = reference_problem(reference, field) if reference is not None else None
            if missing:
                problems.append(f"{where}: {missing}")
        if m.enabled_by is not None and m.enabled_by not in flags:
            problems.append(
                f"{where}: enabled_by {m.enabled_by!r} is no boolean metrics.* setting of a metric "
                f"entry (known: {', '.join(sorted(flags)) or 'none'})"
            )
        problems += setting_problems(where, m.settings)
        if not m.caption.strip():
            problems.append(f"{where}: caption is empty")
    return problems


def computed_metrics(enabled, scope: str = "model") -> list[Metric]:
    """Metrics of ``scope`` (model or pair) with their own ``compute`` function that are on
    (``enabled(flag)``: the value of a metrics.* flag)."""
    return [
        m
        for m in METRICS.values()
        if m.compute and m.scope == scope and (m.enabled_by is None or enabled(m.enabled_by))
    ]


def compute_function(metric: Metric):
    import importlib

    module, _, function = metric.compute.partition(":")
    return getattr(importlib.import_module(module), function)


def observed(kind: str) -> list[str]:
    """Metrics measured per model or pair of one kind, in registry order."""
    return [m.name for m in METRICS.values() if m.scope != "cell" and m.kind == kind]


def panels() -> list[tuple[str, Panel]]:
    """(cells column, panel) of every metric with a panel, in registry order."""
    return [(m.cell_column, m.panel) for m in METRICS.values() if m.panel is not None]


def panel_caption() -> str:
    """The report caption's sentence listing the phase diagram's panels."""
    return " ".join(f"**{m.panel.title}**: {m.caption}" for m in METRICS.values() if m.panel is not None)


# ----------------------------------------------------------------------------- vectors
def combine(name: str, lists: list[list[float]], pooled_from: int | None = None) -> list[float]:
    """Several observations of one vector metric as one, by the entry's aggregate rule."""
    metric = METRICS[name]
    if metric.aggregate == "elementwise":
        lengths = {len(v) for v in lists}
        if len(lengths) != 1:
            raise ValueError(f"{name}: elementwise mean of lists of lengths {sorted(lengths)}")
        return [float(x) for x in np.mean(np.asarray(lists, dtype=float), axis=0)]
    flat = [float(x) for v in lists for x in v]
    if metric.aggregate == "pool_weights":
        return [x / len(lists) for x in flat]
    return flat


def as_cell(value) -> object:
    """A value as a CSV cell: lists become JSON text, everything else stays."""
    return json.dumps([float(x) for x in value]) if isinstance(value, (list, tuple)) else value


def parse_vector(text) -> list[float]:
    """Inverse of :func:`as_cell` for one vector cell."""
    return [float(x) for x in json.loads(text)]


def pair_row(models: list[dict]) -> dict:
    """The two models of a pair as one row: scalar metrics averaged, vectors combined by their
    registry entry (JSON text); unregistered lists are left out of the pair row, with a warning
    (they stay in models.csv)."""
    import pandas as pd

    lists = {k for m in models for k, v in m.items() if isinstance(v, (list, tuple))}
    scalars = [{k: v for k, v in m.items() if k not in lists} for m in models]
    row = pd.DataFrame(scalars).drop(columns=["retrain_seed", "seconds"], errors="ignore").mean().to_dict()
    for key in sorted(lists):
        if key not in METRICS or METRICS[key].kind != "vector":
            log.warning("%s: a list that is not a registered vector metric; kept in models.csv only", key)
            continue
        row[key] = as_cell(combine(key, [m[key] for m in models]))
    return row


# ----------------------------------------------------------------------------- the metrics
def _scalar(name, scope, computed_by, caption, panel=None):
    register(Metric(name, scope, computed_by, caption, panel=panel))


_scalar(
    "test_error",
    "model",
    "threeregime.compute.landscape:summarize_test_error",
    "test error of the retrained sparse models, mean over the last retraining epochs.",
    Panel("Test error", "test error (fraction misclassified)"),
)
_scalar(
    "normalized_test_error",
    "cell",
    "threeregime.analysis.cells:aggregate_cells",
    "each density column minus its minimum over temperatures.",
    Panel("Normalized test error", "test error - column minimum"),
)
_scalar(
    "test_error_final",
    "model",
    "threeregime.compute.landscape:summarize_test_error",
    "test error after the last epoch.",
)
_scalar(
    "train_loss",
    "model",
    "threeregime.compute.evaluate:evaluate",
    "training loss of the sparse model (no augmentation).",
)
_scalar(
    "train_error", "model", "threeregime.compute.evaluate:evaluate", "training error of the sparse model."
)
_scalar(
    "density_actual",
    "model",
    "threeregime.compute.prune:mask_density",
    "fraction of the prunable weights the pruning mask keeps (the density achieved; N:M and "
    "channel structures can differ from the requested one).",
)
_scalar(
    "density_retrained",
    "model",
    "threeregime.compute.prune:retrained_density",
    "fraction of the prunable weights that are nonzero after retraining (the density audit: "
    "equal to density_actual, since retraining keeps pruned weights at zero).",
)
register(
    Metric(
        "mc",
        "pair",
        "threeregime.compute.landscape:linear_mode_connectivity",
        "linear mode connectivity mc = m - e(u) of the two retrainings (negative: a loss barrier).",
        panel=Panel("LMC: mc = m - e(u)", "mc (train error, or loss: lmc_measure; < 0: barrier)"),
        settings=(
            Setting(
                "lmc_measure", "error", {"enum": ["error", "loss"]},
                "what mc and barrier measure along the linear path: the training error (the "
                "paper's), or the training loss (a language model's, whose token error moves "
                "little); mc's units, and so regimes.eps, follow",
            ),
        ),
    )
)  # fmt: skip
_scalar(
    "barrier",
    "pair",
    "threeregime.compute.landscape:linear_mode_connectivity",
    "largest rise of the training error (or loss: metrics.lmc_measure) above the line between "
    "the endpoints (Frankle et al. 2020).",
)
_scalar(
    "dense_test_error",
    "pair",
    "threeregime.compute.landscape:summarize_test_error",
    "test error of the dense model the cell pruned, mean over its last epochs (the reference of "
    "the matching criterion).",
)
_scalar(
    "cka_softmax",
    "pair",
    "threeregime.compute.landscape:output_similarity",
    "linear CKA of the two retrainings' softmax outputs on training samples.",
    Panel("CKA (softmax outputs)", "linear CKA of the two retrainings"),
)
_scalar(
    "cka_logits",
    "pair",
    "threeregime.compute.landscape:output_similarity",
    "linear CKA of the two retrainings' logits.",
)
register(
    Metric(
        "cka_hidden",
        "pair",
        "threeregime.compute.landscape:hidden_similarity",
        "linear CKA of the two retrainings' final hidden states: the input of the last Linear "
        "layer (a language model's lm_head, one row per token; a CNN's pooled features).",
        panel=Panel("CKA (final hidden states)", "linear CKA of the two retrainings"),
        compute="threeregime.compute.landscape:hidden_similarity",
        enabled_by="cka_hidden",
        settings=(
            Setting(
                "cka_hidden", False, {"type": "boolean"},
                "also measure cka_hidden, the linear CKA of the two retrainings' final hidden "
                "states (the last Linear layer's input) on the cka_samples training samples",
            ),
        ),
    )
)  # fmt: skip
_scalar(
    "hessian_top_eigenvalue",
    "model",
    "threeregime.compute.hessian:hessian_summary",
    "top eigenvalue of the training-loss Hessian (Lanczos, pruned weights fixed).",
    Panel("Hessian top eigenvalue", "top eigenvalue of the train loss"),
)
_scalar(
    "hessian_trace",
    "model",
    "threeregime.compute.hessian:hessian_summary",
    "trace of the training-loss Hessian (Hutchinson, deflated by the Lanczos vectors).",
    Panel("Hessian trace", "trace of the train loss Hessian"),
)
register(
    Metric(
        "weight_alpha",
        "model",
        "threeregime.compute.spectra:alpha_metrics",
        "mean over conv layers of the power-law exponent alpha of each layer's W^T W spectrum "
        "(smaller: heavier-tailed, better trained).",
        panel=Panel("Weight spectra: mean layer alpha", "power-law alpha (mean over conv layers)"),
        compute="threeregime.compute.spectra:alpha_metrics",
        enabled_by="weight_alpha",
        settings=(
            Setting(
                "weight_alpha", False, {"type": "boolean"},
                "also measure each retrained model's heavy-tailed weight spectra: per-layer "
                "power-law alpha and its layer mean (threeregime/compute/spectra.py)",
            ),
            Setting(
                "weight_alpha_xmin", "search", {"enum": ["search", "xmin_mid", "xmin_peak"]},
                "how weight_alpha's power-law fit picks xmin: search (weightwatcher's default), "
                "xmin_mid or xmin_peak (AlphaPruning's rules)",
            ),
        ),
    )
)  # fmt: skip
register(
    Metric(
        "hessian_esd_nodes",
        "model",
        "threeregime.compute.hessian:KrylovBasis.spectral_density",
        "Hessian eigenvalue density: quadrature nodes (eigenvalues of the Lanczos tridiagonal); "
        "a cell pools its models' nodes.",
        kind="vector",
        aggregate="pool",
        settings=(
            Setting(
                "hessian_esd", False, {"type": "boolean"},
                "also store each retrained model's Hessian eigenvalue density (stochastic Lanczos "
                "quadrature nodes and weights from the top-eigenvalue Lanczos run, no extra Hessian "
                "products) and draw it per cell (hessian_esd.png)",
            ),
            Setting(
                "hessian_esd_probes", 1, {"type": "integer", "minimum": 1},
                "random starts of the eigenvalue density's Lanczos runs (1 with hessian_esd_steps "
                "0: the top-eigenvalue run itself); more probes average out the noise of one start "
                "(resolution measured in benchmarks/README.md)",
            ),
            Setting(
                "hessian_esd_steps", 0, {"type": "integer", "minimum": 0},
                "Lanczos steps (quadrature nodes) per probe of the eigenvalue density; 0: the "
                "top-eigenvalue run's own, which stops once the top eigenvalue has converged, "
                "too early to resolve small or negative eigenvalues",
            ),
        ),
    )
)  # fmt: skip
register(
    Metric(
        "hessian_esd_weights",
        "model",
        "threeregime.compute.hessian:KrylovBasis.spectral_density",
        "Hessian eigenvalue density: quadrature weights of the nodes (sum 1 per cell).",
        kind="vector",
        aggregate="pool_weights",
        weights_of="hessian_esd_nodes",
    )
)
register(
    Metric(
        "weight_alpha_layers",
        "model",
        "threeregime.compute.spectra:alpha_metrics",
        "alpha of each conv layer with at least 8 eigenvalues, in the model's layer order.",
        kind="vector",
        aggregate="elementwise",
    )
)
register(
    Metric(
        "test_loss",
        "model",
        "threeregime.compute.landscape:perplexity_metrics",
        "mean cross-entropy of the retrained model on the test split (a language model's "
        "validation windows: nats per token).",
        panel=Panel("Test loss", "cross-entropy (nats per prediction)"),
        compute="threeregime.compute.landscape:perplexity_metrics",
        enabled_by="perplexity",
        settings=(
            Setting(
                "perplexity", False, {"type": "boolean"},
                "also measure each retrained model's test loss and perplexity exp(test loss) "
                "(a language model's validation loss per token)",
            ),
        ),
    )
)  # fmt: skip
register(
    Metric(
        "perplexity",
        "model",
        "threeregime.compute.landscape:perplexity_metrics",
        "exp(test loss): the perplexity of the retrained model on the test split.",
        panel=Panel("Perplexity", "exp(test loss)", log=True),
    )
)
_scalar(
    "p_label",
    "cell",
    "threeregime.analysis.confidence:add_confidence",
    "probability that the cell's regime label is right: the share of draws of the uncertainty "
    "model (regimes.uncertainty; cell means, noise and thresholds drawn) that give it the same regime.",
    Panel("Label probability", "P(regime label is right)"),
)
