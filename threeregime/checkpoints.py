"""What the workflow's checkpoints hold: datasets, and dense, pruned and retrained models.

threeregime.io writes and checks the files (atomic write, kind tag); this module knows their
contents: how a model is rebuilt from one, what a trained model's file records, and the numeric
environments (threeregime.runtime.numeric_environment) its lineage was computed in. torch is
imported inside the functions, so that importing this module (the CLI does) stays cheap.
"""

from __future__ import annotations

import logging

from threeregime.io import save_checkpoint

log = logging.getLogger("threeregime")


def load_dataset(path: str, device, channels_last: bool):
    """A prepared dataset (prepare-data) on ``device``, ready to batch."""
    from threeregime.data import DeviceData
    from threeregime.io import load_checkpoint

    return DeviceData(load_checkpoint(path, "dataset"), device, channels_last)


def model_from(payload: dict, device="cpu", perf=None, image: bool = False):
    """Rebuild the architecture recorded in a checkpoint and load its weights."""
    from threeregime.config import ModelConfig
    from threeregime.models import build_model
    from threeregime.runtime import Performance, place

    model = build_model(ModelConfig(**payload["model_cfg"]), payload["in_channels"], payload["num_classes"])
    model.load_state_dict(payload["model"])
    return place(model, device, perf or Performance(), image)


def save_model(out: str, kind: str, state: dict, model_cfg: dict, data, **extra) -> None:
    """A trained model's checkpoint: its training state, architecture and dataset shape (all
    :func:`model_from` needs), plus ``extra`` (spec, masks, environments, ...)."""
    payload = {
        "state": state,
        "model": state["model"],
        "model_cfg": model_cfg,
        "in_channels": data.in_channels,
        "num_classes": data.num_classes,
        **extra,
    }
    save_checkpoint(out, payload, kind)


def same_masks(a: dict, b: dict) -> bool:
    """Whether two retrained checkpoints carry the same pruning masks (one pruned model)."""
    import torch

    return a["masks"].keys() == b["masks"].keys() and all(
        torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"]
    )


def environments(payload: dict) -> list[dict]:
    """The numeric environments a checkpoint was computed in (none recorded before 0.2)."""
    return payload.get("environments", [])


def warn_if_mixed(source: str, lineage: list[dict]) -> None:
    """Warn when a job continues work computed in another numeric environment."""
    from threeregime.runtime import environment_label

    if len(lineage) > 1:
        log.warning(
            "%s was computed under [%s]; this job continues it under [%s]: the result mixes "
            "numeric environments (reported by collect)",
            source, "; ".join(map(environment_label, lineage[1:])), environment_label(lineage[0]),
        )  # fmt: skip
