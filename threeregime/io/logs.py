"""Every command logs to standard output, one timestamped line per event; inside a job Snakemake
sends that to the job's log file."""

from __future__ import annotations

import logging
import sys
import warnings


def configure_logging() -> None:
    warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated")
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
