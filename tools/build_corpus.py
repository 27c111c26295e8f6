"""Rebuild the byte-level corpus of the ``pystdlib`` dataset from this Python's standard library.

The corpus is the modules listed in ``threeregime.registry.datasets.PYSTDLIB_SOURCES``, in that
order, each after one line ``# ===== Lib/<path> =====`` and followed by a newline. The
standard library's sources differ from one Python release to the next, so the built file is
shipped with the package (``threeregime/corpora/pystdlib.txt``) and this script is only run to
make it again: under Python 3.11.7 it reproduces the registered sha256 byte for byte; under
another Python it writes a different file and says so (the registered checksum then refuses it
until the entry's sha256 is updated on purpose).

    python tools/build_corpus.py            # rebuild, compare with the registered sha256
    python tools/build_corpus.py --check    # only compare the shipped file with a fresh build

It also copies this Python's LICENSE.txt (the PSF licence the corpus is distributed under) beside
the corpus.
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import shutil
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from threeregime.registry.datasets import PYSTDLIB, PYSTDLIB_PYTHON, PYSTDLIB_SOURCES  # noqa: E402


def build(stdlib: Path) -> bytes:
    parts = []
    for name in PYSTDLIB_SOURCES:
        parts.append(f"# ===== Lib/{name} =====\n".encode())
        parts.append((stdlib / name).read_bytes())
        parts.append(b"\n")
    return b"".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus = build(stdlib)
    digest = hashlib.sha256(corpus).hexdigest()
    python = platform.python_version()
    print(f"built {len(corpus)} bytes from {len(PYSTDLIB_SOURCES)} modules of Python {python} ({stdlib})")
    print(f"sha256 {digest}; registered {PYSTDLIB.sha256}")
    if python != PYSTDLIB_PYTHON:
        print(f"note: the registered corpus was built with Python {PYSTDLIB_PYTHON}; this one differs")
    if not args.check:
        PYSTDLIB.location.parent.mkdir(parents=True, exist_ok=True)
        PYSTDLIB.location.write_bytes(corpus)
        shutil.copyfile(stdlib / "LICENSE.txt", PYSTDLIB.location.parent / Path(PYSTDLIB.licence).name)
        print(f"wrote {PYSTDLIB.location}")
    return 0 if digest == PYSTDLIB.sha256 else 1


if __name__ == "__main__":
    sys.exit(main())
