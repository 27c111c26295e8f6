"""The HTML report's ingredients: every caption the rules name exists and is valid
reStructuredText, and the table pages the rules declare are the ones classify writes. (The
report itself is built from a real run in tests/test_workflow.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from docutils.core import publish_parts

from threeregime.views.tables import TABLE_PAGES

from .conftest import REPO

WORKFLOW = REPO / "workflow"
ANALYSIS = (WORKFLOW / "rules" / "analysis.smk").read_text()


def _captions() -> list[Path]:
    folder = re.search(r'CAPTIONS = "([^"]+)"', ANALYSIS).group(1)
    names = re.findall(r'caption=f"\{CAPTIONS\}/([^"]+)"', ANALYSIS)
    return [(WORKFLOW / "rules" / folder / name).resolve() for name in names]


def test_every_report_output_has_a_caption():
    captions = _captions()
    assert len(captions) >= 12  # 2 figures, 6 table pages, 4 CSV files
    assert ANALYSIS.count("=report(") == len(captions)  # each marked output names its caption
    for path in captions:
        assert path.is_file(), path


@pytest.mark.parametrize("path", [*_captions(), WORKFLOW / "report" / "workflow.rst"], ids=lambda p: p.name)
def test_caption_is_valid_restructured_text(path):
    settings = {"halt_level": 2, "report_level": 2, "warning_stream": False}  # fail on warnings
    body = publish_parts(path.read_text(), writer="html", settings_overrides=settings)["body"]
    assert len(body) > 100


def test_snakefile_declares_the_workflow_description():
    assert 'report: "report/workflow.rst"' in (WORKFLOW / "Snakefile").read_text()
    text = (WORKFLOW / "report" / "workflow.rst").read_text()
    for word in ("Regime I", "Regime II-A", "Regime II-B", "mc = m - e(u)", "CKA", "Hessian"):
        assert word in text


def test_declared_table_pages_match_what_classify_writes():
    block = re.search(r"TABLES = \{.*?for name in \((.*?)\)", ANALYSIS, re.S).group(1)
    declared = re.findall(r'"([a-z_]+)"', block)
    assert sorted(declared) == sorted(TABLE_PAGES)
