"""The README's first two commands are what CI runs, verbatim."""

from __future__ import annotations

import re

from .conftest import REPO


def _bash_blocks(text: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_commands():
    blocks = _bash_blocks((REPO / "README.md").read_text())
    install_and_demo, tests = blocks[0], blocks[1]
    assert "pip install" in install_and_demo and install_and_demo.rstrip().endswith("snakemake")
    assert "pytest" in tests
    ci_lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    assert install_and_demo in ci_lines
    assert tests in ci_lines
    assert ci_lines.index(install_and_demo) < ci_lines.index(tests)


def test_readme_stays_a_five_minute_read_and_links_to_the_docs():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= 10 * 1024, "README.md over 10 KB: move detail to docs/ and link it"
    for page in ("method", "configuration", "running", "reruns", "troubleshooting", "performance"):
        assert f"(docs/{page}.md)" in text and (REPO / "docs" / f"{page}.md").is_file()
    assert (REPO / "docs" / "regime_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
