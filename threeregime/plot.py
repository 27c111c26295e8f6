"""Phase diagrams like the paper's Figure 2: metric heatmaps over temperature x density, with the
regime boundaries drawn from the classification, and a categorical regime map.

Rows run from the coldest temperature (bottom) to the hottest (top), so temperature rises upward
whatever the knob: for epochs the top row is the fewest epochs, for batch size the smallest batch.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from threeregime.config import KNOBS, PlotConfig, fmt_value  # noqa: E402
from threeregime.io import save_figure  # noqa: E402
from threeregime.regimes import REGIMES, temperature_order  # noqa: E402

PANELS = (
    ("test_error_mean", "Test error"),
    ("normalized_test_error", "Normalized test error"),
    ("mc_mean", "LMC: mc = m - e(u)"),
    ("cka_softmax_mean", "CKA (softmax outputs)"),
    ("hessian_top_eigenvalue_mean", "Hessian top eigenvalue"),
    ("hessian_trace_mean", "Hessian trace"),
)
REGIME_COLORS = {"I": "#d62728", "II-A": "#ff9f1c", "II-B": "#2ca02c"}


def cell_grid(cells: pd.DataFrame, column: str) -> tuple[np.ndarray, list, list]:
    """Matrix [temperature (coldest first), density (ascending)] of one column."""
    temps = temperature_order(cells)
    densities = sorted(cells["density"].unique())
    table = cells.pivot(index="temperature", columns="density", values=column)
    return table.reindex(index=temps, columns=densities).to_numpy(), temps, densities


def draw_boundaries(ax, regimes: np.ndarray) -> None:
    """Black lines along every cell edge that separates two different regimes."""
    rows, cols = regimes.shape
    for r in range(rows):
        for c in range(cols):
            if c + 1 < cols and regimes[r, c] != regimes[r, c + 1]:
                ax.plot([c + 0.5, c + 0.5], [r - 0.5, r + 0.5], color="black", lw=2.2)
            if r + 1 < rows and regimes[r, c] != regimes[r + 1, c]:
                ax.plot([c - 0.5, c + 0.5], [r + 0.5, r + 0.5], color="black", lw=2.2)


def _axes_labels(ax, knob: str, temps: list, densities: list) -> None:
    info = KNOBS[knob]
    ax.set_xticks(range(len(densities)), [fmt_value(d) for d in densities], rotation=45)
    ax.set_yticks(range(len(temps)), [fmt_value(t) for t in temps])
    ax.set_xlabel("density (fraction of conv weights kept)")
    ax.set_ylabel(f"{info.label} [{info.unit}]\n(temperature rises upward)")


def _heatmap(ax, fig, values, regimes, knob, temps, densities, title, cfg: PlotConfig) -> None:
    image = ax.imshow(values, origin="lower", cmap=cfg.cmap, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if cfg.annotate and values.size <= 200:
        finite = values[np.isfinite(values)]
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0
        for (r, c), v in np.ndenumerate(values):
            if np.isfinite(v):
                color = "white" if v < middle else "black"
                ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=7, color=color)
    draw_boundaries(ax, regimes)
    _axes_labels(ax, knob, temps, densities)
    ax.set_title(title)


def phase_diagram(regimes: pd.DataFrame, cfg: PlotConfig, outputs: list[str]) -> None:
    knob = regimes["knob"].iloc[0]
    regime_grid, temps, densities = cell_grid(regimes, "regime")
    panels = [(c, t) for c, t in PANELS if c in regimes]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        values = cell_grid(regimes, column)[0].astype(float)
        _heatmap(ax, fig, values, regime_grid, knob, temps, densities, title, cfg)
    fig.suptitle(f"Phase diagrams over {KNOBS[knob].label} x density (lines: regime boundaries)")
    fig.tight_layout()
    for path in outputs:
        save_figure(fig, path, cfg.dpi)
    plt.close(fig)


def regime_map(regimes: pd.DataFrame, cfg: PlotConfig, outputs: list[str]) -> None:
    knob = regimes["knob"].iloc[0]
    regime_grid, temps, densities = cell_grid(regimes, "regime")
    codes = np.vectorize(REGIMES.index)(regime_grid)
    cmap = ListedColormap([REGIME_COLORS[r] for r in REGIMES])
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(densities), 1.6 + 0.55 * len(temps)))
    ax.imshow(codes, origin="lower", cmap=cmap, vmin=-0.5, vmax=len(REGIMES) - 0.5, aspect="auto")
    for (r, c), name in np.ndenumerate(regime_grid):
        ax.text(c, r, name, ha="center", va="center", fontsize=9, color="black")
    draw_boundaries(ax, regime_grid)
    _axes_labels(ax, knob, temps, densities)
    eps, cut = regimes["eps"].iloc[0], regimes["cka_cut"].iloc[0]
    ax.set_title(f"Regimes (mc < -{eps:.3g}: I; CKA < {cut:.3g}: II-A; else II-B)", fontsize=9)
    handles = [Patch(color=REGIME_COLORS[r], label=f"Regime {r}") for r in REGIMES]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    fig.tight_layout()
    for path in outputs:
        save_figure(fig, path, cfg.dpi)
    plt.close(fig)
