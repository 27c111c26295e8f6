"""The figures of a comparison (threeregime.analysis.compare): every run's regime map side by side
under the shared thresholds, and a difference map of every run against the first.

A run with its own densities (a 2:4 setup at 0.5) has its own columns: each panel is as wide as
its run's density grid, and the difference map of two runs shows the cells they share. Titles
name the runs, their knob, model and pruning method: what all runs share once, in the figure's
title, and what tells them apart in each panel's.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from threeregime.analysis.cells import temperature_order  # noqa: E402
from threeregime.analysis.compare import RUN, Comparison  # noqa: E402
from threeregime.analysis.confidence import CONFIDENT  # noqa: E402
from threeregime.analysis.regimes import COLLAPSED, REGIMES  # noqa: E402
from threeregime.config.settings import fmt_value  # noqa: E402
from threeregime.io.files import save_figure  # noqa: E402
from threeregime.views.plot import (  # noqa: E402
    BOUNDARY_LABEL,
    BOUNDARY_STYLE,
    DENSITY_LABEL,
    LABELS,
    REGIME_COLORS,
    draw_boundaries,
    temperature_label,
    wrapped,
)

DESCRIBED = (("run", "run"), ("knob", "knob"), ("model", "model"), ("data", "data"), ("method", "pruning"))
UNCERTAIN = {"hatch": "///", "fill": False, "lw": 0, "ec": "black"}


def shared_title(descriptions: list[dict]) -> str:
    """What every run shares, 'run demo, knob epochs, model cnn1d, data mnist1d', and what varies
    as 'pruning uniform | global'."""
    parts = []
    for key, word in DESCRIBED:
        values = list(dict.fromkeys(str(d.get(key, "?")) for d in descriptions))
        parts.append(f"{word} {values[0]}" if len(values) == 1 else f"{word} {' | '.join(values)}")
    return ", ".join(parts)


def panel_title(name: str, description: dict) -> str:
    """A panel's run: its name (the setup's under prune.setups) and what it is."""
    run = description.get("run", name)
    setup = f" / setup {description['setup']}" if description.get("setup") else ""
    return (
        f"{name}\n{run}{setup}: knob {description.get('knob', '?')}, model {description.get('model', '?')},"
        f" pruning {description.get('method', '?')}"
    )


def _grid(cells: pd.DataFrame, column: str, temps: list, densities: list) -> np.ndarray:
    table = cells.pivot(index="temperature", columns="density", values=column)
    return table.reindex(index=temps, columns=densities).to_numpy()


def _ticks(ax, temps: list, densities: list, first: bool, knob: str, size: float) -> None:
    ax.set_xticks(range(len(densities)), [fmt_value(d) for d in densities], rotation=45)
    ax.set_yticks(range(len(temps)), [fmt_value(t) for t in temps] if first else [])
    ax.set_xlabel(wrapped(DENSITY_LABEL, size, 8), fontsize=8)
    if first:
        ax.set_ylabel(wrapped(temperature_label(knob), 2.6, 8), fontsize=8)


def maps_figure(comparison: Comparison):
    """Every run's regime map under the shared thresholds, side by side; hatched: a label whose
    probability is below CONFIDENT (with its p)."""
    labels = comparison.labels
    knob = labels["knob"].iloc[0]
    temps = temperature_order(labels)
    runs = list(comparison.names)
    widths = [labels.loc[labels[RUN] == name, "density"].nunique() for name in runs]
    height = max(2.8, 0.6 * len(temps)) + 2.6
    fig, axes = plt.subplots(
        1, len(runs), figsize=(1.8 + 1.05 * sum(widths) + 0.9 * len(runs), height), squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )  # fmt: skip
    cmap = ListedColormap([REGIME_COLORS[r] for r in LABELS])
    for i, (ax, name, description) in enumerate(zip(axes[0], runs, comparison.descriptions)):
        cells = labels[labels[RUN] == name]
        densities = sorted(cells["density"].unique())
        regimes = _grid(cells, "regime", temps, densities)
        codes = np.array(
            [[LABELS.index(r) if isinstance(r, str) else np.nan for r in row] for row in regimes]
        )
        ax.imshow(codes, origin="lower", cmap=cmap, vmin=-0.5, vmax=len(LABELS) - 0.5, aspect="auto")
        p = _grid(cells, "p_label", temps, densities).astype(float)
        for (r, c), regime in np.ndenumerate(regimes):
            if not isinstance(regime, str):
                continue
            text = regime
            if np.isfinite(p[r, c]) and p[r, c] < CONFIDENT:
                ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, gid="uncertain", **UNCERTAIN))
                text += f"\np={p[r, c]:.2f}"
            ax.text(c, r, text, ha="center", va="center", fontsize=7)
        draw_boundaries(ax, np.where(pd.isna(regimes), COLLAPSED, regimes))
        _ticks(ax, temps, densities, i == 0, knob, 1.05 * len(densities))
        ax.set_title(wrapped(panel_title(name, description), 1.05 * len(densities) + 0.6, 8), fontsize=8)
        ax.set_gid(f"map-{name}")
    t = comparison.thresholds
    rule = f"mc < -{t.eps:.3g} -> I; else CKA < {t.cka_cut:.3g} -> II-A; else II-B"
    title = (
        f"{shared_title(list(comparison.descriptions))}\nRegime maps under thresholds shared by "
        f"{len(runs)} runs: {rule}"
    )
    fig.suptitle(wrapped(title, fig.get_figwidth() - 0.4, 10), fontsize=10)
    handles = [Patch(color=REGIME_COLORS[r], label=f"Regime {r}") for r in REGIMES]
    if (labels["regime"] == COLLAPSED).any():
        handles.append(Patch(color=REGIME_COLORS[COLLAPSED], label="collapsed (no regime)"))
    handles.append(Patch(label=f"probability < {CONFIDENT:.0%}", **UNCERTAIN))
    handles += [Line2D([], [], label=BOUNDARY_LABEL[k], **BOUNDARY_STYLE[k]) for k in ("I", "II")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def difference_figure(comparison: Comparison):
    """Per run after the first: the cells it shares with the first, coloured by the probability
    that their labels differ (``p_differ``); a cell whose labels differ shows the change, one
    whose labels agree '='. Empty where a probability is missing (a collapsed cell)."""
    diff = comparison.differences
    reference, others = comparison.reference, list(comparison.names[1:])
    described = dict(zip(comparison.names, comparison.descriptions))
    knob = comparison.labels["knob"].iloc[0]
    temps = temperature_order(comparison.labels)
    pairs = {name: diff[(diff["run_a"] == reference) & (diff["run_b"] == name)] for name in others}
    widths = [max(1, rows["density"].nunique()) for rows in pairs.values()]
    height = max(2.8, 0.6 * len(temps)) + 2.6
    fig, axes = plt.subplots(
        1, len(others), figsize=(2.6 + 1.1 * sum(widths) + 0.9 * len(others), height), squeeze=False,
        gridspec_kw={"width_ratios": widths}, layout="constrained",
    )  # fmt: skip
    image = None
    for i, (ax, name) in enumerate(zip(axes[0], others)):
        rows = pairs[name]
        densities = sorted(rows["density"].unique())
        p = _grid(rows, "p_differ", temps, densities).astype(float)
        differs = _grid(rows, "differs", temps, densities)
        image = ax.imshow(p, origin="lower", cmap="Reds", vmin=0, vmax=1, aspect="auto")
        keyed = rows.set_index(["temperature", "density"])
        for (r, c), flag in np.ndenumerate(differs):
            if not isinstance(flag, (bool, np.bool_)):
                continue
            row = keyed.loc[(temps[r], densities[c])]
            text = f"{row['regime_a']}\n-> {row['regime_b']}" if flag else f"= {row['regime_a']}"
            if np.isfinite(p[r, c]):
                text += f"\np={p[r, c]:.2f}"
            colour = "white" if np.isfinite(p[r, c]) and p[r, c] > 0.6 else "black"
            weight = "bold" if flag else "normal"
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color=colour, fontweight=weight)
        _ticks(ax, temps, densities, i == 0, knob, 1.1 * len(densities))
        head = f"{name} vs {reference}"
        body = f"pruning {described[name].get('method', '?')} vs {described[reference].get('method', '?')}"
        ax.set_title(wrapped(f"{head}\n{body}", 1.1 * len(densities) + 0.6, 8), fontsize=8)
        ax.set_gid(f"difference-{name}")
    if image is not None:
        bar = fig.colorbar(image, ax=list(axes[0]), fraction=0.05, pad=0.02)
        bar.set_label("p_differ: share of draws in which the labels differ", fontsize=8)
    t = comparison.thresholds
    title = (
        f"{shared_title(list(comparison.descriptions))}\nWhere the regimes differ from {reference}'s, "
        f"under shared thresholds (eps = {t.eps:.3g}, CKA cut = {t.cka_cut:.3g}); "
        "'A -> B': the first run's label, then this run's"
    )
    fig.suptitle(wrapped(title, fig.get_figwidth() - 0.4, 10), fontsize=10)
    return fig


def draw_comparison(comparison: Comparison, maps: list[str], difference: list[str], dpi: int = 150) -> None:
    """Both figures, each written to every path given (one per format)."""
    for make, outputs in ((maps_figure, maps), (difference_figure, difference)):
        fig = make(comparison)
        for path in outputs:
            save_figure(fig, path, dpi)
        plt.close(fig)
