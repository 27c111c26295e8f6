"""HTML pages of the analysis tables (regimes, advice, selection, robustness, summary) for the
Snakemake report. Kept apart from threeregime.views.plot so that writing them needs no matplotlib."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd

from threeregime.analysis.regimes import REGIMES
from threeregime.io.files import write_text

TABLE_CSS = """
body { font-family: sans-serif; font-size: 14px; margin: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; }
td.regime-I { background: #f4b6b6; } td.regime-II-A { background: #ffd9a0; }
td.regime-II-B { background: #b9e3b9; }
"""


def _cell_text(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _table_html(frame: pd.DataFrame, uuid: str = "table") -> str:
    """One table (pandas' Styler, every cell and header HTML-escaped); regime cells (columns
    named ...regime, regime_a, ...) carry the class ``regime-<name>`` that colours them."""
    classes = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for column in frame.columns:
        name = str(column)
        if name.endswith("regime") or name.startswith("regime_"):
            classes[column] = [f"regime-{v}" if v in REGIMES else "" for v in frame[column]]
    styler = (
        frame.style.format(_cell_text, escape="html")
        .format_index(escape="html", axis=1)
        .hide(axis="index")
        .set_td_classes(classes)
        .set_uuid(uuid)
    )
    return styler.to_html()


def html_page(title: str, sections: list[tuple[str, pd.DataFrame, str]]) -> str:
    """A self-contained HTML page of several tables, each (heading, table, note)."""
    body = ""
    for i, (heading, frame, note) in enumerate(sections):
        note_html = f"<p>{html.escape(note)}</p>" if note else ""
        body += f"<h3>{html.escape(heading)}</h3>{note_html}{_table_html(frame, f'table{i}')}"
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{TABLE_CSS}</style></head><body><h2>{html.escape(title)}</h2>{body}</body></html>\n"
    )


def html_table(frame: pd.DataFrame, title: str, note: str = "") -> str:
    """A self-contained HTML page with one table (:func:`_table_html`)."""
    note_html = f"<p>{html.escape(note)}</p>" if note else ""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{TABLE_CSS}</style></head><body><h2>{html.escape(title)}</h2>{note_html}"
        f"{_table_html(frame)}</body></html>\n"
    )


def _flatten(prefix: str, value) -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _flatten(f"{prefix}.{k}" if prefix else k, v)]
    return [(prefix, value)]


TABLE_PAGES = {
    "regimes": ("Regime of every cell", "Per-cell means over seeds, the regime and its stability."),
    "advice": (
        "Advice per density",
        "From the reference dense model: raise / lower / keep the temperature, from the regime "
        "only, checked against the best test error of the column.",
    ),
    "advice_cells": ("Advice with every cell as the reference", "The same rule and check per cell."),
    "selection": (
        "Model selection from training metrics",
        "Per density: the dense model picked without test error, and its test-error rank.",
    ),
    "robustness": (
        "Robustness of the classification",
        "Cells that change regime when eps and the CKA cut move.",
    ),
    "boundaries": (
        "Regime boundaries along density",
        "Per temperature: the density where the regime changes (I | II, and II-A | II-B among the "
        "connected cells) and its interval from the uncertainty model's draws.",
    ),
    "summary": ("Summary", "Thresholds used and where they came from; agreement and ranks."),
}


def write_html_tables(tables: dict, folder) -> list[str]:
    """Write ``<folder>/<name>.html`` for every page of :data:`TABLE_PAGES` (``tables`` as
    :func:`threeregime.analysis.advice.analyse` returns them, ``summary`` a nested dict); return the paths."""
    frames = dict(tables)
    frames["summary"] = pd.DataFrame(_flatten("", tables["summary"]), columns=["quantity", "value"])
    paths = []
    for name, (title, note) in TABLE_PAGES.items():
        path = Path(folder) / f"{name}.html"
        write_text(path, html_table(frames[name], title, note))
        paths.append(str(path))
    return paths
