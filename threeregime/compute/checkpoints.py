"""What the workflow's checkpoints hold: datasets, and dense, pruned and retrained models.

threeregime.io.files writes and checks the files (atomic write, kind tag); this module knows their
contents: how a model is rebuilt from one, what a trained model's file records, and the numeric
environments (threeregime.compute.runtime.numeric_environment) its lineage was computed in. torch is
imported inside the functions, so that importing this module (the CLI does) stays cheap.
"""

from __future__ import annotations

import logging

from threeregime.io.files import REBUILD_ADVICE, CheckpointError, load_checkpoint, save_checkpoint

log = logging.getLogger("threeregime")

TENSOR = "tensor"  # a torch.Tensor (named, so that this module imports torch only when it loads)
_MODEL = {"model": dict, "model_cfg": dict, "in_channels": int, "num_classes": int}
# What each kind of checkpoint must hold (key: type): checked on load, so that a file of the
# right kind with the wrong content is one line naming it, not a KeyError deep in a job.
CONTENTS: dict[str, dict[str, type | str]] = {
    "dataset": dict.fromkeys(("train_x", "train_y", "test_x", "test_y"), TENSOR)
    | {"num_classes": int, "in_channels": int, "image": bool, "augment": bool},
    "dense": _MODEL | {"state": dict, "spec": dict, "environments": list},
    "rewind": {"rewind": dict, "spec": dict, "environments": list},
    "pruned": _MODEL | {"masks": dict, "spec": dict, "density_actual": float, "environments": list},
    "retrain": _MODEL
    | {"state": dict, "masks": dict, "spec": dict, "density_actual": float}
    | {"environments": list},
    "resume": {"fingerprint": str, "states": list, "environment": dict},
}


def load(path, kind: str, map_location: str = "cpu") -> dict:
    """A checkpoint of ``kind`` (threeregime.io.files.load_checkpoint: nothing in it runs), with the
    content that kind holds (:data:`CONTENTS`), or one CheckpointError line naming the file."""
    import torch

    payload = load_checkpoint(path, kind, map_location)
    wrong = [
        key
        for key, expected in CONTENTS[kind].items()
        if not isinstance(payload.get(key), torch.Tensor if expected == TENSOR else expected)
    ]
    if wrong:
        raise CheckpointError(
            f"{path}: a '{kind}' checkpoint without a valid {', '.join(wrong)}; {REBUILD_ADVICE}"
        )
    return payload


def load_dataset(path: str, device, channels_last: bool):
    """A prepared dataset (prepare-data) on ``device``, ready to batch."""
    from threeregime.compute.data import DeviceData

    return DeviceData(load(path, "dataset"), device, channels_last)


def model_from(payload: dict, device="cpu", perf=None, image: bool = False, source: str = "checkpoint"):
    """Rebuild the architecture recorded in a checkpoint (read from ``source``) and load its
    weights; a record that names no known architecture, or weights that do not fit it, is one
    CheckpointError line."""
    from threeregime.compute.models import build_model
    from threeregime.compute.runtime import Performance, place
    from threeregime.config.settings import ModelConfig

    try:
        shape = payload["in_channels"], payload["num_classes"]
        model = build_model(ModelConfig(**payload["model_cfg"]), *shape)
        model.load_state_dict(payload["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{source}: its weights do not fit the architecture it records ({first}); {REBUILD_ADVICE}"
        ) from None
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
    from threeregime.compute.environments import environment_label

    if len(lineage) > 1:
        log.warning(
            "%s was computed under [%s]; this job continues it under [%s]: the result mixes "
            "numeric environments (reported by collect)",
            source, "; ".join(map(environment_label, lineage[1:])), environment_label(lineage[0]),
        )  # fmt: skip
