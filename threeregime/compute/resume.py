"""Resumable training jobs: a resume checkpoint next to a job's first output.

A job's fingerprint is its spec and the content of its inputs; a later attempt with the same
fingerprint continues from the last saved epoch, and the result is identical to an uninterrupted
run (threeregime.compute.train). An attempt in another numeric environment (threads, device, torch,
fast paths) starts over instead, so that no run is computed half in one environment and half in
another.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from threeregime.compute.checkpoints import load
from threeregime.config.specs import to_json
from threeregime.io.files import CheckpointError, file_digest, save_checkpoint

log = logging.getLogger("threeregime")


def fingerprint(spec: str, *paths: str) -> str:
    """A job's identity for resuming: its JSON spec and its input files' digests."""
    return to_json({"spec": json.loads(spec), "inputs": [file_digest(p) for p in paths]})


@dataclass(frozen=True)
class ResumableJob:
    """A training job's identity for resuming (its :func:`fingerprint` and numeric environment),
    its outputs, and how often it saves its progress (epochs)."""

    outs: list[str]
    fingerprint: str
    environment: dict
    checkpoint_every: int = 1

    @property
    def resume_file(self) -> Path:
        """The job's one resume checkpoint, next to its first output (all its runs in it)."""
        return Path(f"{self.outs[0]}.resume")

    def finished(self) -> None:
        """Remove the resume checkpoint once every output is written."""
        self.resume_file.unlink(missing_ok=True)

    def saved_states(self) -> list[dict] | None:
        """The run states to continue from, if the resume file holds this job's (same
        fingerprint, same numeric environment); else None, with a log line saying why."""
        from threeregime.compute.environments import environment_label

        resume = self.resume_file
        if not resume.exists():
            return None
        try:
            saved = load(resume, "resume")
        except CheckpointError as exc:
            log.warning("%s; starting over", exc)
            return None
        if saved["fingerprint"] != self.fingerprint:
            log.warning("ignoring %s: it was built from other settings or inputs", resume)
        elif saved["environment"] != self.environment:
            was = environment_label(saved["environment"]) if saved["environment"] else "unknown"
            log.warning(
                "NOT resuming from %s: it was computed under [%s], this job runs under [%s]; "
                "starting over so that the run is computed in one environment",
                resume, was, environment_label(self.environment),
            )  # fmt: skip
        else:
            log.info("resuming from %s at epoch %d", resume, saved["states"][0]["epoch"])
            return saved["states"]
        return None

    def save(self, states: list[dict]) -> None:
        """Save the runs' states after an epoch, every ``checkpoint_every`` epochs."""
        if states[0]["epoch"] % self.checkpoint_every == 0:
            payload = {"fingerprint": self.fingerprint, "states": states, "environment": self.environment}
            save_checkpoint(self.resume_file, payload, "resume")


def train_resumable(job: ResumableJob, runs, data, recipe, **options) -> list[dict]:
    """:func:`threeregime.compute.train.train_runs` of ``runs`` (a RunSet), saving ``job``'s progress
    after its epochs and continuing from the job's saved states, if any; the final result is
    identical to an uninterrupted run. The caller calls ``job.finished()`` once every output
    is written."""
    from threeregime.compute.train import train_runs

    states = job.saved_states()  # temporaries of a killed write go at the next write (atomic_path)
    if states is not None:
        runs = replace(runs, states=states)
    return train_runs(runs, data, recipe, on_epoch_end=job.save, **options)
