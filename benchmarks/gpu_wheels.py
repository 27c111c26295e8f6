"""Wheels of what the workflow needs on a GPU machine whose Python (3.12) lacks it: snakemake
and its dependencies, at this environment's versions, minus what that image already holds.

Run on a machine with PyPI access, in the repository root; on the GPU machine, install them first:

    python benchmarks/gpu_wheels.py .whl        # then copy .whl/ (git-ignored) with the checkout
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl

Pure-Python wheels are built from this environment's versions (``pip wheel --no-deps``, one of
them exists only as a source archive); packages with compiled code are downloaded for CPython
3.12 on manylinux x86-64.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOTS = ["snakemake", "jsonschema"]
# Already in the GPU image (its package list): not carried.
PRESENT = set(
    "attrs certifi charset-normalizer click filelock idna jinja2 markupsafe numpy packaging pandas "
    "psutil pyyaml requests six tabulate typing-extensions urllib3 wrapt python-dateutil pygments "
    "rich markdown-it-py mdurl pyparsing".split()
)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str]) -> dict[str, str]:
    """name: installed version, for the roots and every requirement whose marker holds here."""
    seen, todo = {}, list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        dist = metadata.distribution(name)
        seen[name] = dist.version
        for requirement in dist.requires or []:
            head, _, marker = requirement.partition(";")
            if "extra" in marker:
                continue
            if marker.strip() and not eval_marker(marker):
                continue
            todo.append(re.split(r"[\s<>=!~\[(]", head.strip(), maxsplit=1)[0])
    return seen


def eval_marker(marker: str) -> bool:
    from packaging.markers import Marker

    environment = {"python_version": "3.12", "python_full_version": "3.12.3"}
    return Marker(marker).evaluate(environment)


def is_pure(name: str) -> bool:
    files = metadata.distribution(name).files or []
    return not any(str(f).endswith((".so", ".pyd")) for f in files)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".whl")
    out.mkdir(exist_ok=True)
    wanted = {n: v for n, v in closure(ROOTS).items() if n not in PRESENT}
    pip = [sys.executable, "-m", "pip"]
    pure = [f"{n}=={v}" for n, v in wanted.items() if is_pure(n)]
    binary = [f"{n}=={v}" for n, v in wanted.items() if not is_pure(n)]
    print(f"pure: {' '.join(pure)}\ncompiled: {' '.join(binary)}", flush=True)
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(out), *pure], check=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                    "--implementation", "cp", *platforms, "-d", str(out), *binary], check=True)  # fmt: skip
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(wheels)} wheels, {size:.1f} MiB in {out}")


if __name__ == "__main__":
    main()
