"""Phase diagrams like the paper's Figure 2 and the regime map (HTML tables: threeregime.views.tables).

Every heatmap has one row per temperature and one column per density. Rows run from the coldest
temperature (bottom) to the hottest (top), so temperature rises upward whatever the knob: for
epochs the top row is the fewest epochs, for batch size the smallest batch, for SAM the largest
rho. Regime boundaries are drawn from the classification (``regimes.csv``), never by hand: a solid
line along every cell edge between Regime I and Regime II (the LMC boundary, mc = -eps) and a
dashed line between II-A and II-B (the CKA boundary). A collapsed cell (no regime: its models
are at chance) is grey and labelled in the regime map, and no boundary is drawn along its edges.
"""

from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import patheffects  # noqa: E402
from matplotlib.colors import ListedColormap, LogNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from threeregime.analysis.advice import knob_action
from threeregime.analysis.cells import temperature_order
from threeregime.analysis.regimes import COLLAPSED, REGIMES  # noqa: E402
from threeregime.config.settings import PlotConfig, fmt_value  # noqa: E402
from threeregime.io.files import save_figure  # noqa: E402
from threeregime.registry.knobs import KNOBS  # noqa: E402
from threeregime.registry.metrics import panels as registered_panels  # noqa: E402

REGIME_COLORS = {"I": "#d62728", "II-A": "#ff9f1c", "II-B": "#2ca02c", COLLAPSED: "#b0b0b0"}
LABELS = (*REGIMES, COLLAPSED)  # the regime map's categories
BOUNDARY_STYLE = {
    "I": {"color": "black", "lw": 2.4, "ls": "-"},
    "II": {"color": "black", "lw": 2.0, "ls": (0, (4, 2))},
}
# Markers: white star = lowest test error of a density; open circle = the model-selection pick.
STAR = {"marker": "*", "color": "white", "mec": "black"}
PICK = {"marker": "o", "ms": 8, "mfc": "none", "mec": "black", "mew": 1.6}
# Each label's probability of being right (threeregime.analysis.uncertainty): with the boundaries
# drawn over it, this panel shows which stretches of a boundary are uncertain.
BOUNDARY_LABEL = {
    "I": "boundary Regime I | II (LMC: mc = -eps)",
    "II": "boundary II-A | II-B (CKA = cut)",
}


# ----------------------------------------------------------------------------- grids
def cell_grid(cells: pd.DataFrame, column: str) -> tuple[np.ndarray, list, list]:
    """Matrix [temperature (coldest first), density (ascending)] of one column."""
    temps = temperature_order(cells)
    densities = sorted(cells["density"].unique())
    table = cells.pivot(index="temperature", columns="density", values=column)
    return table.reindex(index=temps, columns=densities).to_numpy(), temps, densities


def boundary_segments(regimes: np.ndarray) -> list[tuple[str, tuple[float, float], tuple[float, float]]]:
    """Edges between cells of different regimes, in image coordinates (cell (r, c) is centred at
    x = c, y = r): ``(kind, (x0, x1), (y0, y1))`` with kind "I" when one side is Regime I (the
    LMC boundary) and "II" between II-A and II-B (the CKA boundary)."""
    rows, cols = regimes.shape
    segments = []
    for r in range(rows):
        for c in range(cols):
            here = regimes[r, c]
            if c + 1 < cols and _between_regimes(here, regimes[r, c + 1]):
                kind = "I" if "I" in (here, regimes[r, c + 1]) else "II"
                segments.append((kind, (c + 0.5, c + 0.5), (r - 0.5, r + 0.5)))
            if r + 1 < rows and _between_regimes(here, regimes[r + 1, c]):
                kind = "I" if "I" in (here, regimes[r + 1, c]) else "II"
                segments.append((kind, (c - 0.5, c + 0.5), (r + 0.5, r + 0.5)))
    return segments


def _between_regimes(a, b) -> bool:
    """Two different regimes meet (a collapsed cell has no regime: no boundary along it)."""
    return a != b and COLLAPSED not in (a, b)


def draw_boundaries(ax, regimes: np.ndarray) -> None:
    """Draw :func:`boundary_segments` (gid ``boundary-I`` / ``boundary-II``, white halo)."""
    halo = [patheffects.withStroke(linewidth=4.2, foreground="white")]
    for kind, xs, ys in boundary_segments(regimes):
        ax.plot(
            xs, ys, gid=f"boundary-{kind}", path_effects=halo, solid_capstyle="butt", **BOUNDARY_STYLE[kind]
        )


def wrapped(text: str, inches: float, fontsize: float) -> str:
    """``text`` broken into lines that fit ``inches`` at ``fontsize`` points (each line of the
    input wrapped on its own), so that a long knob name or unit never runs into other text."""
    width = max(12, int(inches * 72 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def run_title(description: dict | None) -> str:
    """The line that names a run in every figure's title: the run (and its setup), the knob, the
    model on its dataset and the pruning method (threeregime.config.experiment
    .ExperimentConfig.description); "" without a description."""
    if not description:
        return ""
    run = description.get("run", "?")
    if description.get("setup"):
        run += f" / setup {description['setup']}"
    model = description.get("model", "?")
    if description.get("data"):
        model += f" on {description['data']}"
    return (
        f"{run}: knob {description.get('knob', '?')}, model {model}, pruning {description.get('method', '?')}"
    )


def titled(description: dict | None, text: str) -> str:
    """``text`` under the run's :func:`run_title` line."""
    line = run_title(description)
    return f"{line}\n{text}" if line else text


def temperature_label(knob: str) -> str:
    """y-axis label: the knob's name, its unit, and which way is hotter."""
    info = KNOBS[knob]
    hotter = knob_action(knob, "raise")
    return f"{info.label} [{info.unit}]\ntemperature rises upward ({hotter})"


DENSITY_LABEL = "density [fraction of prunable weights kept]"
LABEL_SIZE = 9


def _axes_labels(ax, knob: str, temps: list, densities: list, size: tuple[float, float]) -> None:
    """Ticks and axis labels of a heatmap whose axes are ``size`` (width, height) inches."""
    ax.set_xticks(range(len(densities)), [fmt_value(d) for d in densities], rotation=45)
    ax.set_yticks(range(len(temps)), [fmt_value(t) for t in temps])
    ax.set_xlabel(wrapped(DENSITY_LABEL, size[0], LABEL_SIZE), fontsize=LABEL_SIZE)
    ax.set_ylabel(wrapped(temperature_label(knob), size[1], LABEL_SIZE), fontsize=LABEL_SIZE)


def _annotate(ax, values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    size = 7 if values.shape[1] <= 6 else 5
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            color = "white" if v < middle else "black"
            ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=size, color=color)


def _mark_best(ax, values: np.ndarray) -> None:
    """A star on the lowest value of every density column."""
    for c in range(values.shape[1]):
        column = values[:, c]
        if np.isfinite(column).any():
            r = int(np.nanargmin(column))
            ax.plot(c - 0.34, r + 0.27, ms=8, gid="best-test-error", **STAR)


# ----------------------------------------------------------------------------- figures
def phase_figure(
    regimes: pd.DataFrame,
    cfg: PlotConfig,
    boundaries: pd.DataFrame | None = None,
    description: dict | None = None,
):
    """Figure 2: one heatmap per metric in a grid of ``cfg.ncols`` columns, boundaries drawn
    (with their intervals, from ``boundaries``); the title names the run (``description``)."""
    knob = regimes["knob"].iloc[0]
    regime_grid, temps, densities = cell_grid(regimes, "regime")
    panels = [p for p in registered_panels() if p[0] in regimes and regimes[p[0]].notna().any()]
    ncols = min(cfg.ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = max(4.0, 2.2 + 0.75 * len(densities))  # room for the labels of a small grid
    height = max(3.4, 1.9 + 0.42 * len(temps))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * width, nrows * height + 1.2), squeeze=False)
    for ax, (column, panel) in zip(axes.flat, panels):
        values = cell_grid(regimes, column)[0].astype(float)
        norm = LogNorm() if panel.log and np.nanmin(values) > 0 else None
        image = ax.imshow(values, origin="lower", cmap=panel.cmap or cfg.cmap, norm=norm, aspect="auto")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(panel.label, fontsize=8)
        if cfg.annotate and values.size <= 200:
            _annotate(ax, values)
        if column == "test_error_mean":
            _mark_best(ax, values)
        draw_boundaries(ax, regime_grid)
        bands = draw_bands(ax, boundaries, temps, densities)
        _axes_labels(ax, knob, temps, densities, (width - 1.6, height - 1.6))
        ax.set_title(wrapped(panel.title, width - 1.2, 11), fontsize=11)
        ax.set_gid(column)
    for ax in list(axes.flat)[len(panels) :]:
        ax.remove()
    eps, cut = regimes["eps"].iloc[0], regimes["cka_cut"].iloc[0]
    handles = [
        Line2D([], [], label=f"{BOUNDARY_LABEL['I']}, eps = {eps:.3g}", **BOUNDARY_STYLE["I"]),
        Line2D([], [], label=f"{BOUNDARY_LABEL['II']}, cut = {cut:.3g}", **BOUNDARY_STYLE["II"]),
        Line2D([], [], ls="", ms=9, label="lowest test error per density", **STAR),
    ] + (bands if panels else [])
    figure_width = ncols * width
    legend_columns = max(1, min(len(handles), int(figure_width // 4.2)))
    fig.legend(handles=handles, loc="lower center", ncol=legend_columns, frameon=False, fontsize=9)
    title = f"Phase diagrams over {KNOBS[knob].label} x density; regime boundaries from the classification"
    fig.suptitle(wrapped(titled(description, title), figure_width - 0.5, 12), fontsize=12)
    legend_rows = math.ceil(len(handles) / legend_columns)
    fig.tight_layout(rect=(0, min(0.3, 0.35 * legend_rows / (nrows * height + 1.2)), 1, 1))
    return fig


def phase_diagram(
    regimes: pd.DataFrame,
    cfg: PlotConfig,
    outputs: list[str],
    boundaries: pd.DataFrame | None = None,
    description: dict | None = None,
) -> None:
    fig = phase_figure(regimes, cfg, boundaries, description)
    for path in outputs:
        save_figure(fig, path, cfg.dpi)
    plt.close(fig)


def regime_figure(
    regimes: pd.DataFrame,
    cfg: PlotConfig,
    selection: pd.DataFrame | None = None,
    boundaries: pd.DataFrame | None = None,
    description: dict | None = None,
):
    """Categorical regime map with a legend; each cell shows its regime and, when below 1, its
    stability over the robustness sweep. Stars: lowest test error per density; circles: the
    training-metrics-only pick of the model selection (``selection``). The title names the run
    (``description``) and the rule."""
    knob = regimes["knob"].iloc[0]
    regime_grid, temps, densities = cell_grid(regimes, "regime")
    codes = np.vectorize(LABELS.index)(regime_grid)
    cmap = ListedColormap([REGIME_COLORS[r] for r in LABELS])
    axes_size = (max(3.0, 0.9 * len(densities)), max(2.8, 0.75 * len(temps)))
    fig, ax = plt.subplots(figsize=(axes_size[0] + 4.4, axes_size[1] + 1.9))
    ax.imshow(codes, origin="lower", cmap=cmap, vmin=-0.5, vmax=len(LABELS) - 0.5, aspect="auto")
    stability = cell_grid(regimes, "stability")[0] if "stability" in regimes else None
    for (r, c), name in np.ndenumerate(regime_grid):
        text = name
        if stability is not None and stability[r, c] < 1:
            text += f"\n({stability[r, c]:.0%})"
        ax.text(c, r + 0.06, text, ha="center", va="center", fontsize=8, color="black")
    draw_boundaries(ax, regime_grid)
    _axes_labels(ax, knob, temps, densities, axes_size)
    handles = [Patch(color=REGIME_COLORS[r], label=f"Regime {r}") for r in REGIMES]
    if (regime_grid == COLLAPSED).any():
        label = "collapsed: test error at chance\nor no mc / CKA (no regime)"
        handles.append(Patch(color=REGIME_COLORS[COLLAPSED], label=label))
    handles += mark_uncertain(ax, regimes)
    handles += draw_bands(ax, boundaries, temps, densities)
    handles += [Line2D([], [], label=BOUNDARY_LABEL[k], **BOUNDARY_STYLE[k]) for k in ("I", "II")]
    if selection is not None:
        row_of = {t: i for i, t in enumerate(temps)}
        for c, density in enumerate(densities):
            pick = selection[selection["density"] == density]
            if pick.empty:
                continue
            best, rule = pick["best_temperature"].iloc[0], pick["rule_temperature"].iloc[0]
            ax.plot(c - 0.32, row_of[best] + 0.32, ms=11, gid="best", **STAR)
            if rule in row_of:  # no pick where every cell of the density collapsed
                ax.plot(c + 0.32, row_of[rule] + 0.32, gid="pick", **PICK)
        handles += [
            Line2D([], [], ls="", ms=11, label="lowest test error", **STAR),
            Line2D([], [], ls="", label="pick from training metrics", **PICK),
        ]
    if stability is not None and (stability < 1).any():
        handles.append(
            Line2D([], [], ls="", label="(n%): share of the eps / CKA-cut sweep\nthat keeps the regime")
        )
    eps, cut = regimes["eps"].iloc[0], regimes["cka_cut"].iloc[0]
    title = f"Regimes: mc < -{eps:.3g} -> I; else CKA < {cut:.3g} -> II-A; else II-B"
    ax.set_title(wrapped(titled(description, title), axes_size[0] + 0.5, 9), fontsize=9)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def regime_map(
    regimes: pd.DataFrame,
    cfg: PlotConfig,
    outputs: list[str],
    selection: pd.DataFrame | None = None,
    boundaries: pd.DataFrame | None = None,
    description: dict | None = None,
) -> None:
    fig = regime_figure(regimes, cfg, selection, boundaries, description)
    for path in outputs:
        save_figure(fig, path, cfg.dpi)
    plt.close(fig)


# ----------------------------------------------------------------------------- Hessian density
ESD_COLUMNS = ("hessian_esd_nodes_mean", "hessian_esd_weights_mean")


def broadened_density(nodes, weights, grid: np.ndarray, sigma: float) -> np.ndarray:
    """sum_k w_k N(x; node_k, sigma^2) on ``grid``: quadrature nodes drawn as a smooth density
    (the Gaussian broadening of Ghorbani et al. 2019 and PyHessian)."""
    nodes, weights = np.asarray(nodes, float), np.asarray(weights, float)
    z = (grid[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z**2) * weights[None, :]).sum(axis=1) / (sigma * math.sqrt(2 * math.pi))


def esd_figure(regimes: pd.DataFrame, cfg: PlotConfig, description: dict | None = None):
    """The Hessian eigenvalue density of every cell (metrics.hessian_esd), laid out like the phase
    diagram: hottest temperature on top, densities left to right, one shared eigenvalue axis;
    the title names the run (``description``)."""
    from threeregime.registry.metrics import parse_vector

    knob = regimes["knob"].iloc[0]
    temps = temperature_order(regimes)
    densities = sorted(regimes["density"].unique())
    cells = regimes.set_index(["temperature", "density"])
    spectra = {
        key: (parse_vector(row[ESD_COLUMNS[0]]), parse_vector(row[ESD_COLUMNS[1]]))
        for key, row in cells.iterrows()
    }
    everything = np.concatenate([nodes for nodes, _ in spectra.values()])
    low, high = float(everything.min()), float(everything.max())
    sigma = max(high - low, 1e-12) / 100
    grid = np.linspace(low - 5 * sigma, high + 5 * sigma, 600)
    fig, axes = plt.subplots(
        len(temps), len(densities), figsize=(1.9 * len(densities) + 1.2, 1.3 * len(temps) + 1.2),
        sharex=True, sharey=True, squeeze=False,
    )  # fmt: skip
    for r, temperature in enumerate(reversed(temps)):  # hottest on top
        for c, density in enumerate(densities):
            ax = axes[r, c]
            nodes, weights = spectra[(temperature, density)]
            ax.semilogy(grid, np.maximum(broadened_density(nodes, weights, grid, sigma), 1e-8), lw=1)
            ax.set_ylim(1e-6 / sigma, None)
            ax.set_gid(f"esd-{fmt_value(temperature)}-{fmt_value(density)}")
            if r == 0:
                ax.set_title(f"density {fmt_value(density)}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{fmt_value(temperature)}", fontsize=8)
    fig.supxlabel("Hessian eigenvalue (training loss, kept weights)")
    fig.supylabel(f"{temperature_label(knob)}\ndensity of eigenvalues (log)", fontsize=9)
    title = f"Hessian eigenvalue density per cell (stochastic Lanczos quadrature, sigma = {sigma:.3g})"
    fig.suptitle(titled(description, title))
    fig.tight_layout()
    return fig


def esd_diagram(
    regimes: pd.DataFrame, cfg: PlotConfig, outputs: list[str], description: dict | None = None
) -> None:
    fig = esd_figure(regimes, cfg, description)
    for path in outputs:
        save_figure(fig, path, cfg.dpi)
    plt.close(fig)


def instability_figure(regimes: pd.DataFrame, stable_barrier: float, description: dict | None = None):
    """Frankle et al. 2020's instability plot: the error barrier between the two retrainings
    against the temperature (the rewind step k under the rewind_step knob), one line per
    density, with the stable cut. The knob's values sit evenly spaced, smallest left; the title
    names the run (``description``)."""
    knob = regimes["knob"].iloc[0]
    temps = sorted(regimes["temperature"].unique())
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * len(temps), 3.6))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, regimes["density"].nunique()))
    for colour, (density, column) in zip(colours, regimes.groupby("density")):
        rows = column.set_index("temperature").loc[[t for t in temps if t in set(column["temperature"])]]
        x = [temps.index(t) for t in rows.index]
        spread = rows["barrier_std"] if "barrier_std" in rows else None
        line = ax.errorbar(
            x, rows["barrier_mean"], yerr=spread, marker="o", ms=4, capsize=2, color=colour,
            label=f"density {fmt_value(density)}",
        )  # fmt: skip
        line.lines[0].set_gid(f"barrier-{fmt_value(density)}")
    ax.axhline(stable_barrier, color="black", ls="--", lw=1, gid="stable-barrier")
    ax.set_xticks(range(len(temps)), [fmt_value(t) for t in temps])
    info = KNOBS[knob]
    ax.set_xlabel(f"{info.label} [{info.unit}]")
    ax.set_ylabel("error barrier (train error)")
    title = f"Instability: barrier between two retrainings (stable below {stable_barrier:g})"
    ax.set_title(wrapped(titled(description, title), 2.0 + 0.6 * len(temps), 9), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def instability_diagram(
    regimes: pd.DataFrame,
    stable_barrier: float,
    outputs: list[str],
    dpi: int,
    description: dict | None = None,
) -> None:
    fig = instability_figure(regimes, stable_barrier, description)
    for path in outputs:
        save_figure(fig, path, dpi)
    plt.close(fig)


# boundary bars sit in the lower part of a row: label in the middle, markers of the selection above
BAND_STYLE = {"I|II": {"color": "black", "offset": -0.42}, "II-A|II-B": {"color": "#1f3fbf", "offset": -0.3}}


def density_position(density: float, densities: list) -> float:
    """The x coordinate of a density on a heatmap whose columns are ``densities`` (ascending,
    centred at 0, 1, ...): linear in log density between columns, clamped to the grid's edges."""
    logs = np.log(np.asarray(densities, dtype=float))
    x = np.interp(math.log(density), logs, np.arange(len(logs)))
    return float(np.clip(x, -0.5, len(logs) - 0.5))


def draw_bands(ax, boundaries: pd.DataFrame | None, temps: list, densities: list) -> list:
    """Each boundary's interval as a bar across its temperature's row (gid ``band-<kind>``; an
    end beyond the grid runs to the grid's edge, without a cap) and its estimate as a diamond on
    it (gid ``estimate-<kind>``). Returns legend handles."""
    if boundaries is None or boundaries.empty:
        return []
    row_of = {float(t): i for i, t in enumerate(temps)}
    edges = (-0.5, len(densities) - 0.5)
    drawn = set()
    for b in boundaries.itertuples():
        r = row_of.get(float(b.temperature))
        if r is None:
            continue
        style = BAND_STYLE[b.boundary]
        y = r + style["offset"]
        if np.isfinite(b.low) or np.isfinite(b.high):
            x0 = density_position(b.low, densities) if np.isfinite(b.low) else edges[0]
            x1 = density_position(b.high, densities) if np.isfinite(b.high) else edges[1]
            ax.plot([x0, x1], [y, y], color=style["color"], lw=2.2, solid_capstyle="butt",
                    gid=f"band-{b.boundary}")  # fmt: skip
            for x, finite in ((x0, np.isfinite(b.low)), (x1, np.isfinite(b.high))):
                if finite:
                    ax.plot([x, x], [y - 0.07, y + 0.07], color=style["color"], lw=2.2)
            drawn.add(b.boundary)
        if np.isfinite(b.density):
            x = density_position(b.density, densities)
            ax.plot([x], [y], marker="D", ms=5, mfc="white", mec=style["color"], mew=1.5, ls="",
                    gid=f"estimate-{b.boundary}")  # fmt: skip
            drawn.add(b.boundary)
    interval = f"{boundaries['interval'].iloc[0]:.0%}"
    return [
        Line2D(
            [],
            [],
            color=BAND_STYLE[kind]["color"],
            lw=2.2,
            marker="D",
            ms=5,
            mfc="white",
            label=f"{kind.replace('|', ' | ')} boundary: estimate and {interval} interval",
        )  # fmt: skip
        for kind in BAND_STYLE
        if kind in drawn
    ]


def mark_uncertain(ax, regimes: pd.DataFrame) -> list:
    """Hatch every cell whose label's probability is below CONFIDENT (gid ``uncertain``, with
    its p), and fade and hatch differently the cells whose label was
    inferred from neighbours rather than measured (gid ``inferred``). Returns legend handles."""
    from matplotlib.patches import Rectangle

    from threeregime.analysis.confidence import CONFIDENT

    handles = []
    marks = {
        "uncertain": {"hatch": "///", "fill": False, "lw": 0, "ec": "black"},
        "inferred": {"hatch": "..", "fc": (1, 1, 1, 0.55), "lw": 0, "ec": "grey"},
    }
    p = cell_grid(regimes, "p_label")[0].astype(float) if "p_label" in regimes else None
    inferred = None
    if "label_source" in regimes:
        inferred = cell_grid(regimes, "label_source")[0] == "inferred"
    for (r, c), _ in np.ndenumerate(cell_grid(regimes, "regime")[0]):
        if inferred is not None and inferred[r, c]:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, gid="inferred", **marks["inferred"]))
        elif p is not None and p[r, c] < CONFIDENT:
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, gid="uncertain", **marks["uncertain"]))
            ax.text(c, r - 0.18, f"p={p[r, c]:.2f}", ha="center", va="center", fontsize=7)
    if p is not None and (p < CONFIDENT).any():
        handles.append(
            Patch(label=f"label's probability < {CONFIDENT:.0%}: may differ with other seeds or machines",
                  **marks["uncertain"])
        )  # fmt: skip
    if inferred is not None and inferred.any():
        handles.append(Patch(label="not run: label inferred from measured neighbours", **marks["inferred"]))
    return handles
