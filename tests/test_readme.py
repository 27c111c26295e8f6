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


def test_the_layout_block_names_every_subpackage_and_module():
    """README's layout block lists each subpackage with exactly the modules it holds."""
    block = re.search(r"## Layout\n\n```\n(.*?)```", (REPO / "README.md").read_text(), re.S).group(1)
    listed, current = {}, None
    for line in block.splitlines():
        match = re.match(r"  (\w+)/\s+(.*)", line)
        if match:
            current = match.group(1)
            listed[current] = match.group(2)
        elif current and line.startswith("             "):
            listed[current] += " " + line.strip()
        else:
            current = None
    package = REPO / "threeregime"
    actual = {
        folder.name: sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
        for folder in package.iterdir()
        if (folder / "__init__.py").is_file()
    }
    assert sorted(listed) == sorted(actual), "subpackages"
    for name, modules in actual.items():
        assert sorted(m.strip() for m in listed[name].split(",")) == modules, name


def test_ci_runs_the_linters_before_the_tests():
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    lint = next(i for i, line in enumerate(lines) if "ruff check" in line)
    for check in ("ruff check .", "ruff format --check .", "snakefmt --check workflow", "snakemake --lint"):
        assert check in lines[lint], check
    assert lint < next(i for i, line in enumerate(lines) if "pytest" in line)
